"""Exact answers and metrics for tabular preference games.

Iterative solvers (solvers.py) are only as trustworthy as the yardstick they are
measured against. This module computes that yardstick independently of them:

* the regularised Nash equilibrium pi*_tau of P_tau (§4, eq. 2; unique by
  Proposition 1), as the root of its fixed-point equation, by damped Newton with
  continuation in tau, returned with a certificate (fixed-point residual and
  regularised exploitability);
* the unregularised equilibrium of eq. 1 by linear programming;
* the metrics used throughout: KL(pi*_tau, pi), P(pi > pi'), and the
  regularised and unregularised exploitability.

Everything runs in float64 inside a local `jax.enable_x64` context (the global
flag is never flipped), because the certificates go down to 1e-10 and below.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from nlhf_jax.tabular import games as games_lib

# Type aliases. Shapes: C contexts, n responses, T steps.
Array = Any  # np.ndarray or jax.Array
Policy = np.ndarray  # [C, n]
LogPolicy = np.ndarray  # [C, n], log-probabilities


def x64(fn: Callable) -> Callable:
    """Runs `fn` with 64-bit JAX types enabled and returns NumPy outputs.

    The context is local, so importing this package never changes the dtype
    behaviour of the rest of the program. Outputs are converted to NumPy inside
    the context so float64 results are not silently truncated afterwards.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            out = fn(*args, **kwargs)
            return jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, out)

    return wrapper


# --------------------------------------------------------------------------
# Metrics (JAX, broadcasting over leading axes).
# --------------------------------------------------------------------------


def _kl_logs(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    # KL(p, q) = sum_y p(y) (log p(y) - log q(y)), with 0 log 0 = 0 (§2). It is
    # >= 0; round-off can push a sum of cancelling terms to -1e-17, so clip.
    p = jnp.exp(log_p)
    terms = jnp.where(p > 0, p * (log_p - log_q), 0.0)
    return jnp.maximum(jnp.sum(terms, axis=-1), 0.0)


def _safe_log(p: jax.Array) -> jax.Array:
    return jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf)


def _pref_vs(pref: jax.Array, opp: jax.Array) -> jax.Array:
    # P(y > opponent) = sum_y' P[y, y'] opp(y') for every y (§2); batched over
    # contexts and any extra leading axes of the opponent.
    return jnp.einsum("...cij,...cj->...ci", pref, opp)


def _reg_exploitability(pref, log_mu, log_pi, tau):
    # max_pi' P_tau(pi' > pi) - 1/2 (eq. 2). The inner max is the Gibbs best
    # response mu exp(P pi / tau) / Z with value tau * logsumexp(log mu + P pi / tau),
    # and pi^T P pi = 1/2 for antisymmetric P, so this is >= 0 with equality only at
    # pi*_tau. It is also a convex function of pi.
    pi = jnp.exp(log_pi)
    g = _pref_vs(pref, pi)
    best = tau * jax.nn.logsumexp(log_mu + g / tau, axis=-1)
    self_play = jnp.sum(pi * g, axis=-1)
    # Clip round-off below zero, as for the KL.
    return jnp.maximum(best + tau * _kl_logs(log_pi, log_mu) - self_play, 0.0)


@jax.jit
def _kl_jit(log_p, log_q):
    return _kl_logs(log_p, log_q)


@jax.jit
def _preference_jit(pref, pi, pi2):
    return jnp.sum(pi * _pref_vs(pref, pi2), axis=-1)


@jax.jit
def _exploitability_jit(pref, pi):
    return jnp.max(_pref_vs(pref, pi), axis=-1) - 0.5


_reg_exploitability_jit = jax.jit(_reg_exploitability)


@jax.jit
def _metrics_jit(pref, log_mu, log_star, log_pi, tau):
    pi = jnp.exp(log_pi)
    return {
        "kl": _kl_logs(log_star, log_pi),
        "exploitability_tau": _reg_exploitability(pref, log_mu, log_pi, tau),
        "exploitability": _exploitability_jit(pref, pi),
        "pref_vs_mu": _preference_jit(pref, pi, jnp.exp(log_mu)),
    }


def _f64(*arrays):
    return tuple(jnp.asarray(a, jnp.float64) for a in arrays)


# Each public metric is one jitted function: eager op-by-op dispatch would
# compile every primitive separately for every new shape, which dominates the
# run time of small games.


@x64
def kl(p: Array, q: Array, *, logs: bool = False) -> np.ndarray:
    """KL(p, q) over the last axis, e.g. KL(pi*_tau, pi_t) for Theorem 1.

    Args:
      p: [..., n] policy (or log-policy when logs=True).
      q: [..., n] policy (or log-policy), broadcastable against p.
      logs: whether p and q are log-probabilities (preferred: exact for tiny pi).

    Returns:
      [...] float64 KL divergences (inf where q = 0 < p).
    """
    p, q = _f64(p, q)
    if not logs:
        p, q = _safe_log(p), _safe_log(q)
    return _kl_jit(p, q)


@x64
def preference(pref: Array, pi: Array, pi2: Array) -> np.ndarray:
    """P(pi > pi') = pi^T P pi' per context (§2).

    Args:
      pref: [C, n, n] preference matrices.
      pi: [..., C, n] policy.
      pi2: [..., C, n] opponent policy.

    Returns:
      [..., C] float64.
    """
    return _preference_jit(*_f64(pref, pi, pi2))


@x64
def exploitability(pref: Array, pi: Array) -> np.ndarray:
    """Unregularised exploitability max_y P(y > pi) - 1/2 (>= 0; 0 iff pi solves eq. 1).

    Args:
      pref: [C, n, n].
      pi: [..., C, n].

    Returns:
      [..., C] float64.
    """
    return _exploitability_jit(*_f64(pref, pi))


@x64
def regularized_exploitability(game: games_lib.Game, log_pi: Array, tau: float) -> np.ndarray:
    """Exploitability in the regularised game, max_pi' P_tau(pi' > pi) - 1/2 (eq. 2).

    Args:
      game: the game (P and mu).
      log_pi: [..., C, n] log-policy.
      tau: regularisation tau > 0.

    Returns:
      [..., C] float64, >= 0 and zero only at pi*_tau.
    """
    pref, log_mu, log_pi = _f64(game.pref, np.log(game.ref), log_pi)
    return _reg_exploitability_jit(pref, log_mu, log_pi, jnp.float64(tau))


@x64
def policy_metrics(
    game: games_lib.Game, log_pi: Array, tau: float, log_star: Array
) -> dict[str, np.ndarray]:
    """All per-policy metrics at once (one compiled call), e.g. along a trajectory.

    Args:
      game: the game.
      log_pi: [..., C, n] log-policies.
      tau: regularisation, > 0.
      log_star: [C, n] log pi*_tau.

    Returns:
      Dict of [..., C] float64 arrays: "kl" = KL(pi*_tau, pi), "exploitability_tau"
      (eq. 2), "exploitability" (eq. 1) and "pref_vs_mu" = P(pi > mu).
    """
    pref, log_mu, log_star, log_pi = _f64(game.pref, np.log(game.ref), log_star, log_pi)
    return _metrics_jit(pref, log_mu, log_star, log_pi, jnp.float64(tau))


# --------------------------------------------------------------------------
# The regularised equilibrium pi*_tau (Proposition 1).
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegularizedEquilibrium:
    """pi*_tau with its certificate.

    Attributes:
      tau: the regularisation.
      log_policy: [C, n] log pi*_tau (exact even where pi*_tau underflows).
      residual: [C] fixed-point residual || pi - mu exp(P pi / tau) / Z ||_1.
      exploitability: [C] regularised exploitability (eq. 2), >= 0, 0 at pi*_tau.
      newton_steps: total Newton iterations over all continuation stages.
    """

    tau: float
    log_policy: LogPolicy
    residual: np.ndarray
    exploitability: np.ndarray
    newton_steps: int

    @property
    def policy(self) -> Policy:
        return np.exp(self.log_policy)


def _h(w, log_mu, a, tau):
    # Root form of the fixed point. With A = P - 1/2 (P pi = A pi + 1/2 on the
    # simplex, and constants cancel in a softmax) and pi = softmax(w):
    #   H(w) = w - log mu - A softmax(w) / tau = 0
    # holds iff pi = mu exp(P pi / tau) / Z. Its Jacobian I - A S / tau (S the
    # PSD softmax Jacobian, A antisymmetric) is always invertible: J x = 0 gives
    # x^T S x = x^T S A S x / tau = 0, so S x = 0 and x = 0. Hence Newton is well
    # defined for every tau > 0 and every w.
    return w - log_mu - a @ jax.nn.softmax(w) / tau


_ALPHAS = 0.5 ** np.arange(24)  # backtracking step sizes tried in parallel


def _newton_one(w, log_mu, a, tau, max_iter, tol):
    """Damped Newton on H(w) = 0 for one context; returns (w, iterations)."""
    n = w.shape[0]
    eye = jnp.eye(n, dtype=w.dtype)
    alphas = jnp.asarray(_ALPHAS, w.dtype)

    def sq(v):
        return jnp.sum(v * v)

    def cond(state):
        w, it, res = state
        return (it < max_iter) & (res > tol * (1.0 + jnp.max(jnp.abs(w))))

    def body(state):
        w, it, _ = state
        h = _h(w, log_mu, a, tau)
        pi = jax.nn.softmax(w)
        s = jnp.diag(pi) - jnp.outer(pi, pi)
        d = -jnp.linalg.solve(eye - a @ s / tau, h)
        # Newton's direction always decreases ||H||^2 (its derivative along d is
        # -2 ||H||^2), so backtracking on that merit is a global safeguard; the
        # candidates are evaluated together rather than in a nested loop.
        cands = w[None] + alphas[:, None] * d[None]
        merits = jax.vmap(lambda v: sq(_h(v, log_mu, a, tau)))(cands)
        ok = merits <= (1.0 - 1e-4 * alphas) * sq(h)
        k = jnp.where(jnp.any(ok), jnp.argmax(ok), jnp.argmin(merits))
        # Never accept a step that increases the merit (only possible at round-off).
        w = jnp.where(merits[k] < sq(h), cands[k], w)
        return w, it + 1, jnp.max(jnp.abs(_h(w, log_mu, a, tau)))

    res0 = jnp.max(jnp.abs(_h(w, log_mu, a, tau)))
    w, it, _ = jax.lax.while_loop(cond, body, (w, jnp.asarray(0), res0))
    return w, it


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _newton_stage(w, log_mu, a, tau, max_iter=60, tol=1e-14):
    solve = jax.vmap(_newton_one, in_axes=(0, 0, 0, None, None, None))
    return solve(w, log_mu, a, tau, max_iter, tol)


@jax.jit
def _certificate(pref, log_mu, w, tau):
    log_pi = jax.nn.log_softmax(w, axis=-1)
    target = jax.nn.log_softmax(log_mu + _pref_vs(pref, jnp.exp(log_pi)) / tau, axis=-1)
    residual = jnp.sum(jnp.abs(jnp.exp(log_pi) - jnp.exp(target)), axis=-1)
    return log_pi, residual, _reg_exploitability(pref, log_mu, log_pi, tau)


@x64
def regularized_equilibrium(
    game: games_lib.Game,
    tau: float,
    *,
    init: Array | None = None,
    stage_factor: float = 4.0,
) -> RegularizedEquilibrium:
    """Computes pi*_tau, the unique Nash equilibrium of P_tau (Proposition 1).

    pi*_tau is the fixed point pi = mu exp(P pi / tau) / Z: the game is
    symmetric and the best response to any pi' is the Gibbs policy
    mu exp(P(. > pi') / tau) / Z, so the unique equilibrium is its own best
    response. We solve the equivalent root problem H(w) = 0 (see `_h`) by damped
    Newton, following tau down from max(tau, 1) by factors of `stage_factor`
    (continuation) so that each stage starts close to its root; for small tau
    pi*_tau is nearly deterministic and a cold Newton start would take many
    damped steps. Residuals reach ~1e-13 for tau >= 1e-3.

    Args:
      game: the game.
      tau: regularisation, > 0.
      init: optional [C, n] full-support starting policy; the answer does not
        depend on it (uniqueness), which the tests check.
      stage_factor: ratio between consecutive continuation values of tau.

    Returns:
      A RegularizedEquilibrium with its certificate.

    Raises:
      ValueError: if tau <= 0 or init has the wrong shape or zeros.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0 for the regularised equilibrium, got {tau}")
    # Host-side set-up in NumPy float64: only the jitted stages touch JAX.
    log_mu = np.log(game.ref)
    a = game.pref - 0.5
    if init is None:
        w = log_mu
    else:
        init = np.asarray(init, dtype=np.float64)
        if init.shape != game.ref.shape or np.any(init <= 0):
            raise ValueError(f"init must be a full-support [C, n] = {game.ref.shape} policy")
        w = np.log(init / init.sum(-1, keepdims=True))
    taus = [float(tau)]
    while taus[-1] * stage_factor <= max(1.0, tau):
        taus.append(taus[-1] * stage_factor)
    steps = 0
    for t in reversed(taus):
        w, it = _newton_stage(w, log_mu, a, np.float64(t))
        steps += int(np.max(it))
    log_pi, residual, expl = _certificate(game.pref, log_mu, w, np.float64(tau))
    if np.max(residual) > 1e-9:
        warnings.warn(
            f"pi*_tau for tau={tau:g}: fixed-point residual {np.max(residual):.2e} > 1e-9 "
            f"after {steps} Newton steps; check the certificate before trusting it",
            RuntimeWarning,
            stacklevel=2,
        )
    return RegularizedEquilibrium(
        tau=float(tau),
        log_policy=np.asarray(log_pi),
        residual=np.asarray(residual),
        exploitability=np.asarray(expl),
        newton_steps=steps,
    )


# --------------------------------------------------------------------------
# The unregularised equilibrium (eq. 1) by linear programming.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NashLP:
    """Solution of max_pi min_pi' P(pi > pi') per context (eq. 1).

    Attributes:
      policy: [C, n] an equilibrium policy (not unique in general without tau).
      value: [C] the game value, 1/2 for every symmetric antisymmetric game.
      exploitability: [C] max_y P(y > pi) - 1/2 of the returned policy.
    """

    policy: Policy
    value: np.ndarray
    exploitability: np.ndarray


def nash_lp(game: games_lib.Game) -> NashLP:
    """Unregularised Nash equilibrium by linear programming (scipy HiGHS).

    Variables (pi, v): maximise v subject to sum_y pi(y) P[y, y'] >= v for every
    pure reply y', pi in the simplex. By the minimax theorem (§2) v = 1/2.

    Args:
      game: the game.

    Returns:
      A NashLP; exploitability is ~1e-9 (the LP tolerance).

    Raises:
      RuntimeError: if the LP solver fails for a context.
    """
    c_count, n = game.num_contexts, game.num_actions
    policies, values = np.empty((c_count, n)), np.empty(c_count)
    cost = np.zeros(n + 1)
    cost[-1] = -1.0
    a_eq = np.concatenate([np.ones((1, n)), np.zeros((1, 1))], axis=1)
    bounds = [(0, None)] * n + [(None, None)]
    for c in range(c_count):
        a_ub = np.concatenate([-game.pref[c].T, np.ones((n, 1))], axis=1)
        sol = scipy.optimize.linprog(
            cost, A_ub=a_ub, b_ub=np.zeros(n), A_eq=a_eq, b_eq=[1.0], bounds=bounds, method="highs"
        )
        if not sol.success:
            raise RuntimeError(f"context {c}: LP failed: {sol.message}")
        pi = np.clip(sol.x[:n], 0.0, None)
        policies[c], values[c] = pi / pi.sum(), sol.x[-1]
    return NashLP(policies, values, exploitability(game.pref, policies))
