"""Policies as samplers and scorers: the trained policy, the frozen reference, and the
token-level geometric mixture that Nash-MD-PG plays against.

Every sampler here goes through the same path: each model's decode step is turned into
normalised log-probabilities (padding excluded, temperature 1), a mixture combines them
as (1 - beta) * log pi_theta + beta * log mu (paper App. F.1: the one-step-at-a-time
regularised policy), and `decoding.sample` applies the sampling temperature. Because
the policy alone is the beta = 0 case of the same arithmetic, beta = 0 reproduces the
policy's samples and beta = 1 the reference's, key for key.

The mixture carries both models' KV caches: one encoder pass per model, then one
decoder step per model per token (never a full forward pass per token).
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from nlhf_jax import decoding
from nlhf_jax import types

Array = types.Array
PyTree = types.PyTree


def normalise(logits: Array, forbid_pad: bool = True) -> Array:
    """log_softmax over the vocabulary (float32), padding excluded. [..., V] -> [..., V]."""
    logits = logits.astype(jnp.float32)
    if forbid_pad:
        logits = logits.at[..., types.PAD_ID].set(decoding.MASKED_LOGIT)
    return jax.nn.log_softmax(logits, axis=-1)


def log_prob_step(step: decoding.TokensToLogits, forbid_pad: bool = True) -> decoding.TokensToLogits:
    """Wraps a decode step so it returns normalised log-probs (`normalise`) instead of
    logits: a sampling step, unrelated to the training step `steps.normalised_step`
    (which normalises a loss by its weight)."""

    def fn(tokens, state):
        logits, state = step(tokens, state)
        return normalise(logits, forbid_pad), state

    return fn


def mixture_step(
    policy_step: decoding.TokensToLogits,
    reference_step: decoding.TokensToLogits,
    beta: Array,
    forbid_pad: bool = True,
) -> decoding.TokensToLogits:
    """Token-level geometric mixture (1 - beta) log p_theta + beta log p_mu.

    The state is the pair (policy state, reference state). The result is unnormalised
    by C(x, y_<n); the sampler's log_softmax normalises it per token, which is exactly
    the paper's per-token mixture (App. F.1), not the sequence-level one.

    Args:
      policy_step, reference_step: decode steps of pi_theta and mu.
      beta: scalar in [0, 1] (may be traced, e.g. a schedule of the step).
      forbid_pad: exclude padding in both models.
    """

    def fn(tokens, state):
        p_state, r_state = state
        lp_policy, p_state = policy_step(tokens, p_state)
        lp_ref, r_state = reference_step(tokens, r_state)
        lp_policy = normalise(lp_policy, forbid_pad)
        lp_ref = normalise(lp_ref, forbid_pad)
        return (1.0 - beta) * lp_policy + beta * lp_ref, (p_state, r_state)

    return fn


def _model_step(model: nn.Module, params: PyTree, prompts: Array, max_len: int):
    cache = decoding.init_cache(model, params, prompts, max_len)
    return decoding.model_tokens_to_logits(model, params, prompts), cache


def sample(
    model: nn.Module,
    params: PyTree,
    prompts: Array,
    rngs: Array,
    cfg: decoding.SamplingConfig,
) -> decoding.DecodeOutput:
    """y ~ pi(. | x) for each row, through the normalised path (see module docstring).

    Args:
      model: an EncoderDecoder.
      params: its parameters.
      prompts: int [B, K].
      rngs: per-row keys [B].
      cfg: sampling settings (temperature applied on top of the normalised log-probs).

    Returns:
      DecodeOutput: tokens/logprobs [B, L], lengths [B]; state dropped.
    """
    step, cache = _model_step(model, params, prompts, cfg.max_decode_len)
    out = decoding.sample(log_prob_step(step, cfg.forbid_pad), cache, rngs, cfg)
    return out.replace(state=None)


def sample_mixture(
    model: nn.Module,
    params: PyTree,
    reference_params: PyTree,
    prompts: Array,
    rngs: Array,
    beta: Array,
    cfg: decoding.SamplingConfig,
    reference_model: Optional[nn.Module] = None,
) -> decoding.DecodeOutput:
    """y' ~ the token-level mixture of pi_theta and mu (Nash-MD-PG's alternative).

    Args:
      model: the policy network (also the reference's unless `reference_model`).
      params: policy parameters (used without gradient).
      reference_params: frozen reference parameters.
      prompts: int [B, K].
      rngs: per-row keys [B].
      beta: mixture weight on the reference, scalar in [0, 1].
      cfg: sampling settings.
      reference_model: the reference network if its architecture differs (it must
        share the vocabulary).

    Returns:
      DecodeOutput of y' (log-probs are the mixture's, for logging only).
    """
    reference_model = reference_model or model
    if reference_model.config.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"the mixture needs one vocabulary: policy has {model.config.vocab_size} "
            f"tokens, reference {reference_model.config.vocab_size}"
        )
    p_step, p_cache = _model_step(model, params, prompts, cfg.max_decode_len)
    r_step, r_cache = _model_step(reference_model, reference_params, prompts, cfg.max_decode_len)
    step = mixture_step(p_step, r_step, jnp.asarray(beta, jnp.float32), cfg.forbid_pad)
    out = decoding.sample(step, (p_cache, r_cache), rngs, cfg)
    return out.replace(state=None)


def token_logprobs(
    model: nn.Module,
    params: PyTree,
    prompts: Array,
    targets: Array,
    lengths: Array,
    cfg: decoding.SamplingConfig,
) -> Array:
    """log pi(y_n | x, y_<n) under the distribution sampled from (teacher forced).

    Temperature and padding exclusion are those of `cfg`, so these equal the log-probs
    the sampler returned for the same tokens; differentiable in `params`.

    Args:
      prompts: int [B, K]; targets: int [B, L]; lengths: int [B].

    Returns:
      float32 [B, L], 0 at positions >= length.
    """
    if cfg.top_k:
        raise ValueError("token_logprobs: top-k sampling has no full-support density; use top_k=0")
    decoder_inputs = decoding.shift_right(targets)
    logits = model.apply({"params": params}, prompts, decoder_inputs)
    lp = normalise(logits, cfg.forbid_pad)
    if not cfg.greedy:
        lp = jax.nn.log_softmax(lp / cfg.temperature, axis=-1)
    tok = jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0]
    mask = jnp.arange(targets.shape[1])[None, :] < lengths[:, None]
    return jnp.where(mask, tok, 0.0)
