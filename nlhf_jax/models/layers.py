"""Flax linen building blocks of the T5 family (T5 v1.0, v1.1, Flan-T5, decoder-only).

Written from the T5 paper (Raffel et al., 2020) and checked number-for-number against
HuggingFace's PyTorch `T5ForConditionalGeneration` (tests/t5_parity_test.py). The
details that matter for parity with pretrained checkpoints:

* attention logits are NOT scaled by 1/sqrt(d_kv): T5 folds that factor into the
  query initialisation;
* one relative-position bias table per stack, computed once and shared by every layer
  (bidirectional buckets in the encoder, causal in the decoder);
* RMS layer norm without mean subtraction or bias, computed in float32;
* v1.1 feed-forward is gated: gelu_tanh(x W_0) * (x W_1), then W_o.

Every parameter carries logical axis names through `nn.with_logical_partitioning`, so
the mesh layout is decided by `partitioning.default_rules()`, never here.
"""

import functools
import math
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nlhf_jax import types

Array = types.Array
DType = types.DType

# Masked attention logits get this added; finite so that fully-masked rows (which the
# callers never produce) would give a uniform distribution instead of NaN.
_NEG_INF = -1e10


def _truncated_normal_fan_in(scale: float = 1.0):
    return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


def _param(module: nn.Module, name: str, init: Callable, axes: tuple[str, ...], shape: tuple[int, ...]):
    """A parameter of `module`, in its `param_dtype`, whose value carries the logical
    axis names `axes` (the mesh layout is decided by the partitioning rules)."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, module.param_dtype)


class RMSNorm(nn.Module):
    """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale, statistics in float32.

    Attributes:
      epsilon: added to the mean square.
      dtype: output dtype.
      param_dtype: dtype of `scale`.
    """

    epsilon: float = 1e-6
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [..., D] -> [..., D]."""
        scale = _param(self, "scale", nn.initializers.ones, (types.EMBED,), (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.epsilon)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


class Embed(nn.Module):
    """Token embedding table [vocab, embed], also usable as a tied output layer."""

    num_embeddings: int
    features: int
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    def setup(self):
        self.embedding = _param(
            self, "embedding", nn.initializers.normal(stddev=1.0), (types.VOCAB, types.EMBED),
            (self.num_embeddings, self.features),
        )

    def __call__(self, tokens: Array) -> Array:
        """tokens: int [B, L] -> [B, L, D]."""
        table = jnp.asarray(self.embedding, self.dtype)
        return jnp.take(table, tokens, axis=0)

    def attend(self, x: Array) -> Array:
        """x: [B, L, D] -> logits [B, L, V] against the embedding table (tied head)."""
        table = jnp.asarray(self.embedding, self.dtype)
        return jnp.einsum("bld,vd->blv", x, table)


class Dense(nn.Module):
    """A bias-free dense layer whose kernel carries logical axis names."""

    features: int
    kernel_axes: tuple[str, str]
    kernel_init: Callable = _truncated_normal_fan_in()
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [..., D_in] -> [..., features]."""
        kernel = _param(self, "kernel", self.kernel_init, self.kernel_axes, (x.shape[-1], self.features))
        return jnp.einsum("...d,df->...f", x.astype(self.dtype), kernel.astype(self.dtype))


def relative_position_bucket(
    relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """Maps key-minus-query offsets to T5's log-spaced buckets.

    Half of the buckets cover exact small offsets, the rest grow logarithmically up to
    `max_distance`; bidirectional stacks split the buckets between the two signs,
    causal stacks only see non-positive offsets.

    Args:
      relative_position: int array, key position minus query position.
      bidirectional: encoder (True) or causal decoder (False).
      num_buckets: total number of buckets.
      max_distance: offsets at or beyond this share the last bucket.

    Returns:
      int32 array of bucket ids, same shape as `relative_position`.
    """
    buckets = jnp.zeros_like(relative_position)
    n = -relative_position  # query minus key: positive for keys in the past
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # The float path is only used where n >= max_exact > 0, the max() avoids log(0).
    large = max_exact + (
        jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return (buckets + jnp.where(is_small, n, large)).astype(jnp.int32)


class RelativePositionBias(nn.Module):
    """The per-stack relative-position bias table, shared by all layers of a stack."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, query_positions: Array, key_positions: Array) -> Array:
        """Bias for every (query, key) pair.

        Args:
          query_positions: int [Q].
          key_positions: int [K].

        Returns:
          [1, H, Q, K] bias added to the attention logits.
        """
        table = _param(
            self, "rel_embedding", _truncated_normal_fan_in(), (types.RELPOS_BUCKETS, types.HEADS),
            (self.num_buckets, self.num_heads),
        )
        rel = key_positions[None, :] - query_positions[:, None]
        bucket = relative_position_bucket(
            rel, self.bidirectional, self.num_buckets, self.max_distance
        )
        values = jnp.take(jnp.asarray(table, self.dtype), bucket, axis=0)  # [Q, K, H]
        return jnp.transpose(values, (2, 0, 1))[None]


class MultiHeadAttention(nn.Module):
    """T5 multi-head attention (no logit scaling, no biases), with decode caches.

    Decode mode (`decode=True`) keeps its keys and values in the `cache` collection:
    self-attention writes the call's Q positions at `decode_index` onwards (Q = 1 for
    a generation step, the whole prompt for a one-pass prefill); cross-attention
    projects the encoder output once, when the cache is created, and reuses it for
    every generated token.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    def _proj(self, name: str, features: int, axes, stddev_scale: float):
        return Dense(
            features,
            kernel_axes=axes,
            kernel_init=_truncated_normal_fan_in(stddev_scale),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Optional[Array],
        mask: Optional[Array],
        bias: Optional[Array],
        *,
        deterministic: bool,
        decode: bool = False,
        cross: bool = False,
        decode_index: Optional[Array] = None,
        cache_len: int = 0,
    ) -> Array:
        """Attention of `inputs_q` over `inputs_kv`.

        Args:
          inputs_q: [B, Q, D].
          inputs_kv: [B, K, D]; may be None for cross-attention once its cache exists.
          mask: bool, broadcastable to [B, H, Q, K]; True where attention is allowed.
          bias: broadcastable to [B, H, Q, K]; the relative position bias or None.
          deterministic: disables dropout.
          decode: use and update the `cache` collection.
          cross: this is encoder-decoder attention (its cache is filled once).
          decode_index: int scalar, the first position written by a self-attention
            decode call (its Q positions go to decode_index, ..., decode_index + Q - 1).
          cache_len: length of the self-attention cache, used when it is created.

        Returns:
          [B, Q, D].
        """
        inner = self.num_heads * self.head_dim
        d_model = inputs_q.shape[-1]
        ax_in = (types.EMBED, types.JOINED_KV)
        # Folding 1/sqrt(head_dim) into the query init is T5's convention (no scaling
        # of logits); keeps pretrained checkpoints exact.
        query = self._proj("query", inner, ax_in, 1.0 / self.head_dim)
        key = self._proj("key", inner, ax_in, 1.0)
        value = self._proj("value", inner, ax_in, 1.0)
        out = self._proj("out", d_model, (types.JOINED_KV, types.EMBED), 1.0)

        q = self._split_heads(query(inputs_q))
        if decode and cross:
            k, v = self._cross_cache(key, value, inputs_kv)
        elif decode:
            k, v = self._self_cache(key(inputs_kv), value(inputs_kv), decode_index, cache_len)
        else:
            k = self._split_heads(key(inputs_kv))
            v = self._split_heads(value(inputs_kv))

        q = nn.with_logical_constraint(q, (types.ACT_BATCH, types.ACT_LENGTH, types.ACT_HEADS, types.ACT_KV))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        if bias is not None:
            logits = logits + bias.astype(jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, _NEG_INF)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        if not deterministic and self.dropout_rate > 0:
            weights = nn.Dropout(rate=self.dropout_rate)(weights, deterministic=False)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        ctx = ctx.reshape(ctx.shape[:2] + (inner,))
        return out(ctx)

    def _split_heads(self, x: Array) -> Array:
        """[B, L, H*Dh] -> [B, L, H, Dh]."""
        return x.reshape(x.shape[:2] + (self.num_heads, self.head_dim))

    def _cross_cache(self, key: nn.Module, value: nn.Module, inputs_kv: Optional[Array]):
        """Cross-attention keys and values: projected from the encoder output on the
        cache-initialising call only, then read from the cache."""
        k_var = self.variable("cache", "cached_key", lambda: self._split_heads(key(inputs_kv)))
        v_var = self.variable("cache", "cached_value", lambda: self._split_heads(value(inputs_kv)))
        return k_var.value, v_var.value

    def _self_cache(self, k_new: Array, v_new: Array, decode_index: Array, cache_len: int):
        """Self-attention keys and values of all positions so far, from a fixed-size
        cache [B, cache_len, H, Dh].

        Every call writes the keys/values of its Q positions at `decode_index`
        onwards. The call that creates the cache either writes position 0 only, which
        the first real step then overwrites (see `nlhf_jax.decoding.init_cache`), or
        the whole prompt at once (`nlhf_jax.decoding.init_decoder_only_cache`).
        """
        k_new, v_new = self._split_heads(k_new), self._split_heads(v_new)
        if not self.has_variable("cache", "cached_key") and not cache_len:
            raise ValueError("creating a decode cache needs cache_len > 0")
        shape = (k_new.shape[0], cache_len) + k_new.shape[2:]
        k_var = self.variable("cache", "cached_key", jnp.zeros, shape, k_new.dtype)
        v_var = self.variable("cache", "cached_value", jnp.zeros, shape, v_new.dtype)
        if k_new.shape[1] > k_var.value.shape[1]:
            raise ValueError(
                f"a decode call of {k_new.shape[1]} positions exceeds the cache of "
                f"{k_var.value.shape[1]}"
            )
        zero = jnp.zeros((), jnp.int32)
        idx = (zero, decode_index.astype(jnp.int32), zero, zero)
        k_var.value = jax.lax.dynamic_update_slice(k_var.value, k_new, idx)
        v_var.value = jax.lax.dynamic_update_slice(v_var.value, v_new, idx)
        return k_var.value, v_var.value


class MlpBlock(nn.Module):
    """T5 feed-forward: ReLU (v1.0) or gated activations (v1.1: ('gelu', 'linear'))."""

    mlp_dim: int
    activations: Sequence[str] = ("relu",)
    dropout_rate: float = 0.0
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        """x: [B, L, D] -> [B, L, D]."""
        d_model = x.shape[-1]
        hidden = None
        for i, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            h = Dense(
                self.mlp_dim, (types.EMBED, types.MLP), dtype=self.dtype,
                param_dtype=self.param_dtype, name=name,
            )(x)
            h = _activation(act)(h)
            hidden = h if hidden is None else hidden * h
        hidden = nn.with_logical_constraint(hidden, (types.ACT_BATCH, types.ACT_LENGTH, types.ACT_MLP))
        hidden = nn.Dropout(rate=self.dropout_rate)(hidden, deterministic=deterministic)
        return Dense(
            d_model, (types.MLP, types.EMBED), dtype=self.dtype,
            param_dtype=self.param_dtype, name="wo",
        )(hidden)


def _activation(name: str) -> Callable[[Array], Array]:
    table = {
        "relu": jax.nn.relu,
        # HF "gelu_new" / T5X "gelu" are the tanh approximation.
        "gelu": functools.partial(jax.nn.gelu, approximate=True),
        "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
        "silu": jax.nn.silu,
        "linear": lambda x: x,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(table)}")
    return table[name]
