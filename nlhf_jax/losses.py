"""Loss math on arrays only: no modules, no configs (style guide B2).

Every loss returns a *sum* and the *weight* it should be normalised by, so that
gradient accumulation over microbatches reproduces the full-batch gradient exactly
(sum the numerators and the weights, divide once at the end). The per-row preference
losses of the PM and RM (`logistic_loss`, `both_orders_loss`) are in
`preference_math.py`, with the other preference formulas.
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


def reward_to_go(x: Array, mask: Array) -> Array:
    """sum_{m >= n} x_m over the valid positions. [B, L] -> [B, L] (0 at padding)."""
    x = x * mask
    return jnp.flip(jnp.cumsum(jnp.flip(x, axis=-1), axis=-1), axis=-1) * mask


def policy_gradient_advantages(
    reward: Array,
    policy_logps: Array,
    reference_logps: Array,
    mask: Array,
    tau: Array,
    baseline: Array,
) -> Array:
    """A_n = reward - baseline - tau * sum_{m >= n} [log pi(y_m|.) - log mu(y_m|.)].

    The paper's regularised policy-gradient advantage (§7, App. F.2): the sequence-level
    reward is shared by every token, and the KL to mu enters as reward-to-go, so token
    n's score is multiplied only by the log-ratios of tokens m >= n (earlier tokens'
    log-ratios have zero expected product with it). Computed under stop-gradient.

    Args:
      reward: [B], e.g. P(y > y' | x) (Nash-MD-PG) or a reward-model score (RLHF).
      policy_logps, reference_logps: [B, L] per-token log-probs of y.
      mask: [B, L], 1 on the tokens of y (EOS included).
      tau: KL coefficient.
      baseline: [B] or scalar; 1/2 for preferences (= P(y > y | x)).

    Returns:
      float32 [B, L], 0 at padding.
    """
    log_ratio = jax.lax.stop_gradient(policy_logps - reference_logps).astype(jnp.float32)
    adv = (reward - baseline)[:, None] - tau * reward_to_go(log_ratio, mask)
    return jax.lax.stop_gradient(adv * mask)


def policy_gradient_loss(
    policy_logps: Array, advantages: Array, mask: Array, example_weights: Array
) -> tuple[Array, Array]:
    """Surrogate whose gradient is the estimator: -sum_b w_b sum_n A_n log pi(y_n|.).

    With A_n from `policy_gradient_advantages` this is the paper's Nash-MD-PG /
    Nash-EMA-PG loss (§7; App. F.2, eq. 13 with the token-level KL), normalised by
    sum_b w_b (the caller divides).

    Args:
      policy_logps: [B, L], differentiable.
      advantages: [B, L], constant.
      mask: [B, L].
      example_weights: [B] (1 for sampled examples; probabilities when enumerating).

    Returns:
      (loss sum, weight sum).
    """
    per_example = jnp.sum(advantages * policy_logps * mask, axis=-1)
    return -jnp.sum(example_weights * per_example), jnp.sum(example_weights)
