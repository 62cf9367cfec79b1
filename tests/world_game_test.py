"""Exact game solvers, and the properties the default world must keep."""

import dataclasses

import numpy as np
import pytest

from nlhf_jax.data.world import cli, describe, game, generator, grammar, styles

CONCISE, EXHAUSTIVE, FEELINGS, CHRONO = range(4)

# The worked example of the world's design notes (four styles A..D).
EXAMPLE_P = np.array(
    [[0.50, 0.55, 0.60, 0.65], [0.45, 0.50, 0.90, 0.90],
     [0.40, 0.10, 0.50, 0.60], [0.35, 0.10, 0.40, 0.50]]
)  # fmt: skip
EXAMPLE_MU = np.array([0.2, 0.3, 0.3, 0.2])


def test_bt_fit_on_the_worked_example():
    r = game.bt_fit(EXAMPLE_P, np.outer(EXAMPLE_MU, EXAMPLE_MU))
    np.testing.assert_allclose(r - r.mean(), [0.38, 0.94, -0.51, -0.80], atol=0.01)
    assert abs(EXAMPLE_MU @ r) < 1e-12  # centred under the sampling marginal


def test_bt_fit_recovers_an_exact_bt_matrix():
    true = np.array([0.0, 1.0, -0.5, 2.0])
    P = 1 / (1 + np.exp(-(true[:, None] - true[None, :])))
    r = game.bt_fit(P, np.full((4, 4), 1 / 16))
    np.testing.assert_allclose(r - r[0], true - true[0], atol=1e-8)


@pytest.mark.parametrize(
    "tau, nash, nash_vs_rlhf",
    [(0.01, (0.99, 0.01, 0, 0), 0.549), (0.02, (0.887, 0.112, 0.001, 0), 0.544),
     (0.05, (0.617, 0.371, 0.009, 0.003), 0.526), (0.1, (0.439, 0.496, 0.043, 0.022), 0.496)],
)  # fmt: skip
def test_regularized_nash_on_the_worked_example(tau, nash, nash_vs_rlhf):
    pi = game.regularized_nash(EXAMPLE_P, EXAMPLE_MU, tau)
    np.testing.assert_allclose(pi, nash, atol=2e-3)
    fixed = EXAMPLE_MU * np.exp(EXAMPLE_P @ pi / tau)
    np.testing.assert_allclose(pi, fixed / fixed.sum(), atol=1e-10)
    r = game.bt_fit(EXAMPLE_P, np.outer(EXAMPLE_MU, EXAMPLE_MU))
    rlhf = game.rlhf_policy(EXAMPLE_MU, r, 0.05)  # the example's RLHF policy
    assert pi @ EXAMPLE_P @ rlhf == pytest.approx(nash_vs_rlhf, abs=1e-3)
    assert rlhf @ EXAMPLE_P @ EXAMPLE_MU == pytest.approx(0.690, abs=1e-3)


def test_nash_of_rock_paper_scissors_is_uniform():
    P = np.array([[0.5, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.5]])
    for tau in (0.005, 0.1, 1.0):
        np.testing.assert_allclose(game.regularized_nash(P, np.ones(3) / 3, tau), 1 / 3)
    assert game.three_cycles(P) == [(0, 1, 2)]
    assert game.condorcet_winner(P) is None
    assert game.condorcet_winner(EXAMPLE_P) == 0 and game.three_cycles(EXAMPLE_P) == []


@pytest.fixture(scope="module")
def report():
    return describe.describe_world()


def check_world_properties(rep: describe.WorldReport) -> None:
    for P, reward in ((rep.P_style, rep.reward_style), (rep.P_sft, rep.reward_sft)):
        np.testing.assert_allclose(P + P.T, 1.0, atol=1e-12)
        # (a) a preference cycle among styles; (b) a Condorcet winner that is not the
        # style the SFT-pair BT reward ranks first, by at least 0.05 in P.
        assert (EXHAUSTIVE, FEELINGS, CHRONO) in game.three_cycles(P)
        assert game.condorcet_winner(P) == CONCISE
        assert int(np.argmax(reward)) == EXHAUSTIVE
        assert P[CONCISE, EXHAUSTIVE] - 0.5 >= 0.05
    assert rep.condorcet == CONCISE and rep.bt_first == EXHAUSTIVE
    assert rep.condorcet_margin >= 0.15


def test_default_world_has_cycle_and_condorcet_ne_bt(report):
    check_world_properties(report)


def test_default_world_predicts_nash_beats_rlhf_beats_sft(report):
    for preds in (report.style_predictions, report.type_predictions):
        by_tau = {p.tau: p for p in preds}
        assert by_tau[0.01].nash_vs_rlhf > 0.65
        assert by_tau[0.02].nash_vs_rlhf > 0.6
        assert by_tau[0.05].nash_vs_rlhf > 0.54
        for tau in (0.01, 0.02, 0.05):
            assert by_tau[tau].rlhf_vs_sft > 0.6  # RLHF clearly beats SFT ...
            assert by_tau[tau].nash_vs_sft > 0.55  # ... and so does Nash
            # Index 0 is concise (style game) and concise-faithful (type game).
            assert int(np.argmax(by_tau[tau].nash)) == 0
    # On the style x quality game, both methods leave the unfaithful types behind.
    nq = len(styles.QUALITIES)
    for p in report.type_predictions[:4]:
        nash, rlhf = p.nash.reshape(4, nq), p.rlhf.reshape(4, nq)
        assert nash[:, 0].sum() > 0.99 and rlhf[:, 0].sum() > 0.99
        assert rlhf.sum(1)[EXHAUSTIVE] > 0.9
        # The SFT reference never garbles, so a regularised policy cannot either.
        assert nash[:, styles.GARBLED].sum() == 0 and rlhf[:, styles.GARBLED].sum() == 0


def test_another_seed_keeps_the_properties():
    rep = describe.describe_world(dataclasses.replace(generator.WorldConfig(), seed=5), n_posts=64)
    check_world_properties(rep)


def test_describe_cli_prints_the_prediction(capsys):
    assert cli.main(["--describe", "--posts", "32"]) == 0
    out = capsys.readouterr().out
    for needle in ("Condorcet (head-to-head) winner: concise", "BT first: exhaustive",
                   "Preference cycle: exhaustive > feelings_first > chronological",
                   "P(Nash>RLHF)", "SFT style distribution mu"):  # fmt: skip
        assert needle in out
    rows = [line for line in out.splitlines() if line.strip().startswith(("0.005 ", "0.1 "))]
    assert len(rows) == 4  # two tables


def test_style_monitor_shares_and_distances():
    monitor = describe.StyleMonitor(tau=0.02)
    rep = describe.describe_world(generator.WorldConfig(), taus=(0.02,))
    np.testing.assert_allclose(monitor.nash, rep.style_predictions[0].nash)
    rng = np.random.default_rng(0)
    p = grammar.sample_post(rng, "monitor-0")
    texts = [styles.render_summary(rng, p, s, 0) for s in (0, 0, 0, 1)] + [""]
    m = monitor(texts)
    share = np.array([m[f"world/style/{n}"] for n in styles.STYLES])
    np.testing.assert_allclose(share, [0.75, 0.25, 0.0, 0.0])
    assert m["world/style/none"] == pytest.approx(0.2)
    assert m["world/tv_to_nash"] == pytest.approx(0.5 * np.abs(share - monitor.nash).sum())
    assert m["world/tv_to_rlhf"] == pytest.approx(0.5 * np.abs(share - monitor.rlhf).sum())
