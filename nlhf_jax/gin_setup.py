"""Gin for the entry points: parsing with checks, and the configs a run writes.

Only the `run_*` modules, `demo` and `main` use this (library code never imports gin).

* `parse_gin` reads gin files and command-line bindings, after checking them
  (`check_bindings`: nothing set that no file knows of; `find_gin_file`: missing files
  named with the paths tried); `check_required` names every `%gin.REQUIRED` left unset.
* `write_config` / `write_operative_config`: every run writes `config.gin` (what was
  asked for) when it starts and `operative_config.gin` (what was used) when it ends.
"""

import dataclasses
import difflib
import inspect
import os
from typing import Optional, Sequence

import gin
from gin import config_parser

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_config(model_dir: str) -> None:
    """`<model_dir>/config.gin`: the parsed configuration, at the start of a run."""
    _write(model_dir, "config.gin", gin.config_str())


def write_operative_config(model_dir: str) -> None:
    """`<model_dir>/operative_config.gin`: the values the run actually used, at its end."""
    _write(model_dir, "operative_config.gin", gin.operative_config_str())


def _write(model_dir: str, name: str, text: str) -> None:
    import jax  # not at import time: `nlhf demo` sets jax's cache options first

    os.makedirs(model_dir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(model_dir, name), "w", encoding="utf-8") as f:
            f.write(text)


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


