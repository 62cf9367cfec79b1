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

import dataclasses
import difflib
import functools
import glob
import inspect
import logging
import os
import sys
from typing import Optional, Sequence

import gin
from gin import config_parser

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
            state=state, step_fn=trainer.supervised_step_fn(jitted, dataset, loop, mesh_),
            loop=loop, mesh=mesh_,
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


# ------------------------------------------------------------- gin checks
#
# gin 0.5.0 accepts several mistakes silently or reports them late: `--gin.NUM_STEP=1`
# (a typo of NUM_STEPS) is a new macro that nothing uses, so the run trains with the
# file's value; a `%gin.REQUIRED` macro left unset fails only when the function that
# takes it runs, deep inside it (a REQUIRED `model_dir` reaches `os.makedirs`); a missing
# gin file can end in a TypeError from gin's package-resource reader. The checks below
# stop all of these before the run starts, naming the file, macro or binding.


class GinConfigError(ValueError):
    """A configuration fault found before the run starts (see the checks above)."""


# What `%gin.REQUIRED` is to gin's parser: a macro use of the constant of this name.
_REQUIRED = "gin.REQUIRED"


@dataclasses.dataclass(frozen=True)
class _MacroUse:
    """Stands in, in a scanned value, for gin's reference to macro `%name`."""

    name: str


@dataclasses.dataclass(frozen=True)
class _Reference:
    """Stands in, in a scanned value, for gin's reference `@name` (or `@name()`)."""

    name: str
    evaluate: bool


class _ScanDelegate(config_parser.ParserDelegate):
    """Makes gin's parser build placeholders instead of gin objects, so a scan imports
    and registers nothing, and records every macro that a value uses."""

    def __init__(self):
        self.used: set = set()

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return _Reference(scoped_configurable_name, evaluate)

    def macro(self, macro_name):
        self.used.add(macro_name)
        return _MacroUse(macro_name)


def _macro_name(statement: config_parser.BindingStatement) -> str:
    return f"{statement.scope}/{statement.selector}" if statement.scope else statement.selector


def _unscoped(macro_name: str) -> str:
    """`train/NUM_STEPS` -> `NUM_STEPS`: a scoped binding sets the macro within a scope."""
    return macro_name.rsplit("/", 1)[-1]


@dataclasses.dataclass
class GinScan:
    """What the text of some gin files (their includes followed) says about macros.

    After parsing, gin's config holds each macro's value but not whether anything uses
    it, nor which macros a file merely uses; the command-line checks need both, so the
    files are read again with gin's own parser (`scan_gin_files`).

    Attributes:
      roots: the files asked for, as found on disk.
      files: every file read, includes too, in the order gin reads them.
      defined: macro name -> the value its last binding gives it (`_MacroUse` and
        `_Reference` placeholders stand for `%...` and `@...`).
      used: the macros that some bound value uses (`%NAME`); constants such as
        `gin.REQUIRED` are among them.
    """

    roots: list = dataclasses.field(default_factory=list)
    files: list = dataclasses.field(default_factory=list)
    defined: dict = dataclasses.field(default_factory=dict)
    used: set = dataclasses.field(default_factory=set)

    @property
    def macros(self) -> set:
        """Every macro the files define or use, unscoped (gin constants, which are dotted,
        left out)."""
        return {_unscoped(n) for n in set(self.defined) | self.used if "." not in _unscoped(n)}

    @property
    def required(self) -> list:
        """Macros whose last binding is `%gin.REQUIRED`, in definition order."""
        return [name for name, value in self.defined.items() if value == _MacroUse(_REQUIRED)]

    @property
    def run(self) -> str:
        """The configurable that `RUN` names (`entry_point`'s default when none does)."""
        ref = self.defined.get("RUN")
        return ref.name if isinstance(ref, _Reference) else "run_train.train"


def search_dirs(search_paths: Sequence[str] = ()) -> list:
    """Where relative gin file names (`--gin_file`, `include`) are looked up, in order:
    the working directory, the repository, then `--gin_search_path`."""
    dirs: list = []
    for path in [os.getcwd(), REPO_ROOT, *search_paths]:
        path = os.path.abspath(path)
        if path not in dirs:
            dirs.append(path)
    return dirs


def find_gin_file(name: str, dirs: Sequence[str], included_from=None) -> str:
    """The path of gin file `name`: itself if absolute, else the first of `dirs` holding it.

    Args:
      name: as given to `--gin_file` or `include`.
      dirs: `search_dirs(...)`.
      included_from: the `include` statement's location, for the error message.

    Raises:
      GinConfigError: naming the file, where it was included, and every path tried.
    """
    tried = [name] if os.path.isabs(name) else [os.path.join(d, name) for d in dirs]
    for path in tried:
        if os.path.isfile(path):
            return path
    where = ""
    if included_from is not None:
        where = f" (included from {included_from.filename}, line {included_from.line_num})"
    raise GinConfigError(f"gin file {name!r}{where} not found; tried: {', '.join(tried)}")


def scan_gin_files(gin_files: Sequence[str], dirs: Sequence[str], into: Optional[GinScan] = None) -> GinScan:
    """Reads gin files and everything they include (text only: nothing is imported).

    Raises:
      GinConfigError: a file or an included file is missing, or files include each
        other in a cycle (gin itself would recurse until the stack overflows).
      SyntaxError: from gin's parser, with the file and line.
    """
    scan = into if into is not None else GinScan()

    def visit(name, included_from, stack):
        path = find_gin_file(name, dirs, included_from)
        if path in stack:
            raise GinConfigError("gin files include each other: " + " -> ".join([*stack, path]))
        scan.files.append(path)
        delegate = _ScanDelegate()
        with open(path, encoding="utf-8") as f:
            for statement in config_parser.ConfigParser(f, delegate):
                if isinstance(statement, config_parser.IncludeStatement):
                    visit(statement.filename, statement.location, [*stack, path])
                elif isinstance(statement, config_parser.BindingStatement) and not statement.arg_name:
                    scan.defined[_macro_name(statement)] = statement.value
        scan.used |= delegate.used
        return path

    for name in gin_files:
        scan.roots.append(visit(name, None, []))
    return scan


def _did_you_mean(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=3)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _parameter_names(fn_or_cls) -> list:
    try:
        signature = inspect.signature(fn_or_cls)
    except (TypeError, ValueError):
        return []
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in signature.parameters.values() if p.kind not in variadic]


def _suggest_binding(scope: str, selector: str, arg_name: str) -> str:
    """`; did you mean ...?` for a binding gin rejected: the nearest parameters of the
    configurable, or the nearest configurables (among gin's registered ones, compared
    with as many trailing components as `selector` has) with the same parameter."""
    prefix = f"{scope}/" if scope else ""
    registry = gin.config._REGISTRY  # gin 0.5.0: complete selector -> Configurable
    matches = registry.matching_selectors(selector)
    if len(matches) == 1:
        params = _parameter_names(registry[matches[0]].wrapped)
        close = [f"{prefix}{selector}.{p}" for p in difflib.get_close_matches(arg_name, params, n=3)]
    elif matches:  # ambiguous: gin's message lists the candidates
        return ""
    else:
        depth = selector.count(".") + 1
        names = {".".join(complete.split(".")[-depth:]) for complete, _ in registry.items()}
        close = [f"{prefix}{c}.{arg_name}" for c in difflib.get_close_matches(selector, sorted(names), n=3)]
    return f"; did you mean {' or '.join(close)}?" if close else ""


def check_bindings(bindings: Sequence[str], scan: GinScan, dirs: Sequence[str] = ()) -> None:
    """Command-line bindings may only set what the loaded files know of.

    Call after gin has parsed the files (their configurables are registered then) and
    before it parses `bindings`.

    A macro a binding sets must be defined or used by a file, or used by another
    command-line binding (gin would take anything else as a new macro that nothing
    uses); a macro a binding uses must be defined somewhere; a `configurable.param`
    must name an existing configurable and parameter (gin checks this too, but without
    a suggestion).

    Raises:
      GinConfigError: listing every bad binding with the nearest known names.
    """
    delegate = _ScanDelegate()
    statements = list(config_parser.ConfigParser("\n".join(bindings), delegate))
    for statement in statements:
        # Rare, but gin allows it: what a command-line include defines is known too.
        if isinstance(statement, config_parser.IncludeStatement):
            scan_gin_files([statement.filename], dirs or search_dirs(), into=scan)
    known = scan.macros
    defined = {_unscoped(name) for name in scan.defined}
    used = {_unscoped(name) for name in delegate.used}
    has_imports = any(isinstance(s, config_parser.ImportStatement) for s in statements)
    errors = []
    for statement in statements:
        if not isinstance(statement, config_parser.BindingStatement):
            continue
        text = statement.location.line_content.strip()
        if not statement.arg_name:
            name = _unscoped(_macro_name(statement))
            defined.add(name)
            if name not in known and name not in used:
                errors.append(f"binding {text!r}: no loaded gin file defines or uses the macro "
                              f"{name}{_did_you_mean(name, known)}")
        elif not has_imports:  # with imports, gin resolves selectors through them: its check
            try:
                gin.config.ParsedBindingKey.parse((statement.scope, statement.selector, statement.arg_name))
            except ValueError as e:
                errors.append(f"binding {text!r}: {str(e).rstrip('.')}"
                              + _suggest_binding(statement.scope, statement.selector, statement.arg_name))
    for name in sorted(used - defined):
        if "." not in name:  # gin constants (`%gin.REQUIRED`) are dotted
            errors.append(f"the macro %{name} used on the command line is not defined"
                          f"{_did_you_mean(name, defined)}")
    if errors:
        raise GinConfigError("\n  ".join(["bad gin bindings:", *errors]))


def _is_required(value) -> bool:
    """Whether a bound value is (or holds) gin's `%gin.REQUIRED`."""
    for ref in gin.config.iterate_references([value]):
        # gin 0.5.0 parses `%gin.REQUIRED` as a reference to its constant-retrieving
        # configurable in scope `gin.REQUIRED` (see gin's find_missing_overrides_hook).
        is_constant = ref.configurable.wrapped is gin.config._retrieve_constant
        if is_constant and ref.scoped_configurable_fn() is gin.REQUIRED:
            return True
    return False


def check_required() -> None:
    """Every `%gin.REQUIRED` in the parsed config must have been overridden.

    gin reports a REQUIRED value only when (and if) the function that takes it runs, one
    at a time and often as an unrelated error inside it; this names them all up front.

    Raises:
      GinConfigError: naming the macros and parameters still REQUIRED.
    """
    macros, params = [], []
    for (scope, selector), values in gin.config._CONFIG.items():  # gin 0.5.0's bindings
        for arg_name, value in values.items():
            if not _is_required(value):
                continue
            if selector == "gin.macro":  # `NAME = v` is stored as gin.macro.value in scope NAME
                macros.append(scope)
            else:
                params.append(f"{scope}/{selector}.{arg_name}" if scope else f"{selector}.{arg_name}")
    lines = []
    if macros:
        lines.append(f"REQUIRED macros not set: {', '.join(macros)} (set them in a gin file or "
                     f"with --gin.{macros[0]}=VALUE)")
    if params:
        lines.append(f"parameters still bound to %gin.REQUIRED: {', '.join(params)}")
    if lines:
        raise GinConfigError("\n".join(lines))


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()) -> GinScan:
    """Parses gin files and bindings; errors name the bad file/binding.

    The files (includes followed) are found and scanned first (`scan_gin_files`), and
    the command-line `bindings` are checked against them (`check_bindings`) before gin
    parses them. REQUIRED macros are not checked here (a run gin alone is a valid
    config to inspect): `run_cli` calls `check_required`.

    Returns:
      The scan of the files.

    Raises:
      GinConfigError: a missing file or a binding of something the files don't know.
      ValueError, SyntaxError: gin's own errors, which name the file and line.
    """
    gin.clear_config()
    dirs = search_dirs(search_paths)
    # gin looks relative names (the includes) up in a process-wide list that only ever
    # grows; reset it to this command's directories, in the scan's order ('' is the
    # working directory), so that gin reads exactly the files the scan read.
    gin.config._LOCATION_PREFIXES[:] = ["", *dirs[1:]]
    scan = scan_gin_files(gin_files, dirs)
    for path in scan.roots:
        gin.parse_config_file(path)
    check_bindings(bindings, scan, dirs)
    gin.parse_config(list(bindings))
    return scan


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

    Read from the gin files' text (`scan_gin_files`), so it stays in step with them and
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
            return scan_gin_files([path], [REPO_ROOT])
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
        parse_gin(fv.gin_file, fv.gin_bindings, fv.gin_search_path)
        check_required()
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
    if result.preempted:
        logging.warning("preempted: checkpoint saved; rerun the same command to resume")
    return 0, result
