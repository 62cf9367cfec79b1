"""`nlhf train` for online policy optimisation (Nash-MD-PG, self-play, best response,
Nash-EMA-PG, RLHF; online IPO, IPO-MD): set-up around `online` and `trainer.run_loop`.

    nlhf train --gin_file=configs/experiments/world_nash_md.gin --gin.MODEL_DIR=\"runs/nash_md\" \
        --gin.SFT_DIR=\"runs/world_sft\" --gin.JUDGE_DIR=\"runs/world_pm\"

The algorithms, the phases of a step and their shardings are in `nlhf_jax.online`;
this module loads the SFT run (initial policy and frozen reference mu), restores or
initialises the state, wires the judge to the step, and runs the loop.
"""

import dataclasses
import logging
import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nlhf_jax import checkpointing
from nlhf_jax import gin_setup
from nlhf_jax import metrics as metrics_lib
from nlhf_jax import online
from nlhf_jax import partitioning
from nlhf_jax import train_state as train_state_lib
from nlhf_jax import trainer
from nlhf_jax.data import arrays
from nlhf_jax.data import input_pipeline
from nlhf_jax.models import t5


def train_policy(
    *,
    model_dir: str,
    sft_dir: str,
    prompts: input_pipeline.ArrayDataset,
    judge: Any,
    vocabulary: Any,
    loop: trainer.LoopConfig,
    nashmd: online.NashMDConfig = online.NashMDConfig(),
    optimizer: train_state_lib.OptimizerConfig = train_state_lib.OptimizerConfig(),
    mesh: partitioning.MeshConfig = partitioning.MeshConfig(),
    rules: Optional[Sequence] = None,
    checkpoint: checkpointing.CheckpointConfig = checkpointing.CheckpointConfig(),
    eval_fn: Any = None,
    sample_metrics: Optional[Callable[[Sequence[str]], dict]] = None,
) -> trainer.LoopResult:
    """Trains a policy from the SFT run in `sft_dir` (also the frozen reference mu).

    Args:
      model_dir: this run's directory (checkpoints, metrics.jsonl, tb/, samples).
      sft_dir: a finished `nlhf train` SFT run: initial policy and reference.
      prompts: `arrays.prompt_dataset` (feature `prompts`; meta `prompts`, the texts
        the judge is given).
      judge: for nash_md / nash_ema / online_ipo / ipo_md a `judges.Judge`
        (`prob(prompts, ys, ys_alt)`); for rlhf one with `rewards(prompts, ys)`.
      vocabulary: the policy's vocabulary (decodes samples for the judge).
      loop: steps, prompts per batch, seed, logging cadence.
      nashmd: the algorithm and its hyper-parameters.
      optimizer, mesh, rules, checkpoint: as for `nlhf train`.
      eval_fn: optional (params) -> dict of metrics, run every `loop.eval_every`.
      sample_metrics: optional (the step's decoded samples y) -> {name: float}, logged
        every step; on the world `describe.StyleMonitor` (style shares, TV to Nash(tau)).

    Returns:
      The final state and metrics (EMA runs also write `<model_dir>/ema`).
    """
    gin_setup.write_config(model_dir)
    prompts_fn = _prompts_fn(prompts, loop, nashmd)  # checks the prompt texts before any set-up
    rules = list(rules) if rules is not None else partitioning.default_rules()
    mesh_ = partitioning.make_mesh(mesh)
    config, network, ref_params = trainer.load_frozen(sft_dir, mesh_, rules)
    checkpointing.save_model_config(model_dir, config)
    tx = optimizer.build()
    init = lambda rng: t5.init_variables(network, rng)["params"]  # noqa: E731
    state, shardings, _ = trainer.init_train_state(init, tx, mesh_, rules, jax.random.key(loop.seed))
    ckpt_cfg = dataclasses.replace(checkpoint, initial_checkpoint=checkpoint.initial_checkpoint or sft_dir,
                                   restore_mode="params_only")
    ckpt = checkpointing.Checkpointer(model_dir, ckpt_cfg)
    state, how = trainer.restore_or_init(checkpointer=ckpt, state=state, shardings=shardings, tx=tx)
    logging.info("policy: %s", how)
    if state.params is ref_params:  # never alias the frozen reference
        raise AssertionError("policy and reference share buffers")

    frozen = {"reference": ref_params}
    ema_ckpt = None
    if nashmd.algorithm == "nash_ema":
        ema_ckpt, frozen["ema"] = _ema_start(model_dir, config, ckpt_cfg, state, shardings)
    phases = online.make_phases(network, tx, optimizer.schedule.build(), nashmd, shardings, mesh_)
    step = online.step_fn(phases, frozen, nashmd, seed=loop.seed,
                          prompts_fn=prompts_fn,
                          score_fn=_score_fn(judge, vocabulary, nashmd, sample_metrics))
    companions = []
    if ema_ckpt is not None:  # saved with the policy, at its step
        companions.append(trainer.Companion(ema_ckpt, lambda s: train_state_lib.TrainState(
            step=s.step, params=frozen["ema"], opt_state={})))
    writer = metrics_lib.MetricWriter(model_dir)
    try:
        result = trainer.run_loop(
            state=state, step_fn=step, loop=loop, mesh=mesh_, rules=rules,
            checkpointer=ckpt, writer=writer, eval_fn=eval_fn, desc=nashmd.algorithm,
            companions=companions, progress_keys=("policy/reward", "policy/kl_ref"),
        )
    finally:
        writer.close()
        ckpt.close()
        if ema_ckpt is not None:
            ema_ckpt.close()
    gin_setup.write_operative_config(model_dir)
    return result


def _ema_start(model_dir, config, ckpt_cfg, state, shardings):
    """Nash-EMA's averaged parameters: restored at the policy's own step on resume, else
    theta_bar_0 = theta_0 (the SFT parameters, App. F.3), a copy, not an alias."""
    ema_ckpt = checkpointing.Checkpointer(os.path.join(model_dir, "ema"),
                                          dataclasses.replace(ckpt_cfg, initial_checkpoint=None))
    checkpointing.save_model_config(os.path.join(model_dir, "ema"), config)
    if int(state.step) > 0:
        target = train_state_lib.TrainState(step=state.step, params=state.params, opt_state={})
        target_sh = train_state_lib.TrainState(step=shardings.step, params=shardings.params, opt_state={})
        return ema_ckpt, ema_ckpt.restore_latest(target, target_sh, step=int(state.step)).params
    copy = jax.jit(lambda p: jax.tree_util.tree_map(jnp.copy, p), out_shardings=shardings.params)
    return ema_ckpt, copy(state.params)


def _prompts_fn(prompts: input_pipeline.ArrayDataset, loop: trainer.LoopConfig,
                nashmd: online.NashMDConfig) -> online.PromptsFn:
    """Step s's prompts: batch s of the dataset's order, each repeated `num_samples`
    times, as token ids (the policy's input) and as prompt texts (the judge's input,
    `templates.post_prompt`, the same text the PM and RM were trained on). The whole
    global batch, the same on every host (`online.step_fn` shards it by global index)."""

    texts = prompts.meta.get("prompts")
    if texts is None or len(texts) != len(prompts):
        raise ValueError(
            f"{prompts.name}: meta['prompts'] must hold the {len(prompts)} prompt texts the judge "
            f"reads (arrays.prompt_dataset builds them with templates.post_prompt); got "
            f"{'none' if texts is None else len(texts)}")

    def fn(step):
        idx = np.repeat(prompts.indices(step, loop.batch_size, loop.seed), nashmd.num_samples)
        return prompts.features["prompts"][idx], [texts[i] for i in idx]

    return fn


def _score_fn(judge: Any, vocabulary: Any, nashmd: online.NashMDConfig,
              sample_metrics: Optional[Callable[[Sequence[str]], dict]] = None) -> online.ScoreFn:
    """The judge on decoded text: `judge.rewards(prompts, ys)` for RLHF, else
    `judge.prob(prompts, ys, ys_alt)` (the preference is the reward, paper §7); and
    `sample_metrics(ys)` when given."""

    def fn(roll, prompts):
        ys = arrays.decode_tokens(vocabulary, np.asarray(roll.tokens), np.asarray(roll.lengths))
        ys_alt = pref = None
        if nashmd.algorithm == "rlhf":
            reward = np.asarray(judge.rewards(prompts, ys), np.float32)
        else:
            ys_alt = arrays.decode_tokens(vocabulary, np.asarray(roll.alt_tokens), np.asarray(roll.alt_lengths))
            pref = np.asarray(judge.prob(prompts, ys, ys_alt), np.float32)
            reward = pref.copy()
        extra = dict(sample_metrics(ys)) if sample_metrics is not None else {}
        texts = {"samples/prompt": prompts[0][:400], "samples/y": ys[0]}
        if ys_alt is not None:
            texts["samples/y_alt"] = ys_alt[0]
        return reward, pref, extra, texts

    return fn
