"""World and JSONL data as step-indexed `ArrayDataset`s for the training loops.

seqio tasks (`tasks.py`) are the interface for users' own pipelines; the training
loops read fixed-length arrays (exact resumption, multi-host slicing), built here from
the same records and templates. Non-array metadata (post ids and texts, which the
judges need) ride along in `ArrayDataset.meta`.
"""

import logging
from typing import Optional, Sequence

import numpy as np

from nlhf_jax import input_pipeline
from nlhf_jax import types
from nlhf_jax.data import jsonl
from nlhf_jax.data import templates

# World prompts take at most 80 tokens and summaries at most 28 (EOS included), so
# these lengths never truncate world data; real data are truncated by `pad_to`'s
# documented rule and counted.
WORLD_INPUT_LEN = 96
WORLD_TARGET_LEN = 32


def encode_texts(vocabulary, texts: Sequence[str], length: int, what: str) -> np.ndarray:
    """Tokenises, appends EOS, pads with 0 / truncates (counted and logged).

    Returns:
      int32 [len(texts), length].
    """
    ids = [list(vocabulary.encode(t)) + [types.EOS_ID] for t in texts]
    out, truncated = input_pipeline.pad_to(ids, length, what)
    if truncated:
        logging.warning("%s: %d of %d sequences truncated to %d tokens (first %d kept + EOS)",
                        what, truncated, len(texts), length, length - 1)
    return out


def decode_tokens(vocabulary, tokens: np.ndarray, lengths: Optional[np.ndarray] = None) -> list[str]:
    """Token rows (EOS / padding ends a row) -> texts."""
    texts = []
    for i, row in enumerate(np.asarray(tokens)):
        n = int(lengths[i]) if lengths is not None else len(row)
        row = [int(t) for t in row[:n] if t not in (types.PAD_ID,)]
        if types.EOS_ID in row:
            row = row[: row.index(types.EOS_ID)]
        texts.append(vocabulary.decode(row))
    return texts


def _prompt_texts(records) -> list[str]:
    return [templates.tldr_prompt(r["subreddit"], r["title"], r["post"]) for r in records]


def sft_dataset(
    path: str,
    vocabulary,
    input_len: int = WORLD_INPUT_LEN,
    target_len: int = WORLD_TARGET_LEN,
    max_examples: Optional[int] = None,
    skip_invalid: bool = False,
) -> input_pipeline.ArrayDataset:
    """(prompt, summary) pairs from TL;DR-format JSONL as encoder-decoder features."""
    records, _ = jsonl.read_sft(path, skip_invalid=skip_invalid)
    records = records[:max_examples] if max_examples else records
    inputs = encode_texts(vocabulary, _prompt_texts(records), input_len, f"{path}: prompts")
    targets = encode_texts(vocabulary, [r["summary"] for r in records], target_len, f"{path}: summaries")
    ds = input_pipeline.ArrayDataset(input_pipeline.seq2seq_features(inputs, targets), name=path)
    ds.meta = {"ids": [r["id"] for r in records], "posts": [r["post"] for r in records],
               "summaries": [r["summary"] for r in records]}
    return ds


def prompt_dataset(
    path: str,
    vocabulary,
    input_len: int = WORLD_INPUT_LEN,
    max_examples: Optional[int] = None,
    skip_invalid: bool = False,
) -> input_pipeline.ArrayDataset:
    """Prompts (posts without summaries): feature `prompts` int32 [N, input_len]."""
    records, _ = jsonl.read_prompts(path, skip_invalid=skip_invalid)
    records = records[:max_examples] if max_examples else records
    prompts = encode_texts(vocabulary, _prompt_texts(records), input_len, f"{path}: prompts")
    ds = input_pipeline.ArrayDataset({"prompts": prompts}, name=path)
    ds.meta = {"ids": [r["id"] for r in records], "posts": [r["post"] for r in records]}
    return ds


def _world(data_dir: Optional[str], seed: int):
    from nlhf_jax.data import vocab
    from nlhf_jax.data.world import generator

    config = generator.WorldConfig(seed=seed)
    data_dir = generator.ensure_world(data_dir or generator.default_data_dir(seed), config)
    return data_dir, vocab.world_vocabulary(data_dir)


def world_sft(
    split: str = "train",
    data_dir: Optional[str] = None,
    seed: int = 0,
    max_examples: Optional[int] = None,
    input_len: int = WORLD_INPUT_LEN,
    target_len: int = WORLD_TARGET_LEN,
) -> input_pipeline.ArrayDataset:
    """The embedded world's SFT pairs (generated on first use). Gin-friendly.

    `split` may join several with "+", e.g. "valid+test" (1,000 held-out posts)."""
    from nlhf_jax.data.world import generator

    data_dir, vocabulary = _world(data_dir, seed)
    paths = [generator.split_path(data_dir, "sft", s) for s in split.split("+")]
    return sft_dataset(paths if len(paths) > 1 else paths[0], vocabulary, input_len, target_len,
                       max_examples=max_examples)


def world_prompts(
    split: str = "train",
    data_dir: Optional[str] = None,
    seed: int = 0,
    max_examples: Optional[int] = None,
    input_len: int = WORLD_INPUT_LEN,
) -> input_pipeline.ArrayDataset:
    """The embedded world's prompts (train: fresh posts; valid/test: held-out SFT posts)."""
    from nlhf_jax.data.world import generator

    data_dir, vocabulary = _world(data_dir, seed)
    paths = [generator.split_path(data_dir, "prompts", s) for s in split.split("+")]
    return prompt_dataset(paths if len(paths) > 1 else paths[0], vocabulary, input_len,
                          max_examples=max_examples)
