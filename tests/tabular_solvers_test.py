"""Tests for the tabular solvers and exact answers (Theorem 1, Proposition 1, §3.2, §5)."""

import numpy as np
import pytest

from nlhf_jax.tabular import equilibrium as eq_lib
from nlhf_jax.tabular import games as games_lib
from nlhf_jax.tabular import solvers as solvers_lib

# 20 random games, n from 3 to 50, grouped by size so each size is one batched call.
_SIZES = ((3, 4), (5, 4), (8, 3), (13, 3), (25, 3), (50, 3))  # (n, contexts)
_TAUS = (0.05, 0.1, 0.5, 1.0)
_STEPS = 300


@pytest.fixture(scope="module")
def random_games():
    games = [games_lib.random_game(c, n, seed=100 + i) for i, (n, c) in enumerate(_SIZES)]
    assert sum(g.num_contexts for g in games) == 20
    return games


@pytest.fixture(scope="module")
def equilibria(random_games):
    return {
        (i, tau): eq_lib.regularized_equilibrium(g, tau)
        for i, g in enumerate(random_games)
        for tau in _TAUS
    }


# --------------------------------------------------------------------------
# pi*_tau (Proposition 1) and the LP.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1e-3, 1e-2, 0.1, 1.0, 10.0])
def test_regularized_equilibrium_is_a_fixed_point_independent_of_start(tau):
    game = games_lib.random_game(3, 50, seed=7)
    star = eq_lib.regularized_equilibrium(game, tau)
    assert np.all(star.residual < 1e-10)
    assert np.all(star.exploitability < 1e-12)
    # Independent check in NumPy: pi = mu exp(P pi / tau) / Z.
    logits = np.log(game.ref) + np.einsum("cij,cj->ci", game.pref, star.policy) / tau
    target = np.exp(logits - logits.max(-1, keepdims=True))
    target /= target.sum(-1, keepdims=True)
    np.testing.assert_allclose(star.policy, target, rtol=0, atol=1e-10)
    rng = np.random.default_rng(0)
    for _ in range(3):
        init = rng.dirichlet(np.full(50, 0.3), size=3) + 1e-8
        other = eq_lib.regularized_equilibrium(game, tau, init=init)
        np.testing.assert_allclose(other.policy, star.policy, rtol=0, atol=1e-10)


def test_regularized_equilibrium_of_the_dice_with_uniform_mu_is_uniform():
    star = eq_lib.regularized_equilibrium(games_lib.dice(), 0.1)
    np.testing.assert_allclose(star.policy, np.full((1, 3), 1 / 3), atol=1e-14)


def test_regularized_equilibrium_tends_to_mu_for_large_tau_and_to_nash_for_small():
    game = games_lib.three_types(0.1)
    big = eq_lib.regularized_equilibrium(game, 1e4)
    np.testing.assert_allclose(big.policy, game.ref, atol=1e-4)
    small = eq_lib.regularized_equilibrium(game, 1e-3)
    np.testing.assert_allclose(small.policy[0], games_lib.three_types_equilibrium(0.1), atol=1e-2)


def test_regularized_equilibrium_rejects_bad_input():
    game = games_lib.dice()
    with pytest.raises(ValueError, match="tau must be > 0"):
        eq_lib.regularized_equilibrium(game, 0.0)
    with pytest.raises(ValueError, match="full-support"):
        eq_lib.regularized_equilibrium(game, 0.1, init=np.array([[1.0, 0.0, 0.0]]))


def test_lp_equilibrium_is_unexploitable_on_random_games(random_games):
    for game in random_games[:3]:
        lp = eq_lib.nash_lp(game)
        np.testing.assert_allclose(lp.value, 0.5, atol=1e-8)
        assert np.all(lp.exploitability < 1e-8)


# --------------------------------------------------------------------------
# Theorem 1.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("tau", _TAUS)
def test_theorem1_last_iterate_bound_on_20_random_games(random_games, equilibria, tau):
    bound = 8.0 / (tau**2 * (np.arange(_STEPS + 1) + 1.0))
    rng = np.random.default_rng(int(tau * 100))
    for i, game in enumerate(random_games):
        star = equilibria[(i, tau)]
        for init in (None, rng.dirichlet(np.ones(game.num_actions), size=game.num_contexts)):
            traj = solvers_lib.nash_md(game, tau, _STEPS, init=init)
            kl = eq_lib.kl(star.log_policy[None], traj.log_policies, logs=True)  # [T+1, C]
            start = 0 if init is None else 1  # the bound at T = 0 needs pi_0 = mu
            assert np.all(kl[start:] <= bound[start:, None]), (i, tau)
            assert kl[-1].max() < kl[1].max()  # and it actually converges


@pytest.mark.parametrize("tau", _TAUS)
@pytest.mark.parametrize("schedule", ["theorem1", "constant"])
def test_theorem1_one_step_inequality_at_every_step(random_games, equilibria, tau, schedule):
    # KL_{t+1} <= (1 - eta_t tau) KL_t + 2 eta_t^2, from random starts.
    eta = None if schedule == "theorem1" else 0.5 / tau
    etas = solvers_lib.nash_md_schedule(tau, _STEPS) if eta is None else np.full(_STEPS, eta)
    rng = np.random.default_rng(1)
    for i, game in enumerate(random_games):
        init = rng.dirichlet(np.full(game.num_actions, 0.5), size=game.num_contexts) + 1e-9
        traj = solvers_lib.nash_md(game, tau, _STEPS, eta=eta, init=init)
        kl = eq_lib.kl(equilibria[(i, tau)].log_policy[None], traj.log_policies, logs=True)
        rhs = (1.0 - etas * tau)[:, None] * kl[:-1] + 2.0 * etas[:, None] ** 2
        assert np.all(kl[1:] <= rhs + 1e-12), (i, tau, schedule, (kl[1:] - rhs).max())


def test_nash_md_first_step_forgets_the_start():
    # eta_0 tau = 1, so pi_0^mu = mu and pi_1 does not depend on pi_0.
    game = games_lib.random_game(2, 6, seed=3)
    a = solvers_lib.nash_md(game, 0.2, 3)
    b = solvers_lib.nash_md(
        game, 0.2, 3, init=np.random.default_rng(0).dirichlet(np.ones(6), size=2)
    )
    np.testing.assert_allclose(a.policies[1:], b.policies[1:], atol=1e-15)
    assert not np.allclose(a.policies[0], b.policies[0])


def test_nash_md_matches_the_closed_form_step():
    # One step of eq. 5 written out in NumPy.
    game = games_lib.random_game(2, 5, seed=11)
    tau, eta = 0.3, 1.5
    init = np.random.default_rng(2).dirichlet(np.ones(5), size=2)
    traj = solvers_lib.nash_md(game, tau, 1, eta=eta, init=init)
    mix = init ** (1 - eta * tau) * game.ref ** (eta * tau)
    mix /= mix.sum(-1, keepdims=True)
    new = mix * np.exp(eta * np.einsum("cij,cj->ci", game.pref, mix))
    np.testing.assert_allclose(traj.policies[1], new / new.sum(-1, keepdims=True), atol=1e-14)


def test_record_last_and_float32_agree_with_full_float64_run():
    game = games_lib.random_game(3, 8, seed=5)
    full = solvers_lib.nash_md(game, 0.1, 200)
    last = solvers_lib.nash_md(game, 0.1, 200, record="last")
    assert last.log_policies.shape == (1, 3, 8) and last.steps.tolist() == [200]
    np.testing.assert_allclose(last.log_policies[0], full.log_policies[-1], atol=1e-13)
    f32 = solvers_lib.nash_md(game, 0.1, 200, record="last", dtype=np.float32)
    assert f32.log_policies.dtype == np.float32
    np.testing.assert_allclose(f32.policies[0], full.policies[-1], atol=1e-4)


def test_solvers_reject_bad_step_sizes():
    game = games_lib.dice()
    with pytest.raises(ValueError, match=r"eta \* tau <= 1"):
        solvers_lib.nash_md(game, 0.5, 10, eta=3.0)
    with pytest.raises(ValueError, match="tau > 0"):
        solvers_lib.nash_md(game, 0.0, 10)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        solvers_lib.fictitious_play(game, 0.1, 0)
    with pytest.raises(ValueError, match="ema_decay"):
        solvers_lib.nash_ema(game, 0.1, 10, eta=1.0, ema_decay=1.0)
    with pytest.raises(ValueError, match="record"):
        solvers_lib.nash_md(game, 0.1, 10, record="some")


# --------------------------------------------------------------------------
# Baselines (§5).
# --------------------------------------------------------------------------


def test_self_play_on_dice_cycles_while_its_average_converges():
    # T7: tau = 0, eta = 1, 5,000 steps from a non-uniform start.
    game = games_lib.dice()
    traj = solvers_lib.self_play(game, 5000, eta=1.0, init=np.array([0.5, 0.3, 0.2]))
    window = traj.policies[-1000:, 0]  # [1000, 3]
    # The last iterate stays far from the equilibrium and keeps rotating...
    assert np.min(np.abs(window - 1 / 3).max(-1)) > 0.2
    assert set(np.argmax(window, -1).tolist()) == {0, 1, 2}
    assert np.min(eq_lib.exploitability(game.pref, window[:, None])) > 0.01
    # ...while the average converges to the uniform equilibrium.
    np.testing.assert_allclose(traj.averages[-1, 0], np.full(3, 1 / 3), atol=0.02)
    assert eq_lib.exploitability(game.pref, traj.averages[-1])[0] < 0.01


def test_fictitious_play_average_converges_without_regularisation():
    game = games_lib.dice()
    traj = solvers_lib.fictitious_play(game, 0.0, 3000, init=np.array([0.6, 0.3, 0.1]))
    assert set(np.unique(traj.policies[1:].round(12))) <= {0.0, 1.0}  # pure best responses
    np.testing.assert_allclose(traj.averages[-1, 0], np.full(3, 1 / 3), atol=0.02)


def test_regularised_baselines_converge_to_pi_star():
    game = games_lib.random_game(2, 6, seed=2)
    tau = 0.2
    star = eq_lib.regularized_equilibrium(game, tau)
    runs = {
        "omd": solvers_lib.online_mirror_descent(game, tau, 2000, eta=1.0),
        "nash-ema": solvers_lib.nash_ema(game, tau, 2000, eta=1.0, ema_decay=0.9),
        "fictitious-play": solvers_lib.fictitious_play(game, tau, 2000),
        "nash-md": solvers_lib.nash_md(game, tau, 2000),
    }
    for name, traj in runs.items():
        kl = eq_lib.kl(star.log_policy, traj.log_policies[-1], logs=True)
        assert np.all(kl < 1e-4), name


def test_opponent_is_the_only_difference_between_variants():
    # T8: Nash-EMA with decay 0 is OMD; OMD with tau = 0 is self-play MWU.
    game = games_lib.random_game(2, 5, seed=9)
    omd = solvers_lib.online_mirror_descent(game, 0.3, 50, eta=2.0)
    ema0 = solvers_lib.nash_ema(game, 0.3, 50, eta=2.0, ema_decay=0.0)
    np.testing.assert_allclose(ema0.log_policies, omd.log_policies, atol=1e-12)
    mwu = solvers_lib.online_mirror_descent(game, 0.0, 50, eta=0.5)
    sp = solvers_lib.self_play(game, 50, eta=0.5)
    np.testing.assert_allclose(mwu.log_policies, sp.log_policies, atol=1e-15)


def test_best_response_to_mu_is_the_gibbs_policy():
    game = games_lib.random_game(2, 4, seed=1)
    tau = 0.25
    br = np.exp(solvers_lib.best_response_to_ref(game, tau))
    expected = game.ref * np.exp(np.einsum("cij,cj->ci", game.pref, game.ref) / tau)
    np.testing.assert_allclose(br, expected / expected.sum(-1, keepdims=True), atol=1e-14)


# --------------------------------------------------------------------------
# The RLHF pipeline (§3).
# --------------------------------------------------------------------------


def test_bt_fit_recovers_exact_bt_rewards_for_any_sampling():
    game = games_lib.bt_constrained()
    elo = np.array(games_lib.BT_CONSTRAINED_ELO)
    for sampling in (None, np.array([0.7, 0.2, 0.1])):
        r = solvers_lib.fit_bradley_terry(game, sampling)[0]
        np.testing.assert_allclose(r - r.mean(), elo - elo.mean(), atol=1e-9)


def test_bt_fit_satisfies_first_order_condition_and_depends_on_sampling():
    # E4 (§3.3): E_{y'~pi}[P(y > y') - sigmoid(r(y) - r(y'))] = 0 for every y,
    # so for a non-BT P the fitted reward gaps depend on the sampling policy.
    game = games_lib.random_game(1, 5, seed=4)
    fits = []
    for pi in (np.full(5, 0.2), np.array([0.5, 0.2, 0.1, 0.1, 0.1])):
        r = solvers_lib.fit_bradley_terry(game, pi)[0]
        model = 1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :])))
        np.testing.assert_allclose((game.pref[0] - model) @ pi, 0.0, atol=1e-10)
        fits.append(r - r[0])
    assert np.abs(fits[0] - fits[1]).max() > 1e-3


def test_rlhf_on_exact_bt_is_mu_exp_r_over_tau():
    game = games_lib.bt_constrained()
    tau = 0.5
    out = solvers_lib.rlhf(game, tau)
    expected = game.ref[0] * np.exp(np.array(games_lib.BT_CONSTRAINED_ELO) / tau)
    np.testing.assert_allclose(out.policy[0], expected / expected.sum(), atol=1e-9)


def test_three_types_rlhf_jumps_while_nash_moves_continuously():
    # §3.2: uniform sampling of all ordered pairs, then (nearly) unregularised
    # reward maximisation picks y1 for eps > 0 and y2 for eps < 0.
    uniform = np.full(3, 1 / 3)
    picks, nash = {}, {}
    for eps in (0.1, 0.01, -0.01, -0.1):
        game = games_lib.three_types(eps)
        out = solvers_lib.rlhf(game, 1e-3, sampling=uniform)
        picks[eps] = int(np.argmax(out.rewards[0]))
        assert out.policy[0, picks[eps]] > 0.99
        nash[eps] = eq_lib.nash_lp(game).policy[0]
    assert picks == {0.1: 0, 0.01: 0, -0.01: 1, -0.1: 1}
    assert np.abs(nash[0.01] - nash[-0.01]).max() < 0.031  # a 2-point shift moves Nash by 3%


# --------------------------------------------------------------------------
# Online IPO and IPO-MD (Calandriello et al. 2024).
# --------------------------------------------------------------------------


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _ipo_md_residual(game, log_pi, tau, beta):
    # || pi - mu exp(P(y > pi_mix) / tau) / Z ||_1, pi_mix ∝ pi^(1 - beta) mu^beta.
    mix = np.exp(_log_softmax((1 - beta) * log_pi + beta * np.log(game.ref)))
    target = np.exp(_log_softmax(np.log(game.ref) + np.einsum("cij,cj->ci", game.pref, mix) / tau))
    return np.abs(np.exp(log_pi) - target).sum(-1)


def test_ipo_closed_form_gradient_matches_autodiff_of_the_population_loss():
    import jax
    import jax.numpy as jnp

    game = games_lib.random_game(3, 7, seed=21)
    tau = 0.3
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(3, 7))
    log_rho = _log_softmax(rng.normal(size=(3, 7)))

    def loss(theta, log_rho):
        # L = E_{y, y' ~ rho}[(h_pi(y, y') - (P(y > y') - 1/2) / tau)^2], summed over contexts.
        g = jax.nn.log_softmax(theta, axis=-1) - jnp.log(game.ref)
        h = g[:, :, None] - g[:, None, :]
        rho = jnp.exp(log_rho)
        w = rho[:, :, None] * rho[:, None, :]
        return jnp.sum(w * (h - (game.pref - 0.5) / tau) ** 2)

    with jax.enable_x64(True):
        expected = np.asarray(jax.grad(loss)(jnp.asarray(theta), jnp.asarray(log_rho)))
    got = solvers_lib.ipo_gradient(game, _log_softmax(theta), tau, log_rho)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    assert np.abs(expected).max() > 1e-2  # not trivially zero
    # The loss depends on the logits only through differences: the gradient sums to 0.
    np.testing.assert_allclose(got.sum(-1), 0.0, atol=1e-12)
    # At rho = pi = pi*_tau the gradient vanishes (online IPO's fixed point).
    star = eq_lib.regularized_equilibrium(game, tau)
    at_star = solvers_lib.ipo_gradient(game, star.log_policy, tau, star.log_policy)
    np.testing.assert_allclose(at_star, 0.0, atol=1e-9)


@pytest.mark.parametrize(
    "game, tau",
    [
        (games_lib.dice(np.array([0.6, 0.3, 0.1])), 0.1),
        (games_lib.random_game(2, 6, seed=2), 0.1),
        (games_lib.random_game(3, 10, seed=5), 0.5),
    ],
    ids=["dice", "random-6", "random-10"],
)
def test_online_ipo_converges_to_the_regularised_equilibrium(game, tau):
    star = eq_lib.regularized_equilibrium(game, tau)
    traj = solvers_lib.online_ipo(game, tau, 2000, eta=0.5)
    # Measured at T = 2000: KL ~ 1e-16 on both n = 3, 6 games; 6.9e-8 on the slowest
    # context of the n = 10 game (the rate ~ 4 eta min rho is set by the rarest response).
    kl = eq_lib.kl(star.log_policy, traj.log_policies[-1], logs=True)
    assert np.all(kl < 1e-6), kl
    assert np.all(eq_lib.regularized_exploitability(game, traj.log_policies[-1], tau) < 1e-6)
    assert traj.name == "online-ipo" and traj.log_policies.shape == (2001, *game.ref.shape)


def test_ipo_md_with_beta_zero_is_online_ipo():
    game = games_lib.random_game(2, 6, seed=2)
    a = solvers_lib.online_ipo(game, 0.2, 200, eta=0.3)
    b = solvers_lib.ipo_md(game, 0.2, 0.0, 200, eta=0.3)
    np.testing.assert_allclose(b.log_policies, a.log_policies, rtol=0, atol=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_ipo_md_converges_to_its_own_fixed_point_not_pi_star(beta):
    tau = 0.1
    for game in (games_lib.dice(np.array([0.6, 0.3, 0.1])), games_lib.random_game(2, 6, seed=2)):
        star = eq_lib.regularized_equilibrium(game, tau)
        log_pi = solvers_lib.ipo_md(game, tau, beta, 2000, record="last").log_policies[-1]
        # The stationary condition pi ∝ mu exp(P(y > pi_mix) / tau) holds...
        assert np.all(_ipo_md_residual(game, log_pi, tau, beta) < 1e-9)
        # ...and it is the fixed point of Nash-MD with the constant step eta tau = beta.
        nmd = solvers_lib.nash_md(game, tau, 2000, eta=beta / tau, record="last")
        np.testing.assert_allclose(np.exp(log_pi), nmd.policies[0], rtol=0, atol=1e-9)
        # ...but it is not pi*_tau: measured gaps are >= 6.9e-6 (dice, beta = 0.1).
        assert np.all(eq_lib.kl(star.log_policy, log_pi, logs=True) > 5e-6)
        assert np.all(eq_lib.regularized_exploitability(game, log_pi, tau) > 5e-7)


def test_ipo_md_with_beta_one_is_the_best_response_to_mu():
    # beta = 1 samples pairs from mu only (offline IPO on mu x mu): pi ∝ mu exp(P(y > mu) / tau).
    game = games_lib.random_game(2, 6, seed=2)
    traj = solvers_lib.ipo_md(game, 0.5, 1.0, 1000, record="last")
    expected = solvers_lib.best_response_to_ref(game, 0.5)
    np.testing.assert_allclose(traj.log_policies[0], expected, rtol=0, atol=1e-9)


def test_ipo_md_on_the_dice_with_uniform_mu_stays_at_pi_star():
    # With uniform mu, pi*_tau = mu = uniform and P(y > uniform) = 1/2 for every die,
    # so the uniform policy solves IPO-MD's equation for every beta: no gap here.
    game = games_lib.dice()
    for beta in (0.0, 0.5, 1.0):
        traj = solvers_lib.ipo_md(game, 0.1, beta, 100, init=np.array([0.5, 0.3, 0.2]))
        np.testing.assert_allclose(traj.policies[-1], np.full((1, 3), 1 / 3), atol=1e-12)


def test_ipo_solvers_reject_bad_input():
    game = games_lib.dice()
    with pytest.raises(ValueError, match="tau > 0"):
        solvers_lib.online_ipo(game, 0.0, 10)
    with pytest.raises(ValueError, match="beta must be in"):
        solvers_lib.ipo_md(game, 0.1, 1.5, 10)
    with pytest.raises(ValueError, match="step sizes must be > 0"):
        solvers_lib.online_ipo(game, 0.1, 10, eta=0.0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        solvers_lib.ipo_md(game, 0.1, 0.5, 0)
