"""seqio Tasks for summarisation: the embedded world, TL;DR files and TFDS datasets.

Why this module exists: every training stage gets its data through seqio, so the same
feature converters and gin configs work whether the data is the embedded world, the
user's TL;DR JSONL files or a TFDS dataset. Importing this module registers the world
tasks over the default world directory (``$NLHF_DATA_DIR``, else
``~/.cache/nlhf_jax/world-0``), which is generated lazily, the first time a task is
read. Real-data tasks are registered by calling `register_tldr_tasks` /
`register_tfds_tasks` with paths (the run functions pass them from gin; this module
does not import gin).

Tasks and features (all usable with `seqio.EncDecFeatureConverter`, which keeps
``inputs`` and ``targets``):

================================  =====================================================
``nlhf_world_sft``, ``tldr_sft``  ``inputs`` (prompt), ``targets`` (" " + summary)
``xsum``, ``cnn_dailymail``,      same, from TFDS (xsum: document/summary;
``reddit_tifu``                   cnn_dailymail 3.4.0: article/highlights;
                                  reddit_tifu long_split: title+documents/tldr)
``nlhf_world_comparisons``,       ``inputs``; ``targets`` = y (``summaries[0]``);
``tldr_comparisons``              ``targets_alt`` = y' (``summaries[1]``); ``choice``
                                  int32 scalar, 0 if y is preferred, 1 if y' is
``nlhf_world_prompts``            ``inputs``; ``targets`` is empty (EOS only), present
                                  only so the standard converter accepts the task
================================  =====================================================

Every example also carries ``id`` and, for each token feature F, ``F_pretokenized``
(the text) and ``F_truncated`` (bool).

Prompts use the TL;DR template (`templates.py`; news articles: ``ARTICLE: ...``
then the same ``TL;DR:`` suffix). With the world's own vocabulary (about 260 pieces)
its prompts take at most 80 tokens and its summaries at most 28, EOS included, so
``{"inputs": 96, "targets": 32}`` never truncates world data.

Truncation rule (token level, applied here rather than silently by seqio): when the
requested ``inputs`` length L is exceeded, the prompt *body* loses tokens from its end
so that the ``TL;DR:`` suffix and EOS survive; ``targets``/``targets_alt`` keep their
first L-1 tokens, then EOS. Each cut is counted per task and feature
(`truncation_report`) and the first one per task and feature is logged. Counts cover
every example the pipeline processed (read-ahead and repeated epochs included).
Text-level truncation of posts (``max_post_words``) is counted by `jsonl.py`.
"""

import collections
import logging
import os
import threading
from typing import Callable, Mapping, Optional, Sequence, Union

import seqio
import tensorflow as tf

from nlhf_jax.data import jsonl, templates
from nlhf_jax.data import vocab as vocab_lib
from nlhf_jax.data.world import generator

WORLD_SFT = "nlhf_world_sft"
WORLD_COMPARISONS = "nlhf_world_comparisons"
WORLD_PROMPTS = "nlhf_world_prompts"
TLDR_SFT = "tldr_sft"
TLDR_COMPARISONS = "tldr_comparisons"
SEQIO_SPLITS = ("train", "validation", "test")
_WORLD_FILE_SPLIT = {"train": "train", "validation": "valid", "test": "test"}
# tldr_3_filtered ships train.jsonl / valid.jsonl / test.jsonl.
_TLDR_FILE = {"train": "train.jsonl", "validation": "valid.jsonl", "test": "test.jsonl"}
TFDS_NAMES = {
    "xsum": "xsum:1.1.0",
    "cnn_dailymail": "cnn_dailymail:3.4.0",
    "reddit_tifu": "reddit_tifu/long_split:1.1.2",
}

PathOrSplits = Union[str, os.PathLike, Mapping[str, str]]


class TruncationCounter:
    """Thread-safe counts of examples seen and truncated, per (task, feature)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.seen: collections.Counter = collections.Counter()
        self.truncated: collections.Counter = collections.Counter()

    def record(self, task: str, feature: str, cut: bool) -> bool:
        with self._lock:
            self.seen[(task, feature)] += 1
            if cut:
                self.truncated[(task, feature)] += 1
                if self.truncated[(task, feature)] == 1:
                    _LOG.warning(
                        "%s: '%s' is longer than the requested length; truncating by the "
                        "documented rule (see nlhf_jax.data.tasks), counted in "
                        "truncation_report()", task, feature)  # fmt: skip
        return cut

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self.truncated.clear()

    def report(self) -> str:
        """One line per (task, feature): truncated / seen."""
        with self._lock:
            keys = sorted(self.seen)
            return "\n".join(
                f"{t} {f}: truncated {self.truncated[(t, f)]} of {self.seen[(t, f)]} examples"
                for t, f in keys
            )


TRUNCATIONS = TruncationCounter()
_LOG = logging.getLogger(__name__)


def truncation_report() -> str:
    """How many examples each task had to truncate so far (see module docstring)."""
    return TRUNCATIONS.report()


def _counted(task: str, feature: str, cut: tf.Tensor) -> tf.Tensor:
    flag = tf.py_function(lambda c: TRUNCATIONS.record(task, feature, bool(c)), [cut], tf.bool)
    flag.set_shape([])
    return flag


def tokenize_and_fit(
    dataset: tf.data.Dataset,
    output_features: Mapping[str, seqio.Feature],
    sequence_length: Optional[Mapping[str, int]] = None,
    *,
    task_name: str,
) -> tf.data.Dataset:
    """Tokenizes text features, truncates by the documented rule, appends EOS.

    Expects ``inputs_body`` and ``inputs_suffix`` (text) and, when they are output
    features, ``targets`` / ``targets_alt`` (text).

    Args:
      dataset: examples with text features.
      output_features: the task's features (their vocabularies are used).
      sequence_length: feature -> max length (EOS included); missing or None: no cut.
      task_name: key for the truncation counts.

    Returns:
      The dataset with int32 token features, ``*_pretokenized`` and ``*_truncated``.
    """
    lengths = dict(sequence_length or {})

    def fit(ex):
        out = {k: v for k, v in ex.items() if k not in ("inputs_body", "inputs_suffix")}
        vocab = output_features["inputs"].vocabulary
        eos = tf.constant([vocab.eos_id], tf.int32)
        body = tf.cast(vocab.encode_tf(ex["inputs_body"]), tf.int32)
        suffix = tf.cast(vocab.encode_tf(ex["inputs_suffix"]), tf.int32)
        cut = tf.constant(False)
        limit = lengths.get("inputs")
        if limit:
            room = tf.maximum(limit - 1 - tf.size(suffix), 0)
            cut = tf.size(body) > room
            body = body[:room]
        inputs = tf.concat([body, suffix, eos], 0)
        if limit:  # a suffix longer than the limit itself: plain cut, still counted
            cut = tf.logical_or(cut, tf.size(inputs) > limit)
            inputs = tf.concat([inputs[: limit - 1], eos], 0)
        out["inputs"] = inputs
        out["inputs_pretokenized"] = tf.strings.join([ex["inputs_body"], ex["inputs_suffix"]])
        out["inputs_truncated"] = _counted(task_name, "inputs", cut)
        for key in ("targets", "targets_alt"):
            if key not in ex or key not in output_features:
                continue
            tvocab = output_features[key].vocabulary
            tokens = tf.cast(tvocab.encode_tf(ex[key]), tf.int32)
            cut = tf.constant(False)
            limit = lengths.get(key)
            if limit:
                cut = tf.size(tokens) > limit - 1
                tokens = tokens[: limit - 1]
            out[key] = tf.concat([tokens, tf.constant([tvocab.eos_id], tf.int32)], 0)
            out[f"{key}_pretokenized"] = ex[key]
            out[f"{key}_truncated"] = _counted(task_name, key, cut)
        return out

    return dataset.map(fit, num_parallel_calls=tf.data.AUTOTUNE)


def _output_features(vocabulary: seqio.Vocabulary, pairwise: bool = False) -> dict:
    feats = {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }
    if pairwise:
        feats["targets_alt"] = seqio.Feature(vocabulary=vocabulary, add_eos=True)
        feats["choice"] = seqio.Feature(
            vocabulary=seqio.PassThroughVocabulary(size=2), add_eos=False, dtype=tf.int32,
            rank=0,
        )  # fmt: skip
    return feats


# ---- Records (validated dicts from jsonl.py) -> text examples ----------------------


def _prompt_parts(records: Sequence[dict]) -> dict:
    return {
        "id": [r["id"] for r in records],
        "inputs_body": [
            templates.tldr_body(r["subreddit"], r["title"], r["post"]) for r in records
        ],
        "inputs_suffix": [templates.TLDR_SUFFIX] * len(records),
    }


def _sft_examples(records: Sequence[dict]) -> dict:
    return _prompt_parts(records) | {
        "targets": [templates.summary_target(r["summary"]) for r in records]
    }


def _comparison_examples(records: Sequence[dict]) -> dict:
    return _prompt_parts(records) | {
        "targets": [templates.summary_target(r["summary_0"]) for r in records],
        "targets_alt": [templates.summary_target(r["summary_1"]) for r in records],
        "choice": [r["choice"] for r in records],
    }


def _prompt_examples(records: Sequence[dict]) -> dict:
    return _prompt_parts(records) | {"targets": [""] * len(records)}


def _to_dataset(columns: dict) -> tf.data.Dataset:
    tensors = {
        k: tf.constant(v, dtype=tf.int32 if k == "choice" else tf.string, shape=[len(v)])
        for k, v in columns.items()
    }
    return tf.data.Dataset.from_tensor_slices(tensors)


def _jsonl_source(
    read: Callable[[str], list[dict]], to_examples: Callable[[Sequence[dict]], dict]
) -> seqio.FunctionDataSource:
    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
        del shuffle_files, seed  # one file per split; seqio shuffles examples itself
        return _to_dataset(to_examples(read(split)))

    return seqio.FunctionDataSource(dataset_fn, splits=SEQIO_SPLITS)


def _register(name: str, source, output_features: dict, preprocessors: list) -> str:
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=source,
        output_features=output_features,
        preprocessors=preprocessors + [
            lambda ds, output_features, sequence_length=None: tokenize_and_fit(
                ds, output_features, sequence_length, task_name=name
            )
        ],
        metric_fns=[],
    )
    return name


# ---- The embedded world ------------------------------------------------------------


def register_world_tasks(
    data_dir: Optional[str] = None,
    *,
    config: Optional[generator.WorldConfig] = None,
    skip_invalid: bool = False,
) -> list[str]:
    """Registers ``nlhf_world_{sft,comparisons,prompts}`` over a world directory.

    Nothing is generated or read now: the world is generated (if missing or stale)
    the first time a task's data or vocabulary is used.

    Args:
      data_dir: the world directory; None: `generator.default_data_dir(config.seed)`.
      config: the world's config; None: the default world.
      skip_invalid: skip (and count) bad lines instead of raising.

    Returns:
      The registered task names.
    """
    config = config or generator.WorldConfig()
    data_dir = os.path.abspath(data_dir or generator.default_data_dir(config.seed))
    vocabulary = vocab_lib.LazyWorldVocabulary(data_dir, config)

    def reader(kind: str, read_fn) -> Callable[[str], list[dict]]:
        def read(split: str) -> list[dict]:
            generator.ensure_world(data_dir, config)
            path = generator.split_path(data_dir, kind, _WORLD_FILE_SPLIT[split])
            return read_fn(path, skip_invalid=skip_invalid)[0]

        return read

    return [
        _register(WORLD_SFT, _jsonl_source(reader("sft", jsonl.read_sft), _sft_examples),
                  _output_features(vocabulary), []),  # fmt: skip
        _register(WORLD_COMPARISONS,
                  _jsonl_source(reader("comparisons", jsonl.read_comparisons),
                                _comparison_examples),
                  _output_features(vocabulary, pairwise=True), []),  # fmt: skip
        _register(WORLD_PROMPTS,
                  _jsonl_source(reader("prompts", jsonl.read_prompts), _prompt_examples),
                  _output_features(vocabulary), []),  # fmt: skip
    ]


# ---- Real data: TL;DR files --------------------------------------------------------


def register_tldr_tasks(
    *,
    vocab_path: str,
    sft_path: Optional[PathOrSplits] = None,
    comparisons_path: Optional[PathOrSplits] = None,
    extra_ids: int = 100,
    skip_invalid: bool = False,
    max_post_words: Optional[int] = None,
) -> list[str]:
    """Registers ``tldr_sft`` and/or ``tldr_comparisons`` over the user's files.

    Args:
      vocab_path: SentencePiece model (e.g. a T5 checkpoint's ``spiece.model``).
      sft_path: a tldr_3_filtered directory (train/valid/test.jsonl) or a dict
        {seqio split: file}; None: no SFT task.
      comparisons_path: a file, directory or glob of OpenAI comparison files, split by
        each line's ``split`` field (train -> train, valid1 -> validation, valid2 ->
        test), or a dict {seqio split: path} taken whole; None: no comparison task.
      extra_ids: sentinel ids of the vocabulary (100 for T5 checkpoints).
      skip_invalid: skip (and count) bad lines instead of raising.
      max_post_words: truncate posts to this many words (counted); None: never.

    Returns:
      The registered task names.
    """
    vocabulary = vocab_lib.sentencepiece_vocabulary(vocab_path, extra_ids=extra_ids)
    options = dict(skip_invalid=skip_invalid, max_post_words=max_post_words)
    names = []
    if sft_path is not None:

        def read_sft(split: str) -> list[dict]:
            if isinstance(sft_path, Mapping):
                path = sft_path[split]
            else:
                path = os.path.join(os.fspath(sft_path), _TLDR_FILE[split])
            return jsonl.read_sft(path, **options)[0]

        names.append(_register(TLDR_SFT, _jsonl_source(read_sft, _sft_examples),
                               _output_features(vocabulary), []))  # fmt: skip
    if comparisons_path is not None:

        def read_comparisons(split: str) -> list[dict]:
            if isinstance(comparisons_path, Mapping):
                return jsonl.read_comparisons(comparisons_path[split], **options)[0]
            return jsonl.read_comparisons(
                comparisons_path, splits=jsonl.COMPARISON_SPLITS[split], **options
            )[0]

        names.append(
            _register(TLDR_COMPARISONS, _jsonl_source(read_comparisons, _comparison_examples),
                      _output_features(vocabulary, pairwise=True), [])  # fmt: skip
        )
    return names


# ---- Real data: TFDS ---------------------------------------------------------------


def _tfds_to_text(name: str):
    suffix = tf.constant(templates.TLDR_SUFFIX)

    def fn(ex):
        if name == "reddit_tifu":
            body = tf.strings.join(
                ["SUBREDDIT: r/tifu\n\nTITLE: ", ex["title"], "\n\nPOST: ", ex["documents"]]
            )
            target = ex["tldr"]
        else:
            body = tf.strings.join(["ARTICLE: ", ex["document" if name == "xsum" else "article"]])
            target = ex["summary" if name == "xsum" else "highlights"]
        ident = ex.get("id", tf.constant(""))
        if ident.dtype != tf.string:
            ident = tf.strings.as_string(ident)
        return {
            "id": ident,
            "inputs_body": body,
            "inputs_suffix": suffix,
            "targets": tf.strings.join([" ", tf.strings.strip(target)]),
        }

    return lambda ds: ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def register_tfds_tasks(
    *,
    vocab_path: str,
    data_dir: Optional[str] = None,
    extra_ids: int = 100,
    names: Sequence[str] = tuple(TFDS_NAMES),
) -> list[str]:
    """Registers TFDS-backed SFT tasks (``xsum``, ``cnn_dailymail``, ``reddit_tifu``).

    The datasets must already be prepared in `data_dir` (xsum needs a manual
    download): nothing here downloads, and reading a missing dataset fails.

    Args:
      vocab_path: SentencePiece model (e.g. a T5 ``spiece.model``).
      data_dir: TFDS data directory; None: TFDS's default.
      extra_ids: sentinel ids of the vocabulary (100 for T5 checkpoints).
      names: which of `TFDS_NAMES` to register.

    Returns:
      The registered task names.
    """
    vocabulary = vocab_lib.sentencepiece_vocabulary(vocab_path, extra_ids=extra_ids)
    out = []
    for name in names:
        source = _tfds_source(TFDS_NAMES[name], data_dir)
        out.append(_register(name, source, _output_features(vocabulary), [_tfds_to_text(name)]))
    return out


def _tfds_source(tfds_name: str, data_dir: Optional[str]) -> seqio.FunctionDataSource:
    # Not seqio.TfdsDataSource: it may call download_and_prepare, which offline hangs
    # for minutes before failing, and it needs split sizes that mocked datasets lack.
    # tfds.load(download=False) fails at once on a dataset that is not prepared.
    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
        import tensorflow_datasets as tfds

        read_config = tfds.ReadConfig(shuffle_seed=seed) if seed is not None else None
        return tfds.load(tfds_name, split=split, data_dir=data_dir, download=False,
                         shuffle_files=shuffle_files, read_config=read_config)  # fmt: skip

    return seqio.FunctionDataSource(dataset_fn, splits=SEQIO_SPLITS)


register_world_tasks()
