"""T5 networks: the encoder-decoder (policy, reference, preference and reward models)
and a decoder-only variant built from the same blocks.

Public calling convention, relied upon by every other module and by outside scripts:

    logits = EncoderDecoder(config).apply(
        {"params": params}, encoder_input_tokens, decoder_input_tokens,
        enable_dropout=False)          # [batch, target_len, vocab], float32

Token 0 is padding and also the decoder start token (as in T5); the encoder masks
padding, the decoder is causal only (positions after the end are padding and are
ignored by the losses).

Options that matter at scale: `dtype` (compute; bfloat16 on TPU/GPU) vs `param_dtype`
(float32), `remat_policy` to trade compute for memory, and `scan_layers` to compile one
layer instead of N (parameters then carry a leading `layers` axis).
"""

import dataclasses
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nlhf_jax import types
from nlhf_jax.models import layers

Array = types.Array

_REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Architecture of a T5-family model (HF `T5Config` names in brackets).

    Attributes:
      vocab_size: [vocab_size] rows of the embedding table.
      emb_dim: [d_model] width of the residual stream.
      num_heads: [num_heads].
      num_encoder_layers: [num_layers].
      num_decoder_layers: [num_decoder_layers]; the decoder-only model uses this.
      head_dim: [d_kv]; num_heads * head_dim need not equal emb_dim.
      mlp_dim: [d_ff].
      mlp_activations: ("relu",) for T5 v1.0, ("gelu", "linear") for v1.1 / Flan-T5
        (the gated form [feed_forward_proj="gated-gelu"]).
      dropout_rate: [dropout_rate].
      logits_via_embedding: [tie_word_embeddings] output layer tied to the embedding,
        with the d_model**-0.5 scaling of T5 v1.0.
      relative_attention_num_buckets, relative_attention_max_distance: bucketing.
      layer_norm_epsilon: [layer_norm_epsilon].
      dtype: compute dtype (activations); float32 on CPU, bfloat16 on accelerators.
      param_dtype: storage dtype of parameters.
      remat_policy: "none", "full" or "dots" (what each layer keeps for backward).
      scan_layers: run the layers with `nn.scan` (one compiled layer; parameters
        stacked along a leading `layers` axis).
    """

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 6
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    head_dim: int = 64
    mlp_dim: int = 1024
    mlp_activations: Sequence[str] = ("gelu", "linear")
    dropout_rate: float = 0.0
    logits_via_embedding: bool = False
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        # Gin passes lists; keep the dataclass hashable.
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        if self.remat_policy not in _REMAT_POLICIES:
            raise ValueError(
                f"T5Config.remat_policy={self.remat_policy!r}; expected one of "
                f"{sorted(_REMAT_POLICIES)}"
            )
        for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}")

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def storage_dtype(self):
        return jnp.dtype(self.param_dtype)


def _constrain(x: Array) -> Array:
    return nn.with_logical_constraint(x, (types.ACT_BATCH, types.ACT_LENGTH, types.ACT_EMBED))


class _LayerSettings(nn.Module):
    """What a layer is built with, and so also a stack of them (`_Layer`, `_Stack`).

    Carries `deterministic`, `decode` and `cache_len` as attributes (not call
    arguments) so the layer can be scanned and rematerialised without static args.
    """

    config: T5Config
    has_cross: bool
    deterministic: bool
    decode: bool = False
    cache_len: int = 0

    def layer_settings(self) -> dict:
        """These attributes by name, to build a `_Layer` with."""
        return dict(config=self.config, has_cross=self.has_cross, deterministic=self.deterministic,
                    decode=self.decode, cache_len=self.cache_len)  # fmt: skip


class _Layer(_LayerSettings):
    """One pre-norm T5 layer: self-attention, [cross-attention], feed-forward."""

    @nn.compact
    def __call__(self, x, self_mask, self_bias, encoded, cross_mask, decode_index):
        """x: [B, L, D] -> ([B, L, D], None); returns a scan-compatible carry."""
        cfg = self.config
        common = dict(dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype)
        norm = lambda name: layers.RMSNorm(cfg.layer_norm_epsilon, name=name, **common)  # noqa: E731
        drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)  # noqa: E731
        attn = lambda name: layers.MultiHeadAttention(  # noqa: E731
            cfg.num_heads, cfg.head_dim, cfg.dropout_rate, name=name, **common
        )

        h = norm("pre_self_attention_layer_norm")(x)
        h = attn("self_attention")(
            h, h, self_mask, self_bias, deterministic=self.deterministic,
            decode=self.decode, decode_index=decode_index, cache_len=self.cache_len,
        )
        x = _constrain(x + drop(h))
        if self.has_cross:
            h = norm("pre_cross_attention_layer_norm")(x)
            h = attn("encoder_decoder_attention")(
                h, encoded, cross_mask, None, deterministic=self.deterministic,
                decode=self.decode, cross=True,
            )
            x = _constrain(x + drop(h))
        h = norm("pre_mlp_layer_norm")(x)
        h = layers.MlpBlock(
            cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, name="mlp", **common
        )(h, deterministic=self.deterministic)
        x = _constrain(x + drop(h))
        return x, None


class _Stack(_LayerSettings):
    """A stack of `num_layers` identical layers, plain, rematerialised and/or scanned."""

    num_layers: int = 1

    @nn.compact
    def __call__(self, x, self_mask, self_bias, encoded, cross_mask, decode_index):
        """As `_Layer.__call__`, through every layer; returns x only."""
        cfg = self.config
        layer_cls = _Layer
        policy = _REMAT_POLICIES[cfg.remat_policy]
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(layer_cls, policy=policy, prevent_cse=not cfg.scan_layers)
        kwargs = self.layer_settings()
        args = (self_mask, self_bias, encoded, cross_mask, decode_index)
        if cfg.scan_layers:
            scanned = nn.scan(
                layer_cls,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * len(args),
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: types.LAYERS},
            )
            x, _ = scanned(name="layers", **kwargs)(x, *args)
        else:
            for i in range(self.num_layers):
                x, _ = layer_cls(name=f"layers_{i}", **kwargs)(x, *args)
        return x


def _encoder_mask(encoder_input_tokens: Array) -> Array:
    """[B, K] tokens -> bool [B, 1, 1, K], True on non-padding keys."""
    return (encoder_input_tokens != types.PAD_ID)[:, None, None, :]


class Encoder(nn.Module):
    """Bidirectional T5 encoder (embedding is owned by the parent and passed in)."""

    config: T5Config

    @nn.compact
    def __call__(self, embedded: Array, encoder_input_tokens: Array, *, deterministic: bool) -> Array:
        """embedded: [B, K, D]; encoder_input_tokens: int [B, K] -> [B, K, D]."""
        cfg = self.config
        length = embedded.shape[1]
        pos = jnp.arange(length)
        bias = layers.RelativePositionBias(
            cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
            cfg.num_heads, bidirectional=True, dtype=cfg.compute_dtype,
            param_dtype=cfg.storage_dtype, name="relpos_bias",
        )(pos, pos)
        mask = _encoder_mask(encoder_input_tokens)
        x = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
        x = _constrain(x)
        x = _Stack(cfg, has_cross=False, deterministic=deterministic,
                   num_layers=cfg.num_encoder_layers, name="stack")(x, mask, bias, None, None, None)
        x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, cfg.storage_dtype,
                           name="encoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
    """Causal T5 decoder, with optional cross-attention and a decode-mode cache.

    In decode mode every call consumes L tokens per row (L = 1 for a generation step,
    the prompt for a one-pass prefill) and the decoder keeps a `cache/index` (the
    next position to write) and a `cache/key_mask` (bool [B, cache_len], False at
    keys no later query may attend to, e.g. a left-padded prompt's padding). The call
    that creates the cache passes `max_decode_len`; `nlhf_jax.decoding.init_cache`
    then resets the index.

    Relative position biases depend only on key - query offsets, so a left-padded row
    whose padding keys are masked out gets the same logits as the unpadded row.
    """

    config: T5Config
    has_cross: bool = True

    @nn.compact
    def __call__(
        self,
        embedded: Array,
        encoded: Optional[Array],
        encoder_input_tokens: Optional[Array],
        *,
        deterministic: bool,
        decode: bool = False,
        max_decode_len: int = 0,
        input_mask: Optional[Array] = None,
    ) -> Array:
        """embedded: [B, L, D] -> hidden [B, L, D] (after the final norm and dropout).

        In decode mode the L positions are written at `cache/index` onwards;
        `max_decode_len` sizes the cache on the creating call. `input_mask` (bool
        [B, L], default all True) marks the positions that later queries may attend
        to; outputs at masked positions are meaningless.
        """
        cfg = self.config
        relpos = layers.RelativePositionBias(
            cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
            cfg.num_heads, bidirectional=False, dtype=cfg.compute_dtype,
            param_dtype=cfg.storage_dtype, name="relpos_bias",
        )
        cross_mask = (
            _encoder_mask(encoder_input_tokens)
            if self.has_cross and encoder_input_tokens is not None
            else None
        )
        decode_index = None
        batch, length = embedded.shape[:2]
        if decode:
            # `cache/index` is the first position this call writes.
            if not self.has_variable("cache", "index") and not max_decode_len:
                raise ValueError("the cache-creating decode call needs max_decode_len")
            index_var = self.variable("cache", "index", jnp.zeros, (), jnp.int32)
            decode_index = index_var.value
            cache_len = max_decode_len or self._cache_length()
            if length > cache_len:
                raise ValueError(f"a decode call of {length} positions exceeds the cache of {cache_len}")
            keys = jnp.arange(cache_len)
            queries = decode_index + jnp.arange(length)
            bias = relpos(queries, keys)
            key_mask_var = self.variable("cache", "key_mask", jnp.ones, (batch, cache_len), bool)
            if input_mask is not None:
                key_mask_var.value = jax.lax.dynamic_update_slice(
                    key_mask_var.value, input_mask.astype(bool), (jnp.zeros((), jnp.int32), decode_index)
                )
            key_mask = key_mask_var.value
            self_mask = (keys[None, :] <= queries[:, None])[None, None] & key_mask[:, None, None, :]
            index_var.value = decode_index + length
        else:
            cache_len = 0
            pos = jnp.arange(length)
            bias = relpos(pos, pos)
            self_mask = (pos[None, :] <= pos[:, None])[None, None]
            if input_mask is not None:
                self_mask = self_mask & input_mask.astype(bool)[:, None, None, :]
        x = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
        x = _constrain(x)
        x = _Stack(cfg, has_cross=self.has_cross, deterministic=deterministic, decode=decode,
                   cache_len=cache_len, num_layers=cfg.num_decoder_layers, name="stack")(
            x, self_mask, bias, encoded, cross_mask, decode_index)
        x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, cfg.storage_dtype,
                           name="decoder_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

    def _cache_length(self) -> int:
        cache = self.variables["cache"]["stack"]
        if self.config.scan_layers:
            return cache["layers"]["self_attention"]["cached_key"].shape[2]
        return cache["layers_0"]["self_attention"]["cached_key"].shape[1]


class _Head(nn.Module):
    """Output layer: tied (v1.0, scaled by d_model**-0.5) or a separate lm_head."""

    config: T5Config

    @nn.compact
    def __call__(self, hidden: Array, embedder: layers.Embed) -> Array:
        cfg = self.config
        if cfg.logits_via_embedding:
            logits = embedder.attend(hidden * (cfg.emb_dim**-0.5))
        else:
            logits = layers.Dense(
                cfg.vocab_size, (types.EMBED, types.VOCAB), dtype=cfg.compute_dtype,
                param_dtype=cfg.storage_dtype, name="logits_dense",
            )(hidden)
        logits = logits.astype(jnp.float32)
        return nn.with_logical_constraint(logits, (types.ACT_BATCH, types.ACT_LENGTH, types.ACT_VOCAB))


class EncoderDecoder(nn.Module):
    """The T5 encoder-decoder."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = layers.Embed(
            cfg.vocab_size, cfg.emb_dim, cfg.compute_dtype, cfg.storage_dtype
        )
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, has_cross=True)
        self.head = _Head(cfg)

    def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False) -> Array:
        """encoder_input_tokens: int [B, K] -> encoded [B, K, D]."""
        return self.encoder(
            self.token_embedder(encoder_input_tokens), encoder_input_tokens,
            deterministic=not enable_dropout,
        )

    def decode(
        self,
        encoded: Optional[Array],
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        enable_dropout: bool = False,
        decode: bool = False,
        max_decode_len: int = 0,
    ) -> Array:
        """Decoder logits.

        Args:
          encoded: [B, K, D] from `encode`; may be None on decode steps once the
            cross-attention cache exists.
          encoder_input_tokens: int [B, K], for the padding mask.
          decoder_input_tokens: int [B, L] (shifted right, starting with 0); [B, 1]
            on decode steps.
          enable_dropout: training mode.
          decode: use the cache collection (see `nlhf_jax.decoding`).
          max_decode_len: cache length, given on the cache-creating decode call.

        Returns:
          float32 logits [B, L, V].
        """
        hidden = self.decoder(
            self.token_embedder(decoder_input_tokens), encoded, encoder_input_tokens,
            deterministic=not enable_dropout, decode=decode, max_decode_len=max_decode_len,
        )
        return self.head(hidden, self.token_embedder)

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        enable_dropout: bool = False,
    ) -> Array:
        """Teacher-forced logits [B, L, V] for inputs [B, K] and decoder inputs [B, L]."""
        encoded = self.encode(encoder_input_tokens, enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, enable_dropout)


class DecoderOnly(nn.Module):
    """A causal language model from the same blocks (no cross-attention).

    Used to compare against decoder-only peers on equal dimensions; the prompt and the
    response share one causal sequence.
    """

    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = layers.Embed(
            cfg.vocab_size, cfg.emb_dim, cfg.compute_dtype, cfg.storage_dtype
        )
        self.decoder = Decoder(cfg, has_cross=False)
        self.head = _Head(cfg)

    def __call__(
        self,
        tokens: Array,
        enable_dropout: bool = False,
        decode: bool = False,
        max_decode_len: int = 0,
        input_mask: Optional[Array] = None,
        logits_from: int = 0,
    ) -> Array:
        """tokens: int [B, L] -> float32 logits [B, L - logits_from, V] (next-token
        prediction at positions logits_from .. L - 1).

        `input_mask` (bool [B, L]) hides positions from every query, e.g. the padding
        of left-padded prompts (see `Decoder`); default: every position is visible.
        In decode mode (see `nlhf_jax.decoding.init_decoder_only_cache`) L may be 1
        (a generation step) or the whole prompt (a one-pass prefill).
        `logits_from` (static) skips the output head on the first positions: scoring a
        response after a K-token prompt needs logits from K - 1 on, and at T5's 32k
        vocabulary the head is the largest matmul of a small model, so computing it on
        the prompt too would triple its cost, backward included.
        """
        hidden = self.decoder(
            self.token_embedder(tokens), None, None,
            deterministic=not enable_dropout, decode=decode, max_decode_len=max_decode_len,
            input_mask=input_mask,
        )
        return self.head(hidden[:, logits_from:], self.token_embedder)


def init_params(model: nn.Module, rng: types.PRNGKey, input_len: int = 8, target_len: int = 8):
    """Unboxed float params of `model` (unsharded; for tests and small models only).

    Large models go through `partitioning.sharded_init`, which never materialises
    unsharded parameters.
    """
    return nn.unbox(init_variables(model, rng, input_len, target_len)["params"])


def init_variables(model: nn.Module, rng: types.PRNGKey, input_len: int = 8, target_len: int = 8):
    """Boxed (logically annotated) variables of `model` from dummy inputs."""
    if isinstance(model, DecoderOnly):
        return model.init(rng, jnp.ones((1, target_len), jnp.int32))
    return model.init(
        rng, jnp.ones((1, input_len), jnp.int32), jnp.ones((1, target_len), jnp.int32)
    )
