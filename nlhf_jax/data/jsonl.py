"""Validated readers for the JSON-lines formats of the summarisation data.

Why this module exists: users bring real files (TL;DR ``tldr_3_filtered``, OpenAI
``summarize-from-feedback`` comparisons) and the world writes the same formats. A bad
line must never crash a run three hours in with a bare KeyError, nor be dropped
silently. Every reader therefore checks each line and either raises a `DataError`
naming the file, the line number and the problem, or, with ``skip_invalid=True``, skips
the line, counts it by kind of problem, and prints a summary at the end (also
returned, as a `ReadReport`).

Formats (one JSON object per line; blank lines are ignored):

* SFT (``tldr_3_filtered``): ``id, subreddit, title, post, summary``;
* prompts: ``id, subreddit, title, post``;
* comparisons (OpenAI): ``info{id, post, title, subreddit}`` (or ``info{id, article,
  site}`` for news batches), ``summaries[2]{text, policy, note}``, ``choice`` (0 or 1:
  the index of the preferred summary), ``worker``, ``batch``, ``split`` (``train``,
  ``valid1``, ``valid2``), ``extra{confidence}``.

Checks: the line is JSON and an object; required fields exist; ``post``/``summary``/
summary ``text`` are non-empty strings (``id``, ``title``, ``subreddit`` strings,
possibly empty title); ``choice`` is the integer 0 or 1; ``summaries`` has exactly two
entries; ids are unique (for comparisons: the same post, the same two summaries and
the same worker twice).

Files are read as bytes and decoded line by line, so a line that is not UTF-8 is one
bad line (``not UTF-8``), named and skippable like any other, not an exception that
ends the read.

Splits: a file whose lines carry a ``split`` field gets a line in the summary with its
rows per split value (``PATH: 120 train, 30 valid1; kept 120, skipped 0``). The
comparison reader knows the OpenAI values (``train``, ``valid1``, ``valid2``) plus any
the caller asks for; another value (``Train``, ``valid``) is reported with the file,
its first line and its number of rows. When the caller filters by split, such rows
(and rows without a ``split``) could never be returned, so they are an error (raised
once the file has been read, so that the count is known), or, with
``skip_invalid=True``, skipped and counted; without a filter the file is taken whole,
rows are kept, and the value is only reported.

Empty input is an error: a file without records (nothing but blank lines, or every
line skipped), and a read that keeps nothing of the requested splits.

Truncation rule: with ``max_post_words=N`` a post longer than N whitespace-separated
words keeps its first N words; each such record is counted in the report (never
silently). Token-level truncation is the business of `tasks.py`.
"""

import collections
import dataclasses
import glob
import json
import os
import sys
from typing import Any, Callable, Iterable, Optional, Sequence, Union

PathSpec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]

# Comparison `split` values of each seqio split (OpenAI naming).
COMPARISON_SPLITS = {"train": ("train",), "validation": ("valid1",), "test": ("valid2",)}
# Every `split` value of the OpenAI comparison files (and of the world's).
KNOWN_COMPARISON_SPLITS = frozenset(s for v in COMPARISON_SPLITS.values() for s in v)
# The first skip messages kept in a `ReadReport`.
_MAX_EXAMPLES = 5


class DataError(ValueError):
    """Bad input: ``PATH:LINE: problem`` for a line, ``PATH: problem`` for a whole file
    (``line`` is None)."""

    def __init__(self, path: str, line: Optional[int], problem: str, kind: str = "invalid"):
        super().__init__(f"{path}: {problem}" if line is None else f"{path}:{line}: {problem}")
        self.path, self.line, self.problem, self.kind = path, line, problem, kind


@dataclasses.dataclass
class ReadReport:
    """What a read kept, skipped and truncated.

    Attributes:
      paths: files read.
      n_lines: non-blank lines seen.
      n_kept: records returned.
      skipped: kind of problem -> lines skipped.
      truncated: field -> records whose field was truncated.
      examples: the first few skip messages, ``PATH:LINE: problem``.
      split_counts: file -> split value -> rows, for files whose lines have a
        ``split`` field (rows of every split, whether asked for or not).
      kept_by_file, skipped_by_file: file -> records kept / lines skipped.
      warnings: unknown split values, one message per value and file, as
        ``PATH:FIRST_LINE: unknown split 'V' in N rows (first at line FIRST_LINE)...``.
    """

    paths: list[str] = dataclasses.field(default_factory=list)
    n_lines: int = 0
    n_kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    truncated: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list[str] = dataclasses.field(default_factory=list)
    max_post_words: Optional[int] = None
    split_counts: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)
    kept_by_file: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped_by_file: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One paragraph: kept / rows per split and file / unknown splits / skipped by
        kind / truncated, with example lines."""
        where = ", ".join(self.paths) if len(self.paths) <= 3 else f"{len(self.paths)} files"
        lines = [f"read {where}: kept {self.n_kept} of {self.n_lines} lines"]
        for path, counts in self.split_counts.items():
            lines.append(f"  {path}: {_format_counts(counts)}; kept "
                         f"{self.kept_by_file[path]}, skipped {self.skipped_by_file[path]}")
        lines += [f"  {w}" for w in self.warnings]
        if self.skipped:
            kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.skipped.items()))
            lines.append(f"  skipped {self.n_skipped} invalid lines ({kinds})")
            lines += [f"    e.g. {e}" for e in self.examples]
        for field, n in sorted(self.truncated.items()):
            lines.append(
                f"  truncated {field} in {n} records to its first {self.max_post_words} words"
            )
        return "\n".join(lines)


def _format_counts(counts: collections.Counter) -> str:
    """``3 train, 2 valid1`` (values in sorted order)."""
    return ", ".join(f"{n} {value}" for value, n in sorted(counts.items())) or "no rows"


def resolve_paths(spec: PathSpec) -> list[str]:
    """A file, a directory (its *.json / *.jsonl files), a glob, or a list of these."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in resolve_paths(s)]
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        found = [
            os.path.join(spec, n)
            for n in os.listdir(spec)
            if n.endswith((".json", ".jsonl"))
        ]
        paths = sorted(found)
    elif any(c in spec for c in "*?["):
        paths = sorted(glob.glob(spec))
    else:
        paths = [spec]
    if not paths:
        raise FileNotFoundError(f"no JSONL files match {spec!r}")
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"no such file: {p}")
    return paths


def _get(obj: dict, dotted: str, path: str, line: int) -> Any:
    node: Any = obj
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise DataError(path, line, f"missing field '{dotted}'", "missing field")
        node = node[part]
    return node


def _check_text(value: Any, name: str, path: str, line: int, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise DataError(
            path, line, f"field '{name}' must be a string, got {type(value).__name__}",
            "non-string text",
        )  # fmt: skip
    if not allow_empty and not value.strip():
        raise DataError(path, line, f"field '{name}' is empty", "empty text")
    return value


def _text(obj: dict, field: str, path: str, line: int, *, allow_empty: bool = False) -> str:
    return _check_text(_get(obj, field, path, line), field, path, line, allow_empty)


def _id(obj: dict, field: str, path: str, line: int) -> str:
    value = _get(obj, field, path, line)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DataError(path, line, f"field '{field}' must be a non-empty string id",
                        "bad id")  # fmt: skip
    return str(value)


def _truncate(text: str, max_words: Optional[int]) -> tuple[str, bool]:
    if max_words is None:
        return text, False
    words = text.split()
    if len(words) <= max_words:
        return text, False
    return " ".join(words[:max_words]), True


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _split_label(value: Any) -> str:
    """A split value as shown in counts: strings as they are, anything else as repr."""
    return value if isinstance(value, str) else repr(value)


def _split_problem(obj: dict, known: frozenset, filtering: bool) -> Optional[tuple[str, str]]:
    """(kind, description) when a line's ``split`` is not a known value, else None.

    A line without the field is a problem only when the caller filters by split (it
    could never be returned); a file taken whole may have no split field at all.
    """
    if "split" not in obj:
        return ("missing field", "no field 'split'") if filtering else None
    split = obj["split"]
    if isinstance(split, str) and split in known:
        return None
    return "unknown split", f"unknown split {split!r}"


def _read(
    spec: PathSpec,
    parse: Callable[[dict, str, int], tuple[dict, Any, str]],
    *,
    skip_invalid: bool,
    max_post_words: Optional[int],
    report_fn: Optional[Callable[[str], None]],
    keep_splits: Optional[frozenset] = None,
    known_splits: Optional[frozenset] = None,
) -> tuple[list[dict], ReadReport]:
    """Reads every file of `spec`, line by line, through `parse`.

    Args:
      parse: (object, path, line) -> (record, duplicate key, what a duplicate is);
        raises `DataError` for a bad line.
      keep_splits: keep only lines whose ``split`` is one of these; None: all.
      known_splits: the valid ``split`` values (the caller's `keep_splits` are added);
        None: any value (no check). See the module docstring for what happens to the
        others.
    """
    report = ReadReport(paths=resolve_paths(spec), max_post_words=max_post_words)
    if known_splits is not None and keep_splits is not None:
        known_splits = known_splits | keep_splits
    reader = _Reader(report, parse, skip_invalid, keep_splits, known_splits)
    for path in report.paths:
        reader.read_file(path)
    records = reader.records
    if not records:
        # Every file has records, so the split filter left nothing: say what there is.
        every = sum(report.split_counts.values(), collections.Counter())
        raise DataError(
            ", ".join(report.paths), None,
            f"no records of splits {sorted(keep_splits or [])} (rows by split: "
            f"{_format_counts(every)}; skipped {report.n_skipped})",
            "empty",
        )  # fmt: skip
    report.truncated = collections.Counter({k: n for k, n in report.truncated.items() if n})
    report.n_kept = len(records)
    if report_fn is not None and (report.skipped or report.truncated or report.split_counts
                                  or report.warnings):  # fmt: skip
        report_fn(report.summary())
    return records, report


class _Reader:
    """The state of one `_read`: the records kept so far, the report, duplicate keys."""

    def __init__(self, report: ReadReport, parse, skip_invalid: bool,
                 keep_splits: Optional[frozenset], known_splits: Optional[frozenset]):  # fmt: skip
        self.report, self.parse, self.skip_invalid = report, parse, skip_invalid
        self.keep_splits, self.known_splits = keep_splits, known_splits
        self.records: list[dict] = []
        self.first_seen: dict[Any, str] = {}
        self.first_skip: dict[str, str] = {}  # file -> its first skip message

    def skip(self, e: DataError, path: str, n: int = 1, example: bool = True) -> None:
        """Counts `n` skipped lines of `path` (the report keeps the first examples)."""
        report = self.report
        report.skipped[e.kind] += n
        report.skipped_by_file[path] += n
        self.first_skip.setdefault(path, str(e))
        if example and len(report.examples) < _MAX_EXAMPLES:
            report.examples.append(str(e))

    def read_file(self, path: str) -> None:
        """Reads one file: its records, counts, unknown splits and emptiness checks."""
        n_file_lines = 0
        splits: collections.Counter = collections.Counter()
        # (kind, what) -> [first line, rows]; `what` names the value in messages.
        unknown: dict[tuple[str, str], list[int]] = {}
        # Bytes, decoded per line: one undecodable line must not end (or, skipped,
        # take the rest of the file with it) the read; it is reported like any other.
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                try:
                    text, decode_error = raw.decode("utf-8"), None
                except UnicodeDecodeError as e:
                    text, decode_error = None, e
                if text is not None and not text.strip():
                    continue
                n_file_lines += 1
                self.report.n_lines += 1
                try:
                    record = self._record(path, line_no, raw, text, decode_error, splits, unknown)
                except DataError as e:
                    if not self.skip_invalid:
                        raise
                    self.skip(e, path)
                    continue
                if record is not None:
                    self._keep(path, record)
        if splits:
            self.report.split_counts[path] = splits
        if unknown:
            self._unknown_splits(path, unknown)
        self._check_not_empty(path, n_file_lines)

    def _record(self, path, line_no, raw, text, decode_error, splits, unknown) -> Optional[dict]:
        """The line's record; None when the split filter drops it (or drops it until
        the file has been counted: see `_unknown_splits`). Raises `DataError`."""
        if decode_error is not None:
            e = decode_error
            raise DataError(
                path, line_no,
                f"not valid UTF-8 ({e.reason}: byte 0x{raw[e.start]:02x} at "
                f"byte {e.start + 1} of the line)",
                "not UTF-8",
            )  # fmt: skip
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, line_no, f"not valid JSON ({e.msg})", "not JSON")
        if not isinstance(obj, dict):
            raise DataError(path, line_no, "not a JSON object", "not an object")
        if "split" in obj:
            splits[_split_label(obj["split"])] += 1
        problem = None
        if self.known_splits is not None:
            problem = _split_problem(obj, self.known_splits, self.keep_splits is not None)
        if problem is not None:
            unknown.setdefault(problem, [line_no, 0])[1] += 1
            if self.keep_splits is not None:
                # Never returned: an error, or skipped, once the file is counted.
                self.report.n_lines -= 1
                return None
        elif self.keep_splits is not None and obj.get("split") not in self.keep_splits:
            self.report.n_lines -= 1  # another split: filtered, not an error
            return None
        record, key, what = self.parse(obj, path, line_no)
        if key in self.first_seen:
            raise DataError(
                path, line_no,
                f"duplicate {what} (first seen at {self.first_seen[key]})",
                "duplicate id",
            )  # fmt: skip
        self.first_seen[key] = f"{path}:{line_no}"
        return record

    def _keep(self, path: str, record: dict) -> None:
        max_words = self.report.max_post_words
        if max_words is not None and "post" in record:
            record["post"], cut = _truncate(record["post"], max_words)
            self.report.truncated["post"] += int(cut)
        self.records.append(record)
        self.report.kept_by_file[path] += 1

    def _unknown_splits(self, path: str, unknown: dict[tuple[str, str], list[int]]) -> None:
        """Unknown split values of one file: an error when filtering (unless
        skip_invalid: then skipped and counted), else kept and reported."""
        expected = "expected one of " + ", ".join(sorted(self.known_splits))
        # In order of first occurrence.
        found = [
            (kind, first, f"{what} in {_rows(n)} (first at line {first})", n)
            for (kind, what), (first, n) in unknown.items()
        ]
        if self.keep_splits is not None and not self.skip_invalid:
            kind, first, problem, _ = found[0]
            also = "".join(f"; also {p}" for _, _, p, _ in found[1:])
            raise DataError(path, first, f"{problem}{also}; {expected}", kind)
        for kind, first, problem, n in found:
            if self.keep_splits is None:  # the file is taken whole: kept, only reported
                self.report.warnings.append(str(DataError(
                    path, first, f"{problem}; {expected} (rows kept: no split filter)", kind
                )))  # fmt: skip
                continue
            e = DataError(path, first, f"{problem}; {expected} (rows skipped)", kind)
            self.report.n_lines += n  # skipped rows, counted like other bad lines
            self.skip(e, path, n, example=False)
            self.report.warnings.append(str(e))

    def _check_not_empty(self, path: str, n_file_lines: int) -> None:
        if n_file_lines == 0:
            raise DataError(path, None, "no records (the file is empty or blank)", "empty file")
        if self.report.skipped_by_file[path] == n_file_lines:
            lines = "its only line" if n_file_lines == 1 else f"all {n_file_lines} lines"
            raise DataError(
                path, None, f"no valid records; {lines} skipped (e.g. {self.first_skip[path]})",
                "empty file",
            )  # fmt: skip


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _post_record(obj: dict, path: str, line: int) -> dict:
    """The post fields of a TL;DR-style line: ``id, subreddit, title, post``."""
    return {
        "id": _id(obj, "id", path, line),
        "subreddit": _text(obj, "subreddit", path, line, allow_empty=True),
        "title": _text(obj, "title", path, line, allow_empty=True),
        "post": _text(obj, "post", path, line),
    }


def read_sft(
    spec: PathSpec,
    *,
    skip_invalid: bool = False,
    max_post_words: Optional[int] = None,
    report_fn: Optional[Callable[[str], None]] = _stderr,
) -> tuple[list[dict], ReadReport]:
    """Reads TL;DR-style SFT lines (``id, subreddit, title, post, summary``).

    Args:
      spec: file, directory, glob, or list of them.
      skip_invalid: skip bad lines (counted) instead of raising.
      max_post_words: truncate posts to this many words (counted); None: never.
      report_fn: where the end-of-read summary goes when anything was skipped or
        truncated, or a file has a ``split`` field (stderr by default; None: nowhere,
        the report is still returned).

    Returns:
      (records, report); each record has the five string fields.

    Raises:
      DataError: on the first bad line, unless `skip_invalid`; for a file without
        records (empty, blank, or every line skipped).
    """

    def parse(obj, path, line):
        rec = _post_record(obj, path, line)
        rec["summary"] = _text(obj, "summary", path, line)
        return rec, (rec["id"],), f"id {rec['id']!r}"

    return _read(spec, parse, skip_invalid=skip_invalid, max_post_words=max_post_words,
                 report_fn=report_fn)  # fmt: skip


def read_prompts(
    spec: PathSpec,
    *,
    skip_invalid: bool = False,
    max_post_words: Optional[int] = None,
    report_fn: Optional[Callable[[str], None]] = _stderr,
) -> tuple[list[dict], ReadReport]:
    """Reads prompt lines (``id, subreddit, title, post``); args as `read_sft`."""

    def parse(obj, path, line):
        rec = _post_record(obj, path, line)
        return rec, (rec["id"],), f"id {rec['id']!r}"

    return _read(spec, parse, skip_invalid=skip_invalid, max_post_words=max_post_words,
                 report_fn=report_fn)  # fmt: skip


def read_comparisons(
    spec: PathSpec,
    *,
    splits: Optional[Iterable[str]] = None,
    skip_invalid: bool = False,
    max_post_words: Optional[int] = None,
    report_fn: Optional[Callable[[str], None]] = _stderr,
) -> tuple[list[dict], ReadReport]:
    """Reads OpenAI comparison lines.

    Args:
      spec: file, directory, glob, or list of them.
      splits: keep only lines whose ``split`` is one of these (e.g. ``("valid2",)``);
        None keeps all. Lines of other known splits are filtered (not counted as
        lines); lines with an unknown ``split`` value (one not in
        `KNOWN_COMPARISON_SPLITS` nor in `splits`) or none are an error, or with
        `skip_invalid` skipped and reported (see the module docstring).
      skip_invalid, max_post_words, report_fn: as in `read_sft`.

    Returns:
      (records, report); each record has ``id, subreddit, title, post`` (news items
      give ``article`` as post, ``site`` as subreddit), ``summary_0``, ``summary_1``,
      ``policy_0``, ``policy_1``, ``choice`` (int 0/1), ``worker``, ``batch``,
      ``split``, ``confidence`` (int, -1 if absent).

    Raises:
      DataError: on the first bad line, unless `skip_invalid`; for a file without
        records; when no line of `splits` is left.
    """
    keep = None if splits is None else frozenset(splits)

    def parse(obj, path, line):
        split = obj.get("split", "")
        info = _get(obj, "info", path, line)
        if not isinstance(info, dict):
            raise DataError(path, line, "field 'info' must be an object", "missing field")
        is_news = "post" not in info and "article" in info
        post = _text(obj, "info.article" if is_news else "info.post", path, line)
        summaries = _get(obj, "summaries", path, line)
        if not isinstance(summaries, list) or len(summaries) != 2:
            raise DataError(path, line, "field 'summaries' must be a list of 2 summaries",
                            "bad summaries")  # fmt: skip
        texts = []
        for i, s in enumerate(summaries):
            if not isinstance(s, dict):
                raise DataError(path, line, f"summaries[{i}] must be an object", "bad summaries")
            name = f"summaries[{i}].text"
            if "text" not in s:
                raise DataError(path, line, f"missing field '{name}'", "missing field")
            texts.append(_check_text(s["text"], name, path, line, False).strip())
        choice = _get(obj, "choice", path, line)
        if isinstance(choice, bool) or choice not in (0, 1):
            raise DataError(path, line, f"choice must be 0 or 1, got {choice!r}", "bad choice")
        confidence = (obj.get("extra") or {}).get("confidence")
        rec = {
            "id": _id(obj, "info.id", path, line),
            "subreddit": str(info.get("site" if is_news else "subreddit", "") or ""),
            "title": str(info.get("title", "") or ""),
            "post": post,
            "summary_0": texts[0],
            "summary_1": texts[1],
            "policy_0": str(summaries[0].get("policy", "")),
            "policy_1": str(summaries[1].get("policy", "")),
            "choice": int(choice),
            "worker": str(obj.get("worker", "")),
            "batch": str(obj.get("batch", "")),
            "split": str(split),
            "confidence": int(confidence) if isinstance(confidence, (int, float)) else -1,
        }
        key = (rec["id"], texts[0], texts[1], rec["worker"])
        return rec, key, f"comparison of post id {rec['id']!r} (same summaries and worker)"

    return _read(spec, parse, skip_invalid=skip_invalid, max_post_words=max_post_words,
                 report_fn=report_fn, keep_splits=keep,
                 known_splits=KNOWN_COMPARISON_SPLITS)  # fmt: skip
