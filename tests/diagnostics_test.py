"""Judge diagnostics (`evaluation.diagnostics`): the style matrix under P* against the
world's own measurement, the comparison of a "PM" with P* (identical, transitive), the
mixed-tau prediction against a hand computation, `trained_tau`, and the report and
`nlhf evaluate` outputs, all with cheap judges (no model is compiled here)."""

import json
import os

import numpy as np
import pytest

from nlhf_jax import judges
from nlhf_jax import run_evaluate
from nlhf_jax.data.world import describe, game, generator, parser, styles
from nlhf_jax.evaluation import diagnostics
from nlhf_jax.evaluation import findings
from nlhf_jax.evaluation import report
from nlhf_jax.evaluation import stats

SMALL = generator.WorldConfig(n_sft=(8, 4, 4), n_comparisons=(24, 12, 12), n_prompts_train=4)
# A Bradley-Terry reward over styles: its matrix is transitive (no cycle), and its
# first style is exhaustive where P*'s Condorcet winner is concise.
BT_REWARD = np.array([0.3, 0.5, -0.4, -0.2])


def _bt_matrix(r: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :])))


class StyleReward:
    """A reward-model stand-in: sigmoid of a per-style reward difference (text with no
    style gets 0)."""

    def __init__(self, r):
        self.r = np.append(np.asarray(r, np.float64), 0.0)

    def prob(self, prompts, ys, ys_alt):
        assert all(p.rstrip().endswith("TL;DR:") for p in prompts)  # built by templates.post_prompt
        d = self.r[parser.style_of(ys)] - self.r[parser.style_of(ys_alt)]
        return 1.0 / (1.0 + np.exp(-d))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("diag_world") / "w")
    generator.generate(SMALL, out)
    return out


@pytest.fixture(scope="module")
def world_report(world):
    return describe.describe_world(generator.load_config(world), taus=())


@pytest.fixture(scope="module")
def pstar(world):
    return diagnostics.style_matrix(judges.WorldJudge(world).prob, n_per_cell=100)


def test_style_matrix_under_pstar_matches_the_worlds_measurement(world_report, pstar):
    n = len(styles.STYLES)
    assert pstar.shape == (n, n)
    np.testing.assert_allclose(np.diag(pstar), 0.5)
    assert np.abs(pstar - world_report.P_style).max() < 0.08
    off = ~np.eye(n, dtype=bool)
    assert np.abs((pstar + pstar.T - 1.0)[off]).max() < 0.05
    # The same seed gives the same pairs: a second judge sees exactly these texts.
    a, b = diagnostics.style_pairs(3), diagnostics.style_pairs(3)
    assert (a.prompts, a.ys, a.ys_alt) == (b.prompts, b.ys, b.ys_alt)
    assert len(a.ys) == 3 * n * (n - 1) and (a.cells[:, 0] != a.cells[:, 1]).all()
    assert (parser.style_of(a.ys) == a.cells[:, 0]).all()
    assert (parser.style_of(a.ys_alt) == a.cells[:, 1]).all()


def test_a_perfect_pm_keeps_pstars_game_and_equilibrium(world_report, pstar):
    md, n = diagnostics.judge_diagnostics(pstar, pstar.copy(), None, world_report.mu, 0.008, 0.05,
                                          P_world=world_report.P_style)
    assert n["pm_max_abs"] == 0.0 and n["rm_max_abs"] is None
    assert n["pm_keeps_condorcet"] and n["pm_keeps_cycles"] and n["pm_same_cycles"]
    assert n["condorcet"]["pstar"] == "concise" and n["cycles"]["pstar"]
    np.testing.assert_allclose(n["nash_pm"], n["nash_pstar"], atol=1e-12)
    # The world's own prediction, solved here on the measured matrix.
    A = diagnostics.antisymmetrize(pstar)
    np.testing.assert_allclose(n["nash_pstar"], game.regularized_nash(A, world_report.mu, 0.008), atol=1e-12)
    assert n["predicted_nash_pm_vs_rlhf_rm"] is None
    assert "PM 0.000 (identical on every cell)" in md
    assert "PM concise (kept)" in md and "(kept)" in md.split("3-cycles")[1]
    assert "BT-RLHF, reward fitted to RM" not in md
    json.dumps(n)  # the numbers go into report.json


def test_a_transitive_pm_loses_the_cycle_and_the_report_says_so(world_report, pstar):
    bt = _bt_matrix(BT_REWARD)
    md, n = diagnostics.judge_diagnostics(pstar, bt, bt, world_report.mu, 0.008, 0.05)
    assert n["cycles"]["pm"] == [] and n["cycles"]["rm"] == []
    assert not n["pm_keeps_cycles"] and not n["pm_keeps_condorcet"]
    assert n["condorcet"]["pm"] == "exhaustive"
    assert "**P*'s cycle lost**" in md and "PM exhaustive (**changed**)" in md
    np.testing.assert_allclose(n["pm_max_abs"], np.abs(bt - pstar).max())
    # The RM's BT fit recovers the reward it was built from (up to the gauge), and the
    # head-to-head is P* between the two judges' policies.
    r = np.asarray(n["reward_rm"])
    np.testing.assert_allclose(r - r.mean(), BT_REWARD - BT_REWARD.mean(), atol=1e-6)
    want = np.asarray(n["nash_pm"]) @ diagnostics.antisymmetrize(pstar) @ np.asarray(n["rlhf_rm"])
    np.testing.assert_allclose(n["predicted_nash_pm_vs_rlhf_rm"], want, atol=1e-12)
    assert "| BT-RLHF, reward fitted to RM | 0.05 |" in md


def test_the_mixed_tau_prediction_is_the_hand_computation(world_report):
    P, mu, r = world_report.P_style, world_report.mu, world_report.reward_style
    got = game.predict_mixed(P, mu, r, 0.008, 0.05)
    nash = game.regularized_nash(P, mu, 0.008)
    rlhf = mu * np.exp(r / 0.05)
    rlhf /= rlhf.sum()
    np.testing.assert_allclose(got.nash, nash, atol=1e-12)
    np.testing.assert_allclose(got.rlhf, rlhf, atol=1e-12)
    np.testing.assert_allclose(got.nash_vs_rlhf, nash @ P @ rlhf, atol=1e-12)
    np.testing.assert_allclose(got.nash_vs_sft, nash @ P @ mu, atol=1e-12)
    # At one tau it is `game.predict`.
    same = game.predict(P, mu, r, (0.02,))[0]
    np.testing.assert_allclose(game.predict_mixed(P, mu, r, 0.02, 0.02).nash_vs_rlhf, same.nash_vs_rlhf)
    # The report's finding quotes both taus.
    pstar_cells = {("sft", "rlhf"): stats.compare(np.full(10, 0.9))}
    line = findings.findings_lines(pstar_cells, ["sft", "rlhf"], got)[-1]
    assert "P*(Nash(tau = 0.008) > RLHF(tau = 0.05))" in line and f"{got.nash_vs_rlhf:.3f}" in line


def _metrics(path, records):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in records) + "\n")


def test_trained_tau_reads_the_last_logged_tau(tmp_path):
    _metrics(tmp_path / "nash_md", [{"step": 0, "nashmd/tau": 0.02}, {"step": 1, "nashmd/tau": 0.008},
                                    {"step": 1, "eval/loss": 1.0}])
    _metrics(tmp_path / "rlhf", [{"step": 0, "policy/reward": 0.1}])
    assert diagnostics.trained_tau(str(tmp_path / "nash_md")) == 0.008
    assert diagnostics.trained_tau(str(tmp_path / "rlhf")) is None
    assert diagnostics.trained_tau(str(tmp_path / "missing")) is None
    # The report falls back to its tau for Nash and to 0.05 for RLHF.
    assert report.trained_taus(str(tmp_path), ["sft", "nash_md", "rlhf"], 0.1) == (0.008, 0.05)
    assert report.trained_taus(str(tmp_path), ["sft", "rlhf"], 0.1) == (0.1, 0.05)


def test_world_diagnostics_and_the_evaluate_outputs(world, tmp_path):
    """End to end with cheap judges: P* as the "PM" (no error) and a style reward as the
    "RM"; `nlhf evaluate`'s writer leaves the markdown and the JSON in --out."""
    pm, rm = judges.WorldJudge(world), StyleReward(BT_REWARD)
    md = run_evaluate.write_judge_diagnostics(str(tmp_path / "eval"), world, pm, rm, tau_nash=0.008,
                                              tau_rlhf=0.05)
    n = json.load(open(tmp_path / "eval" / "judge_diagnostics.json"))
    assert open(tmp_path / "eval" / "judge_diagnostics.md").read() == md + "\n"
    assert md.startswith(diagnostics.HEADING)
    assert n["pm_max_abs"] == 0.0 and n["world_max_abs"] < 0.08 and n["n_per_cell"] == 400
    assert n["cycles"]["rm"] == [] and n["tau_rlhf"] == 0.05
    assert "| concise | - | " in md and "P*(Nash under PM > BT-RLHF under RM)" in md
    # The report puts the section right after the judges'.
    text = report._report_markdown("quick", 4, 4, findings=[], paper_md="", md_pstar="", md_ptau="",
                                   judges_md="J", diag_md=md.split("\n\n", 1)[1], st_md="", q_md="",
                                   timings={})
    sections = [s.split("\n")[0] for s in text.split("\n\n") if s.startswith("## ")]
    i = sections.index("## Judges and the SFT policy")
    assert sections[i + 1] == diagnostics.HEADING
