"""`nlhf train`: supervised training (SFT) configured by gin.

    nlhf train --gin_file=configs/experiments/copy_sft.gin \
        --gin.MODEL_DIR=\"runs/copy\" --gin.NUM_STEPS=100

`train` is the one configurable function (gin binds it by its importable path,
`nlhf_jax.run_train.train`, never `__main__`, so tests parse every config).
`--gin.KEY=VALUE` is shorthand for `--gin_bindings=KEY=VALUE`; string values need
quotes that survive the shell: `--gin.MODEL_DIR=\"runs/x\"` or `--gin.MODEL_DIR="'runs/x'"`.

Multi-host: pass `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`
(or set NLHF_COORDINATOR_ADDRESS / NLHF_NUM_PROCESSES / NLHF_PROCESS_ID), or
`--distributed=auto` on TPU VMs and SLURM, where JAX finds them itself.
"""

import functools
import logging
import os
import sys
from typing import Optional, Sequence

import gin

from nlhf_jax import checkpointing
from nlhf_jax import input_pipeline
from nlhf_jax import partitioning
from nlhf_jax import steps
from nlhf_jax import train_state as train_state_lib
from nlhf_jax import trainer
from nlhf_jax.models import t5

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(
    *,
    model_dir: str,
    model: t5.T5Config,
    dataset: input_pipeline.ArrayDataset,
    loop: trainer.LoopConfig,
    optimizer: train_state_lib.OptimizerConfig = train_state_lib.OptimizerConfig(),
    step: steps.StepConfig = steps.StepConfig(),
    mesh: partitioning.MeshConfig = partitioning.MeshConfig(),
    rules: Optional[Sequence] = None,
    checkpoint: checkpointing.CheckpointConfig = checkpointing.CheckpointConfig(),
    eval_dataset: Optional[input_pipeline.ArrayDataset] = None,
) -> trainer.LoopResult:
    """Teacher-forced training of an encoder-decoder (SFT).

    Args:
      model_dir: where checkpoints, metrics, TensorBoard files and the gin config go.
      model: the architecture.
      dataset: training examples (EncDecFeatureConverter features).
      loop: steps, batch size, seed, logging cadence.
      optimizer: optax optimizer and schedule.
      step: microbatching and z-loss.
      mesh: `(data, fsdp, model)` sizes.
      rules: logical axis rules (default: `partitioning.default_rules()`).
      checkpoint: saving cadence and the initial checkpoint to start from.
      eval_dataset: evaluated (loss, token accuracy) every `loop.eval_every` steps
        and at the end.

    Returns:
      The loop's result (final state, last metrics, whether preempted).
    """
    import jax

    from nlhf_jax import metrics as metrics_lib

    os.makedirs(model_dir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(model_dir, "config.gin"), "w", encoding="utf-8") as f:
            f.write(gin.config_str())
    checkpointing.save_model_config(model_dir, model)
    run = trainer.setup_t5_run(model_dir, model, optimizer, loop.seed, mesh, rules, checkpoint)
    mesh_, rules, network, tx = run.mesh, run.rules, run.network, run.tx
    state, shardings, ckpt = run.state, run.shardings, run.checkpointer
    step_fn = functools.partial(
        steps.sft_train_step, model=network, tx=tx, cfg=step,
        learning_rate_fn=optimizer.schedule.build(),
    )
    jitted = trainer.jit_step(step_fn, shardings, dataset.batch(0, loop.batch_size), mesh_)

    eval_fn = None
    if eval_dataset is not None:
        eval_fn = _make_eval_fn(network, eval_dataset, loop.batch_size, mesh_, rules)
    writer = metrics_lib.MetricWriter(model_dir)
    try:
        result = trainer.run_loop(
            state=state, jitted_step=jitted, dataset=dataset, loop=loop, mesh=mesh_,
            rules=rules, checkpointer=ckpt, writer=writer, eval_fn=eval_fn, desc="sft",
        )
    finally:
        writer.close()
        ckpt.close()
    if jax.process_index() == 0:
        with open(os.path.join(model_dir, "operative_config.gin"), "w", encoding="utf-8") as f:
            f.write(gin.operative_config_str())
    return result


def _make_eval_fn(network, dataset, batch_size, mesh, rules):
    import jax
    import numpy as np

    batch_size = batch_size - batch_size % 1
    step = jax.jit(functools.partial(steps.sft_eval_step, model=network))

    def eval_fn(params):
        import flax.linen as nn

        sums: dict = {}
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            for local, real in dataset.sequential(batch_size):
                # Padding rows (repeats of row 0) get zero loss weight.
                local = dict(local)
                local["decoder_loss_weights"] = local["decoder_loss_weights"].copy()
                local["decoder_loss_weights"][real:] = 0
                out = jax.device_get(step(params, partitioning.host_local_batch_to_global(local, mesh)))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(np.asarray(v))
        w = max(sums["eval/weight"], 1e-8)
        return {"eval/loss": sums["eval/loss_sum"] / w, "eval/accuracy": sums["eval/accuracy_sum"] / w}

    return eval_fn


# --------------------------------------------------------------------------- CLI


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """`--gin.KEY=VALUE` -> `--gin_bindings=KEY=VALUE` (absl cannot parse dotted flags)."""
    out = []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            key, value = arg[len("--gin."):].split("=", 1)
            out.append(f"--gin_bindings={key} = {value}")
        else:
            out.append(arg)
    return out


def _flags():
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_multi_string("gin_file", [], "gin files, applied in order", flag_values=fv)
    flags.DEFINE_multi_string("gin_bindings", [], "individual gin bindings", flag_values=fv)
    flags.DEFINE_multi_string("gin_search_path", [], "extra include directories", flag_values=fv)
    flags.DEFINE_string("coordinator_address", os.environ.get("NLHF_COORDINATOR_ADDRESS"),
                        "host:port of process 0 (multi-host)", flag_values=fv)
    flags.DEFINE_integer("num_processes", int(os.environ.get("NLHF_NUM_PROCESSES", "0") or 0) or None,
                         "number of processes (multi-host)", flag_values=fv)
    flags.DEFINE_integer("process_id", int(os.environ.get("NLHF_PROCESS_ID", "-1")) if os.environ.get("NLHF_PROCESS_ID") else None,
                         "this process's id (multi-host)", flag_values=fv)
    flags.DEFINE_enum("distributed", "off", ["off", "auto", "explicit"],
                      "auto: let JAX detect TPU/SLURM peers; explicit: use the flags above "
                      "(implied when --coordinator_address is given)", flag_values=fv)
    flags.DEFINE_string("log_level", "INFO", "python logging level", flag_values=fv)
    return fv


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
    """Parses gin files and bindings; errors name the bad file/binding."""
    gin.clear_config()
    for path in [REPO_ROOT, os.getcwd(), *search_paths]:
        gin.add_config_file_search_path(path)
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)


def initialize_distributed(fv) -> None:
    import jax

    if fv.coordinator_address or fv.distributed == "explicit":
        if not (fv.coordinator_address and fv.num_processes and fv.process_id is not None):
            raise SystemExit(
                "multi-host needs --coordinator_address, --num_processes and --process_id "
                "(or NLHF_COORDINATOR_ADDRESS / NLHF_NUM_PROCESSES / NLHF_PROCESS_ID)"
            )
        jax.distributed.initialize(
            coordinator_address=fv.coordinator_address,
            num_processes=fv.num_processes,
            process_id=fv.process_id,
        )
    elif fv.distributed == "auto":
        jax.distributed.initialize()


def entry_point():
    """The configurable the gin files name as macro `RUN` (e.g. `run_pm.train_reward_model`),
    or SFT's `train` when none is bound."""
    try:
        run = gin.query_parameter("%RUN")
    except ValueError:
        return gin.get_configurable(train)
    return run.scoped_configurable_fn


def main(argv: Sequence[str]) -> int:
    """Entry point of `nlhf train`."""
    rc, _ = run_cli(argv)
    return rc


def run_cli(argv: Sequence[str]):
    """`nlhf train` for callers that need the result: returns (exit code, LoopResult or None)."""
    fv = _flags()
    try:
        fv(["nlhf train", *rewrite_gin_args(argv)])
    except Exception as e:  # absl's flag errors
        print(f"nlhf train: {e}", file=sys.stderr)
        return 2, None
    logging.basicConfig(level=getattr(logging, fv.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(message)s")
    if not fv.gin_file:
        print("nlhf train: give at least one --gin_file", file=sys.stderr)
        return 2, None
    initialize_distributed(fv)
    parse_gin(fv.gin_file, fv.gin_bindings, fv.gin_search_path)
    result = entry_point()()
    if result.preempted:
        logging.warning("preempted: checkpoint saved; rerun the same command to resume")
    return 0, result
