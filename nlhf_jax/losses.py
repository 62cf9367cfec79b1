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


def ipo_loss(
    policy_logps: Array,
    alt_policy_logps: Array,
    reference_logps: Array,
    alt_reference_logps: Array,
    mask: Array,
    alt_mask: Array,
    pref: Array,
    tau: Array,
    example_weights: Array,
) -> tuple[Array, Array, Array]:
    """Sampled IPO loss on pairs: sum_b w_b (h_b - (p_b - 1/2) / tau_b)^2.

    The IPO objective (Azar et al. 2023, "A General Theoretical Paradigm to Understand
    Learning from Human Preferences") optimised online (Calandriello et al. 2024,
    "Human Alignment of Large Language Models through Online Preference
    Optimisation": online IPO, Prop. 4.1-4.2; IPO-MD, Prop. 5.1):
      L(theta) = E_{y, y' ~ rho} [(h_theta(y, y') - (p(y, y') - 1/2) / tau)^2],
      h_theta(y, y') = g_theta(y) - g_theta(y'),  g_theta = log pi_theta(.|x) - log mu(.|x),
    with sequence log-probs and p = P(y > y' | x) from the judge. This is the soft-label
    form p (h - 1/(2 tau))^2 + (1 - p) (h + 1/(2 tau))^2 up to a term free of theta.
    rho is sg(pi_theta) for online IPO and sg(the token-level beta-mixture of pi_theta
    and mu) for IPO-MD: the caller samples both y and y' from rho, so rho never enters
    here. The tabular counterpart, with its exact gradient and fixed points, is
    `tabular.solvers.online_ipo` / `ipo_md` / `ipo_gradient`.

    Gradient: both responses carry it, through log pi_theta(y) and log pi_theta(y')
    (h is a difference of the current policy's log-probs, and the loss depends on
    theta only through h). Nothing else does: mu is frozen, p is the judge's
    (a constant target, not a function of theta), and tau is a hyper-parameter; all
    are under stop_gradient. Because the sampling distribution carries no gradient,
    the expected gradient of this loss over pairs from rho is grad L with rho held
    fixed, the quantity the tabular solvers step along.

    Args:
      policy_logps, alt_policy_logps: [B, L] per-token log pi_theta of y and y',
        differentiable.
      reference_logps, alt_reference_logps: [B, L] per-token log mu of y and y'.
      mask, alt_mask: [B, L], 1 on the tokens of y / y' (EOS included), 0 at padding.
      pref: [B], P(y > y' | x).
      tau: [B] or scalar, the regularisation (> 0); the target is (p - 1/2) / tau.
      example_weights: [B] (1 for samples; rho(y) rho(y') when enumerating).

    Returns:
      (loss sum, weight sum, h [B] under stop_gradient for logging), float32.
    """
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    sg = lambda a: jax.lax.stop_gradient(f32(a))  # noqa: E731
    g = jnp.sum((f32(policy_logps) - sg(reference_logps)) * f32(mask), axis=-1)
    g_alt = jnp.sum((f32(alt_policy_logps) - sg(alt_reference_logps)) * f32(alt_mask), axis=-1)
    h = g - g_alt
    target = (sg(pref) - 0.5) / sg(tau)
    weights = f32(example_weights)
    return jnp.sum(weights * jnp.square(h - target)), jnp.sum(weights), jax.lax.stop_gradient(h)
