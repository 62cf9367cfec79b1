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

A `DecoderOnly` model has no encoder: its prompt is prefilled into the cache instead
(`init_decoder_only_cache`), in one forward pass over the whole prompt by default, or
one cached step per prompt token (the older, slower path, kept for parity checks).
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
    first_tokens: Optional[Array] = None,
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
      first_tokens: int [B], what the first step consumes: default 0, T5's decoder
        start token; a decoder-only model's last prompt token (see
        `init_decoder_only_cache`).

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
        (
            jnp.full((batch,), types.PAD_ID, jnp.int32)  # T5's decoder start token
            if first_tokens is None
            else jnp.asarray(first_tokens, jnp.int32)
        ),
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


def left_align(prompts: Array) -> tuple[Array, Array]:
    """Right-padded prompts (the project's layout) -> left-padded, with their mask.

    A decoder-only model continues every row from the same position, so the rows' last
    prompt tokens must share a column. Each row is rolled right by its padding; the
    mask hides the padding from attention (relative position biases see only offsets,
    so this changes no row's logits).

    Args:
      prompts: int [B, K], 0 after each row's end (no padding inside a row).

    Returns:
      (tokens int32 [B, K], mask bool [B, K]). An all-padding row keeps its last 0
      visible, as a start token.
    """
    prompts = jnp.asarray(prompts, jnp.int32)
    k = prompts.shape[1]
    lengths = jnp.sum(prompts != types.PAD_ID, axis=1)
    shift = k - lengths
    columns = jnp.arange(k)[None, :]
    tokens = jnp.take_along_axis(prompts, (columns - shift[:, None]) % k, axis=1)
    mask = columns >= jnp.minimum(shift, k - 1)[:, None]
    return tokens, mask


def init_decoder_only_cache(
    model: nn.Module,
    params: PyTree,
    prompts: Array,
    max_decode_len: int,
    *,
    stepwise_prefill: bool = False,
) -> tuple[PyTree, Array]:
    """Prefills a `DecoderOnly` model's cache with all prompt tokens but the last.

    The last prompt token is what `sample`'s first step consumes (`first_tokens`), so
    the first sampled token is predicted from it, exactly as in a full forward pass.

    Args:
      model: a `DecoderOnly`.
      params: its parameters.
      prompts: int [B, K], right-padded (see `left_align`).
      max_decode_len: the number of tokens that will be generated.
      stepwise_prefill: prefill one cached step per prompt token (a `lax.scan`)
        instead of one forward pass over the prompt; same result, slower.

    Returns:
      (cache, first_tokens int32 [B]); the cache holds K - 1 + max_decode_len
      positions and its index points after the prefilled K - 1.
    """
    tokens, mask = left_align(prompts)
    k = tokens.shape[1]
    cache_len = k - 1 + max_decode_len
    variables = {"params": params}
    if stepwise_prefill or k == 1:
        # The cache-creating call writes position 0; the first real step overwrites it.
        _, created = model.apply(variables, tokens[:, :1], decode=True, max_decode_len=cache_len,
                                 input_mask=mask[:, :1], mutable=["cache"])
        cache = flax.core.unfreeze(created["cache"])
        cache["decoder"]["index"] = jnp.zeros((), jnp.int32)

        def step(cache, column):
            tok, m = column
            _, updated = model.apply({**variables, "cache": cache}, tok[:, None], decode=True,
                                     input_mask=m[:, None], mutable=["cache"])
            return updated["cache"], None

        cache, _ = jax.lax.scan(step, cache, (tokens[:, :-1].T, mask[:, :-1].T))
    else:
        # One pass: every layer's keys and values for positions 0..K-2 at once, under
        # the causal mask and the padding mask. Its logits are unused (and compiled away).
        _, created = model.apply(variables, tokens[:, :-1], decode=True, max_decode_len=cache_len,
                                 input_mask=mask[:, :-1], mutable=["cache"])
        cache = flax.core.unfreeze(created["cache"])
    return cache, tokens[:, -1]


def decoder_only_tokens_to_logits(model: nn.Module, params: PyTree) -> TokensToLogits:
    """The decode step of a `DecoderOnly` as a `tokens_to_logits` callable (state: cache)."""

    def fn(tokens: Array, cache: PyTree) -> tuple[Array, PyTree]:
        logits, variables = model.apply(
            {"params": params, "cache": cache}, tokens, decode=True, mutable=["cache"]
        )
        return logits[:, 0], variables["cache"]

    return fn


def generate_decoder_only(
    model: nn.Module,
    params: PyTree,
    prompts: Array,
    rngs: Array,
    cfg: SamplingConfig,
    *,
    stepwise_prefill: bool = False,
) -> DecodeOutput:
    """Samples continuations of `prompts` from a `DecoderOnly` (jit with `cfg` static).

    Args:
      model: the network.
      params: its parameters.
      prompts: int [B, K], right-padded.
      rngs: per-row keys [B].
      cfg: sampling settings.
      stepwise_prefill: see `init_decoder_only_cache`.

    Returns:
      DecodeOutput of the continuations only (its `state` is dropped).
    """
    cache, first = init_decoder_only_cache(
        model, params, prompts, cfg.max_decode_len, stepwise_prefill=stepwise_prefill
    )
    out = sample(decoder_only_tokens_to_logits(model, params), cache, rngs, cfg, first_tokens=first)
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
