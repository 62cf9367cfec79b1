"""Tiny models and synthetic inputs for tests, importable by any test module.

Everything here is deterministic and local: no vocabulary files, no downloads.
"""

import dataclasses
import functools
import itertools
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np

from nlhf_jax import types
from nlhf_jax.models import t5


def tiny_t5_config(**overrides) -> t5.T5Config:
    """A T5 v1.1-style config small enough to compile and run in seconds on a CPU.

    Args:
      **overrides: any `T5Config` field.

    Returns:
      2+2 layers, width 32, 4 heads of 8, gated-gelu MLP of 64, vocabulary 64, no dropout.
    """
    config = t5.T5Config(
        vocab_size=64,
        emb_dim=32,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        head_dim=8,
        mlp_dim=64,
        mlp_activations=("gelu", "linear"),
        dropout_rate=0.0,
        logits_via_embedding=False,
    )
    return dataclasses.replace(config, **overrides)


def random_params(model: nn.Module, seed: int = 0) -> types.PyTree:
    """Random float32 parameters for `model`, drawn with numpy (no compilation).

    The tree comes from `jax.eval_shape` of the model's init; values are scaled like a
    real initialisation (kernels ~ N(0, 1/fan_in), norm scales near 1), so activations
    stay O(1). Much faster than running the Flax initialiser on a CPU.

    Args:
      model: an `EncoderDecoder` or `DecoderOnly`.
      seed: numpy seed.

    Returns:
      Nested dict of numpy arrays with the structure of `t5.init_params(model, ...)`.
    """
    abstract = jax.eval_shape(functools.partial(t5.init_params, model), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-2], "key", "")
        normal = rng.standard_normal(leaf.shape).astype(np.float32)
        if name.endswith("norm"):
            return (1.0 + 0.1 * normal).astype(np.float32)
        if name in ("token_embedder", "relpos_bias"):
            return normal
        return normal / np.float32(np.sqrt(leaf.shape[-2]))

    return jax.tree_util.tree_map_with_path(draw, abstract)


def random_tokens(
    seed: int,
    batch: int,
    length: int,
    vocab_size: int,
    min_length: int = 1,
    append_eos: bool = False,
) -> np.ndarray:
    """Right-padded random token ids with per-row lengths.

    Content tokens are drawn from [2, vocab_size) so they are never padding (0) or EOS
    (1); rows are padded with 0 after their length.

    Args:
      seed: numpy seed.
      batch: rows.
      length: padded length L.
      vocab_size: exclusive upper bound of the ids.
      min_length: shortest row (>= 1, so no row is all padding).
      append_eos: end each row with EOS (counted in its length).

    Returns:
      int32 [batch, length]; the first row always has the full length.
    """
    if not 1 <= min_length <= length:
        raise ValueError(f"need 1 <= min_length <= length, got {min_length}, {length}")
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, vocab_size, size=(batch, length), dtype=np.int32)
    lengths = rng.integers(min_length, length + 1, size=batch)
    lengths[0] = length
    positions = np.arange(length)[None, :]
    if append_eos:
        tokens = np.where(positions == lengths[:, None] - 1, types.EOS_ID, tokens)
    return np.where(positions < lengths[:, None], tokens, types.PAD_ID).astype(np.int32)


def all_responses(content: Sequence[int], eos: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Every response a sampler can emit with `max_len` tokens over a vocabulary whose
    non-padding tokens are `content` and `eos`: ended by EOS, or cut at `max_len`.

    For exact enumeration of a tiny policy's expectations (order: by length, then
    lexicographic in `content`, the capped ones last token EOS first).

    Returns:
      (tokens int32 [N, max_len], 0-padded after EOS; lengths int32 [N]).
    """
    seqs = []
    for n in range(1, max_len):
        seqs += [list(p) + [eos] for p in itertools.product(content, repeat=n - 1)]
    seqs += [list(p) + [c] for p in itertools.product(content, repeat=max_len - 1) for c in (eos, *content)]
    tokens = np.zeros((len(seqs), max_len), np.int32)
    for i, seq in enumerate(seqs):
        tokens[i, : len(seq)] = seq
    return tokens, np.array([len(seq) for seq in seqs], np.int32)


def assert_trees_equal(actual: types.PyTree, expected: types.PyTree) -> None:
    """Same structure, and every leaf bitwise equal with the same dtype and shape."""
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    for a, b in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
        np.testing.assert_array_equal(a, b)
