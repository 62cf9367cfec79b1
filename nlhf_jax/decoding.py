"""Cached autoregressive sampling driven by a `tokens_to_logits` callable.

One jitted loop (`lax.while_loop`) generates every sequence of a batch: the encoder
runs once (in `init_cache`), then the decoder consumes one token per step and reads
its keys and values from the cache. Because the model is reached only through
`tokens_to_logits(tokens, state) -> (logits, state)`, a geometric mixture of two
models (Nash-MD-PG's alternative policy) is a wrapper around two such callables that
carries both caches, not a second decoder.

The returned log-probabilities are those of the distribution each token was actually
drawn from (temperature and top-k applied, renormalised), which is what an on-policy
gradient needs.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from nlhf_jax import types

Array = types.Array
PyTree = types.PyTree

# Log-probability given to excluded tokens (padding, outside the top-k). Finite, so a
# geometric mixture (1 - beta) * a + beta * b never computes 0 * inf; exp() of it is 0.
MASKED_LOGIT = -1e30


class TokensToLogits(Protocol):
    """(tokens int [B, 1], state) -> (logits float [B, V], new state)."""

    def __call__(self, tokens: Array, state: PyTree) -> tuple[Array, PyTree]:
        ...


@flax.struct.dataclass
class DecodeOutput:
    """Result of `sample`.

    Attributes:
      tokens: int32 [B, L]; the generated tokens, EOS included, 0 (padding) after it.
      logprobs: float32 [B, L]; log-probability of each token under the distribution
        it was sampled from (0 at padding).
      lengths: int32 [B]; number of generated tokens, EOS included.
      state: the final state of `tokens_to_logits` (e.g. the KV caches).
    """

    tokens: Array
    logprobs: Array
    lengths: Array
    state: Any = None


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to turn logits into a token.

    Attributes:
      temperature: logits are divided by it before sampling; must be > 0 unless greedy.
      top_k: keep the k most likely tokens (0 = all).
      greedy: take the argmax; returned log-probs are then those of the model's
        untempered distribution.
      max_decode_len: number of decoder steps at most.
      eos_id: the token that ends a sequence.
      forbid_pad: never emit token 0 (padding and decoder start), so a sampled
        sequence is exactly its first `length` tokens; log-probs are renormalised
        accordingly. Off only to compare with decoders that allow it (HF generate).
    """

    temperature: float = 1.0
    top_k: int = 0
    greedy: bool = False
    max_decode_len: int = 32
    eos_id: int = types.EOS_ID
    forbid_pad: bool = True

    def __post_init__(self):
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_decode_len <= 0:
            raise ValueError(f"max_decode_len must be positive, got {self.max_decode_len}")


def sampling_logprobs(logits: Array, cfg: SamplingConfig) -> Array:
    """Normalised log-probs of the distribution sampled from.

    Args:
      logits: float [..., V].
      cfg: temperature and top-k.

    Returns:
      float32 [..., V]; about MASKED_LOGIT (-1e30) outside the top-k and at padding.
    """
    logits = logits.astype(jnp.float32)
    if cfg.forbid_pad:
        logits = logits.at[..., types.PAD_ID].set(MASKED_LOGIT)
    if cfg.greedy:
        return jax.nn.log_softmax(logits, axis=-1)
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = jax.lax.top_k(logits, cfg.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, MASKED_LOGIT, logits)
    return jax.nn.log_softmax(logits, axis=-1)


def _choose(logps: Array, keys: Array, cfg: SamplingConfig) -> Array:
    """logps [B, V], per-row keys [B] -> tokens int32 [B]."""
    if cfg.greedy:
        return jnp.argmax(logps, axis=-1).astype(jnp.int32)
    return jax.vmap(jax.random.categorical)(keys, logps).astype(jnp.int32)


def sample(
    tokens_to_logits: TokensToLogits,
    state: PyTree,
    rngs: Array,
    cfg: SamplingConfig,
    *,
    logits_to_logprobs: Optional[Callable[[Array], Array]] = None,
) -> DecodeOutput:
    """Samples one sequence per row with a cached decoder.

    Row b's token at step t is drawn with `fold_in(rngs[b], t)`, so a row's sample
    depends only on its own key (and the model), not on the rest of the batch.

    Args:
      tokens_to_logits: one decoder step (see `TokensToLogits`).
      state: its initial state (e.g. from `init_cache`).
      rngs: per-row PRNG keys [B] (typed keys or raw uint32 [B, 2]).
      cfg: sampling settings.
      logits_to_logprobs: overrides `sampling_logprobs(., cfg)`, e.g. for a mixture
        that has already normalised its logits.

    Returns:
      DecodeOutput with tokens/logprobs [B, cfg.max_decode_len] and lengths [B].
    """
    batch = rngs.shape[0]
    length = cfg.max_decode_len
    to_logps = logits_to_logprobs or functools.partial(sampling_logprobs, cfg=cfg)

    def cond(carry):
        step, _, _, _, _, done, _ = carry
        return jnp.logical_and(step < length, ~jnp.all(done))

    def body(carry):
        step, prev, out_tokens, out_logps, lengths, done, st = carry
        logits, st = tokens_to_logits(prev[:, None], st)
        logps = to_logps(logits.reshape(batch, -1))
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(rngs, step)
        tok = _choose(logps, keys, cfg)
        lp = jnp.take_along_axis(logps, tok[:, None], axis=-1)[:, 0]
        tok = jnp.where(done, types.PAD_ID, tok)
        lp = jnp.where(done, 0.0, lp)
        out_tokens = jax.lax.dynamic_update_slice(out_tokens, tok[:, None], (0, step))
        out_logps = jax.lax.dynamic_update_slice(out_logps, lp[:, None], (0, step))
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | (tok == cfg.eos_id)
        return step + 1, tok, out_tokens, out_logps, lengths, done, st

    init = (
        jnp.zeros((), jnp.int32),
        jnp.full((batch,), types.PAD_ID, jnp.int32),  # T5's decoder start token
        jnp.zeros((batch, length), jnp.int32),
        jnp.zeros((batch, length), jnp.float32),
        jnp.zeros((batch,), jnp.int32),
        jnp.zeros((batch,), bool),
        state,
    )
    _, _, tokens, logps, lengths, _, state = jax.lax.while_loop(cond, body, init)
    return DecodeOutput(tokens=tokens, logprobs=logps, lengths=lengths, state=state)


def init_cache(
    model: nn.Module, params: PyTree, encoder_input_tokens: Array, max_decode_len: int
) -> PyTree:
    """Runs the encoder once and builds the decoder's cache (self and cross attention).

    Args:
      model: an `EncoderDecoder`.
      params: its parameters.
      encoder_input_tokens: int [B, K].
      max_decode_len: the number of positions the self-attention cache holds.

    Returns:
      The `cache` collection, index reset to 0 (the creating call's position-0 write
      is overwritten by the first real step).
    """
    batch = encoder_input_tokens.shape[0]
    encoded = model.apply({"params": params}, encoder_input_tokens, method=model.encode)
    _, variables = model.apply(
        {"params": params}, encoded, encoder_input_tokens,
        jnp.zeros((batch, 1), jnp.int32), decode=True, max_decode_len=max_decode_len,
        mutable=["cache"], method=model.decode,
    )
    cache = flax.core.unfreeze(variables["cache"])
    cache["decoder"]["index"] = jnp.zeros((), jnp.int32)
    return cache


def model_tokens_to_logits(
    model: nn.Module, params: PyTree, encoder_input_tokens: Array
) -> TokensToLogits:
    """The decode step of an `EncoderDecoder` as a `tokens_to_logits` callable.

    The state is the model's `cache` collection.
    """

    def fn(tokens: Array, cache: PyTree) -> tuple[Array, PyTree]:
        logits, variables = model.apply(
            {"params": params, "cache": cache}, None, encoder_input_tokens, tokens,
            decode=True, mutable=["cache"], method=model.decode,
        )
        return logits[:, 0], variables["cache"]

    return fn


def generate(
    model: nn.Module,
    params: PyTree,
    encoder_input_tokens: Array,
    rngs: Array,
    cfg: SamplingConfig,
) -> DecodeOutput:
    """Samples from an `EncoderDecoder` (jit it with `cfg` bound as a static).

    Args:
      model: the network.
      params: its parameters.
      encoder_input_tokens: int [B, K].
      rngs: per-row keys [B].
      cfg: sampling settings.

    Returns:
      DecodeOutput (its `state` is dropped to keep outputs small).
    """
    cache = init_cache(model, params, encoder_input_tokens, cfg.max_decode_len)
    step_fn = model_tokens_to_logits(model, params, encoder_input_tokens)
    out = sample(step_fn, cache, rngs, cfg)
    return out.replace(state=None)


def teacher_forced_logprobs(
    model: nn.Module,
    params: PyTree,
    encoder_input_tokens: Array,
    targets: Array,
    lengths: Optional[Array] = None,
    cfg: Optional[SamplingConfig] = None,
) -> Array:
    """Per-token log-probs of `targets` under a full (uncached) forward pass.

    Args:
      model: an `EncoderDecoder`.
      params: its parameters.
      encoder_input_tokens: int [B, K].
      targets: int [B, L], 0 after the end.
      lengths: int [B]; positions >= length are padding. Default: targets != 0.
      cfg: if given, the log-probs are those of the sampling distribution (temperature
        and top-k); otherwise of the model's own distribution.

    Returns:
      float32 [B, L], 0 at padding.
    """
    decoder_inputs = shift_right(targets)
    logits = model.apply({"params": params}, encoder_input_tokens, decoder_inputs)
    if cfg is None:
        logps = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    else:
        logps = sampling_logprobs(logits, cfg)
    tok_lp = jnp.take_along_axis(logps, targets[..., None], axis=-1)[..., 0]
    if lengths is None:
        mask = targets != types.PAD_ID
    else:
        mask = jnp.arange(targets.shape[1])[None, :] < lengths[:, None]
    return jnp.where(mask, tok_lp, 0.0)


def shift_right(targets: Array) -> Array:
    """Decoder inputs from targets: prepend the start token 0, drop the last position.

    targets: int [B, L] -> int [B, L].
    """
    return jnp.pad(targets, ((0, 0), (1, 0)), constant_values=types.PAD_ID)[:, :-1]
