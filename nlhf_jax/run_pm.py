"""`nlhf train` for the preference model (PM) and the reward model (RM), from gin.

    nlhf train --gin_file=configs/experiments/world_pm.gin --gin.MODEL_DIR=\"runs/world_pm\"
    nlhf train --gin_file=configs/experiments/world_rm.gin --gin.MODEL_DIR=\"runs/world_rm\"

The run gins (`configs/runs/pm.gin`, `rm.gin`) bind the macro `RUN` to
`train_preference_model` or `train_reward_model`; `run_train.main` calls whatever `RUN`
names (SFT when it is unbound). Both functions share one body (`_train`): the same T5
backbone, the same comparisons, different inputs and losses (`preference_steps.py`).

A run writes, besides checkpoints, metrics.jsonl and tb/: `model_config.json` (the
architecture) and `judge.json` + `spiece.model` (how to build inputs), so
`judges.load_judge(model_dir)` rebuilds the judge from the directory alone.
"""

import functools
import logging
import os
from typing import Optional, Sequence


from nlhf_jax import checkpointing
from nlhf_jax import gin_setup
from nlhf_jax import partitioning
from nlhf_jax import preference_steps
from nlhf_jax import train_state as train_state_lib
from nlhf_jax import trainer
from nlhf_jax.data import pairwise
from nlhf_jax.models import t5


def train_preference_model(
    *,
    model_dir: str,
    model: t5.T5Config,
    data: pairwise.ComparisonData,
    loop: trainer.LoopConfig,
    input_format: pairwise.InputFormat = pairwise.InputFormat(),
    optimizer: train_state_lib.OptimizerConfig = train_state_lib.OptimizerConfig(),
    step: preference_steps.PreferenceStepConfig = preference_steps.PreferenceStepConfig(),
    mesh: partitioning.MeshConfig = partitioning.MeshConfig(),
    rules: Optional[Sequence] = None,
    checkpoint: checkpointing.CheckpointConfig = checkpointing.CheckpointConfig(),
    eval_batch_size: int = 256,
) -> trainer.LoopResult:
    """Trains P_phi(y > y' | x) with cross-entropy on the comparisons (App. G.1).

    Args:
      model_dir: where checkpoints, metrics, TensorBoard files, the gin config,
        model_config.json and judge.json go.
      model: the architecture (the vocabulary must fit in `model.vocab_size`).
      data: comparisons and vocabulary (`pairwise.ComparisonData`, or
        `pairwise.world_data()` for the embedded world, which adds metrics vs P*).
      loop: steps, batch size, seed, logging and evaluation cadence.
      input_format: template (with {y_alt}), target token and lengths.
      optimizer: optax optimizer and schedule.
      step: order handling (random swaps or both orders) and microbatching.
      mesh: `(data, fsdp, model)` sizes.
      rules: logical axis rules (default: `partitioning.default_rules()`).
      checkpoint: saving cadence and the initial checkpoint (an SFT run or a HF T5
        directory, with restore_mode="params_only").
      eval_batch_size: pairs per evaluation forward pass.

    Returns:
      The loop's result (final state, last metrics, whether preempted).
    """
    return _train(pairwise.PREFERENCE, **locals())


def train_reward_model(
    *,
    model_dir: str,
    model: t5.T5Config,
    data: pairwise.ComparisonData,
    loop: trainer.LoopConfig,
    input_format: pairwise.InputFormat = pairwise.InputFormat(pairwise.RM_TEMPLATE, "yes"),
    optimizer: train_state_lib.OptimizerConfig = train_state_lib.OptimizerConfig(),
    step: preference_steps.PreferenceStepConfig = preference_steps.PreferenceStepConfig(),
    mesh: partitioning.MeshConfig = partitioning.MeshConfig(),
    rules: Optional[Sequence] = None,
    checkpoint: checkpointing.CheckpointConfig = checkpointing.CheckpointConfig(),
    eval_batch_size: int = 256,
) -> trainer.LoopResult:
    """Trains r_phi(x, y) with the Bradley-Terry loss on the same comparisons.

    Args: as `train_preference_model`; `input_format.template` holds {prompt} and {y}
    only, and `step.swap_prob` is unused (the loss is symmetric).
    """
    return _train(pairwise.REWARD, **locals())


def _train(
    kind, *, model_dir, model, data, loop, input_format, optimizer, step, mesh, rules,
    checkpoint, eval_batch_size,
) -> trainer.LoopResult:
    import jax

    from nlhf_jax import metrics as metrics_lib

    if input_format.kind != kind:
        raise ValueError(
            f"a {kind} run needs a template {'with' if kind == pairwise.PREFERENCE else 'without'} "
            f"{{y_alt}}; got {input_format.template!r}"
        )
    gin_setup.write_config(model_dir)
    checkpointing.save_model_config(model_dir, model)

    # ---- data: comparisons -> inputs with the model's own vocabulary
    tokenizer = pairwise.Tokenizer(data.vocab_path)
    if tokenizer.vocab_size > model.vocab_size:
        raise ValueError(f"{data.vocab_path} has {tokenizer.vocab_size} pieces but "
                         f"T5Config.vocab_size is {model.vocab_size}")  # fmt: skip
    encoder = pairwise.PairEncoder(input_format, tokenizer)
    if jax.process_index() == 0:
        pairwise.save_judge_spec(model_dir, encoder, trained_on=os.path.abspath(data.train))
    train_texts = pairwise.read_comparison_texts(
        data.train, splits=data.train_splits, world_dir=data.world_dir, labels=data.labels,
        max_examples=data.max_train_examples, keep_last=data.keep_last_train,
        skip_invalid=data.skip_invalid,
    )  # fmt: skip
    dataset = pairwise.comparison_dataset(encoder, train_texts, name=f"{kind}:train")
    logging.info("%d training comparisons from %s", len(dataset), data.train)

    # ---- mesh, state, resume priority (own checkpoint > initial checkpoint > scratch)
    run = trainer.setup_t5_run(model_dir, model, optimizer, loop.seed, mesh, rules, checkpoint)
    mesh_, rules, network, tx = run.mesh, run.rules, run.network, run.tx
    state, shardings, ckpt = run.state, run.shardings, run.checkpointer

    # ---- one jitted step
    extra = {"decoder_len": encoder.decoder_len} if kind == pairwise.PREFERENCE else {}
    step_fn = functools.partial(
        preference_steps.pm_train_step if kind == pairwise.PREFERENCE else preference_steps.rm_train_step,
        model=network, tx=tx, target_token=encoder.target_token_id, cfg=step,
        learning_rate_fn=optimizer.schedule.build(), **extra,
    )  # fmt: skip
    jitted = trainer.jit_step(step_fn, shardings, dataset.batch(0, loop.batch_size), mesh_)

    # ---- evaluation: the judge as it will be used, on the eval comparisons
    eval_fn = None
    if data.eval:
        eval_texts = pairwise.read_comparison_texts(
            data.eval, splits=data.eval_splits, world_dir=data.world_dir, labels="choice",
            skip_invalid=data.skip_invalid,
        )  # fmt: skip
        eval_fn = _make_eval_fn(kind, network, state.params, encoder, eval_texts, mesh_, rules,
                                eval_batch_size)  # fmt: skip

    writer = metrics_lib.MetricWriter(model_dir)
    try:
        result = trainer.run_loop(
            state=state, step_fn=trainer.supervised_step_fn(jitted, dataset, loop, mesh_),
            loop=loop, mesh=mesh_,
            rules=rules, checkpointer=ckpt, writer=writer, eval_fn=eval_fn,
            desc="pm" if kind == pairwise.PREFERENCE else "rm",
        )  # fmt: skip
    finally:
        writer.close()
        ckpt.close()
    gin_setup.write_operative_config(model_dir)
    return result


def _make_eval_fn(kind, network, params, encoder, texts, mesh, rules, batch_size):
    """params -> eval/* metrics of the judge on `texts` (see `judges.preference_metrics`)."""
    from nlhf_jax import judges

    feats = pairwise.comparison_dataset(encoder, texts, name=f"{kind}:eval").features
    if kind == pairwise.PREFERENCE:
        judge = judges.PreferenceModelJudge(network, params, encoder, mesh=mesh, rules=rules,
                                            chunk_size=batch_size)  # fmt: skip
    else:
        judge = judges.RewardModelJudge(network, params, encoder, mesh=mesh, rules=rules,
                                        chunk_size=batch_size)  # fmt: skip

    def eval_fn(current_params):
        # The train state's params already carry the rule-derived shardings.
        judge.params = current_params
        m = judges.evaluate_inputs(judge, feats, texts.labels, texts.p_star)
        return {f"eval/{k}": v for k, v in m.items()}

    return eval_fn
