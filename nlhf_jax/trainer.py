"""The supervised training loop shared by SFT, the preference model and the reward model.

Order of business (big_vision style), each a function below:
  1. mesh and rules           -> `partitioning`
  2. state, sharded at birth  -> `init_train_state`
  3. resume priority          -> `restore_or_init`: own checkpoint, then the initial
                                 checkpoint (full state or params only), then scratch
  4. one jitted step          -> `jit_step` (explicit shardings, state donated)
  5. the loop                 -> `run_loop`: step-indexed batches, NaN guard,
                                 checkpoints, metrics, SIGTERM = save and exit 0.
"""

import dataclasses
import logging
import math
import signal
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import auto as tqdm

from nlhf_jax import checkpointing
from nlhf_jax import faults
from nlhf_jax import metrics as metrics_lib
from nlhf_jax import partitioning
from nlhf_jax import train_state as train_state_lib
from nlhf_jax import types
from nlhf_jax.data import input_pipeline

PyTree = types.PyTree
TrainState = train_state_lib.TrainState


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long to train and how often to report.

    Attributes:
      num_steps: total optimizer steps of the run (a resumed run stops there too).
      batch_size: global batch size (all hosts together).
      seed: seeds initialisation, dropout and data order.
      log_every: write metrics every N steps (averaged over those steps).
      eval_every: run `eval_fn` every N steps (0 = only at the end, if given).
      progress: show a tqdm bar.
    """

    num_steps: int
    batch_size: int
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.num_steps < 0 or self.batch_size <= 0:
            raise ValueError(f"LoopConfig: bad num_steps/batch_size {self.num_steps}/{self.batch_size}")


def init_train_state(
    init_boxed_params: Callable[[jax.Array], PyTree],
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    rules: partitioning.LogicalRules,
    rng: jax.Array,
) -> tuple[TrainState, TrainState, TrainState]:
    """Creates a TrainState directly in its shards.

    Args:
      init_boxed_params: rng -> params tree with `nn.LogicallyPartitioned` leaves.
      tx: the optimizer (its state is sharded like the parameters it tracks;
        factored or scalar statistics are replicated).
      mesh, rules: where it lives.
      rng: init key.

    Returns:
      (state, state shardings, abstract state of ShapeDtypeStructs).
    """

    def init_fn(key):
        params = init_boxed_params(key)
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)
        )

    state, shardings = partitioning.sharded_init(init_fn, mesh, rules, rng)
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    return state, shardings, abstract


def abstract_train_state(
    init_boxed_params: Callable[[jax.Array], PyTree],
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    rules: partitioning.LogicalRules,
) -> tuple[TrainState, TrainState]:
    """Shapes and shardings of the train state, allocating nothing (eval_shape only)."""

    def init_fn(key):
        params = init_boxed_params(key)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(init_fn, jax.random.key(0))
        shardings = partitioning.logical_shardings(boxed, mesh, rules)
    return partitioning.unbox(boxed), shardings


@dataclasses.dataclass
class T5Setup:
    """What an encoder-decoder training run starts from (see `setup_t5_run`)."""

    mesh: jax.sharding.Mesh
    rules: list
    network: nn.Module
    tx: optax.GradientTransformation
    state: train_state_lib.TrainState
    shardings: Any
    checkpointer: checkpointing.Checkpointer


def setup_t5_run(
    model_dir: str,
    model: Any,
    optimizer: train_state_lib.OptimizerConfig,
    seed: int,
    mesh: partitioning.MeshConfig,
    rules: Optional[Any],
    checkpoint: checkpointing.CheckpointConfig,
) -> T5Setup:
    """Mesh, T5 network, sharded train state, and resumption, shared by the SFT, PM and
    RM runs. Resume priority: the run's own checkpoint > `checkpoint.initial_checkpoint`
    (an earlier run, a HF T5 directory or a T5X checkpoint) > fresh initialisation from
    `seed`."""
    from nlhf_jax.models import t5

    rules = list(rules) if rules is not None else partitioning.default_rules()
    mesh_ = partitioning.make_mesh(mesh)
    logging.info("mesh %s over %d devices", dict(mesh_.shape), mesh_.size)
    network = t5.EncoderDecoder(model)
    tx = optimizer.build()
    init_boxed = lambda rng: t5.init_variables(network, rng)["params"]  # noqa: E731
    state, shardings, _ = init_train_state(init_boxed, tx, mesh_, rules, jax.random.key(seed))
    ckpt = checkpointing.Checkpointer(model_dir, checkpoint)

    def load_hf(path):
        from nlhf_jax.checkpoints import hf as hf_lib

        _, params = hf_lib.load_t5(path, scan_layers=model.scan_layers)
        return params

    def load_t5x(path):
        from nlhf_jax.checkpoints import t5x as t5x_lib

        return t5x_lib.load_t5x(path, model)

    state, how = restore_or_init(
        checkpointer=ckpt, state=state, shardings=shardings, tx=tx, load_hf=load_hf,
        load_t5x=load_t5x,
    )
    logging.info("%s", how)
    return T5Setup(mesh_, rules, network, tx, state, shardings, ckpt)


def restore_or_init(
    *,
    checkpointer: checkpointing.Checkpointer,
    state: TrainState,
    shardings: TrainState,
    tx: optax.GradientTransformation,
    load_hf: Optional[Callable[[str], PyTree]] = None,
    load_t5x: Optional[Callable[[str], PyTree]] = None,
) -> tuple[TrainState, str]:
    """Applies the resume priority. Returns (state, a sentence saying what happened).

    `load_hf` / `load_t5x` read the params of a HuggingFace / T5X directory (told by
    its layout); a run that passes None cannot start from that format.
    """
    own = checkpointer.restore_latest(state, shardings)
    if own is not None:
        return own, f"resumed from own checkpoint at step {int(own.step)} in {checkpointer.directory}"
    cfg = checkpointer.cfg
    mode = checkpointing.RestoreMode(cfg.restore_mode)
    path = cfg.initial_checkpoint
    if not path or mode == checkpointing.RestoreMode.NONE:
        return state, "initialised from scratch"
    if checkpointing.is_hf_directory(path) or checkpointing.is_t5x_directory(path):
        if checkpointing.is_hf_directory(path):
            kind, load, why = "HF", load_hf, "has no optimizer state"
        else:
            kind, load, why = "T5X", load_t5x, "has Adafactor state, which is not restored"
        if mode == checkpointing.RestoreMode.FULL_STATE:
            raise ValueError(f"{path}: a {kind} checkpoint {why}; use restore_mode='params_only'")
        if load is None:
            raise ValueError(f"{path}: this run cannot read {kind} checkpoints")
        params = load(path)
        checkpointing.check_compatible(state.params, params, path)
        params = jax.tree_util.tree_map(
            lambda x, ref, s: jax.device_put(np.asarray(x, dtype=ref.dtype), s),
            params, state.params, shardings.params,
        )
        return _fresh_optimizer(state, params, tx, shardings), f"params from {kind} checkpoint {path}"
    if mode == checkpointing.RestoreMode.FULL_STATE:
        restored = checkpointing.restore_state(path, state, shardings)
        return restored, f"full state from {path} (step {int(restored.step)})"
    params = checkpointing.restore_params(path, state.params, shardings.params)
    return _fresh_optimizer(state, params, tx, shardings), f"params only from {path}"


def _fresh_optimizer(state: TrainState, params: PyTree, tx, shardings: TrainState) -> TrainState:
    new = jax.jit(
        lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p)),
        out_shardings=shardings,
    )(params)
    return new


def jit_step(
    step_fn: Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]],
    state_shardings: TrainState,
    example_batch: dict,
    mesh: jax.sharding.Mesh,
):
    """jit(step) with explicit shardings: state in/out as derived, batch over
    (data, fsdp), rng and metrics replicated; the state is donated."""
    batch_shardings = {
        k: partitioning.batch_sharding(mesh, np.ndim(v)) for k, v in example_batch.items()
    }
    rep = partitioning.replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_shardings, rep),
        out_shardings=(state_shardings, rep),
        donate_argnums=0,
    )


class NonFiniteLossError(FloatingPointError):
    """A step, the updated state or the final evaluation is not finite; nothing
    non-finite is saved, so the latest checkpoint is the last good one."""


# ------------------------------------------------------------------ preemption


class _Preemption:
    """Turns SIGTERM into a flag that the loop checks between steps.

    One handler for the whole process, installed by the outermost `with` (the
    command line wraps the entire run, so a SIGTERM during set-up, compilation, the
    final evaluation or the final save is also just a flag); inner `with` blocks, such
    as the loop's, share it.
    """

    def __init__(self):
        self.requested = False
        self._depth = 0
        self._previous = None

    def __enter__(self):
        if self._depth == 0:
            self.requested = False
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread: no handler, no preemption support
                self._previous = None
        self._depth += 1
        return self

    def _handle(self, signum, frame):
        del signum, frame
        if not self.requested:
            logging.warning("SIGTERM received: the run saves a checkpoint at the next safe point and exits")
        self.requested = True

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0 and self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


PREEMPTION = _Preemption()


def preemption_guard() -> _Preemption:
    """`with trainer.preemption_guard():` makes SIGTERM a flag for everything inside."""
    return PREEMPTION


# ------------------------------------------------------------------ finiteness


@jax.jit
def _finite_leaves(tree: PyTree) -> list[jax.Array]:
    return [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]


def non_finite_paths(tree: PyTree) -> list[str]:
    """Paths ('params/decoder/.../kernel') of the floating-point leaves holding a NaN or
    an Inf; [] when the whole tree is finite. One fused reduction per leaf."""
    flags = jax.device_get(_finite_leaves(tree))
    paths = [checkpointing.path_str(p) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
             if jnp.issubdtype(x.dtype, jnp.inexact)]
    return [p for p, ok in zip(paths, flags) if not ok]


def _last_good(checkpointer: checkpointing.Checkpointer) -> str:
    checkpointer.wait()
    good = checkpointer.latest_step()
    if good is None:
        return "No checkpoint was saved yet. Lower the learning rate or check the data."
    return (f"The last good checkpoint is step {good} in {checkpointer.directory} "
            "(only finite states are saved); rerun to resume from it.")


# ------------------------------------------------------------------ the loop


StepFn = Callable[[TrainState, int], tuple[TrainState, dict, Optional[dict]]]


def supervised_step_fn(jitted_step, dataset: input_pipeline.ArrayDataset, loop: LoopConfig,
                       mesh: jax.sharding.Mesh) -> StepFn:
    """The loop's step callback for a supervised run: batch `step` of `dataset` (this
    host's slice, assembled into the global batch), then one jitted update."""
    base_rng = jax.random.key(loop.seed)

    def step_fn(state, step):
        local = dataset.batch(step, loop.batch_size, loop.seed, jax.process_index(), jax.process_count())
        batch = partitioning.host_local_batch_to_global(local, mesh)
        state, metrics = jitted_step(state, batch, base_rng)
        return state, jax.device_get(metrics), None

    return step_fn


@dataclasses.dataclass(frozen=True)
class Companion:
    """A second state saved with the train state at the same steps (Nash-EMA's
    averaged parameters): its own checkpointer, and train state -> its state."""

    checkpointer: checkpointing.Checkpointer
    get_state: Callable[[TrainState], TrainState]


@dataclasses.dataclass
class LoopResult:
    state: TrainState
    last_metrics: dict[str, float]
    preempted: bool
    steps_run: int


# What `run_loop` guarantees:
#   * Non-finite values never reach a checkpoint: a step's `*/loss`, the updated state
#     (parameters and optimizer state, and every companion) before each save, and the
#     final evaluation before the final save are checked; any failure raises
#     NonFiniteLossError naming the last good (latest) checkpoint. Rotation only deletes
#     older steps, so that one is kept.
#   * SIGTERM (see `preemption_guard`) saves a complete checkpoint at the next step
#     boundary and returns `preempted=True`; before the first step it returns with
#     nothing to save.
#   * One metrics record per step; on resume, records after the restored step (from the
#     interrupted run) are dropped first, so no step appears twice.
def run_loop(
    *,
    state: TrainState,
    step_fn: StepFn,
    loop: LoopConfig,
    mesh: jax.sharding.Mesh,
    rules: partitioning.LogicalRules,
    checkpointer: checkpointing.Checkpointer,
    writer: metrics_lib.MetricWriter,
    eval_fn: Optional[Callable[[PyTree], dict[str, float]]] = None,
    desc: str = "train",
    companions: Sequence[Companion] = (),
    progress_keys: Sequence[str] = (),
) -> LoopResult:
    """Runs steps `state.step .. loop.num_steps - 1` of any run, supervised or online.

    Args:
      state: the restored or fresh train state.
      step_fn: (state, step) -> (state, metrics, texts or None); one optimizer step
        with all its phases. Metrics are host floats; texts (sample completions) are
        written with that step's record.
      loop: steps, cadences, seed.
      checkpointer, writer: where states and metrics go.
      eval_fn: params -> eval/* metrics, every `loop.eval_every` steps and at the end.
      companions: states saved alongside at the same steps (see `Companion`).
      progress_keys: metric keys shown on the progress bar (besides `*/loss`).

    What it guarantees (non-finite values never saved, SIGTERM, one record per step) is
    listed above the function.
    """
    start = int(jax.device_get(state.step))
    last: dict[str, float] = writer.resume(start)
    saver = _Saver(checkpointer, companions)
    records = _Records(loop.log_every)
    with preemption_guard() as preemption, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        if start >= loop.num_steps:
            logging.info("%s: already finished at step %d (num_steps %d); nothing to do",
                         desc, start, loop.num_steps)
            return LoopResult(state=state, last_metrics=last, preempted=False, steps_run=0)
        faults.point("start")
        if preemption.requested:
            logging.warning("%s: SIGTERM before the first step; nothing new to save", desc)
            return LoopResult(state=state, last_metrics=last, preempted=True, steps_run=0)
        preempted = False
        with tqdm.tqdm(total=loop.num_steps, initial=start, desc=desc, dynamic_ncols=True,
                       disable=not loop.progress or jax.process_index() != 0) as bar:
            for step in range(start, loop.num_steps):
                state, metrics, texts = step_fn(state, step)
                faults.point("step")
                _check_losses(metrics, step, checkpointer)
                done, final = step + 1, step + 1 == loop.num_steps
                bar.update(1)
                record = records.add(metrics, done, final)
                if record:
                    bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in record.items()
                                     if k.endswith("/loss") or k in progress_keys})
                if eval_fn is not None and (final or (loop.eval_every and done % loop.eval_every == 0)):
                    record.update(_evaluate(eval_fn, state, done, final, checkpointer))
                if record or texts:
                    writer.write(done, record, texts)
                    last.update(record)
                if final:
                    break
                if checkpointer.due(done):
                    saver.save(state, done, force=False)
                if preemption.requested:
                    logging.warning("%s: saving step %d after SIGTERM", desc, done)
                    saver.save(state, done, force=True)
                    preempted = True
                    break
        if not preempted:
            saver.save(state, loop.num_steps, force=True)
        saver.wait()
    return LoopResult(state=state, last_metrics=last, preempted=preempted,
                      steps_run=int(jax.device_get(state.step)) - start)


class _Records:
    """Averages step metrics over `log_every` steps into one record per logged step."""

    def __init__(self, log_every: int):
        self.log_every = log_every
        self.pending: list[dict[str, Any]] = []
        self.t_last = time.perf_counter()

    def add(self, metrics: dict, done: int, final: bool) -> dict[str, float]:
        self.pending.append(metrics)
        if not (done % self.log_every == 0 or final):
            return {}
        now = time.perf_counter()
        record = {k: float(np.mean([m[k] for m in self.pending])) for k in self.pending[0]}
        record["perf/steps_per_s"] = len(self.pending) / max(now - self.t_last, 1e-9)
        self.t_last, self.pending = now, []
        return record


class _Saver:
    """Saves the train state and its companions, only ever finite ones."""

    def __init__(self, checkpointer: checkpointing.Checkpointer, companions: Sequence[Companion]):
        self.checkpointer, self.companions = checkpointer, companions

    def save(self, state: TrainState, done: int, force: bool) -> None:
        bad = non_finite_paths(state)
        for c in self.companions:
            bad += [f"{c.checkpointer.directory}:{p}" for p in non_finite_paths(c.get_state(state))]
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise NonFiniteLossError(f"non-finite values in the state after step {done} ({bad[0]}{more}); "
                                     "not saved. " + _last_good(self.checkpointer))
        if self.checkpointer.save(state, force=force):
            for c in self.companions:
                c.checkpointer.save(c.get_state(state), force=force)
            faults.point("final_save" if force else "save")

    def wait(self) -> None:
        self.checkpointer.wait()
        for c in self.companions:
            c.checkpointer.wait()


def _check_losses(metrics: dict, step: int, checkpointer: checkpointing.Checkpointer) -> None:
    bad = [k for k in metrics if k.endswith("/loss") and not math.isfinite(float(metrics[k]))]
    if bad:
        raise NonFiniteLossError(f"non-finite {bad[0]}={float(metrics[bad[0]])} at step {step}; stopping. "
                                 + _last_good(checkpointer))


def _evaluate(eval_fn, state: TrainState, done: int, final: bool,
              checkpointer: checkpointing.Checkpointer) -> dict[str, float]:
    """eval_fn's metrics; a non-finite final evaluation stops the run before the final save."""
    evals = {k: float(v) for k, v in eval_fn(state.params).items()}
    faults.point("eval")
    bad = [k for k, v in evals.items() if not math.isfinite(v)]
    if bad and final:
        raise NonFiniteLossError(f"non-finite {bad[0]}={evals[bad[0]]} in the final evaluation at step "
                                 f"{done}; the final state is not saved. " + _last_good(checkpointer))
    return evals


def load_frozen(
    model_dir: str,
    mesh: jax.sharding.Mesh,
    rules: partitioning.LogicalRules,
    network_cls: Optional[Callable[[Any], nn.Module]] = None,
    config: Any = None,
) -> tuple[Any, nn.Module, PyTree]:
    """A finished run's parameters, for use as a frozen model (reference, judge).

    Reads `<model_dir>/model_config.json` (unless `config` is given), builds the
    network, and restores the latest checkpoint's params straight into their shards.

    Returns:
      (config, network, params).
    """
    from nlhf_jax.models import t5

    config = config or checkpointing.load_model_config(model_dir)
    network = (network_cls or t5.EncoderDecoder)(config)
    init = lambda rng: t5.init_variables(network, rng)["params"]  # noqa: E731
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(init, jax.random.key(0))
        shardings = partitioning.logical_shardings(boxed, mesh, rules)
    abstract = partitioning.unbox(boxed)
    params = checkpointing.restore_params(model_dir, abstract, shardings)
    return config, network, params
