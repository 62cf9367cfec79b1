"""The findings a demo report states: the paper's qualitative findings checked on a
win-rate matrix, what the run measured about each that does not hold, and whether the
run shows the embedded world's mechanism (Nash-MD-PG toward the raters' Condorcet
winner while RLHF goes where a Bradley-Terry reward points).
"""

from typing import NamedTuple, Optional, Sequence

import numpy as np

from nlhf_jax.evaluation import stats
from nlhf_jax.evaluation import tables


def _tv_to(share: Sequence[float], eq: Sequence[float]) -> float:
    """Total variation between a policy's style shares (with the trailing "none" entry)
    and an equilibrium over the world's styles (without it)."""
    return stats.total_variation(share, tables.padded_styles(np.asarray(eq), len(share)))


def _fmt(c) -> str:
    return f"{c.mean:.3f} [{c.lo:.2f}, {c.hi:.2f}]"


class Finding(NamedTuple):
    """One of the paper's findings checked on a win-rate matrix.

    Attributes:
      key: a short name ("beats_sft", "rlhf_best", "single_peak", "md1_beats_rlhf",
        "small_beta", "md1_best", "br_overoptimises", "ema_trails").
      text: the finding.
      holds: whether the matrix shows it.
      numbers: the cells that decide it, formatted.
      cells: the deciding comparisons, ((row, column), ...) keys of the matrix.
      policies: the policies it is about (for the report's explanation).
    """

    key: str
    text: str
    holds: bool
    numbers: str
    cells: tuple = ()
    policies: tuple = ()


def paper_findings(cells: dict, names: Sequence[str], betas: Sequence[float]) -> list[Finding]:
    """The paper's qualitative findings (its Table 1 and section 8), checked on a matrix.

    Args:
      cells: {(row, column): stats.Comparison of column over row} (one judge).
      names: the policies, including "sft", "rlhf", "nash_md_<beta>" for each beta (in
        `f"{beta:g}"` form) and any "nash_ema_<decay>" / "nash_ema_<decay>*".
      betas: the Nash-MD-PG mixture weights, increasing; betas[1] plays the paper's MD1
        (0.125), betas[0] = 0 is self-play and betas[-1] = 1 best response.

    Returns:
      One `Finding` per finding.
    """
    md = [f"nash_md_{b:g}" for b in betas]
    sp, md1, br = md[0], md[1], md[-1]
    trained = [n for n in names if n != "sft"]
    vs_sft = {n: cells[("sft", n)] for n in trained}
    out = []
    beaten = [n for n in trained if vs_sft[n].lo > 0.5]
    out.append(Finding("beats_sft", "every trained policy beats SFT (lower bound > 0.5)", len(beaten) == len(trained),
                       f"{len(beaten)}/{len(trained)}; " + ", ".join(f"{n} {vs_sft[n].mean:.3f}" for n in trained),
                       tuple(("sft", n) for n in trained if n not in beaten),
                       ("sft",) + tuple(n for n in trained if n not in beaten)))
    best = max(trained, key=lambda n: vs_sft[n].mean)
    out.append(Finding("rlhf_best", "RLHF has the highest win rate against SFT", best == "rlhf",
                       f"RLHF {_fmt(vs_sft['rlhf'])}; highest {best} {vs_sft[best].mean:.3f}",
                       (("sft", "rlhf"), ("sft", best)), tuple(dict.fromkeys(("sft", "rlhf", best)))))
    vs_rlhf = [cells[("rlhf", n)].mean for n in md]
    peak = int(np.argmax(vs_rlhf))
    single = all(a <= b for a, b in zip(vs_rlhf[:peak], vs_rlhf[1:peak + 1])) and all(
        a >= b for a, b in zip(vs_rlhf[peak:], vs_rlhf[peak + 1:]))
    out.append(Finding("single_peak", "win rate against RLHF is single-peaked in beta", single,
                       ", ".join(f"beta {b:g}: {v:.3f}" for b, v in zip(betas, vs_rlhf)),
                       tuple(("rlhf", n) for n in md), tuple(md)))
    c = cells[("rlhf", md1)]
    out.append(Finding("md1_beats_rlhf",
                       f"Nash-MD-PG with beta = {betas[1]:g} beats RLHF head to head (lower bound > 0.5)",
                       c.lo > 0.5, _fmt(c), (("rlhf", md1),), (md1, "rlhf")))
    small = [m for m, b in zip(md, betas) if 0 < b <= 0.375]
    wins = {(m, o): cells[(o, m)] for m in small for o in (sp, br)}
    out.append(Finding("small_beta", "a small mixture weight (0 < beta <= 0.375) beats self-play and best response",
                       all(v.mean > 0.5 for v in wins.values()),
                       "; ".join(f"{m} vs {o} {v.mean:.3f}" for (m, o), v in wins.items()),
                       tuple((o, m) for (m, o), v in wins.items() if v.mean <= 0.5), tuple(small) + (sp, br)))
    others = [n for n in trained if n != md1]
    lost = [o for o in others if cells[(o, md1)].mean <= 0.5]
    out.append(Finding("md1_best", f"{md1} beats every other policy head to head", not lost,
                       ", ".join(f"vs {o} {cells[(o, md1)].mean:.3f}" for o in others),
                       tuple((o, md1) for o in lost), (md1,) + tuple(lost)))
    c = cells[("rlhf", br)]
    worst = min(trained, key=lambda n: vs_sft[n].mean)
    out.append(Finding("br_overoptimises",
                       "best response over-optimises: it loses to RLHF and has the lowest win rate against SFT",
                       c.mean < 0.5 and worst == br,
                       f"best response vs RLHF {_fmt(c)}; vs SFT {vs_sft[br].mean:.3f}",
                       (("rlhf", br), ("sft", br)), tuple(dict.fromkeys((br, "rlhf", worst)))))
    emas = [n for n in trained if n.startswith("nash_ema")]
    if emas:
        trailing = [e for e in emas if cells[(e, md1)].mean <= 0.5]
        out.append(Finding("ema_trails", f"EMA variants trail Nash-MD-PG ({md1} beats each)", not trailing,
                           ", ".join(f"{md1} vs {e} {cells[(e, md1)].mean:.3f}" for e in emas),
                           tuple((e, md1) for e in trailing), (md1,) + tuple(trailing)))
    return out


# `why_not`'s readings: a policy "at" P*'s regularised equilibrium over styles (total
# variation below this), and RLHF "over-optimising" its RM (repeated-word share above
# SFT's by more than this; the world's parser counts a repeated content word, the error
# the demo's RM misses most, docs/results-world.md).
AT_EQUILIBRIUM = 0.05
OVER_OPTIMISED = 0.2


def why_not(finding: Finding, cells: dict, styles: dict, quality: dict, pred=None,
            nash: Optional[Sequence[float]] = None) -> str:
    """What the run measured about a finding that does not hold (one markdown cell).

    The measurements: which of its deciding comparisons are ties at 95% (the interval
    holds 0.5: the finding fails inside the noise of the evaluation), and where the
    policies it names went: their most frequent style and its share (the world's style
    game is what separates Nash from RLHF), the share of samples with a repeated word
    (the blind spot a judge leaves to be over-optimised) and mean quality. For the RLHF
    finding also the world's style-level prediction at the trained taus (`pred`, a
    `game.MixedPrediction`): whether P* itself ranks RLHF above Nash against SFT. With
    `nash`, each group of policies also gets its total variation to that equilibrium
    over styles. Then two readings, each only when its numbers say so: every tied
    policy is at P*'s equilibrium (`AT_EQUILIBRIUM`; policies at one equilibrium tie),
    and RLHF repeats words far more often than SFT (`OVER_OPTIMISED`).

    Args:
      cells: the matrix of `paper_findings`.
      styles: {policy: share per style in `styles.STYLE_NAMES` order} (the style table).
      quality: {policy: {"repeated": .., "quality": ..}} (the quality table).
      nash: P*'s regularised equilibrium over the world's styles at the NLHF policies'
        tau (one share per style, without the "none" entry), or None.
    """
    from nlhf_jax.data.world import styles as world_styles

    parts = []
    ties = [(k, cells[k]) for k in finding.cells if cells[k].lo <= 0.5 <= cells[k].hi]
    if ties:
        shown = "; ".join(f"{c} vs {r} {_fmt(v)}" for (r, c), v in ties[:4])
        more = f" and {len(ties) - 4} more" if len(ties) > 4 else ""
        parts.append(f"ties at 95% ({len(ties)} of {len(finding.cells)} deciding cells): {shown}{more}")
    groups: dict = {}
    for n in finding.policies:
        if n not in styles:
            continue
        share = np.asarray(styles[n])
        top = int(np.argmax(share))
        groups.setdefault(world_styles.STYLE_NAMES[top], []).append((n, float(share[top])))
    tv = {}
    if nash is not None:
        tv = {n: _tv_to(styles[n], nash) for n in finding.policies if n in styles}
    for style, members in groups.items():
        shares = [x for _, x in members]
        lo, hi = f"{min(shares):.0%}", f"{max(shares):.0%}"
        span = lo if lo == hi else f"{lo}-{hi}"
        prof = ", ".join(
            n + (f" (repeated words {quality[n]['repeated']:.0%}, quality {quality[n]['quality']:.2f})"
                 if n in quality else "") for n, _ in members)
        if tv:
            tvs = [f"{tv[n]:.2f}" for n, _ in members]
            lo_tv, hi_tv = min(tvs, key=float), max(tvs, key=float)
            span += f", TV to P*'s Nash(tau) {lo_tv if lo_tv == hi_tv else lo_tv + '-' + hi_tv}"
        parts.append(f"*{style}* first ({span}): {prof}")
    # Two readings of the measurements above, each stated only when its numbers say so.
    tied = {n for (r, c), _ in ties for n in (r, c) if n != "sft"}
    if tied and tv and all(n in tv and tv[n] < AT_EQUILIBRIUM for n in tied):
        parts.append(f"every tied policy is within TV {AT_EQUILIBRIUM:g} of P*'s equilibrium: policies at one "
                     "equilibrium tie")
    rl, ref = quality.get("rlhf"), quality.get("sft")
    if "rlhf" in finding.policies and rl and ref and rl["repeated"] - ref["repeated"] > OVER_OPTIMISED:
        parts.append(f"RLHF repeats a word in {rl['repeated']:.0%} of its samples (SFT: {ref['repeated']:.0%}): "
                     "it over-optimises a blind spot of its reward model")
    if finding.key == "single_peak":
        means = [cells[k].mean for k in finding.cells]
        half = float(np.median([(cells[k].hi - cells[k].lo) / 2 for k in finding.cells]))
        parts.insert(0, f"the curve spans {max(means) - min(means):.3f} against a 95% half-width of "
                        f"{half:.3f} per cell" + (" (flat within the noise)" if max(means) - min(means) < half else "")
                     + f", highest at {finding.cells[int(np.argmax(means))][1]}")
    if pred is not None and finding.key == "rlhf_best":
        parts.append(f"P*'s style game at the trained taus: RLHF(tau {pred.tau_rlhf:g}) vs SFT "
                     f"{pred.rlhf_vs_sft:.3f}, Nash(tau {pred.tau_nash:g}) vs SFT {pred.nash_vs_sft:.3f}")
    return "; ".join(parts) or "-"


# A style share "rises" when it gains more than this over SFT's: with 1,000 samples a
# share's 95% sampling interval is at most +-3 points.
SHARE_RISE = 0.05


def _top_style(dist: Sequence[float], names: Sequence[str]) -> str:
    i = int(np.argmax(dist))
    return f"{dist[i]:.0%} *{names[i]}*"


def mechanism_finding(pstar: dict, names: Sequence[str], styles: dict, diag: Optional[dict] = None) -> Optional[str]:
    """Whether the run shows the world's mechanism, as one finding line (None without
    Nash-MD-PG at beta 0.125, RLHF and SFT's style shares).

    The world's raters have a Condorcet winner, *concise*, that a Bradley-Terry reward
    ranks below *exhaustive* (docs/world.md): NLHF should move toward *concise* while
    RLHF moves toward *exhaustive*, and win. Checked: Nash-MD-PG's *concise* share and
    RLHF's *exhaustive* share each gain more than `SHARE_RISE` over SFT's, and the
    Nash-MD-PG vs RLHF cell's lower bound is above 0.5. When it is not shown and the
    judge diagnostics are given, the line says what the PM the policies trained against
    measured (Condorcet winner, cycle, distance to P*, its regularised equilibrium).

    Args:
      styles: {policy: share per style in `styles.STYLE_NAMES` order}.
      diag: `diagnostics.world_judge_diagnostics`' numbers, or None.
    """
    from nlhf_jax.data.world import styles as world_styles

    nmd = next((n for n in ("nash_md", "nash_md_0.125") if n in names), None)
    if nmd is None or "rlhf" not in names or any(n not in styles for n in ("sft", nmd, "rlhf")):
        return None
    ci, ei = world_styles.STYLE_NAMES.index("concise"), world_styles.STYLE_NAMES.index("exhaustive")
    c0, c1 = styles["sft"][ci], styles[nmd][ci]
    e0, e1 = styles["sft"][ei], styles["rlhf"][ei]
    cell = pstar[("rlhf", nmd)]
    checks = [(c1 - c0 > SHARE_RISE, f"{nmd}'s *concise* share {c0:.0%} (SFT) -> {c1:.0%}"),
              (e1 - e0 > SHARE_RISE, f"RLHF's *exhaustive* share {e0:.0%} -> {e1:.0%}"),
              (cell.lo > 0.5, f"{nmd} vs RLHF {_fmt(cell)}")]
    shown = all(ok for ok, _ in checks)
    line = ("- the world's mechanism (Nash-MD-PG toward *concise*, the raters' Condorcet winner, RLHF "
            f"toward *exhaustive*, and Nash-MD-PG wins): **{'shown' if shown else 'not shown'}**: "
            + "; ".join(f"{text} ({'yes' if ok else 'no'})" for ok, text in checks))
    if not shown and diag:
        line += (f". The PM the NLHF policies trained against is {diag['pm_max_abs']:.3f} max-abs from P*'s "
                 f"style matrix, {'keeps' if diag['pm_keeps_condorcet'] else 'loses'} the Condorcet winner, "
                 f"{'keeps' if diag['pm_keeps_cycles'] else 'loses'} the cycle, and puts its regularised "
                 f"equilibrium at tau {diag['tau_nash']:g} at {_top_style(diag['nash_pm'], diag['styles'])} "
                 f"(P*'s: {_top_style(diag['nash_pstar'], diag['styles'])})")
        # Which of the two it is: a judge that points elsewhere, or a policy that has not
        # reached its judge's equilibrium within the run.
        tv = _tv_to(styles[nmd], diag["nash_pm"])
        if int(np.argmax(diag["nash_pm"])) != int(np.argmax(diag["nash_pstar"])):
            line += ": the PM points away from P*'s equilibrium, and the policies follow their judges"
        else:
            line += (f": the PM points where P* does, but {nmd} has not got there within the run (TV "
                     f"{tv:.2f} to the PM's equilibrium)")
        line += " (judge diagnostics below)"
    return line


def findings_lines(pstar: dict, names: Sequence[str], pred, styles: Optional[dict] = None,
              diag: Optional[dict] = None) -> list[str]:
    """The report's findings under P*, and the world's style-level prediction `pred`
    (a `game.MixedPrediction` at the taus the policies trained with). With the style
    table's shares (`styles`) also whether the run shows the world's mechanism
    (`mechanism_finding`, with the judge diagnostics `diag`)."""
    sft_col = {n: pstar[("sft", n)] for n in names if n != "sft"}
    findings = []
    beats = [n for n, c in sft_col.items() if c.lo > 0.5]
    findings.append(f"- policies beating SFT with the interval's lower bound above 0.5: "
                    f"{len(beats)}/{len(sft_col)} ({', '.join(beats) or 'none'})")
    if "nash_md" in names and "rlhf" in names:
        c = pstar[("rlhf", "nash_md")]
        findings.append(f"- Nash-MD-PG (beta = 0.125) vs RLHF under P*: {c.mean:.3f} [{c.lo:.3f}, {c.hi:.3f}]"
                        f" ({'lower bound above 0.5' if c.lo > 0.5 else 'not significantly above 0.5'})")
    mechanism = mechanism_finding(pstar, names, styles, diag) if styles else None
    if mechanism:
        findings.append(mechanism)
    # Each policy at the tau it trained with: the demo's Nash-MD-PG and RLHF differ.
    findings.append(f"- style-level prediction of the world (P*'s style game) at the trained taus: "
                    f"P*(Nash(tau = {pred.tau_nash:g}) > RLHF(tau = {pred.tau_rlhf:g})) = "
                    f"{pred.nash_vs_rlhf:.3f}, "
                    f"P*(Nash > SFT) = {pred.nash_vs_sft:.3f}, P*(RLHF > SFT) = {pred.rlhf_vs_sft:.3f}")
    return findings


def paper_findings_markdown(pstar: dict, names: Sequence[str], styles: Optional[dict] = None,
                             quality: Optional[dict] = None, pred=None, diag: Optional[dict] = None) -> str:
    """The `paper_findings` section, or "" unless the policies span the paper's betas
    (self-play 0 to best response 1, at least three) and include RLHF. With the style
    and quality tables' numbers, each finding that does not hold gets what the run
    measured about it (`why_not`); with the judge diagnostics (`diag`), the section
    says where the PM's regularised equilibrium lies, which is where the NLHF policies
    are pulled."""
    betas = sorted(float(n[len("nash_md_"):]) for n in names if n.startswith("nash_md_"))
    if not (len(betas) >= 3 and betas[0] == 0.0 and betas[-1] == 1.0 and "rlhf" in names):
        return ""
    nash = (diag or {}).get("nash_pstar")
    rows = [f"| {f.text} | {'yes' if f.holds else '**no**'} | {f.numbers} | "
            f"{'' if f.holds else why_not(f, pstar, styles or {}, quality or {}, pred, nash)} |"
            for f in paper_findings(pstar, names, betas)]
    pm_line = ""
    if diag:
        def top(dist):
            return _top_style(dist, diag["styles"])

        pm_line = (f"The NLHF policies trained against a PM whose regularised equilibrium at tau "
                   f"{diag['tau_nash']:g} is {top(diag['nash_pm'])} (P*'s: {top(diag['nash_pstar'])}); "
                   f"RLHF against an RM whose policy at tau {diag['tau_rlhf']:g} is {top(diag['rlhf_rm'])} "
                   f"(under P*'s Bradley-Terry reward: {top(diag['rlhf_pstar'])}). ")
    return ("## The paper's findings under P*\n\n" + pm_line + "Where a finding does not hold, the last column "
            "gives what the run measured about it: the deciding comparisons that are ties at 95%, "
            "and where its policies went (most frequent style and its share, with the distance to P*'s "
            "regularised equilibrium when known, samples with a repeated word, mean quality; the style "
            "and quality tables below).\n\n"
            "| finding (paper Table 1, section 8) | holds | numbers | measured, where it does not hold |\n"
            "|---|---|---|---|\n" + "\n".join(rows))
