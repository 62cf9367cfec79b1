"""Loss math on arrays only: no modules, no configs (style guide B2).

Every loss returns a *sum* and the *weight* it should be normalised by, so that
gradient accumulation over microbatches reproduces the full-batch gradient exactly
(sum the numerators and the weights, divide once at the end).
"""

import jax
import jax.numpy as jnp

from nlhf_jax import types

Array = types.Array


def token_cross_entropy(
    logits: Array, targets: Array, weights: Array, z_loss: float = 0.0
) -> tuple[Array, Array, Array]:
    """Teacher-forced cross-entropy (SFT), with T5X's optional z-loss.

    Args:
      logits: float [B, L, V].
      targets: int [B, L].
      weights: float [B, L]; 0 at padding.
      z_loss: coefficient of log(Z)^2, which keeps the softmax normaliser near 1
        (PaLM / T5X stabiliser).

    Returns:
      (sum of weighted token losses incl. z-loss, sum of weights, sum of weighted
      z-loss terms), all float32 scalars.
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = log_z - target_logits  # = -log_softmax(logits)[target]
    zl = z_loss * jnp.square(log_z)
    weights = weights.astype(jnp.float32)
    return jnp.sum((nll + zl) * weights), jnp.sum(weights), jnp.sum(zl * weights)


def token_accuracy(logits: Array, targets: Array, weights: Array) -> Array:
    """Sum of weights of correctly argmax-predicted tokens. [B, L, V], [B, L] -> scalar."""
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(correct * weights.astype(jnp.float32))
