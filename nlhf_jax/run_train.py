"""`nlhf train`: supervised training (SFT) configured by gin.

    nlhf train --gin_file=configs/experiments/copy_sft.gin \
        --gin.MODEL_DIR=\"runs/copy\" --gin.NUM_STEPS=100

`train` is the one configurable function (gin binds it by its importable path,
`nlhf_jax.run_train.train`, never `__main__`, so tests parse every config).
`--gin.KEY=VALUE` is shorthand for `--gin_bindings=KEY=VALUE`; string values need
quotes that survive the shell: `--gin.MODEL_DIR=\"runs/x\"` or `--gin.MODEL_DIR="'runs/x'"`.
Setting a macro or parameter that no loaded gin file knows, a missing gin file and a
`%gin.REQUIRED` macro left unset stop the command (exit 2) before anything runs;
`nlhf train --help` lists the run kinds and their REQUIRED macros.

Multi-host: pass `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`
(or set NLHF_COORDINATOR_ADDRESS / NLHF_NUM_PROCESSES / NLHF_PROCESS_ID), or
`--distributed=auto` on TPU VMs and SLURM, where JAX finds them itself.
"""

import functools
import glob
import logging
import os
import sys
from typing import Optional, Sequence

import gin

from nlhf_jax import checkpointing
from nlhf_jax import gin_setup
from nlhf_jax import partitioning
from nlhf_jax import steps
from nlhf_jax import train_state as train_state_lib
from nlhf_jax import trainer
from nlhf_jax.data import input_pipeline
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
    from nlhf_jax import metrics as metrics_lib

    gin_setup.write_config(model_dir)
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
            state=state, step_fn=trainer.supervised_step_fn(jitted, dataset, loop, mesh_),
            loop=loop, mesh=mesh_,
            rules=rules, checkpointer=ckpt, writer=writer, eval_fn=eval_fn, desc="sft",
        )
    finally:
        writer.close()
        ckpt.close()
    gin_setup.write_operative_config(model_dir)
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


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


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
    flags.DEFINE_enum("log_level", "INFO", list(LOG_LEVELS), "python logging level of the root logger",
                      case_sensitive=False, flag_values=fv)
    return fv


class _StderrHandler(logging.StreamHandler):
    """A console handler that writes to whatever `sys.stderr` is when a record is emitted
    (like logging's last-resort handler), so a later redirection of stderr (pytest's
    capture, a caller's log file) still gets the lines."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def _not_gin_lookup_noise(record: logging.LogRecord) -> bool:
    """Drops the records of gin's package-resource file reader: for an `include` found in
    the second search directory it logs the look-up (INFO) and a miss in the first (ERROR
    "Path not found"), which reads like a failure; files really missing are reported by
    `find_gin_file` before gin looks."""
    return not record.pathname.endswith(os.path.join("gin", "resource_reader.py"))


def configure_logging(level: str) -> None:
    """Shows log records at `level` (a `LOG_LEVELS` name) and above on stderr.

    `logging.basicConfig` alone is a no-op here: importing orbax already logged through
    absl, whose first record calls `basicConfig()`, which left the root logger at WARNING
    with a plain stderr handler, so INFO lines (restore / resume decisions, the mesh) were
    dropped. So the root level is set explicitly, and the console handlers that
    `basicConfig()` or absl installed (or an earlier call of this function) are replaced
    by one with our format; other handlers (log files, pytest's capture) stay.

    Libraries that log through absl (orbax: dozens of INFO lines per checkpoint save)
    go through absl's logger, which stays at WARNING unless DEBUG is asked for.
    """
    from absl import logging as absl_logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) in (logging.StreamHandler, _StderrHandler) or isinstance(
            handler, absl_logging.ABSLHandler
        ):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(_not_gin_lookup_noise)
    root.addHandler(handler)
    root.setLevel(level.upper())
    absl_level = logging.DEBUG if level.upper() == "DEBUG" else max(logging.WARNING, root.level)
    absl_logging.get_absl_logger().setLevel(absl_level)


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


_HELP_ARGS = ("-h", "--help", "--helpshort", "--helpfull")


def usage() -> str:
    """`nlhf train --help`: the flags, the run kinds with the function each binds as `RUN`
    and its REQUIRED macros, and what each experiment leaves to set.

    Read from the gin files' text (`gin_setup.scan_gin_files`), so it stays in step with them and
    imports nothing they name.
    """
    lines = [
        "usage: nlhf train --gin_file=FILE [--gin_file=FILE ...] [--gin.MACRO=VALUE ...] [flags]",
        "",
        "Trains what the gin files configure: the function they bind as RUN. An experiment",
        "(configs/experiments/) includes a run kind (configs/runs/) and sets most of its",
        "REQUIRED macros; set the rest with --gin.NAME=VALUE, strings in quotes that survive",
        'the shell: --gin.MODEL_DIR=\\"runs/x\\". Overriding a macro or parameter that the',
        "files do not know is an error.",
        "",
        "run kinds (configs/runs/*.gin):",
    ]

    def scanned(path):
        try:
            return gin_setup.scan_gin_files([path], [REPO_ROOT])
        except (ValueError, SyntaxError) as e:  # help must work even if one file is broken
            lines.append(f"  {os.path.relpath(path, REPO_ROOT)}: unreadable ({e})")
            return None

    for path in sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "runs", "*.gin"))):
        scan = scanned(path)
        if scan is None:
            continue
        lines.append(f"  {os.path.relpath(path, REPO_ROOT):<24} RUN = {scan.run}")
        lines.append(f"  {'':<24} REQUIRED: {' '.join(scan.required) or '-'}")
        elsewhere = sorted(m for m in scan.macros - set(scan.defined))
        if elsewhere:  # e.g. MODEL, from a configs/models/*.gin file
            lines.append(f"  {'':<24} also needs: {' '.join(elsewhere)}")
    lines += ["", "experiments (configs/experiments/*.gin) and the REQUIRED macros they leave to set:"]
    for path in sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "experiments", "*.gin"))):
        scan = scanned(path)
        if scan is not None:
            lines.append(f"  {os.path.relpath(path, REPO_ROOT):<44} {' '.join(scan.required) or '-'}")
    lines += ["", "flags:", "  -h, --help: this message"]
    fv = _flags()
    for name in sorted(fv):
        flag = fv[name]
        lines.append(f"  --{name}: {' '.join(flag.help.split())} (default: {flag.default!r})")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Entry point of `nlhf train`."""
    rc, _ = run_cli(argv)
    return rc


def run_cli(argv: Sequence[str]):
    """`nlhf train` for callers that need the result: returns (exit code, LoopResult or None).

    Configuration faults (flags, gin files, bindings, REQUIRED macros) exit 2 with a
    message before anything runs.
    """
    if any(arg in _HELP_ARGS for arg in argv):
        print(usage())
        return 0, None
    fv = _flags()
    try:
        fv(["nlhf train", *rewrite_gin_args(argv)])
    except Exception as e:  # absl's flag errors
        print(f"nlhf train: {e}", file=sys.stderr)
        return 2, None
    configure_logging(fv.log_level)
    if not fv.gin_file:
        print("nlhf train: give at least one --gin_file (see nlhf train --help)", file=sys.stderr)
        return 2, None
    initialize_distributed(fv)
    try:
        gin_setup.parse_gin(fv.gin_file, fv.gin_bindings, fv.gin_search_path)
        gin_setup.check_required()
    except (ValueError, SyntaxError) as e:
        # Ours and gin's own parse errors (which name the file and line): the message is
        # the whole story, a traceback through gin's parser would only bury it.
        print(f"nlhf train: {e}", file=sys.stderr)
        return 2, None
    # SIGTERM is a flag from here on, through set-up, compilation, the loop, the final
    # evaluation and the final save: the loop saves at the next safe point and the run
    # exits 0 (trainer.run_loop).
    with trainer.preemption_guard():
        result = entry_point()()
    if result.preempted and result.steps_run:
        logging.warning("preempted: checkpoint saved; rerun the same command to resume")
    elif result.preempted:
        logging.warning("preempted before the first step: nothing saved; rerun the same command")
    return 0, result
