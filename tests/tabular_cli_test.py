"""Tests for `nlhf tabular` (nlhf_jax.tabular.cli) and its plots."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nlhf_jax.tabular import cli
from nlhf_jax.tabular import plots as plots_lib

_SOLVERS = {
    "nash-md",
    "nash-md-const",
    "omd",
    "nash-ema",
    "fictitious-play",
    "self-play",
    "br-to-mu",
    "rlhf",
    "online-ipo",
    "ipo-md",
}
_STEPS = "60"  # shared by the tests so compiled solvers are reused


def _run_json(capsys, *args):
    assert cli.main(["--json", "--steps", _STEPS, *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_dice_json_reports_every_solver(capsys):
    report = _run_json(capsys, "--game", "dice")
    assert report["game"] == "dice" and report["actions"] == 3 and report["steps"] == 60
    assert set(report["solvers"]) == _SOLVERS
    assert report["equilibrium"]["residual"] < 1e-10
    np.testing.assert_allclose(report["lp_equilibrium"]["policy"], [1 / 3] * 3, atol=1e-8)
    nash_md = report["solvers"]["nash-md"]
    assert nash_md["kl_last"] <= report["theorem1_bound"]
    assert nash_md["kl_last"] < report["solvers"]["self-play"]["kl_last"]
    for row in report["solvers"].values():
        assert np.isclose(sum(row["final_policy"]), 1.0)
        assert row["time_s"] >= 0


def test_dice_table_and_plot(capsys, tmp_path):
    path = tmp_path / "dice.png"
    assert cli.main(["--game", "dice", "--steps", _STEPS, "--plot", str(path)]) == 0
    out = capsys.readouterr().out
    assert "KL(pi*,last)" in out and "nash-md" in out and "Theorem 1 bound" in out
    assert f"plot written to {path}" in out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args",
    [
        ["--game", "three-types", "--epsilon", "-0.05", "--mu", "uniform"],
        ["--game", "bt-constrained", "--mu", "0.5,0.3,0.2"],
        ["--game", "random", "--contexts", "2", "--actions", "5", "--seed", "3"],
    ],
)
def test_other_games_run(capsys, args):
    report = _run_json(capsys, *args)
    assert set(report["solvers"]) == _SOLVERS
    assert report["equilibrium"]["residual"] < 1e-10


def test_ipo_md_row_with_beta_zero_is_the_online_ipo_row(capsys):
    report = _run_json(capsys, "--game", "dice", "--ipo-beta", "0")
    rows = report["solvers"]
    np.testing.assert_allclose(
        rows["ipo-md"]["final_policy"], rows["online-ipo"]["final_policy"], atol=1e-12
    )


def test_three_types_json_matches_paper_equilibrium(capsys):
    report = _run_json(capsys, "--game", "three-types", "--epsilon", "0.1")
    np.testing.assert_allclose(
        report["lp_equilibrium"]["policy"], [0.38333, 0.38333, 0.23333], atol=1e-4
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--game", "chess"], "invalid choice: 'chess'"),
        (["--tau", "0"], "--tau must be > 0"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--eta", "20"], "eta * tau <= 1"),
        (["--game", "random", "--actions", "1"], "--actions must be >= 2"),
        (["--game", "three-types", "--epsilon", "0.5"], "need every share in [0, 1]"),
        (["--mu", "0.5,0.5"], "--mu has 2 entries but the game has 3 responses"),
        (["--mu", "0.5,0.5,0.1"], "mu sums to 1.1, expected 1"),
        (["--mu", "0.5,0.5,0"], "mu[2] = 0; the reference policy needs full support"),
        (["--mu", "a,b,c"], "--mu must be 'random', 'uniform' or comma-separated numbers"),
        (["--plot", "curves.txt"], "--plot must name a .png"),
        (["--ipo-eta", "0"], "--ipo-eta must be > 0"),
        (["--ipo-beta", "1.5"], "--ipo-beta must be in [0, 1]"),
    ],
)
def test_bad_inputs_give_clear_errors(capsys, args, message):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err


def test_help_exits_zero(capsys):
    assert cli.main(["--help"]) == 0
    assert "--game" in capsys.readouterr().out


def test_subprocess_via_nlhf_main(tmp_path):
    path = tmp_path / "sub.png"
    cmd = [
        sys.executable,
        "-m",
        "nlhf_jax.main",
        "tabular",
        "--game",
        "dice",
        "--json",
        "--steps",
        "20",
        "--plot",
        str(path),
    ]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["game"] == "dice" and set(report["solvers"]) == _SOLVERS
    assert path.exists()
    bad = subprocess.run(
        [sys.executable, "-m", "nlhf_jax.main", "tabular", "--game", "nope"],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=300,
        check=False,
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_theorem1_bound_helper():
    np.testing.assert_allclose(
        plots_lib.theorem1_bound(0.5, np.array([0, 1, 9])), [32.0, 16.0, 3.2]
    )
