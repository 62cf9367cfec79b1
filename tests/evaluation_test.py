"""Win-rate matrices: Clopper-Pearson intervals, symmetry, and a policy against itself."""

import json

import numpy as np
import pytest
import scipy.stats

from nlhf_jax import evaluation


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (512, 1000), (1, 2)])
def test_clopper_pearson_matches_scipy(k, n):
    lo, hi = evaluation.clopper_pearson(k, n)
    ref = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)


def _judge(posts, ys, ys_alt):
    # antisymmetric: P(a > b) + P(b > a) = 1, from a hidden score and a cyclic term
    s = lambda t: (len(t) % 7) / 3.0 + np.sin(len(t))  # noqa: E731
    return np.array([1 / (1 + np.exp(-(s(a) - s(b)))) for a, b in zip(ys, ys_alt)])


def _policy(rng, n):
    return ["x" * int(k) for k in rng.integers(1, 30, size=n)]


def test_matrix_symmetry_under_an_antisymmetric_judge():
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    responses = {n: _policy(rng, 400) for n in names}
    cells = evaluation.win_rate_matrix(names, responses, ["p"] * 400, _judge)
    for r in names:
        assert cells[(r, r)].mean == 0.5
        for c in names:
            assert cells[(r, c)].mean + cells[(c, r)].mean == pytest.approx(1.0, abs=1e-12)
            assert cells[(r, c)].lo == pytest.approx(1 - cells[(c, r)].hi, abs=1e-12)
            # the direct computation agrees with the mirrored one
            direct = evaluation.compare(_judge(None, responses[c], responses[r]))
            assert direct.mean == pytest.approx(cells[(r, c)].mean, abs=1e-12)
    md = evaluation.matrix_markdown(names, cells)
    assert md.count("\n") == 4 and "0.500" in md


def test_two_copies_of_one_policy_give_one_half_within_the_interval():
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(20):
        a, b = _policy(rng, 500), _policy(rng, 500)
        c = evaluation.compare(_judge(None, a, b))
        hits += c.lo <= 0.5 <= c.hi
    assert hits >= 18  # a 95% interval (conservative here)


def test_compare_rejects_non_probabilities():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluation.compare(np.array([0.2, 1.5]))


def test_style_helpers():
    d = evaluation.style_distribution(np.array([0, 0, 1, 3]), 5)
    np.testing.assert_allclose(d, [0.5, 0.25, 0, 0.25, 0])
    assert evaluation.total_variation(d, [0.5, 0.25, 0, 0.25, 0]) == 0.0


def _matrix(names, strength):
    """Cells of a Bradley-Terry population with the given strengths (exact means)."""
    from nlhf_jax import evaluation as ev

    cells = {}
    for r in names:
        for c in names:
            p = 1 / (1 + np.exp(strength[r] - strength[c]))
            w = int(round(1000 * p))
            lo, hi = ev.clopper_pearson(w, 1000)
            cells[(r, c)] = ev.Comparison(float(p), lo, hi, w, 1000)
    return cells


def test_paper_findings_on_a_matrix_with_the_papers_pattern_and_without():
    from nlhf_jax.evaluation import findings

    betas = [0.0, 0.125, 0.5, 1.0]
    # A Bradley-Terry matrix cannot have RLHF strongest against SFT and still lose to MD1,
    # so not every finding holds here; the point is that each is read from the right cells.
    names = ["sft", "rlhf", "nash_md_0", "nash_md_0.125", "nash_md_0.5", "nash_md_1",
             "nash_ema_0.999", "nash_ema_0.999*"]
    strength = {"sft": 0.0, "rlhf": 2.0, "nash_md_0": 2.1, "nash_md_0.125": 2.5, "nash_md_0.5": 2.2,
                "nash_md_1": 1.0, "nash_ema_0.999": 1.5, "nash_ema_0.999*": 1.4}
    got = {f.text: (f.holds, f.numbers) for f in findings.paper_findings(_matrix(names, strength), names, betas)}
    assert len(got) == 8
    assert got["every trained policy beats SFT (lower bound > 0.5)"][0]
    assert not got["RLHF has the highest win rate against SFT"][0]  # nash_md_0.125 is
    assert got["win rate against RLHF is single-peaked in beta"][0]
    assert got["Nash-MD-PG with beta = 0.125 beats RLHF head to head (lower bound > 0.5)"][0]
    assert got["nash_md_0.125 beats every other policy head to head"][0]
    assert got["best response over-optimises: it loses to RLHF and has the lowest win rate against SFT"][0]
    assert got["EMA variants trail Nash-MD-PG (nash_md_0.125 beats each)"][0]
    assert "beta 0.5: 0.550" in got["win rate against RLHF is single-peaked in beta"][1]
    # Break the pattern: a second peak at beta = 1, and RLHF on top.
    strength.update({"nash_md_1": 2.3, "rlhf": 3.0})
    got = {f.text: f.holds for f in findings.paper_findings(_matrix(names, strength), names, betas)}
    assert got["RLHF has the highest win rate against SFT"]
    assert not got["win rate against RLHF is single-peaked in beta"]
    assert not got["Nash-MD-PG with beta = 0.125 beats RLHF head to head (lower bound > 0.5)"]
    assert not got["best response over-optimises: it loses to RLHF and has the lowest win rate against SFT"]


def test_a_finding_that_fails_is_explained_with_its_ties_and_where_its_policies_went():
    from nlhf_jax.data.world import game
    from nlhf_jax.evaluation import findings

    betas = [0.0, 0.125, 0.5, 1.0]
    names = ["sft", "rlhf", "nash_md_0", "nash_md_0.125", "nash_md_0.5", "nash_md_1"]
    # The grid level (a tie within the noise), RLHF below it, everything far above SFT.
    strength = {"sft": 0.0, "rlhf": 1.5, "nash_md_0": 2.0, "nash_md_0.125": 2.0, "nash_md_0.5": 2.0,
                "nash_md_1": 2.0}
    cells = _matrix(names, strength)
    found = {f.text: f for f in findings.paper_findings(cells, names, betas)}
    small = found["a small mixture weight (0 < beta <= 0.375) beats self-play and best response"]
    assert not small.holds and small.cells == (("nash_md_0", "nash_md_0.125"), ("nash_md_1", "nash_md_0.125"))
    styles = {"rlhf": [0.1, 0.85, 0.05, 0.0, 0.0], "nash_md_0.125": [0.03, 0.95, 0.02, 0.0, 0.0],
              "nash_md_0": [0.02, 0.96, 0.02, 0.0, 0.0], "nash_md_1": [0.9, 0.1, 0.0, 0.0, 0.0]}
    quality = {"nash_md_0.125": {"repeated": 0.42, "quality": 2.33}}
    why = findings.why_not(small, cells, styles, quality)
    assert why.startswith("ties at 95% (2 of 2 deciding cells): nash_md_0.125 vs nash_md_0 0.500 [")
    assert "*exhaustive* first (95%-96%): nash_md_0.125 (repeated words 42%, quality 2.33), nash_md_0;" in why
    assert why.endswith("*concise* first (90%): nash_md_1")
    # With P*'s equilibrium, each group's distance to it, and whether the tied policies
    # are all at it.
    at_eq = findings.why_not(small, cells, styles, quality, nash=[1.0, 0.0, 0.0, 0.0])
    assert "*concise* first (90%, TV to P*'s Nash(tau) 0.10): nash_md_1" in at_eq
    assert "policies at one equilibrium tie" not in at_eq  # 0.95 away
    near = {**styles, "nash_md_1": [0.02, 0.96, 0.02, 0.0, 0.0]}
    assert findings.why_not(small, cells, near, quality, nash=[0.03, 0.95, 0.02, 0.0]).endswith(
        "every tied policy is within TV 0.05 of P*'s equilibrium: policies at one equilibrium tie")
    # The RLHF finding also gets P*'s own style-level answer at the trained taus.
    rl = found["RLHF has the highest win rate against SFT"]
    pred = game.MixedPrediction(tau_nash=0.02, tau_rlhf=0.05, nash=np.zeros(4), rlhf=np.zeros(4),
                                nash_vs_rlhf=0.63, nash_vs_sft=0.7, rlhf_vs_sft=0.6)
    assert findings.why_not(rl, cells, styles, quality, pred).endswith(
        "RLHF(tau 0.05) vs SFT 0.600, Nash(tau 0.02) vs SFT 0.700")
    # RLHF far above SFT in repeated words reads as over-optimising its RM.
    worse = {**quality, "rlhf": {"repeated": 0.55, "quality": 1.91}, "sft": {"repeated": 0.07, "quality": 2.01}}
    assert ("RLHF repeats a word in 55% of its samples (SFT: 7%): it over-optimises a blind spot of its "
            "reward model") in findings.why_not(rl, cells, styles, worse, pred)
    assert "over-optimises" not in findings.why_not(rl, cells, styles, {**worse, "rlhf": worse["sft"]}, pred)
    # The beta curve is flat: its spread against the cells' intervals.
    assert findings.why_not(found["win rate against RLHF is single-peaked in beta"], cells, {}, {}).startswith(
        "the curve spans 0.000 against a 95% half-width of 0.0")
    bumpy = _matrix(names, {**strength, "nash_md_0.5": 2.5})
    assert "highest at nash_md_0.5" in findings.why_not(
        next(f for f in findings.paper_findings(bumpy, names, betas) if f.key == "single_peak"), bumpy, {}, {})
    # A finding that holds has nothing to explain in the section; one that fails has.
    diag = {"styles": ["concise", "exhaustive"], "tau_nash": 0.008, "tau_rlhf": 0.05, "nash_pm": [0.48, 0.52],
            "nash_pstar": [0.999, 0.001], "rlhf_rm": [0.1, 0.9], "rlhf_pstar": [0.002, 0.998]}
    md = findings.paper_findings_markdown(cells, names, styles, quality, pred, diag)
    assert ("a PM whose regularised equilibrium at tau 0.008 is 52% *exhaustive* (P*'s: 100% *concise*); "
            "RLHF against an RM whose policy at tau 0.05 is 90% *exhaustive*") in md
    row = next(line for line in md.splitlines() if line.startswith("| a small mixture"))
    assert row.endswith(findings.why_not(small, cells, styles, quality, pred, diag["nash_pstar"]) + " |")
    assert "| **no** |" in row and "TV to P*'s Nash(tau) 0.10" in row
    row = next(line for line in md.splitlines() if line.startswith("| every trained policy"))
    assert row.endswith("| yes | 5/5; rlhf 0.818, nash_md_0 0.881, nash_md_0.125 0.881, nash_md_0.5 0.881, "
                        "nash_md_1 0.881 |  |")


def test_the_mechanism_finding_reads_the_style_shares_and_the_nash_vs_rlhf_cell():
    from nlhf_jax.evaluation import findings

    names = ["sft", "rlhf", "nash_md"]
    cells = _matrix(names, {"sft": 0.0, "rlhf": 0.3, "nash_md": 0.8})
    styles = {"sft": [0.15, 0.18, 0.53, 0.14, 0.0], "rlhf": [0.07, 0.86, 0.05, 0.02, 0.0],
              "nash_md": [0.92, 0.05, 0.02, 0.01, 0.0]}
    line = findings.mechanism_finding(cells, names, styles)
    assert "**shown**" in line and "nash_md's *concise* share 15% (SFT) -> 92% (yes)" in line
    assert "RLHF's *exhaustive* share 18% -> 86% (yes)" in line and "nash_md vs RLHF 0.622 [" in line
    assert line in findings.findings_lines(cells, names, _FakePrediction(), styles)
    # Everything to *exhaustive* (the quick demo's judges): not shown, and the PM says why.
    styles["nash_md"] = [0.04, 0.94, 0.01, 0.01, 0.0]
    diag = {"styles": ["concise", "exhaustive", "feelings_first", "chronological"], "tau_nash": 0.008,
            "pm_max_abs": 0.172, "pm_keeps_condorcet": True, "pm_keeps_cycles": False,
            "nash_pm": [0.48, 0.52, 0.0, 0.0], "nash_pstar": [0.999, 0.0, 0.0, 0.001]}
    line = findings.mechanism_finding(cells, names, styles, diag)
    assert "**not shown**" in line and "15% (SFT) -> 4% (no)" in line
    assert line.endswith("0.172 max-abs from P*'s style matrix, keeps the Condorcet winner, loses the cycle, "
                         "and puts its regularised equilibrium at tau 0.008 at 52% *exhaustive* (P*'s: 100% "
                         "*concise*): the PM points away from P*'s equilibrium, and the policies follow their "
                         "judges (judge diagnostics below)")
    # A PM that points where P* does, and a policy that has not got there.
    line = findings.mechanism_finding(cells, names, styles, {**diag, "nash_pm": [0.97, 0.03, 0.0, 0.0]})
    assert line.endswith("the PM points where P* does, but nash_md has not got there within the run (TV 0.93 "
                         "to the PM's equilibrium) (judge diagnostics below)")
    # The paper preset's MD1 plays Nash-MD-PG; without RLHF there is nothing to check.
    renamed = {(a.replace("nash_md", "nash_md_0.125"), b.replace("nash_md", "nash_md_0.125")): c
               for (a, b), c in cells.items()}
    styles["nash_md_0.125"] = styles.pop("nash_md")
    assert "nash_md_0.125 vs RLHF" in findings.mechanism_finding(renamed, ["sft", "rlhf", "nash_md_0.125"], styles)
    assert findings.mechanism_finding(cells, ["sft", "nash_md"], styles) is None


class _FakePrediction:
    tau_nash, tau_rlhf, nash_vs_rlhf, nash_vs_sft, rlhf_vs_sft = 0.008, 0.05, 0.6, 0.6, 0.6


def test_ptau_cells_mirror_an_antisymmetric_judge_exactly():
    from nlhf_jax.evaluation import sampling, stats

    rng = np.random.default_rng(1)
    samples = []
    for name in ("sft", "a", "b"):
        texts = _policy(rng, 50)
        samples.append(sampling.PolicySamples(name, "", texts, None, None, seq_logp=rng.normal(size=50),
                                              seq_ref_logp=rng.normal(size=50)))
    calls = []

    def prob(posts, ys, ys_alt):
        calls.append(1)
        return _judge(posts, ys, ys_alt)

    full = stats.ptau_cells(samples, [""] * 50, prob, 0.1, antisymmetric=False)
    assert len(calls) == 9
    calls.clear()
    fast = stats.ptau_cells(samples, [""] * 50, prob, 0.1)
    assert len(calls) == 3
    for key, cell in full.items():
        assert fast[key].mean == pytest.approx(cell.mean, abs=1e-12), key
    assert fast[("a", "b")].mean + fast[("b", "a")].mean == pytest.approx(1.0, abs=1e-12)
    assert fast[("a", "a")].mean == 0.5


def test_quality_table_counts_the_parser_features(tmp_path):
    from nlhf_jax.evaluation import sampling, tables
    from nlhf_jax.data.world import generator

    world = str(tmp_path / "w")
    generator.generate(generator.WorldConfig(n_sft=(4, 2, 4), n_comparisons=(4, 2, 2), n_prompts_train=2), world)
    with open(generator.split_path(world, "sft", "test")) as f:
        rows = [json.loads(line) for line in f]
    posts = [r["post"] for r in rows]
    refs = [r["summary"] for r in rows]
    # Each reference with its first clause said twice: one repeated word at least.
    doubled = [r.rstrip(" .") + " and " + r.rstrip(" .") + " ." for r in refs]
    samples = [sampling.PolicySamples("ref", "", refs, None, None),
               sampling.PolicySamples("doubled", "", doubled, None, None),
               sampling.PolicySamples("empty", "", [""] * len(refs), None, None)]
    md, data = tables.quality_table(samples, world, posts)
    assert data["doubled"]["repeated"] == 1.0 and data["empty"]["main_point"] == 0.0
    assert data["ref"]["repeated"] == 0.0
    assert data["ref"]["quality"] > data["doubled"]["quality"] > data["empty"]["quality"]
    assert data["doubled"]["words"] > data["ref"]["words"] > data["empty"]["words"] == 0
    assert md.splitlines()[0].startswith("| policy | main point") and len(md.splitlines()) == 5


def test_report_first_prompts_keep_every_field_aligned():
    """P_tau on the first n prompts (`report._first`) slices texts, tokens, lengths and
    both log-probs alike, and leaves absent fields absent."""
    from nlhf_jax.evaluation import report, sampling

    s = sampling.PolicySamples("a", "", [f"t{i}" for i in range(6)], np.arange(12).reshape(6, 2),
                               np.arange(6), seq_logp=np.arange(6.0), seq_ref_logp=None)
    cut = report._first(s, 4)
    assert cut.texts == ["t0", "t1", "t2", "t3"] and cut.name == "a"
    np.testing.assert_array_equal(cut.tokens, np.arange(8).reshape(4, 2))
    np.testing.assert_array_equal(cut.lengths, np.arange(4))
    np.testing.assert_array_equal(cut.seq_logp, np.arange(4.0))
    assert cut.seq_ref_logp is None and len(s.texts) == 6


def test_style_curves_read_the_monitor_metrics(tmp_path):
    from nlhf_jax.evaluation import tables

    run = tmp_path / "nash_md"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, 7):
            f.write(json.dumps({"step": step, "world/style/concise": step / 10, "world/style/exhaustive": 0.1,
                                "world/tv_to_nash": 1 - step / 10}) + "\n")
    (tmp_path / "rlhf").mkdir()  # a run without the metrics is skipped
    curves = tables.style_curves(str(tmp_path / "styles.png"), {"nash_md": str(run), "rlhf": str(tmp_path / "rlhf")},
                                 smooth=2)
    assert list(curves) == ["nash_md"] and (tmp_path / "styles.png").is_file()
    assert curves["nash_md"]["step"] == [2, 3, 4, 5, 6]
    np.testing.assert_allclose(curves["nash_md"]["concise"], [0.15, 0.25, 0.35, 0.45, 0.55])
    assert tables.style_curves(str(tmp_path / "none.png"), {"rlhf": str(tmp_path / "rlhf")}) == {}


def test_quality_by_style_splits_the_quality_table(tmp_path):
    from nlhf_jax.data.world import generator, grammar, styles
    from nlhf_jax.evaluation import sampling, tables

    world = str(tmp_path / "w")
    generator.generate(generator.WorldConfig(n_sft=(8, 4, 4), n_comparisons=(8, 4, 4), n_prompts_train=4), world)
    rng = np.random.default_rng(0)
    posts, texts = [], []
    for i in range(12):
        post = grammar.sample_post(rng, f"q-{i}")
        posts.append(post.text)
        texts.append(styles.render_summary(rng, post, i % 2, styles.FAITHFUL if i % 4 < 2 else styles.HALLUCINATED))
    s = sampling.PolicySamples(name="p", model_dir="", texts=texts, tokens=np.zeros((12, 1)), lengths=np.ones(12))
    md, data = tables.quality_by_style_table([s], world, posts)
    _, whole = tables.quality_table([s], world, posts)
    shares = {k: v["share"] for k, v in data["p"].items()}
    assert abs(sum(shares.values()) - 1) < 1e-9 and len(md.splitlines()) == 2 + len(shares)
    mean_q = sum(v["share"] * v["quality"] for v in data["p"].values())
    assert mean_q == pytest.approx(whole["p"]["quality"])


def test_training_curves_take_runs_that_log_no_kl(tmp_path):
    """IPO-MD logs no policy/kl_ref (its log-ratio is under the mixture, not pi): the
    curves still draw, with its reward and length and without a KL line."""
    import os

    from nlhf_jax.evaluation import report

    for name, extra in (("rlhf", {"policy/kl_ref": 0.1}), ("ipo_md", {})):
        os.makedirs(tmp_path / name)
        with open(tmp_path / name / "metrics.jsonl", "w") as f:
            for step in (1, 2):
                f.write(json.dumps({"step": step, "policy/reward": 0.5, "rollout/length": 9.0, **extra}) + "\n")
    path = str(tmp_path / "curves.png")
    report.training_curves(path, str(tmp_path), ["sft", "rlhf", "ipo_md"])
    assert os.path.getsize(path) > 1000
