"""Tests for nlhf_jax.tabular.games: the paper's examples and input validation."""

import dataclasses

import numpy as np
import pytest

from nlhf_jax.tabular import equilibrium as eq_lib
from nlhf_jax.tabular import games as games_lib


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------
# The paper's numbers.
# --------------------------------------------------------------------------


def test_dice_cycle_is_five_ninths_on_every_link():
    # App. C.1: A > B > C > A, each with probability 5/9.
    p = games_lib.dice().pref[0]
    a, b, c = 0, 1, 2
    np.testing.assert_allclose([p[a, b], p[b, c], p[c, a]], [5 / 9] * 3, rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.diag(p), 0.5)
    np.testing.assert_allclose(p + p.T, 1.0)


def test_dice_equilibrium_is_uniform_and_every_pure_choice_scores_half():
    game = games_lib.dice()
    lp = eq_lib.nash_lp(game)
    np.testing.assert_allclose(lp.policy[0], np.full(3, 1 / 3), atol=1e-9)
    np.testing.assert_allclose(lp.value, 0.5, atol=1e-9)
    scores = game.pref[0] @ np.full(3, 1 / 3)  # P(y > uniform)
    np.testing.assert_allclose(scores, 0.5, atol=1e-15)


def test_bt_constrained_example_gives_50_over_99():
    # App. A: exact BT with Elo (0, log 9, log 2); P(pi*_P > pi*_R) = 50/99.
    game = games_lib.bt_constrained()
    elo = np.array(games_lib.BT_CONSTRAINED_ELO)
    np.testing.assert_allclose(game.pref[0], _sigmoid(elo[:, None] - elo[None, :]), atol=1e-15)
    pi_p, pi_r = games_lib.bt_constrained_optima()
    value = eq_lib.preference(game.pref, pi_p[None], pi_r[None])[0]
    assert value == pytest.approx(50 / 99, abs=1e-14)
    assert value > 0.5


def test_bt_constrained_optima_are_optimal_on_the_constraint_set():
    # S = {pi(y1) = 2 pi(y2)} = {(2a, a, 1 - 3a)}: check both optima on a grid.
    game = games_lib.bt_constrained()
    pi_p, pi_r = games_lib.bt_constrained_optima()
    grid = np.array([[2 * a, a, 1 - 3 * a] for a in np.linspace(0, 1 / 3, 301)])
    elo = np.array(games_lib.BT_CONSTRAINED_ELO)
    assert np.all(grid @ elo <= pi_r @ elo + 1e-12)  # pi*_R maximises expected Elo on S
    # pi*_P is a maximin (Nash) policy of the preference game restricted to S.
    pay = grid @ game.pref[0] @ grid.T  # pay[i, j] = P(grid_i > grid_j)
    worst_case = pay.min(axis=1)
    worst_p = (pi_p @ game.pref[0] @ grid.T).min()
    assert worst_p == pytest.approx(0.5, abs=1e-12)
    assert worst_case.max() <= worst_p + 1e-12


@pytest.mark.parametrize("eps", [-1 / 3, -0.2, -0.01, 0.0, 0.01, 0.1, 0.25, 1 / 3])
def test_three_types_preferences_and_equilibrium(eps):
    # §3.2: P(y2 > y1) = 2/3 - eps/2, P(y1 > y3) = P(y3 > y2) = 2/3 + eps/4 and
    # the Nash equilibrium (1/3 + eps/2, 1/3 + eps/2, 1/3 - eps).
    game = games_lib.three_types(eps)
    p = game.pref[0]
    np.testing.assert_allclose(
        [p[1, 0], p[0, 2], p[2, 1]], [2 / 3 - eps / 2, 2 / 3 + eps / 4, 2 / 3 + eps / 4], atol=1e-14
    )
    formula = games_lib.three_types_equilibrium(eps)
    np.testing.assert_allclose(formula, [1 / 3 + eps / 2, 1 / 3 + eps / 2, 1 / 3 - eps])
    # The formula is an equilibrium: no pure reply beats it.
    assert eq_lib.exploitability(game.pref, formula[None])[0] == pytest.approx(0.0, abs=1e-14)
    if abs(eps) < 1 / 3 - 1e-9 or eps < 0:
        # The LP finds it too (at eps = 1/3, P(y2 > y1) = 1/2 and it is not unique).
        np.testing.assert_allclose(eq_lib.nash_lp(game).policy[0], formula, atol=1e-7)


def test_three_types_rejects_impossible_shares():
    with pytest.raises(ValueError, match=r"epsilon=0\.5.*epsilon in \[-2/3, 1/3\]"):
        games_lib.three_types(0.5)


# --------------------------------------------------------------------------
# Generic constructors.
# --------------------------------------------------------------------------


def test_condorcet_rankings_give_two_thirds_cycle():
    # App. C.2 style: three strict rankings, equal shares, each link won 2/3.
    game = games_lib.from_rankings([[0, 1, 2], [1, 2, 0], [2, 0, 1]], [1, 1, 1])
    p = game.pref[0]
    np.testing.assert_allclose([p[0, 1], p[1, 2], p[2, 0]], [2 / 3] * 3, atol=1e-15)


def test_single_logistic_rater_is_bradley_terry():
    u = np.array([[0.3, -1.0, 2.0, 0.5]])
    bt = games_lib.bradley_terry(u[0])
    util = games_lib.from_utilities(u, [1.0], temperatures=1.0)
    np.testing.assert_allclose(util.pref, bt.pref, atol=1e-15)
    cold = games_lib.from_utilities(u * 2, [1.0], temperatures=2.0)
    np.testing.assert_allclose(cold.pref, bt.pref, atol=1e-15)


def test_zero_temperature_utilities_match_rankings():
    rankings = np.array([[2, 0, 1], [0, 1, 2]])
    weights = np.array([0.7, 0.3])
    by_rank = games_lib.from_rankings(rankings, weights)
    utilities = -np.argsort(rankings, axis=-1).astype(float)
    by_util = games_lib.from_utilities(utilities, weights, temperatures=0.0)
    np.testing.assert_allclose(by_rank.pref, by_util.pref)
    assert by_rank.pref[0, 0, 1] == pytest.approx(1.0)  # both types put 0 above 1
    assert by_rank.pref[0, 2, 1] == pytest.approx(0.7)  # only the first type
    assert by_rank.pref[0, 0, 2] == pytest.approx(0.3)  # only the second type


def test_mixture_of_logistic_raters_can_be_non_transitive():
    # Three sharp raters holding the three rotations of one ranking: a cycle.
    u = np.array([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]])
    game = games_lib.from_utilities(u, [1, 1, 1], temperatures=[0.1, 0.1, 0.1])
    p = game.pref[0]
    assert p[0, 1] > 0.5 and p[1, 2] > 0.5 and p[2, 0] > 0.5


def test_random_game_is_valid_and_seeded():
    g1 = games_lib.random_game(5, 7, seed=3)
    g2 = games_lib.random_game(5, 7, seed=3)
    g3 = games_lib.random_game(5, 7, seed=4)
    assert g1.pref.shape == (5, 7, 7) and g1.ref.shape == (5, 7)
    np.testing.assert_array_equal(g1.pref, g2.pref)
    np.testing.assert_array_equal(g1.ref, g2.ref)
    assert not np.array_equal(g1.pref, g3.pref)
    np.testing.assert_allclose(g1.pref + np.swapaxes(g1.pref, 1, 2), 1.0, atol=1e-15)
    assert np.all(g1.ref > 0)
    uniform = games_lib.random_game(2, 4, seed=0, ref="uniform")
    np.testing.assert_allclose(uniform.ref, 0.25)


def test_game_is_frozen_and_read_only():
    game = games_lib.dice()
    with pytest.raises(dataclasses.FrozenInstanceError):
        game.name = "other"
    with pytest.raises(ValueError):
        game.pref[0, 0, 1] = 0.9


def test_game_broadcasts_a_single_matrix_and_stack_concatenates():
    game = games_lib.Game(np.array([[0.5, 0.2], [0.8, 0.5]]), np.array([0.3, 0.7]))
    assert game.pref.shape == (1, 2, 2) and game.ref.shape == (1, 2)
    both = games_lib.stack([game, game.with_ref([0.5, 0.5])])
    assert both.num_contexts == 2 and both.num_actions == 2
    np.testing.assert_allclose(both.ref[1], [0.5, 0.5])
    with pytest.raises(ValueError, match="different numbers of responses"):
        games_lib.stack([game, games_lib.dice()])


# --------------------------------------------------------------------------
# Validation messages name the context and the entry.
# --------------------------------------------------------------------------


def _two_contexts():
    pref = np.stack([games_lib.dice().pref[0]] * 2)
    ref = np.full((2, 3), 1 / 3)
    return pref.copy(), ref.copy()


def test_rejects_non_antisymmetric_matrix():
    pref, ref = _two_contexts()
    pref[1, 0, 2] = 0.7  # P[2, 0] stays 5/9: sum 1.2556
    with pytest.raises(
        ValueError, match=r"context 1: P is not antisymmetric: P\[0, 2\] \+ P\[2, 0\] = 1\.25"
    ):
        games_lib.Game(pref, ref)


def test_rejects_entries_outside_unit_interval():
    pref, ref = _two_contexts()
    pref[0, 0, 1], pref[0, 1, 0] = 1.5, -0.5
    with pytest.raises(ValueError, match=r"context 0: P\[0, 1\] = 1\.5 lies outside \[0, 1\]"):
        games_lib.Game(pref, ref)


def test_rejects_non_finite_entries():
    pref, ref = _two_contexts()
    pref[1, 2, 1] = np.nan
    with pytest.raises(ValueError, match=r"context 1: P\[2, 1\] = nan is not finite"):
        games_lib.Game(pref, ref)


def test_rejects_reference_with_zeros():
    pref, ref = _two_contexts()
    ref[1] = [0.5, 0.5, 0.0]
    with pytest.raises(
        ValueError, match=r"context 1: mu\[2\] = 0; the reference policy needs full support"
    ):
        games_lib.Game(pref, ref)


def test_rejects_reference_not_summing_to_one():
    pref, ref = _two_contexts()
    ref[0] = [0.3, 0.3, 0.3]
    with pytest.raises(ValueError, match=r"context 0: mu sums to 0\.9, expected 1"):
        games_lib.Game(pref, ref)


def test_rejects_bad_shapes_and_labels():
    with pytest.raises(ValueError, match=r"shape \[C, n, n\]"):
        games_lib.Game(np.full((1, 2, 3), 0.5), np.full((1, 2), 0.5))
    with pytest.raises(ValueError, match=r"reference policy must have shape \[C, n\]"):
        games_lib.Game(np.full((1, 2, 2), 0.5), np.full((1, 3), 1 / 3))
    with pytest.raises(ValueError, match="at least 2 responses"):
        games_lib.Game(np.full((1, 1, 1), 0.5), np.ones((1, 1)))
    with pytest.raises(ValueError, match="labels has 2 names"):
        games_lib.Game(np.full((1, 3, 3), 0.5), np.full((1, 3), 1 / 3), labels=("a", "b"))


def test_rejects_bad_population_inputs():
    with pytest.raises(
        ValueError, match=r"context 0: ranking 1 = \[0, 0, 2\] is not a permutation"
    ):
        games_lib.from_rankings([[0, 1, 2], [0, 0, 2]], [1, 1])
    with pytest.raises(ValueError, match="weights must be non-negative"):
        games_lib.from_rankings([[0, 1, 2]], [-1.0])
    with pytest.raises(ValueError, match="temperatures must be >= 0"):
        games_lib.from_utilities([[0.0, 1.0]], [1.0], temperatures=-1.0)
    with pytest.raises(ValueError, match="ref must be 'dirichlet', 'uniform' or an array"):
        games_lib.random_game(1, 3, ref="zipf")
