"""Preference and reward heads on the T5 encoder-decoder: one logit per input.

Why this module exists: the paper's preference model P_phi(y > y' | x) and reward
model r_phi(x, y) are both the plain encoder-decoder, read at one designated target
token of the first decoder position (decoder input = [0]); App. G.1, spec §6.2. No new
parameters are added, so a PM or RM starts from an SFT run or a converted HF T5
checkpoint with `restore_mode="params_only"`, and its parameters shard by the same
rules as every other T5.

* PM: P_phi(y > y' | x) = sigmoid(logit of the target token), the input holding x, y
  and y' (`data/pairwise.py`). A learned f is not antisymmetric, so the judge can score
  both orders: (f(x, y, y') + 1 - f(x, y', y)) / 2 (`preference_math.both_orders`),
  which is exactly antisymmetric and 1/2 on y = y'.
* RM: r_phi(x, y) = the target token's logit itself, the input holding x and y;
  P_BT(y > y' | x) = sigmoid(r(x, y) - r(x, y')) (`preference_math.bradley_terry`).
"""

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from nlhf_jax import types

Array = types.Array
PyTree = types.PyTree


def target_logits(
    network: nn.Module,
    params: PyTree,
    encoder_input_tokens: Array,
    target_token: int,
    *,
    enable_dropout: bool = False,
    rng: Optional[Array] = None,
    decoder_len: int = 0,
) -> Array:
    """The target token's logit at the first decoder position, or after the decoder
    part of the input.

    Args:
      network: a `t5.EncoderDecoder`.
      params: its parameters.
      encoder_input_tokens: int [B, K] inputs written by `pairwise.PairEncoder`; with
        `decoder_len` = L > 0, int [B, K + L] whose last L columns are the decoder's
        tokens (left-aligned, 0-padded; `InputFormat.decoder_template`).
      target_token: the designated token id.
      enable_dropout: training mode (needs `rng`).
      rng: the dropout key.
      decoder_len: L (static).

    Returns:
      float32 [B]: the PM's preference logit or the RM's reward.
    """
    batch = encoder_input_tokens.shape[0]
    start = jnp.full((batch, 1), types.PAD_ID, jnp.int32)  # the decoder start token
    if decoder_len:
        tokens = encoder_input_tokens[:, -decoder_len:]
        encoder_input_tokens = encoder_input_tokens[:, :-decoder_len]
        decoder_input = jnp.concatenate([start, tokens], axis=1)  # [B, L + 1]
        # Read where the next token would be predicted after the last real one; the
        # causal mask keeps the padding after it out of that position's view.
        position = jnp.sum(tokens != types.PAD_ID, axis=1)
    else:
        decoder_input = start
        position = jnp.zeros((batch,), jnp.int32)
    rngs = {"dropout": rng} if enable_dropout else None
    logits = network.apply(
        {"params": params}, encoder_input_tokens, decoder_input,
        enable_dropout=enable_dropout, rngs=rngs,
    )  # fmt: skip
    picked = jnp.take_along_axis(logits[:, :, target_token], position[:, None], axis=1)[:, 0]
    return picked.astype(jnp.float32)


def pair_logits(
    network: nn.Module,
    params: PyTree,
    inputs: Array,
    inputs_other: Array,
    target_token: int,
    decoder_len: int = 0,
) -> tuple[Array, Array]:
    """Target logits of two input batches in one forward pass (no dropout).

    For the PM: (x, y, y') and (x, y', y), the two orders. For the RM: (x, y) and
    (x, y'), the two rewards.

    Args:
      inputs, inputs_other: int [B, K] each.

    Returns:
      (float32 [B], float32 [B]).
    """
    both = jnp.concatenate([inputs, inputs_other], axis=0)
    z = target_logits(network, params, both, target_token, decoder_len=decoder_len)
    return z[: inputs.shape[0]], z[inputs.shape[0]:]

