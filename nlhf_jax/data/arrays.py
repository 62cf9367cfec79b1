"""World and JSONL data as step-indexed `ArrayDataset`s for the training loops.

seqio tasks (`tasks.py`) are the interface for users' own pipelines; the training
loops read fixed-length arrays (exact resumption, multi-host slicing), built here from
the same records and templates. Non-array metadata (post ids and texts, which the
judges need) ride along in `ArrayDataset.meta`.
"""

import logging
from typing import Any, Optional, Sequence

import numpy as np

from nlhf_jax.data import input_pipeline
from nlhf_jax import types
from nlhf_jax.data import jsonl
from nlhf_jax.data import templates

# World prompts take at most 80 tokens and summaries at most 28 (EOS included), so
# these lengths never truncate world data; real data are truncated by `pad_to`'s
# documented rule and counted.
WORLD_INPUT_LEN = 96
WORLD_TARGET_LEN = 32
IdRows = Any  # int array [B, L] or a list of id lists; EOS ends a row, 0 pads


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


def decode_tokens(vocabulary, tokens: IdRows, lengths: Optional[np.ndarray] = None) -> list[str]:
    """Token rows -> texts: the project's one decoding helper.

    Each row is cut to its length (when `lengths` is given), then at its first EOS,
    with padding dropped (`strip_ids`), and decoded.

    Args:
      vocabulary: anything with ``decode(ids) -> str``: a seqio vocabulary, or a
        `pairwise.Tokenizer` (a SentencePiece model without seqio).
      tokens: int array [B, L], or a list of id lists (of any lengths).
      lengths: int [B], or None (whole rows).
    """
    rows = tokens if isinstance(tokens, (list, tuple)) else np.asarray(tokens)
    if lengths is not None:
        rows = [row[: int(lengths[i])] for i, row in enumerate(rows)]
    return [vocabulary.decode(strip_ids(row)) for row in rows]


def strip_ids(row: Sequence[int]) -> list[int]:
    """Token ids up to the first EOS, padding removed."""
    out = []
    for t in row:
        t = int(t)
        if t == types.EOS_ID:
            break
        if t != types.PAD_ID:
            out.append(t)
    return out


def _read(read_fn, path, max_examples: Optional[int], skip_invalid: bool) -> list[dict]:
    """The first `max_examples` records (all if None or 0) of a `jsonl` reader."""
    records, _ = read_fn(path, skip_invalid=skip_invalid)
    return records[:max_examples] if max_examples else records


def _encoded_prompts(vocabulary, records, input_len: int, path) -> np.ndarray:
    """The records' TL;DR prompts as int32 [N, input_len]."""
    texts = [templates.post_prompt(r) for r in records]
    return encode_texts(vocabulary, texts, input_len, f"{path}: prompts")


def _post_meta(records) -> dict[str, list]:
    """The metadata every dataset of posts carries: post ids, the post bodies (what the
    world's parser reads) and the prompts (`templates.post_prompt`: what every judge
    is given, as the PM and RM were trained on)."""
    return {"ids": [r["id"] for r in records], "posts": [r["post"] for r in records],
            "prompts": [templates.post_prompt(r) for r in records]}


def sft_dataset(
    path: str,
    vocabulary,
    input_len: int = WORLD_INPUT_LEN,
    target_len: int = WORLD_TARGET_LEN,
    max_examples: Optional[int] = None,
    skip_invalid: bool = False,
) -> input_pipeline.ArrayDataset:
    """(prompt, summary) pairs from TL;DR-format JSONL as encoder-decoder features."""
    records = _read(jsonl.read_sft, path, max_examples, skip_invalid)
    inputs = _encoded_prompts(vocabulary, records, input_len, path)
    targets = encode_texts(vocabulary, [r["summary"] for r in records], target_len, f"{path}: summaries")
    ds = input_pipeline.ArrayDataset(input_pipeline.seq2seq_features(inputs, targets), name=path)
    ds.meta = _post_meta(records) | {"summaries": [r["summary"] for r in records]}
    return ds


def prompt_dataset(
    path: str,
    vocabulary,
    input_len: int = WORLD_INPUT_LEN,
    max_examples: Optional[int] = None,
    skip_invalid: bool = False,
) -> input_pipeline.ArrayDataset:
    """Prompts (posts without summaries): feature `prompts` int32 [N, input_len]."""
    records = _read(jsonl.read_prompts, path, max_examples, skip_invalid)
    ds = input_pipeline.ArrayDataset(
        {"prompts": _encoded_prompts(vocabulary, records, input_len, path)}, name=path
    )
    ds.meta = _post_meta(records)
    return ds


def _world(kind: str, split: str, data_dir: Optional[str], seed: int):
    """(path or paths of the world's `kind` files of `split`, "+"-joined splits
    allowed; the world's vocabulary), generating the world on first use."""
    from nlhf_jax.data import vocab
    from nlhf_jax.data.world import generator

    data_dir = generator.world_dir(data_dir, seed)
    paths = [generator.split_path(data_dir, kind, s) for s in split.split("+")]
    return paths if len(paths) > 1 else paths[0], vocab.world_vocabulary(data_dir)


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
    path, vocabulary = _world("sft", split, data_dir, seed)
    return sft_dataset(path, vocabulary, input_len, target_len, max_examples=max_examples)


def world_prompts(
    split: str = "train",
    data_dir: Optional[str] = None,
    seed: int = 0,
    max_examples: Optional[int] = None,
    input_len: int = WORLD_INPUT_LEN,
) -> input_pipeline.ArrayDataset:
    """The embedded world's prompts (train: fresh posts; valid/test: held-out SFT posts)."""
    path, vocabulary = _world("prompts", split, data_dir, seed)
    return prompt_dataset(path, vocabulary, input_len, max_examples=max_examples)
