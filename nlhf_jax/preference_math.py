"""The preference formulas, once, at the bottom of the package's layers.

Why this module exists: the same few formulas turn up wherever a preference is
computed (the world's raters, the exact world game, the tabular games and solvers,
the learned judges and their metrics, the PM/RM losses and metrics); each is written
here once and imported by all of them, so that they cannot drift apart in their
floating-point details (which the byte-for-byte reproducibility of the runs depends
on). It sits in the `base` layer so that the standalone `tabular` package and the
world's data layer may import it too.

Probabilities are numpy float64. The losses in logit space (`logistic_loss`,
`both_orders_loss`) are JAX functions for the training steps and the tabular solvers;
they import JAX when called, so that importing this module needs numpy only (the
embedded world's data layer depends on numpy alone).
"""

from typing import Any

import numpy as np


def sigmoid(z: Any) -> np.ndarray:
    """float64 sigmoid written as (1 + tanh(z / 2)) / 2: odd in floating point, so
    sigmoid(-z) = 1 - sigmoid(z) to one rounding and sigmoid(0) = 1/2 exactly."""
    return 0.5 + 0.5 * np.tanh(0.5 * np.asarray(z, np.float64))


def bradley_terry(r: Any, r_alt: Any) -> np.ndarray:
    """P_BT(y > y') = sigmoid(r(y) - r(y')), float64 (antisymmetric, 1/2 on ties).

    Broadcasts: `bradley_terry(r[:, None], r[None, :])` is the preference matrix of
    the rewards r."""
    return sigmoid(np.asarray(r, np.float64) - np.asarray(r_alt, np.float64))


def logistic_raters(u: Any, u_alt: Any, temperatures: Any) -> np.ndarray:
    """Each rater type's P_k(y > y') = sigmoid((u_k(y) - u_k(y')) / T_k), float64.

    The population's preference is the weighted mean of these over the types k (the
    world's P*, `data/world/raters.py`; `tabular.games.from_utilities`).

    Args:
      u, u_alt: utilities of y and y' under each type.
      temperatures: T_k (> 0), broadcastable against u along the type axis.
    """
    return sigmoid((u - u_alt) / temperatures)


def both_orders(p_forward: Any, p_backward: Any) -> np.ndarray:
    """(f(x, y, y') + 1 - f(x, y', y)) / 2, written as 1/2 + (f - f_swapped) / 2.

    The difference changes sign exactly when the orders are exchanged, so the result
    is antisymmetric to one rounding and exactly 1/2 when both scores are equal.

    Args:
      p_forward: float [B], f(x, y, y').
      p_backward: float [B], f(x, y', y).

    Returns:
      float64 [B].
    """
    d = np.asarray(p_forward, np.float64) - np.asarray(p_backward, np.float64)
    return 0.5 + 0.5 * d


def bayes_decision(p: Any, xp: Any = np) -> Any:
    """The decision a probability p = P(y > y') makes: 1 (y), 0 (y') or 1/2 (a tie).

    `xp` is the array module (numpy, or `jax.numpy` inside a jitted step)."""
    return xp.where(p > 0.5, 1.0, xp.where(p < 0.5, 0.0, 0.5))


def decision_agreement(score: Any, target: Any, threshold: float = 0.5, xp: Any = np) -> Any:
    """Expected agreement, per row, of the decision `score` > `threshold` with a target
    probability t: [score > th] * t + [score < th] * (1 - t) + [score = th] / 2.

    Accuracy for hard labels t in {0, 1}, expected accuracy for soft ones; with t a
    `bayes_decision`, the agreement with the Bayes decision. The threshold is 1/2 for
    probabilities and 0 for logits; `xp` as in `bayes_decision`.
    """
    return xp.where(score > threshold, target, xp.where(score < threshold, 1.0 - target, 0.5))


def cross_entropy(target: Any, p: Any) -> float:
    """Mean cross-entropy -[t log p + (1 - t) log(1 - p)] of probabilities p (already
    clipped away from 0 and 1) against target probabilities t."""
    return float(-np.mean(target * np.log(p) + (1 - target) * np.log(1 - p)))


# ------------------------------------------------------------ losses (JAX, logits)


def logistic_loss(z: Any, labels: Any, dtype: Any = np.float32) -> Any:
    """-[l log sigmoid(z) + (1 - l) log sigmoid(-z)], per row; [B] in `dtype`.

    With z the PM's logit this is the paper's PM cross-entropy against the human
    label, with no Bradley-Terry assumption (App. G.1); with z = r(y) - r(y') it is the
    Bradley-Terry loss of a reward (§3.3, spec §6.2; the RM's and the tabular BT
    fit's). Soft labels in [0, 1] are accepted. softplus keeps it finite for large |z|.
    """
    import jax

    z = z.astype(dtype)
    labels = labels.astype(dtype)
    return labels * jax.nn.softplus(-z) + (1.0 - labels) * jax.nn.softplus(z)


def both_orders_loss(z: Any, z_swapped: Any, labels: Any) -> tuple[Any, Any]:
    """Cross-entropy of g = (sigmoid(z) + sigmoid(-z_swapped)) / 2 against the labels.

    g is the both-orders judge of `both_orders`; its logs are taken in log space
    (log g = logaddexp(log sigmoid(z), log sigmoid(-z_swapped)) - log 2), so saturated
    logits stay finite.

    Returns:
      (per-row loss float32 [B], the logit of g, float32 [B], for the metrics).
    """
    import jax
    import jax.numpy as jnp

    z, z_swapped = z.astype(jnp.float32), z_swapped.astype(jnp.float32)
    labels = labels.astype(jnp.float32)
    log_g = jnp.logaddexp(-jax.nn.softplus(-z), -jax.nn.softplus(z_swapped)) - jnp.log(2.0)
    log_not_g = jnp.logaddexp(-jax.nn.softplus(z), -jax.nn.softplus(-z_swapped)) - jnp.log(2.0)
    return -(labels * log_g + (1.0 - labels) * log_not_g), log_g - log_not_g
