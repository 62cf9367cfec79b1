"""Tabular preference games: the objects every tabular solver and test works on.

A *game* is a batch of C independent contexts (prompts x). In each context there
are n responses, a preference matrix P[y, y'] = P(y > y' | x) and a reference
policy mu(. | x) (the SFT policy of the paper). The paper (§2-§4) only assumes
that P is antisymmetric, P + P^T = 1, with entries in [0, 1]; it does *not*
assume Bradley-Terry. Keeping P, mu and their validation in one place means
solvers never have to re-check their inputs, and the paper's worked examples
(App. A, App. C.1, App. C.2, §3.2) are built once, here, where their derivation
is written down.

Games are host-side NumPy (float64) objects: they are small, exact, and
converted to JAX arrays by the solvers.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from nlhf_jax import preference_math

# Type aliases. Shapes use C = contexts, n = responses, K = rater types.
Array = np.ndarray
PrefMatrix = np.ndarray  # [C, n, n], P[c, y, y'] = P(y > y' | x_c)
Policy = np.ndarray  # [C, n], rows on the simplex

# Default tolerance for the antisymmetry / normalisation checks. Looser than
# float64 round-off so that matrices built by arithmetic (sums of sigmoids,
# Fractions converted to float) pass, tight enough to catch real mistakes.
_ATOL = 1e-9

# The three dice of App. C.1: each is rolled once and the larger face wins.
DICE_FACES: tuple[tuple[int, ...], ...] = ((2, 4, 9), (1, 6, 8), (3, 5, 7))

# Elo scores of the constrained exact-BT example of App. A.
BT_CONSTRAINED_ELO: tuple[float, float, float] = (0.0, float(np.log(9.0)), float(np.log(2.0)))


@dataclasses.dataclass(frozen=True, eq=False)
class Game:
    """A batch of tabular preference games with a reference policy.

    Attributes:
      pref: [C, n, n] float64, pref[c, y, y'] = P(y > y' | x_c); antisymmetric
        (P + P^T = 1, so the diagonal is 1/2) with entries in [0, 1].
      ref: [C, n] float64, the reference policy mu(. | x_c); strictly positive
        and summing to 1 (full support is what makes KL(pi, mu) finite for
        every pi, §2).
      name: short human-readable name, used by the CLI and plots.
      labels: optional names of the n responses.
    """

    pref: PrefMatrix
    ref: Policy
    name: str = "game"
    labels: tuple[str, ...] | None = None

    def __post_init__(self):
        pref = np.array(self.pref, dtype=np.float64)
        ref = np.array(self.ref, dtype=np.float64)
        if pref.ndim == 2:
            pref = pref[None]
        if ref.ndim == 1:
            ref = np.broadcast_to(ref, (pref.shape[0], ref.shape[0])).copy()
        validate(pref, ref)
        if self.labels is not None and len(self.labels) != pref.shape[-1]:
            raise ValueError(
                f"labels has {len(self.labels)} names but the game has {pref.shape[-1]} responses"
            )
        pref.setflags(write=False)
        ref.setflags(write=False)
        # Frozen dataclass: bypass __setattr__ to store the normalised arrays.
        object.__setattr__(self, "pref", pref)
        object.__setattr__(self, "ref", ref)
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def num_contexts(self) -> int:
        return self.pref.shape[0]

    @property
    def num_actions(self) -> int:
        return self.pref.shape[-1]

    def with_ref(self, ref: Array) -> Game:
        """Returns the same preferences with another reference policy ([n] or [C, n])."""
        return Game(self.pref, ref, name=self.name, labels=self.labels)


def validate(pref: Array, ref: Array, *, atol: float = _ATOL) -> None:
    """Checks that (pref, ref) is a valid batch of preference games.

    Args:
      pref: [C, n, n] preference matrices.
      ref: [C, n] reference policies.
      atol: absolute tolerance for P + P^T = 1 and sum(mu) = 1.

    Raises:
      ValueError: naming the context index and the offending entry or value when
        shapes disagree, an entry is not finite or lies outside [0, 1], the
        matrix is not antisymmetric, or mu has a non-positive entry or does not
        sum to 1.
    """
    pref = np.asarray(pref, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pref.ndim != 3 or pref.shape[1] != pref.shape[2]:
        raise ValueError(f"preference matrices must have shape [C, n, n], got {pref.shape}")
    if pref.shape[-1] < 2:
        raise ValueError(f"a game needs at least 2 responses, got n={pref.shape[-1]}")
    if ref.shape != pref.shape[:2]:
        raise ValueError(
            f"reference policy must have shape [C, n] = {pref.shape[:2]}, got {ref.shape}"
        )
    for c in range(pref.shape[0]):
        p, mu = pref[c], ref[c]
        bad = np.argwhere(~np.isfinite(p))
        if bad.size:
            i, j = bad[0]
            raise ValueError(f"context {c}: P[{i}, {j}] = {p[i, j]} is not finite")
        bad = np.argwhere((p < -atol) | (p > 1 + atol))
        if bad.size:
            i, j = bad[0]
            raise ValueError(
                f"context {c}: P[{i}, {j}] = {p[i, j]:.6g} lies outside [0, 1] "
                "(entries are probabilities P(y_i > y_j))"
            )
        asym = np.abs(p + p.T - 1.0)
        if asym.max() > atol:
            i, j = np.unravel_index(np.argmax(asym), asym.shape)
            raise ValueError(
                f"context {c}: P is not antisymmetric: P[{i}, {j}] + P[{j}, {i}] = "
                f"{p[i, j] + p[j, i]:.6g}, expected 1 (P + P^T = 1)"
            )
        if not np.all(np.isfinite(mu)):
            raise ValueError(f"context {c}: mu has a non-finite entry: {mu}")
        bad = np.flatnonzero(mu <= 0)
        if bad.size:
            raise ValueError(
                f"context {c}: mu[{bad[0]}] = {mu[bad[0]]:.6g}; the reference policy "
                "needs full support (every entry > 0)"
            )
        if abs(mu.sum() - 1.0) > atol:
            raise ValueError(f"context {c}: mu sums to {mu.sum():.12g}, expected 1")


def stack(games: Sequence[Game], name: str | None = None) -> Game:
    """Concatenates games with the same number of responses along the context axis."""
    sizes = {g.num_actions for g in games}
    if len(sizes) != 1:
        raise ValueError(f"cannot stack games with different numbers of responses: {sizes}")
    return Game(
        np.concatenate([g.pref for g in games]),
        np.concatenate([g.ref for g in games]),
        name=name or "+".join(g.name for g in games),
    )


def _ref_or_uniform(ref: Array | None, contexts: int, n: int) -> Policy:
    if ref is None:
        return np.full((contexts, n), 1.0 / n)
    ref = np.asarray(ref, dtype=np.float64)
    return np.broadcast_to(ref, (contexts, n)).copy()


# --------------------------------------------------------------------------
# The paper's examples.
# --------------------------------------------------------------------------


def dice(ref: Array | None = None, faces: Sequence[Sequence[int]] = DICE_FACES) -> Game:
    """Non-transitive dice (App. C.1): P(die i > die j) by enumerating face pairs.

    With the default faces A = {2,4,9}, B = {1,6,8}, C = {3,5,7} every link of the
    cycle A > B > C > A is won with probability 5/9, so no scalar reward can
    represent P; the unregularised equilibrium is uniform. Ties count 1/2.

    Args:
      ref: [n] or [1, n] reference policy; uniform when None.
      faces: one sequence of equally likely faces per die.

    Returns:
      A one-context Game with n = len(faces).
    """
    n = len(faces)
    pref = np.empty((n, n))
    for i, j in itertools.product(range(n), repeat=2):
        a, b = np.asarray(faces[i])[:, None], np.asarray(faces[j])[None, :]
        pref[i, j] = np.mean(a > b) + 0.5 * np.mean(a == b)
    labels = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i] for i in range(n)) if n <= 26 else None
    return Game(pref, _ref_or_uniform(ref, 1, n), name="dice", labels=labels)


def three_types(epsilon: float, ref: Array | None = None) -> Game:
    """The three-rater-types population of §3.2.

    Each type is strict on one pair and indifferent (1/2) on the other two:
      type 1, share 1/3 - eps: y2 > y1;
      type 2, share 1/3 + eps/2: y1 > y3;
      type 3, share 1/3 + eps/2: y3 > y2.
    Hence P(y2 > y1) = 2/3 - eps/2 and P(y1 > y3) = P(y3 > y2) = 2/3 + eps/4. For
    |eps| <= 1/3 the Nash equilibrium is (1/3 + eps/2, 1/3 + eps/2, 1/3 - eps)
    (see `three_types_equilibrium`), continuous in eps, whereas a BT reward fit
    followed by reward maximisation jumps from y1 to y2 as eps crosses 0.

    Args:
      epsilon: population shift; shares must stay in [0, 1], i.e. eps in [-2/3, 1/3].
      ref: [n] reference policy; uniform when None.

    Returns:
      A one-context Game with 3 responses.

    Raises:
      ValueError: if a share falls outside [0, 1].
    """
    eps = float(epsilon)
    shares = np.array([1 / 3 - eps, 1 / 3 + eps / 2, 1 / 3 + eps / 2])
    if np.any(shares < -1e-12) or np.any(shares > 1 + 1e-12):
        raise ValueError(
            f"epsilon={eps} gives rater shares {shares.round(4).tolist()}; "
            "need every share in [0, 1], i.e. epsilon in [-2/3, 1/3]"
        )
    type_prefs = np.full((3, 3, 3), 0.5)
    for k, (winner, loser) in enumerate([(1, 0), (0, 2), (2, 1)]):
        type_prefs[k, winner, loser], type_prefs[k, loser, winner] = 1.0, 0.0
    game = mixture(type_prefs, np.clip(shares, 0.0, 1.0), ref=ref)
    return Game(game.pref, game.ref, name=f"three-types(eps={eps:g})", labels=("y1", "y2", "y3"))


def three_types_equilibrium(epsilon: float) -> Array:
    """The closed-form Nash equilibrium of `three_types(epsilon)`, |eps| <= 1/3 (§3.2).

    Derivation: with A = P - 1/2 the cycle y2 > y1 > y3 > y2 has margins
    1/6 - eps/2, 1/6 + eps/4, 1/6 + eps/4; A pi = 0 forces pi1 = pi2 and
    pi3 / pi2 = (1/6 - eps/2) / (1/6 + eps/4), which normalises to the formula.

    Returns:
      [3] float64 policy.
    """
    eps = float(epsilon)
    return np.array([1 / 3 + eps / 2, 1 / 3 + eps / 2, 1 / 3 - eps])


def bt_constrained(ref: Array | None = None) -> Game:
    """The exact Bradley-Terry game of App. A: Elo (0, log 9, log 2).

    P(y_i > y_j) = sigmoid(R_i - R_j) exactly. Restricted to S = {pi : pi(y1) =
    2 pi(y2)}, the expected-Elo maximiser and the preference maximiser differ (see
    `bt_constrained_optima`), showing that even when BT holds, reward and
    preference optimisation disagree once policies are constrained (a KL penalty
    acts like such a constraint).
    """
    game = bradley_terry(np.asarray(BT_CONSTRAINED_ELO)[None], ref=ref)
    return Game(game.pref, game.ref, name="bt-constrained", labels=("y1", "y2", "y3"))


def bt_constrained_optima() -> tuple[Array, Array]:
    """The two constrained optima of App. A: (pi*_P, pi*_R), each [3].

    On S every policy is (2a, a, 1 - 3a), a in [0, 1/3]. Expected Elo is
    a log(9/8) + log 2, maximal at a = 1/3: pi*_R = (2/3, 1/3, 0). The pure
    policy y3 satisfies P(y3 > pi') = 1/2 + a/66 >= 1/2 for every pi' in S, so it
    is the preference-optimal (Nash) policy on S: pi*_P = (0, 0, 1). Then
    P(pi*_P > pi*_R) = (2/3)(2/3) + (1/3)(2/11) = 50/99 > 1/2.
    """
    return np.array([0.0, 0.0, 1.0]), np.array([2 / 3, 1 / 3, 0.0])


# --------------------------------------------------------------------------
# Generic constructors.
# --------------------------------------------------------------------------


def bradley_terry(rewards: Array, ref: Array | None = None, name: str = "bt") -> Game:
    """A Bradley-Terry game, P(y > y') = sigmoid(r(y) - r(y')) (§2).

    Args:
      rewards: [C, n] or [n] rewards (Elo scores).
      ref: [n] or [C, n] reference policy; uniform when None.
      name: game name.
    """
    r = np.atleast_2d(np.asarray(rewards, dtype=np.float64))
    pref = preference_math.bradley_terry(r[:, :, None], r[:, None, :])
    return Game(pref, _ref_or_uniform(ref, r.shape[0], r.shape[1]), name=name)


def random_game(
    contexts: int,
    actions: int,
    *,
    seed: int = 0,
    ref: str | Array = "dirichlet",
    concentration: float = 1.0,
) -> Game:
    """Random antisymmetric preference games (the T5 check of §8.1 uses these).

    The strict upper triangle of each P is uniform on [0, 1], the lower triangle
    is 1 minus its transpose and the diagonal is 1/2.

    Args:
      contexts: C.
      actions: n >= 2.
      seed: NumPy seed; the game is a deterministic function of it.
      ref: "dirichlet" (Dirichlet(concentration) per context, floored at 1e-6 and
        renormalised so mu has full support), "uniform", or an explicit [C, n] / [n].
      concentration: Dirichlet concentration.
    """
    if contexts < 1 or actions < 2:
        raise ValueError(f"need contexts >= 1 and actions >= 2, got {contexts}, {actions}")
    rng = np.random.default_rng(seed)
    upper = rng.uniform(size=(contexts, actions, actions))
    triu = np.triu(np.ones((actions, actions), dtype=bool), k=1)
    pref = np.where(triu, upper, 1.0 - np.swapaxes(upper, 1, 2))
    pref[:, np.arange(actions), np.arange(actions)] = 0.5
    if isinstance(ref, str) and ref == "dirichlet":
        mu = rng.dirichlet(np.full(actions, concentration), size=contexts)
        mu = np.maximum(mu, 1e-6)
        mu /= mu.sum(-1, keepdims=True)
    elif isinstance(ref, str) and ref == "uniform":
        mu = _ref_or_uniform(None, contexts, actions)
    elif isinstance(ref, str):
        raise ValueError(f"ref must be 'dirichlet', 'uniform' or an array, got {ref!r}")
    else:
        mu = _ref_or_uniform(ref, contexts, actions)
    return Game(pref, mu, name=f"random(C={contexts}, n={actions}, seed={seed})")


def mixture(
    type_prefs: Array, weights: Array, ref: Array | None = None, name: str = "mixture"
) -> Game:
    """Population game P = sum_k w_k P_k over K rater types (§2: P* is the chance
    that a random rater prefers y, indifference counted as 1/2).

    Args:
      type_prefs: [K, n, n] or [C, K, n, n] per-type preference matrices.
      weights: [K] or [C, K] non-negative type shares (normalised here).
      ref: reference policy; uniform when None.
      name: game name.
    """
    tp = np.asarray(type_prefs, dtype=np.float64)
    if tp.ndim == 3:
        tp = tp[None]
    w = _normalise_weights(weights, tp.shape[0], tp.shape[1])
    pref = np.einsum("ck,ckij->cij", w, tp)
    return Game(pref, _ref_or_uniform(ref, tp.shape[0], tp.shape[-1]), name=name)


def from_rankings(
    rankings: Array, weights: Array, ref: Array | None = None, name: str = "rankings"
) -> Game:
    """Population of raters each holding a strict ranking (App. C.2 style).

    Args:
      rankings: [K, n] or [C, K, n] integer permutations, best response first.
      weights: [K] or [C, K] non-negative shares.
      ref: reference policy; uniform when None.
      name: game name.

    Example: rankings (0,1,2), (1,2,0), (2,0,1) with equal weights give the
    Condorcet cycle where each link is won 2/3 of the time.
    """
    rk = np.asarray(rankings)
    if rk.ndim == 2:
        rk = rk[None]
    n = rk.shape[-1]
    for c, k in itertools.product(range(rk.shape[0]), range(rk.shape[1])):
        if sorted(rk[c, k].tolist()) != list(range(n)):
            raise ValueError(
                f"context {c}: ranking {k} = {rk[c, k].tolist()} is not a permutation of 0..{n - 1}"
            )
    # Utility = minus the position in the ranking; zero temperature = strict.
    position = np.argsort(rk, axis=-1)
    return from_utilities(-position.astype(np.float64), weights, 0.0, ref=ref, name=name)


def from_utilities(
    utilities: Array,
    weights: Array,
    temperatures: float | Array = 1.0,
    ref: Array | None = None,
    name: str = "utilities",
) -> Game:
    """Mixture of logistic raters: P = sum_k w_k sigmoid((u_k(y) - u_k(y')) / T_k).

    Each rater type is a BT model, but a mixture of BT models is in general not
    BT (nor transitive), which is exactly the situation of §3 where a single
    reward model fails. T_k = 0 means a deterministic rater (ties count 1/2).

    Args:
      utilities: [K, n] or [C, K, n] per-type utilities.
      weights: [K] or [C, K] non-negative shares.
      temperatures: scalar or [K] non-negative temperatures.
      ref: reference policy; uniform when None.
      name: game name.
    """
    u = np.asarray(utilities, dtype=np.float64)
    if u.ndim == 2:
        u = u[None]
    c, k, n = u.shape
    temps = np.broadcast_to(np.asarray(temperatures, dtype=np.float64), (k,))
    if np.any(temps < 0):
        raise ValueError(f"temperatures must be >= 0, got {temps.tolist()}")
    diff = u[:, :, :, None] - u[:, :, None, :]  # [C, K, n, n]
    hard = 0.5 * (1.0 + np.sign(diff))
    safe_t = np.where(temps > 0, temps, 1.0)[None, :, None, None]
    soft = preference_math.logistic_raters(u[:, :, :, None], u[:, :, None, :], safe_t)
    type_prefs = np.where((temps > 0)[None, :, None, None], soft, hard)
    return mixture(type_prefs, _normalise_weights(weights, c, k), ref=ref, name=name)


def _normalise_weights(weights: Array, contexts: int, types: int) -> Array:
    w = np.asarray(weights, dtype=np.float64)
    w = np.broadcast_to(w, (contexts, types)) if w.ndim <= 1 else w
    if w.shape != (contexts, types):
        raise ValueError(
            f"weights must have shape [K] or [C, K] = {(contexts, types)}, got {w.shape}"
        )
    if np.any(w < 0) or np.any(w.sum(-1) <= 0):
        raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
    return w / w.sum(-1, keepdims=True)

