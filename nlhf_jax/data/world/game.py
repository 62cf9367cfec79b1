"""The world's preferences as a small matrix game, solved exactly.

Why this module exists: the world must say *before* any deep training what NLHF and
RLHF should converge to. Summaries are grouped into response types (style x quality),
the type-level preference matrix is measured with the real generator, parser and rater
population, and on that matrix this module computes, with exact numerics:

* a Bradley-Terry reward fitted on pairs drawn from a given distribution (the RLHF
  reward model in the limit of infinite data),
* the RLHF policy mu * exp(r / tau) / Z (KL-regularised reward maximisation),
* the regularised Nash equilibrium pi = mu * exp(P pi / tau) / Z (paper eq. 2 at the
  fixed point of Nash-MD, §6), by Newton's method with a homotopy in tau,
* Condorcet winners and preference cycles.

It deliberately does not import the project's tabular package: the world only needs
these few exact solvers, and keeping them here keeps the data layer self-contained
(numpy only: the preference formulas come from `preference_math`).
"""

import dataclasses
import itertools
from typing import Optional, Sequence

import numpy as np

from nlhf_jax import preference_math
from nlhf_jax.data.world import grammar, parser, raters, styles


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def bt_fit(P: np.ndarray, pair_weights: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """Bradley-Terry rewards minimising cross-entropy to P on weighted pairs.

    Maximises sum_ij W_ij [P_ij log s(r_i - r_j) + P_ji log s(r_j - r_i)] by Newton's
    method (the objective is concave; a tiny ridge fixes the additive gauge).

    Args:
      P: [N, N] preference matrix, P + P.T = 1.
      pair_weights: [N, N] probability of drawing the ordered pair (i, j).
      tol: stop when the Newton step is below this.

    Returns:
      r: [N] rewards, centred under the row marginal of `pair_weights`.
    """
    W = 0.5 * (pair_weights + pair_weights.T)
    marginal = W.sum(1)
    r = np.zeros(len(P))
    for _ in range(200):
        s = preference_math.bradley_terry(r[:, None], r[None, :])
        grad = 2.0 * (W * (P - s)).sum(1)
        h = 2.0 * W * s * (1.0 - s)
        hess = h - np.diag(h.sum(1)) - 1e-9 * np.eye(len(P)) - np.outer(marginal, marginal)
        step = np.linalg.solve(hess, -grad)
        r = r + step
        r -= marginal @ r
        if np.abs(step).max() < tol:
            break
    return r


def rlhf_policy(mu: np.ndarray, r: np.ndarray, tau: float) -> np.ndarray:
    """argmax_pi E_pi[r] - tau KL(pi || mu) = mu exp(r / tau) / Z, shape [N]."""
    with np.errstate(divide="ignore"):
        return _softmax(np.log(mu) + r / tau)


def regularized_nash(
    P: np.ndarray, mu: np.ndarray, tau: float, tol: float = 1e-12
) -> np.ndarray:
    """The regularised Nash equilibrium of the preference game (paper §4, eq. 2).

    Solves pi = mu exp(P pi / tau) / Z, the unique fixed point for tau > 0. Newton's
    method on F(pi) = pi - softmax(log mu + P pi / tau) with backtracking, warm-started
    along a geometric path of temperatures from 1 down to tau, where each problem is
    close to the previous one.

    Args:
      P: [N, N] preference matrix.
      mu: [N] reference policy, all entries > 0.
      tau: regularisation strength, > 0.
      tol: required max-abs residual of the fixed-point equation.

    Returns:
      pi: [N].

    Raises:
      RuntimeError: if the residual stays above `tol`.
    """
    if (np.asarray(mu) <= 0).any():
        raise ValueError(f"regularized_nash needs a reference with full support, got mu = {mu}")
    log_mu = np.log(mu)
    pi = mu.copy()
    residual = np.inf
    for t in np.geomspace(max(1.0, tau), tau, 24):
        for _ in range(100):
            s = _softmax(log_mu + P @ pi / t)
            F = pi - s
            residual = np.abs(F).max()
            if residual < tol:
                break
            J = np.eye(len(mu)) - (np.diag(s) - np.outer(s, s)) @ P / t
            step = np.linalg.solve(J, -F)
            a = 1.0
            while True:
                new = pi + a * step
                if (new > 0).all():
                    new_res = np.abs(new - _softmax(log_mu + P @ new / t)).sum()
                    if new_res < np.abs(F).sum() or a < 1e-8:
                        break
                a *= 0.5
            pi = np.maximum(new, 1e-300)
            pi /= pi.sum()
    residual = np.abs(pi - _softmax(log_mu + P @ pi / tau)).max()
    if residual > tol:
        raise RuntimeError(f"Nash solver residual {residual:.2e} > {tol:.0e} at tau={tau}")
    return pi


def condorcet_winner(P: np.ndarray) -> Optional[int]:
    """The row that beats every other head to head (P > 1/2), if any."""
    for i in range(len(P)):
        if all(P[i, j] > 0.5 for j in range(len(P)) if j != i):
            return i
    return None


def three_cycles(P: np.ndarray) -> list[tuple[int, int, int]]:
    """All (a, b, c), a smallest, with a > b > c > a head to head."""
    return [
        c
        for c in itertools.permutations(range(len(P)), 3)
        if c[0] == min(c) and P[c[0], c[1]] > 0.5 and P[c[1], c[2]] > 0.5 and P[c[2], c[0]] > 0.5
    ]


@dataclasses.dataclass(frozen=True)
class TypeGame:
    """Preferences between response types (style, quality), measured on real text.

    Type index = style * len(QUALITIES) + quality.

    Attributes:
      P: [S*Q, S*Q] mean P*(type i > type j) over posts, both summaries of one post.
      by_type: [K, S*Q, S*Q] the same per rater type.
    """

    P: np.ndarray
    by_type: np.ndarray

    @property
    def n_qualities(self) -> int:
        return len(styles.QUALITIES)

    def style_matrix(self, quality_mix: Sequence[float]) -> np.ndarray:
        """[S, S] style-level matrix when both sides draw quality from `quality_mix`."""
        q = np.asarray(quality_mix)
        n = len(styles.STYLES)
        blocks = self.P.reshape(n, self.n_qualities, n, self.n_qualities)
        return np.einsum("iajb,a,b->ij", blocks, q, q)


def measure_type_game(
    population: raters.RaterPopulation, n_posts: int = 256, seed: int = 0
) -> TypeGame:
    """Writes one summary of every (style, quality) for `n_posts` posts and judges them.

    Args:
      population: the rater population.
      n_posts: posts to average over.
      seed: seed of the posts and summaries (a world's seed gives its own measurement).

    Returns:
      The measured `TypeGame`.
    """
    rng = np.random.default_rng([seed, 7])
    # Garbled summaries draw from their own stream, so the posts and the other types'
    # texts are those of generator version 1 (which had no garbled quality).
    rng_garbled = np.random.default_rng([seed, 8])
    n_types = len(styles.STYLES) * len(styles.QUALITIES)
    infos, texts = [], []
    for i in range(n_posts):
        post = grammar.sample_post(rng, f"game-{i}")
        info = parser.parse_post(post.text)
        for style in range(len(styles.STYLES)):
            for quality in range(len(styles.QUALITIES)):
                infos.append(info)
                r = rng_garbled if quality == styles.GARBLED else rng
                texts.append(styles.render_summary(r, post, style, quality))
    u = population.utilities(parser.featurize(infos, texts))  # [K, n_posts * n_types]
    u = u.reshape(len(population.types), n_posts, n_types)
    temperatures = population.temperatures[:, None, None, None]
    by_type = preference_math.logistic_raters(u[:, :, :, None], u[:, :, None, :], temperatures).mean(1)
    return TypeGame(P=np.einsum("k,kij->ij", population.weights, by_type), by_type=by_type)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Expected outcome of the deep experiments at one tau.

    Attributes:
      tau: the regularisation strength of both methods.
      nash: [N] the regularised Nash equilibrium.
      rlhf: [N] the RLHF policy mu exp(r / tau) / Z.
      nash_vs_rlhf, nash_vs_sft, rlhf_vs_sft: P(pi > pi') for those pairs.
    """

    tau: float
    nash: np.ndarray
    rlhf: np.ndarray
    nash_vs_rlhf: float
    nash_vs_sft: float
    rlhf_vs_sft: float


def predict(
    P: np.ndarray, mu: np.ndarray, reward: np.ndarray, taus: Sequence[float]
) -> list[Prediction]:
    """Nash and RLHF solutions and their head-to-head preferences, per tau.

    Args:
      P: [N, N] preference matrix.
      mu: [N] the SFT (reference) policy.
      reward: [N] the Bradley-Terry reward the RLHF policy maximises.
      taus: regularisation strengths.

    Returns:
      One `Prediction` per tau.
    """
    out = []
    for tau in taus:
        m = predict_mixed(P, mu, reward, tau, tau)
        out.append(Prediction(tau=float(tau), nash=m.nash, rlhf=m.rlhf, nash_vs_rlhf=m.nash_vs_rlhf,
                              nash_vs_sft=m.nash_vs_sft, rlhf_vs_sft=m.rlhf_vs_sft))
    return out


@dataclasses.dataclass(frozen=True)
class MixedPrediction:
    """Expected outcome when Nash and RLHF were trained with different taus.

    The deep runs need not share a tau (the demo trains Nash-MD-PG at 0.008 and RLHF at
    0.05), and `Prediction` compares both at one tau; this is the prediction for the
    pair of policies actually trained.

    Attributes:
      tau_nash, tau_rlhf: the regularisation strength of each method.
      nash: [N] the regularised Nash equilibrium at tau_nash.
      rlhf: [N] the RLHF policy mu exp(r / tau_rlhf) / Z.
      nash_vs_rlhf, nash_vs_sft, rlhf_vs_sft: P(pi > pi') for those pairs.
    """

    tau_nash: float
    tau_rlhf: float
    nash: np.ndarray
    rlhf: np.ndarray
    nash_vs_rlhf: float
    nash_vs_sft: float
    rlhf_vs_sft: float


def predict_mixed(
    P: np.ndarray, mu: np.ndarray, reward: np.ndarray, tau_nash: float, tau_rlhf: float
) -> MixedPrediction:
    """`predict` with each method at its own tau.

    Args:
      P: [N, N] preference matrix (also the judge of the head-to-head numbers).
      mu: [N] the SFT (reference) policy.
      reward: [N] the Bradley-Terry reward the RLHF policy maximises.
      tau_nash: tau of the regularised Nash equilibrium (paper §4, eq. 2).
      tau_rlhf: tau of the RLHF policy mu exp(r / tau) / Z.

    Returns:
      The `MixedPrediction`.
    """
    nash = regularized_nash(P, mu, tau_nash)
    rlhf = rlhf_policy(mu, reward, tau_rlhf)
    return MixedPrediction(
        tau_nash=float(tau_nash),
        tau_rlhf=float(tau_rlhf),
        nash=nash,
        rlhf=rlhf,
        nash_vs_rlhf=float(nash @ P @ rlhf),
        nash_vs_sft=float(nash @ P @ mu),
        rlhf_vs_sft=float(rlhf @ P @ mu),
    )
