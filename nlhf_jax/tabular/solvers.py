"""Tabular NLHF solvers: Nash-MD and the baselines the paper compares it with.

The paper's central tabular claim (§6, Theorem 1) is that Nash-MD converges in
the *last iterate* at rate O(1/T), whereas classical solvers (§5) only converge
on average or need the whole history. This module implements all of them over
the same batched representation so that claim can be checked side by side:

* `nash_md`: mirror descent against the geometric mixture pi_t^mu (eqs. 3-5);
* `online_mirror_descent`: the same step against the current policy (the
  paper's OMD, eqs. 7-8), i.e. Nash-MD with a different opponent and nothing
  else (the T8 check of the spec);
* `self_play`: unregularised multiplicative weights (OMD with tau = 0);
* `nash_ema`: the same step against an exponential moving average of past
  policies (the tabular analogue of Nash-EMA, §5 and §7);
* `fictitious_play`: best response to the uniform average of past policies (§5);
* `best_response_to_ref`: the regularised best response to mu (beta = 1 in §7);
* `rlhf`: fit Bradley-Terry rewards by maximum likelihood, then the
  KL-regularised reward maximiser mu exp(r / tau) / Z (§3, App. A/B);
* `online_ipo` and `ipo_md`: exact gradient steps on the IPO loss (Azar et al.
  2023) with pairs from the current policy or from the Nash-MD mixture
  (Calandriello et al. 2024). Online IPO's fixed point is pi*_tau; IPO-MD's is
  that of Nash-MD with a constant step eta tau = beta.

Every iterative solver is one jitted `lax.scan`, vectorised over contexts with
batched einsums, and works on log-policies so that nearly deterministic
policies (small tau) stay exact.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from nlhf_jax import preference_math
from nlhf_jax.tabular import equilibrium as eq_lib
from nlhf_jax.tabular import games as games_lib

# Type aliases. Shapes: T steps, C contexts, n responses.
Array = Any  # np.ndarray or jax.Array
Policy = np.ndarray  # [C, n]
LogPolicy = np.ndarray  # [C, n]
Record = Literal["all", "last"]
Opponent = Literal["mixture", "current", "ema"]
DType = Any


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """Iterates of a solver.

    Attributes:
      name: solver name.
      steps: [R] the iteration index t of each record (0..T, or just T).
      log_policies: [R, C, n] log pi_t (the last iterate).
      log_averages: [R, C, n] log of the solver's averaged policy: the uniform
        average (1/(t+1)) sum_{s<=t} pi_s, or the EMA for `nash_ema`.
    """

    name: str
    steps: np.ndarray
    log_policies: np.ndarray
    log_averages: np.ndarray

    @property
    def policies(self) -> np.ndarray:
        return np.exp(self.log_policies)

    @property
    def averages(self) -> np.ndarray:
        return np.exp(self.log_averages)

    @property
    def last(self) -> Policy:
        return np.exp(self.log_policies[-1])


@dataclasses.dataclass(frozen=True)
class RLHFResult:
    """Output of the RLHF pipeline.

    Attributes:
      rewards: [C, n] maximum-likelihood BT rewards (mean zero per context).
      log_policy: [C, n] log of mu exp(r / tau) / Z.
    """

    rewards: np.ndarray
    log_policy: LogPolicy

    @property
    def policy(self) -> Policy:
        return np.exp(self.log_policy)


def nash_md_schedule(tau: float, steps: int) -> np.ndarray:
    """Theorem 1's step sizes eta_t = 2 / (tau (t + 2)), t = 0..steps-1 ([steps])."""
    return 2.0 / (tau * (np.arange(steps, dtype=np.float64) + 2.0))


def _etas(tau: float, steps: int, eta: float | Array | None) -> np.ndarray:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if eta is None:
        if not tau > 0:
            raise ValueError(f"the Theorem 1 schedule needs tau > 0, got {tau}")
        return nash_md_schedule(tau, steps)
    etas = np.broadcast_to(np.asarray(eta, dtype=np.float64), (steps,))
    if np.any(etas <= 0):
        raise ValueError(f"step sizes must be > 0, got min eta = {etas.min()}")
    # eta_t tau <= 1 keeps the mixture weight of eq. 3 in [0, 1].
    if np.any(etas * tau > 1.0 + 1e-12):
        raise ValueError(f"need eta * tau <= 1 (eq. 3), got eta = {etas.max():g}, tau = {tau:g}")
    return etas


def _log_init(game: games_lib.Game, init: Array | None) -> np.ndarray:
    if init is None:
        return np.log(game.ref)
    init = np.asarray(init, dtype=np.float64)
    init = np.broadcast_to(init, game.ref.shape)
    if np.any(init <= 0):
        raise ValueError("init must have full support (every entry > 0)")
    return np.log(init / init.sum(-1, keepdims=True))


def _log_mix(log_a, log_b, w):
    # log((1 - w) a + w b) for a weight w in [0, 1], without leaving log space.
    return jnp.logaddexp(jnp.log1p(-w) + log_a, jnp.log(w) + log_b)


# The mirror-descent variants differ only in their opponent (and in which
# average they keep). The choice is a traced integer rather than a static
# argument so that all of them share one compiled loop per game shape.
_OPPONENTS = {"mixture": 0, "current": 1, "ema": 2}


def _md_step(carry, xs, *, pref, log_mu, tau, opponent, ema_decay):
    """One regularised mirror-descent step; the opponent is the only switch."""
    log_pi, log_avg = carry
    t, eta = xs
    alpha = eta * tau
    # Geometric mixture pi_t^mu ∝ pi_t^(1 - eta tau) mu^(eta tau) (eq. 3). It is the
    # KL anchor of every variant here; with tau = 0 it is just pi_t (plain MWU).
    log_mix = jax.nn.log_softmax((1.0 - alpha) * log_pi + alpha * log_mu, axis=-1)
    # Nash-MD (eq. 4) plays against pi_t^mu, OMD (eqs. 7-8) against pi_t, and
    # Nash-EMA against the moving average of past policies.
    log_opp = jnp.select([opponent == 0, opponent == 1], [log_mix, log_pi], log_avg)
    g = jnp.einsum("cij,cj->ci", pref, jnp.exp(log_opp))  # P(y > opponent)
    # Closed form of the step (eq. 5): pi_{t+1} ∝ pi_t^mu exp(eta P(y > opponent)).
    log_new = jax.nn.log_softmax(log_mix + eta * g, axis=-1)
    # Nash-EMA keeps ema_{t+1} = d ema_t + (1 - d) pi_{t+1}; the others keep the
    # uniform average of pi_0..pi_{t+1}.
    weight = jnp.where(opponent == 2, 1.0 - ema_decay, 1.0 / (t + 2.0))
    return log_new, _log_mix(log_avg, log_new, weight)


def _fp_step(carry, xs, *, pref, log_mu, tau, regularised):
    """Fictitious play (§5): best response to the average of past policies."""
    _, log_avg = carry
    t, _ = xs
    g = jnp.einsum("cij,cj->ci", pref, jnp.exp(log_avg))
    if regularised:
        # Regularised best response: the Gibbs policy mu exp(P(y > avg) / tau) / Z.
        log_new = jax.nn.log_softmax(log_mu + g / tau, axis=-1)
    else:
        best = jax.nn.one_hot(jnp.argmax(g, axis=-1), g.shape[-1], dtype=g.dtype)
        log_new = jnp.where(best > 0, 0.0, -jnp.inf)
    return log_new, _log_mix(log_avg, log_new, 1.0 / (t + 2.0))


def _scan(step, log_pi0, etas, record_all):
    """Runs `step` over (t, eta_t) from (pi_0, avg_0) = (log_pi0, log_pi0).

    Returns:
      (log pi, log avg), each [steps + 1, C, n] if `record_all` else [1, C, n].
    """

    def body(carry, xs):
        carry = step(carry, xs)
        return carry, carry if record_all else None

    ts = jnp.arange(etas.shape[0], dtype=etas.dtype)
    final, hist = jax.lax.scan(body, (log_pi0, log_pi0), (ts, etas))
    if record_all:
        return tuple(
            jnp.concatenate([x0[None], h]) for x0, h in zip((log_pi0, log_pi0), hist, strict=True)
        )
    return tuple(x[None] for x in final)


@functools.partial(jax.jit, static_argnames=("kind", "record_all", "regularised"))
def _run(pref, log_mu, log_pi0, etas, tau, ema_decay, opponent, *, kind, record_all, regularised):
    if kind == "md":
        step = functools.partial(
            _md_step, pref=pref, log_mu=log_mu, tau=tau, opponent=opponent, ema_decay=ema_decay
        )
    else:
        step = functools.partial(
            _fp_step, pref=pref, log_mu=log_mu, tau=tau, regularised=regularised
        )

    return _scan(step, log_pi0, etas, record_all)


def _run_inputs(game, init, etas, tau, dtype):
    """(P [C, n, n], log mu [C, n], log pi_0 [C, n], etas [T], tau) as `dtype` arrays."""
    return (
        jnp.asarray(game.pref, dtype),
        jnp.asarray(np.log(game.ref), dtype),
        jnp.asarray(_log_init(game, init), dtype),
        jnp.asarray(etas, dtype),
        jnp.asarray(tau, dtype),
    )


def _trajectory(
    name, game, tau, etas, init, record, dtype, *, kind, opponent="mixture", ema_decay=0.0
):
    if record not in ("all", "last"):
        raise ValueError(f"record must be 'all' or 'last', got {record!r}")
    with jax.enable_x64(True):
        log_pi, log_avg = _run(
            *_run_inputs(game, init, etas, tau, dtype),
            jnp.asarray(ema_decay, dtype),
            jnp.asarray(_OPPONENTS[opponent]),
            kind=kind,
            record_all=record == "all",
            # Only fictitious play branches on it (Gibbs vs pure best response).
            regularised=kind == "fp" and tau > 0,
        )
        log_pi, log_avg = np.asarray(log_pi), np.asarray(log_avg)
    steps = np.arange(len(etas) + 1) if record == "all" else np.array([len(etas)])
    return Trajectory(name, steps, log_pi, log_avg)


def nash_md(
    game: games_lib.Game,
    tau: float,
    steps: int,
    *,
    eta: float | Array | None = None,
    init: Array | None = None,
    record: Record = "all",
    dtype: DType = jnp.float64,
) -> Trajectory:
    """Nash-MD (§6, eqs. 3-5): last-iterate convergence to pi*_tau.

    log pi_{t+1} = (1 - eta_t tau) log pi_t + eta_t tau log mu + eta_t P(y > pi_t^mu) + c_t.
    With the default schedule eta_t = 2 / (tau (t + 2)), Theorem 1 gives
    KL(pi*_tau, pi_T) <= 8 / (tau^2 (T + 1)), independently of n and min mu.
    Since eta_0 tau = 1, pi_1 does not depend on the start.

    Args:
      game: the game.
      tau: regularisation, > 0.
      steps: number of updates T.
      eta: None for Theorem 1's schedule, a constant, or [T] step sizes; each
        must satisfy eta * tau <= 1.
      init: optional [C, n] (or [n]) full-support start; mu by default.
      record: "all" keeps pi_0..pi_T, "last" only pi_T (large benchmarks).
      dtype: compute dtype (float64 for certificates, float32 for speed).

    Returns:
      The Trajectory.
    """
    if not tau > 0:
        raise ValueError(f"Nash-MD needs tau > 0, got {tau}")
    etas = _etas(tau, steps, eta)
    name = "nash-md" if eta is None else "nash-md-const"
    return _trajectory(name, game, tau, etas, init, record, dtype, kind="md", opponent="mixture")


def online_mirror_descent(
    game: games_lib.Game,
    tau: float,
    steps: int,
    *,
    eta: float | Array | None = None,
    init: Array | None = None,
    record: Record = "all",
    dtype: DType = jnp.float64,
) -> Trajectory:
    """The paper's OMD on the regularised game (eqs. 7-8): pi_{t+1} ∝ pi_t^mu exp(eta P(y > pi_t)).

    Identical to `nash_md` except that the opponent is the current policy pi_t
    instead of the mixture pi_t^mu; this is OMD on P_tau with the KL term
    linearised at pi_t. Arguments as in `nash_md` (tau = 0 is allowed with a
    constant eta and gives `self_play`).
    """
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    etas = _etas(tau, steps, eta)
    name = "omd" if tau > 0 else "self-play"
    return _trajectory(name, game, tau, etas, init, record, dtype, kind="md", opponent="current")


def self_play(
    game: games_lib.Game,
    steps: int,
    *,
    eta: float = 1.0,
    init: Array | None = None,
    record: Record = "all",
    dtype: DType = jnp.float64,
) -> Trajectory:
    """Unregularised self-play multiplicative weights, pi_{t+1} ∝ pi_t exp(eta P(y > pi_t)).

    A no-regret learner in self-play: its *average* converges to a Nash
    equilibrium of eq. 1, but its last iterate cycles (§5; checked on the dice).
    """
    return online_mirror_descent(game, 0.0, steps, eta=eta, init=init, record=record, dtype=dtype)


def nash_ema(
    game: games_lib.Game,
    tau: float,
    steps: int,
    *,
    eta: float | Array,
    ema_decay: float = 0.9,
    init: Array | None = None,
    record: Record = "all",
    dtype: DType = jnp.float64,
) -> Trajectory:
    """Tabular Nash-EMA: the mirror-descent step against an EMA of past policies.

    pi_{t+1} ∝ pi_t^mu exp(eta P(y > ema_t)), ema_{t+1} = d ema_t + (1 - d) pi_{t+1}.
    This is the policy-space version of Nash-EMA-PG (§7), whose alternative
    policy uses an EMA of parameters, a first-order approximation of this EMA
    mixture of policies (§5). `log_averages` records the EMA itself (the
    EMA* policy of §8). ema_decay = 0 recovers `online_mirror_descent`.

    Args:
      game, tau, steps, eta, init, record, dtype: as in `nash_md`.
      ema_decay: d in [0, 1).
    """
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    etas = _etas(tau, steps, eta)
    return _trajectory(
        "nash-ema",
        game,
        tau,
        etas,
        init,
        record,
        dtype,
        kind="md",
        opponent="ema",
        ema_decay=ema_decay,
    )


def fictitious_play(
    game: games_lib.Game,
    tau: float,
    steps: int,
    *,
    init: Array | None = None,
    record: Record = "all",
    dtype: DType = jnp.float64,
) -> Trajectory:
    """Fictitious play (§5): pi_{t+1} = best response to (1/(t+1)) sum_{s<=t} pi_s.

    With tau > 0 the best response is the regularised (Gibbs) one,
    mu exp(P(y > avg) / tau) / Z, and both the average and the last iterate
    approach pi*_tau; with tau = 0 it is a pure best response (ties to the
    lowest index) and only the average converges.
    """
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    etas = np.zeros(steps)  # unused: fictitious play has no step size
    return _trajectory("fictitious-play", game, tau, etas, init, record, dtype, kind="fp")


@eq_lib.x64
def best_response_to_ref(game: games_lib.Game, tau: float) -> LogPolicy:
    """The regularised best response to mu, log of mu exp(P(y > mu) / tau) / Z.

    This is the beta = 1 ("BR") end of Nash-MD-PG (§7): it optimises against the
    reference only and, in the paper's experiments, over-exploits the preference
    model. Returns [C, n] log-probabilities.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    pref, mu = jnp.asarray(game.pref), jnp.asarray(game.ref)
    return jax.nn.log_softmax(jnp.log(mu) + jnp.einsum("cij,cj->ci", pref, mu) / tau, axis=-1)


def _bt_nll(r, pref, w):
    # Expected negative log-likelihood of BT on ordered pairs (y, y') ~ w with
    # label "y wins" ~ Bernoulli(P[y, y']) (§2, BT model): the logistic loss of the
    # reward differences, in the solver's dtype.
    d = r[:, None] - r[None, :]
    return jnp.sum(w * preference_math.logistic_loss(d, pref, dtype=pref.dtype))


def _bt_newton(pref, w, iters):
    n = pref.shape[-1]
    # The loss is invariant to r + c; adding ones/n pins that direction so the
    # Newton system is solvable, and the jitter covers vanishing pair weights.
    pin = jnp.ones((n, n), pref.dtype) / n + 1e-12 * jnp.eye(n, dtype=pref.dtype)
    alphas = jnp.asarray(0.5 ** np.arange(20), pref.dtype)

    def body(_, r):
        # The BT preference of `preference_math.bradley_terry`, on device (jax.nn.sigmoid).
        sig = jax.nn.sigmoid(r[:, None] - r[None, :])
        # d loss / d r_k = -sum_j (e_kj - e_jk) with e = w (P - sigmoid(r_i - r_j)).
        e = w * (pref - sig)
        g = -(e.sum(1) - e.sum(0))
        # Hessian: the graph Laplacian of the symmetrised weights w sigma (1 - sigma).
        h = w * sig * (1.0 - sig)
        h = h + h.T
        hess = jnp.diag(h.sum(1)) - h
        d = -jnp.linalg.solve(hess + pin * (jnp.trace(hess) / n + 1.0), g)
        # Armijo backtracking, candidates evaluated together.
        losses = jax.vmap(lambda a: _bt_nll(r + a * d, pref, w))(alphas)
        ok = losses <= _bt_nll(r, pref, w) + 1e-4 * alphas * jnp.dot(g, d)
        k = jnp.where(jnp.any(ok), jnp.argmax(ok), jnp.argmin(losses))
        r = r + alphas[k] * d
        return r - jnp.mean(r)

    return jax.lax.fori_loop(0, iters, body, jnp.zeros(n, pref.dtype))


@functools.partial(jax.jit, static_argnames=("iters",))
def _fit_bt(pref, weights, iters):
    return jax.vmap(functools.partial(_bt_newton, iters=iters))(pref, weights)


@eq_lib.x64
def fit_bradley_terry(
    game: games_lib.Game, sampling: Array | None = None, *, iters: int = 60
) -> np.ndarray:
    """Maximum-likelihood BT rewards for pairs drawn from a sampling distribution.

    The *expected* log-likelihood under the sampling distribution is maximised
    (no finite-sample noise) by damped Newton. The optimum satisfies, for every y
    in the support, E_{y' ~ pi}[P(y > y') - sigmoid(r(y) - r(y'))] = 0 when pairs
    are drawn from pi x pi: it depends on pi whenever P is not exactly BT (§3.3,
    Proposition 2 / Theorem 2 in App. A/B).

    Args:
      game: the game.
      sampling: [C, n] (or [n]) policy, pairs drawn from sampling x sampling;
        [C, n, n] explicit ordered-pair weights; None = mu x mu.
      iters: Newton iterations (quadratic convergence; 60 is ample).

    Returns:
      [C, n] rewards, mean zero per context.
    """
    if sampling is None:
        sampling = game.ref
    s = np.asarray(sampling, dtype=np.float64)
    if s.ndim == 1 or s.shape == game.ref.shape:
        s = np.broadcast_to(s, game.ref.shape)
        weights = s[:, :, None] * s[:, None, :]
    else:
        weights = np.broadcast_to(s, game.pref.shape)
    if np.any(weights < 0) or np.any(weights.sum((-1, -2)) <= 0):
        raise ValueError("sampling weights must be non-negative with a positive total per context")
    weights = weights / weights.sum((-1, -2), keepdims=True)
    return _fit_bt(jnp.asarray(game.pref), jnp.asarray(weights), iters)


def rlhf(game: games_lib.Game, tau: float, *, sampling: Array | None = None) -> RLHFResult:
    """The RLHF pipeline: BT reward fit, then the KL-regularised reward optimum.

    pi_RLHF = argmax_pi E_pi[r] - tau KL(pi, mu) = mu exp(r / tau) / Z. Unlike
    pi*_tau it depends on the sampling distribution of the reward data (§3.3)
    and can jump under small changes of the population (§3.2).

    Args:
      game: the game.
      tau: regularisation, > 0 (small tau ~ unregularised reward maximisation).
      sampling: see `fit_bradley_terry`.

    Returns:
      An RLHFResult.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    rewards = fit_bradley_terry(game, sampling)
    logits = np.log(game.ref) + rewards / tau
    log_pi = logits - np.max(logits, -1, keepdims=True)
    log_pi = log_pi - np.log(np.sum(np.exp(log_pi), -1, keepdims=True))
    return RLHFResult(rewards, log_pi)


# --------------------------------------------------------------------------
# Online IPO and IPO-MD (Calandriello et al. 2024; IPO: Azar et al. 2023).
# --------------------------------------------------------------------------


def _ipo_grad(pref, log_mu, log_pi, log_rho, tau):
    """Exact gradient in the logits of the IPO population loss, rho held fixed.

    The loss (Azar et al. 2023, the IPO objective; sampled online in Calandriello
    et al. 2024) is, per context and up to a constant,
      L(pi; rho) = E_{y, y' ~ rho} [(h_pi(y, y') - (P(y > y') - 1/2) / tau)^2],
      h_pi(y, y') = g(y) - g(y'),  g = log pi - log mu.
    Since P - 1/2 is antisymmetric, dL/dg(y) = 4 rho(y) a(y) with
      a(y) = sum_y' rho(y') [g(y) - g(y') - (P(y, y') - 1/2) / tau]
           = g(y) - E_rho[g] - P(y > rho) / tau + 1 / (2 tau),
    and through the softmax dg(y)/dtheta(k) = 1[y = k] - pi(k). Note sum_y rho(y) a(y)
    = 1/(2 tau) - rho^T P rho / tau = 0 (rho^T P rho = 1/2), so the softmax term
    vanishes: L depends on g only through differences.

    Args:
      pref: [C, n, n] P(y > y').
      log_mu: [C, n] log mu.
      log_pi: [C, n] log pi (normalised).
      log_rho: [C, n] log of the sampling distribution (normalised).
      tau: regularisation, > 0.

    Returns:
      [C, n] gradient of L with respect to the logits theta (pi = softmax(theta)).
    """
    rho = jnp.exp(log_rho)
    g = log_pi - log_mu
    a = (
        g
        - jnp.sum(rho * g, axis=-1, keepdims=True)
        - jnp.einsum("cij,cj->ci", pref, rho) / tau
        + 0.5 / tau
    )
    d = 4.0 * rho * a
    return d - jnp.exp(log_pi) * jnp.sum(d, axis=-1, keepdims=True)


def _ipo_log_rho(log_pi, log_mu, beta):
    # IPO-MD samples from the geometric mixture pi^(1 - beta) mu^beta / Z, the same
    # mixture as Nash-MD's eq. 3 (with beta in place of eta tau); beta = 0 is online IPO.
    return jax.nn.log_softmax((1.0 - beta) * log_pi + beta * log_mu, axis=-1)


def _ipo_step(carry, xs, *, pref, log_mu, tau, beta):
    """One gradient step theta <- theta - eta grad L(pi_theta; sg(rho))."""
    log_pi, log_avg = carry
    t, eta = xs
    # sg(rho): the sampling distribution is a constant of this step (no gradient
    # flows through the samples, as in the online algorithm).
    log_rho = jax.lax.stop_gradient(_ipo_log_rho(log_pi, log_mu, beta))
    grad = _ipo_grad(pref, log_mu, log_pi, log_rho, tau)
    # theta = log pi up to a per-context constant, which the softmax ignores.
    log_new = jax.nn.log_softmax(log_pi - eta * grad, axis=-1)
    return log_new, _log_mix(log_avg, log_new, 1.0 / (t + 2.0))


@functools.partial(jax.jit, static_argnames=("record_all",))
def _run_ipo(pref, log_mu, log_pi0, etas, tau, beta, *, record_all):
    step = functools.partial(_ipo_step, pref=pref, log_mu=log_mu, tau=tau, beta=beta)

    return _scan(step, log_pi0, etas, record_all)


def _ipo_trajectory(name, game, tau, beta, steps, eta, init, record, dtype):
    if not tau > 0:
        raise ValueError(f"IPO needs tau > 0, got {tau}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if record not in ("all", "last"):
        raise ValueError(f"record must be 'all' or 'last', got {record!r}")
    etas = np.broadcast_to(np.asarray(eta, dtype=np.float64), (steps,))
    if np.any(etas <= 0):
        raise ValueError(f"step sizes must be > 0, got min eta = {etas.min()}")
    with jax.enable_x64(True):
        log_pi, log_avg = _run_ipo(
            *_run_inputs(game, init, etas, tau, dtype),
            jnp.asarray(beta, dtype),
            record_all=record == "all",
        )
        log_pi, log_avg = np.asarray(log_pi), np.asarray(log_avg)
    record_steps = np.arange(steps + 1) if record == "all" else np.array([steps])
    return Trajectory(name, record_steps, log_pi, log_avg)


@eq_lib.x64
def ipo_gradient(game: games_lib.Game, log_pi: Array, tau: float, log_rho: Array) -> np.ndarray:
    """Closed-form gradient of the IPO population loss in the logits, rho fixed.

    See `_ipo_grad` for the loss and the derivation.

    Args:
      game: the game (P and mu).
      log_pi: [C, n] log pi.
      tau: regularisation, > 0.
      log_rho: [C, n] log of the sampling distribution of both y and y'.

    Returns:
      [C, n] float64 dL/dtheta with pi = softmax(theta).
    """
    pref, log_mu, log_pi, log_rho = (
        jnp.asarray(a, jnp.float64) for a in (game.pref, np.log(game.ref), log_pi, log_rho)
    )
    log_pi = jax.nn.log_softmax(log_pi, axis=-1)
    log_rho = jax.nn.log_softmax(log_rho, axis=-1)
    return _ipo_grad(pref, log_mu, log_pi, log_rho, jnp.float64(tau))


def online_ipo(
    game: games_lib.Game,
    tau: float,
    steps: int,
    *,
    eta: float | Array = 0.5,
    init: Array | None = None,
    record: Record = "all",
    dtype: DType = jnp.float64,
) -> Trajectory:
    """Online IPO: exact gradient steps on the IPO loss with pairs from sg(pi).

    theta_{t+1} = theta_t - eta_t grad_theta L(pi_theta; rho = sg(pi_t)), with L the
    IPO population loss (Azar et al. 2023) and rho the current policy, as in the
    online IPO of Calandriello et al. (2024). The gradient is zero at rho = pi
    exactly when log pi = log mu + P(y > pi) / tau + c, i.e. at pi*_tau (§4, eq. 2):
    online IPO and Nash-MD share their fixed point.

    Args:
      game: the game.
      tau: regularisation, > 0 (it scales the regression target (P - 1/2) / tau).
      steps: number of updates T.
      eta: constant step size or [T] step sizes, > 0. The Hessian of L in the
        logits at fixed rho is 4 (diag rho - rho rho^T), whose largest
        eigenvalue is below 4 max rho, so eta <= 0.5 keeps each step stable.
      init: optional [C, n] (or [n]) full-support start; mu by default.
      record: "all" keeps pi_0..pi_T, "last" only pi_T.
      dtype: compute dtype.

    Returns:
      The Trajectory; `log_averages` is the uniform average of pi_0..pi_t.
    """
    return _ipo_trajectory("online-ipo", game, tau, 0.0, steps, eta, init, record, dtype)


def ipo_md(
    game: games_lib.Game,
    tau: float,
    beta: float,
    steps: int,
    *,
    eta: float | Array = 0.5,
    init: Array | None = None,
    record: Record = "all",
    dtype: DType = jnp.float64,
) -> Trajectory:
    """IPO-MD: the IPO loss with pairs from sg(pi^(1-beta) mu^beta / Z).

    Calandriello et al. (2024) sample the pairs of the IPO loss from the
    geometric mixture of Nash-MD (eq. 3) instead of pi. The gradient vanishes
    when log pi = log mu + P(y > pi_mix) / tau + c, i.e. at a fixed point of
    pi ∝ mu exp(P(y > pi_mix) / tau). That is the fixed point of Nash-MD with a
    constant step eta tau = beta (eq. 5 at pi_{t+1} = pi_t), not pi*_tau unless
    beta = 0 or pi*_tau = mu. beta = 0 recovers `online_ipo`.

    Args:
      game, tau, steps, eta, init, record, dtype: as in `online_ipo`.
      beta: mixture weight in [0, 1].

    Returns:
      The Trajectory.
    """
    return _ipo_trajectory("ipo-md", game, tau, beta, steps, eta, init, record, dtype)
