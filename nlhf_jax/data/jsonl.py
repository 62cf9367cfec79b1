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


class DataError(ValueError):
    """A bad input line: ``PATH:LINE: problem``."""

    def __init__(self, path: str, line: int, problem: str, kind: str = "invalid"):
        super().__init__(f"{path}:{line}: {problem}")
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
    """

    paths: list[str] = dataclasses.field(default_factory=list)
    n_lines: int = 0
    n_kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    truncated: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list[str] = dataclasses.field(default_factory=list)
    max_post_words: Optional[int] = None

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One paragraph: kept / skipped by kind / truncated, with example lines."""
        where = ", ".join(self.paths) if len(self.paths) <= 3 else f"{len(self.paths)} files"
        lines = [f"read {where}: kept {self.n_kept} of {self.n_lines} lines"]
        if self.skipped:
            kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.skipped.items()))
            lines.append(f"  skipped {self.n_skipped} invalid lines ({kinds})")
            lines += [f"    e.g. {e}" for e in self.examples]
        for field, n in sorted(self.truncated.items()):
            lines.append(
                f"  truncated {field} in {n} records to its first {self.max_post_words} words"
            )
        return "\n".join(lines)


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


def _read(
    spec: PathSpec,
    parse: Callable[[dict, str, int], tuple[Optional[dict], Any, Optional[str]]],
    *,
    skip_invalid: bool,
    max_post_words: Optional[int],
    report_fn: Optional[Callable[[str], None]],
) -> tuple[list[dict], ReadReport]:
    report = ReadReport(paths=resolve_paths(spec), max_post_words=max_post_words)
    records: list[dict] = []
    first_seen: dict[Any, str] = {}
    for path in report.paths:
        with open(path, encoding="utf-8") as f:
            for line_no, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                report.n_lines += 1
                try:
                    try:
                        obj = json.loads(raw)
                    except json.JSONDecodeError as e:
                        raise DataError(path, line_no, f"not valid JSON ({e.msg})", "not JSON")
                    if not isinstance(obj, dict):
                        raise DataError(path, line_no, "not a JSON object", "not an object")
                    record, key, what = parse(obj, path, line_no)
                    if record is None:  # filtered out (e.g. another split): not an error
                        report.n_lines -= 1
                        continue
                    if key in first_seen:
                        raise DataError(
                            path, line_no,
                            f"duplicate {what} (first seen at {first_seen[key]})",
                            "duplicate id",
                        )  # fmt: skip
                    first_seen[key] = f"{path}:{line_no}"
                except DataError as e:
                    if not skip_invalid:
                        raise
                    report.skipped[e.kind] += 1
                    if len(report.examples) < 5:
                        report.examples.append(str(e))
                    continue
                if max_post_words is not None and "post" in record:
                    record["post"], cut = _truncate(record["post"], max_post_words)
                    report.truncated["post"] += int(cut)
                records.append(record)
    report.truncated = collections.Counter({k: n for k, n in report.truncated.items() if n})
    report.n_kept = len(records)
    if report_fn is not None and (report.skipped or report.truncated):
        report_fn(report.summary())
    return records, report


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


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
        truncated (stderr by default; None: nowhere, the report is still returned).

    Returns:
      (records, report); each record has the five string fields.

    Raises:
      DataError: on the first bad line, unless `skip_invalid`.
    """

    def parse(obj, path, line):
        rec = {
            "id": _id(obj, "id", path, line),
            "subreddit": _text(obj, "subreddit", path, line, allow_empty=True),
            "title": _text(obj, "title", path, line, allow_empty=True),
            "post": _text(obj, "post", path, line),
            "summary": _text(obj, "summary", path, line),
        }
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
        rec = {
            "id": _id(obj, "id", path, line),
            "subreddit": _text(obj, "subreddit", path, line, allow_empty=True),
            "title": _text(obj, "title", path, line, allow_empty=True),
            "post": _text(obj, "post", path, line),
        }
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
        None keeps all. Filtered lines are neither errors nor counted.
      skip_invalid, max_post_words, report_fn: as in `read_sft`.

    Returns:
      (records, report); each record has ``id, subreddit, title, post`` (news items
      give ``article`` as post, ``site`` as subreddit), ``summary_0``, ``summary_1``,
      ``policy_0``, ``policy_1``, ``choice`` (int 0/1), ``worker``, ``batch``,
      ``split``, ``confidence`` (int, -1 if absent).

    Raises:
      DataError: on the first bad line, unless `skip_invalid`.
    """
    keep = None if splits is None else set(splits)

    def parse(obj, path, line):
        split = obj.get("split", "")
        if keep is not None and split not in keep:
            return None, None, None
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
                 report_fn=report_fn)  # fmt: skip
