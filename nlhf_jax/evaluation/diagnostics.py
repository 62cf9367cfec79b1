"""Judge diagnostics: the learned PM and RM against P* at the style level.

Why this module exists: the world predicts what NLHF and RLHF converge to from P*'s
style game (`nlhf world --describe`), but the deep policies never see P*. Nash-MD-PG
optimises against the learned preference model (PM) and RLHF against the learned
reward model (RM). If the PM flattens P*'s preference cycle or moves its Condorcet
winner, the regularised Nash equilibrium it leads to is not P*'s, and a demo that
"fails" the prediction may only have had a poor judge. This module measures the style
game once more under each judge, on the very same pairs of summaries, and solves it:

* `style_matrix`: P(style i > style j) among faithful summaries of fresh posts;
* `judge_diagnostics`: PM and RM matrices against P*'s (max-abs error, Condorcet
  winner, 3-cycles), and the policies each judge predicts next to P*'s own: the
  regularised Nash equilibrium pi = mu exp(P pi / tau) / Z (paper §4, eq. 2: the
  solution of the tau-regularised preference game) under the PM, the RLHF policy
  mu exp(r / tau) / Z under the Bradley-Terry reward fitted to the RM, and
  P*(Nash_PM > RLHF_RM), what the demo's head-to-head should show;
* `trained_tau`: the tau a policy run actually trained with (its metrics.jsonl).
"""

import dataclasses
import math
import os
from typing import Callable, Optional, Sequence

import numpy as np

from nlhf_jax import metrics as metrics_lib
from nlhf_jax.data import templates
from nlhf_jax.data.world import game, grammar, styles

ProbFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]
HEADING = "## Judge diagnostics: the learned PM and RM at the style level"
DEFAULT_SEED = 4321  # another stream than `judges.shifted_pairs` (1234) and the world's posts


@dataclasses.dataclass(frozen=True)
class StylePairs:
    """Pairs of faithful summaries of one fresh post each, n per ordered style pair.

    Attributes:
      prompts: [B] TL;DR prompts (`templates.post_prompt`), what every judge reads.
      ys: [B] the summary of style cells[b, 0].
      ys_alt: [B] the summary of style cells[b, 1] (of the same post).
      cells: [B, 2] int (row style, column style), never equal.
      n_per_cell: pairs per ordered cell; B = n_per_cell * S * (S - 1).
    """

    prompts: list
    ys: list
    ys_alt: list
    cells: np.ndarray
    n_per_cell: int


def style_pairs(n_per_cell: int = 400, seed: int = DEFAULT_SEED) -> StylePairs:
    """Writes the pairs `style_matrix` judges: for every ordered pair of distinct styles
    (i, j), `n_per_cell` fresh posts, each with one faithful summary in style i and one
    in style j. Quality is held at faithful, so the pairs differ in style only (the part
    of P* where the rater types disagree). Deterministic in `seed`."""
    rng = np.random.default_rng([seed, 11])
    n_styles = len(styles.STYLES)
    prompts, ys, ys_alt, cells = [], [], [], []
    for i in range(n_styles):
        for j in range(n_styles):
            if i == j:
                continue
            for k in range(n_per_cell):
                post = grammar.sample_post(rng, f"style-{seed}-{i}{j}-{k:06d}")
                prompts.append(templates.post_prompt({"subreddit": post.subreddit, "title": post.title,
                                                      "post": post.text}))
                ys.append(styles.render_summary(rng, post, i, styles.FAITHFUL))
                ys_alt.append(styles.render_summary(rng, post, j, styles.FAITHFUL))
                cells.append((i, j))
    return StylePairs(prompts, ys, ys_alt, np.asarray(cells, np.int64).reshape(-1, 2), n_per_cell)


def matrix_from_probs(pairs: StylePairs, p: np.ndarray) -> np.ndarray:
    """[S, S] mean of a judge's P(ys > ys_alt) (`p`, [B]) per cell; diagonal 1/2."""
    n_styles = len(styles.STYLES)
    total = np.zeros((n_styles, n_styles))
    count = np.zeros((n_styles, n_styles))
    np.add.at(total, (pairs.cells[:, 0], pairs.cells[:, 1]), np.asarray(p, np.float64))
    np.add.at(count, (pairs.cells[:, 0], pairs.cells[:, 1]), 1.0)
    out = np.full((n_styles, n_styles), 0.5)
    off = ~np.eye(n_styles, dtype=bool)
    out[off] = total[off] / np.maximum(count[off], 1.0)
    return out


def style_matrix(prob_fn: ProbFn, n_per_cell: int = 400, seed: int = DEFAULT_SEED,
                 pairs: Optional[StylePairs] = None) -> np.ndarray:
    """P(summary of style i > summary of style j) under a judge, among faithful summaries.

    Each off-diagonal cell is the judge's mean over its own `n_per_cell` pairs (both
    summaries of one fresh post, both faithful; `style_pairs`), in one batched call of
    `prob_fn` (model judges chunk inside). The diagonal is *not* measured: it is set to
    1/2, as in `describe.WorldReport.P_style` (a judge has no style to prefer between
    two summaries of one style, and the game's matrix is 1/2 there by antisymmetry).
    The ordered cells (i, j) and (j, i) use different pairs, so P + P.T = 1 holds only
    up to sampling (and the judge's own asymmetry).

    Args:
      prob_fn: `judge.prob(prompts, ys, ys_alt)` -> [B].
      n_per_cell: pairs per ordered cell.
      seed: seed of the posts and summaries: the same seed gives every judge the same pairs.
      pairs: pairs from `style_pairs` (overrides n_per_cell and seed), to write the
        texts once for several judges.

    Returns:
      [S, S] float64, rows and columns in `styles.STYLES` order.
    """
    pairs = pairs if pairs is not None else style_pairs(n_per_cell, seed)
    return matrix_from_probs(pairs, prob_fn(pairs.prompts, pairs.ys, pairs.ys_alt))


def antisymmetrize(P: np.ndarray) -> np.ndarray:
    """(P + 1 - P.T) / 2, [S, S]: the preference game is antisymmetric, P(y > y') =
    1 - P(y' > y), and the two ordered cells of a measured matrix are measured on
    different pairs; averaging them uses both measurements and restores the property
    the solvers assume (`game.bt_fit`, the Nash fixed point)."""
    return 0.5 * (P + 1.0 - P.T)


def trained_tau(run_dir: str) -> Optional[float]:
    """The tau a policy run trained with: `nashmd/tau` of the last record of
    `<run_dir>/metrics.jsonl` that has it (the online loop logs it every step, for
    RLHF too; with a tau schedule the last value is the one training ended at).

    Returns:
      The tau, or None if the file is missing, unreadable, or never logs `nashmd/tau`
      (callers fall back to a stated default).
    """
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    try:
        records = metrics_lib.read_jsonl(path)
    except (OSError, ValueError):
        return None
    for record in reversed(records):
        value = record.get("nashmd/tau") if isinstance(record, dict) else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


def _names(cycles: Sequence[tuple]) -> list[list[str]]:
    return [[styles.STYLES[i] for i in c] for c in cycles]


def _game_summary(P: np.ndarray) -> dict:
    """Condorcet winner and 3-cycles of a measured [S, S] matrix (antisymmetrised)."""
    A = antisymmetrize(P)
    winner = game.condorcet_winner(A)
    return {"condorcet": None if winner is None else styles.STYLES[winner], "cycles": game.three_cycles(A)}


def judge_diagnostics(P_star: np.ndarray, P_pm: np.ndarray, P_rm: Optional[np.ndarray], mu: np.ndarray,
                      tau_nash: float, tau_rlhf: float,
                      P_world: Optional[np.ndarray] = None) -> tuple[str, dict]:
    """The learned judges against P* at the style level, and the policies they predict.

    Every game is solved on the antisymmetrised matrix (`antisymmetrize`). Both BT
    rewards are fitted with pair weights mu x mu (the SFT policy's pairs, what the
    world's own prediction uses, `describe.describe_world`).

    Args:
      P_star: [S, S] P*'s style matrix measured on the same pairs as the others.
      P_pm: [S, S] the preference model's.
      P_rm: [S, S] the reward model's (sigmoid of reward differences), or None.
      mu: [S] the SFT style mix (the world's `style_mix`), all > 0.
      tau_nash: tau Nash-MD-PG trained with (the equilibrium's regularisation).
      tau_rlhf: tau RLHF trained with.
      P_world: [S, S] `describe_world(...).P_style` for a sanity line, or None.

    Returns:
      (markdown, numbers): numbers is JSON-serialisable; vectors over `styles.STYLES`.
    """
    mu = np.asarray(mu, np.float64)
    A_star, A_pm = antisymmetrize(P_star), antisymmetrize(P_pm)
    weights = np.outer(mu, mu)
    # The world's prediction with perfect judges (P* itself, and P*'s BT projection).
    reward_star = game.bt_fit(A_star, weights)
    true = game.predict_mixed(A_star, mu, reward_star, tau_nash, tau_rlhf)
    # The same with the learned judges the deep policies were trained against.
    nash_pm = game.regularized_nash(A_pm, mu, tau_nash)
    reward_rm = rlhf_rm = None
    if P_rm is not None:
        reward_rm = game.bt_fit(antisymmetrize(P_rm), weights)
        rlhf_rm = game.rlhf_policy(mu, reward_rm, tau_rlhf)
    games = {"pstar": _game_summary(P_star), "pm": _game_summary(P_pm)}
    if P_rm is not None:
        games["rm"] = _game_summary(P_rm)
    star_cycles, pm_cycles = set(games["pstar"]["cycles"]), set(games["pm"]["cycles"])

    def vec(v):
        return None if v is None else [float(x) for x in v]

    numbers = {
        "styles": list(styles.STYLES), "mu": vec(mu),
        "tau_nash": float(tau_nash), "tau_rlhf": float(tau_rlhf),
        "P_star": P_star.tolist(), "P_pm": P_pm.tolist(), "P_rm": None if P_rm is None else P_rm.tolist(),
        "pm_max_abs": float(np.abs(P_pm - P_star).max()),
        "rm_max_abs": None if P_rm is None else float(np.abs(P_rm - P_star).max()),
        "world_max_abs": None if P_world is None else float(np.abs(np.asarray(P_world) - P_star).max()),
        "condorcet": {k: g["condorcet"] for k, g in games.items()},
        "cycles": {k: _names(g["cycles"]) for k, g in games.items()},
        "pm_keeps_condorcet": games["pm"]["condorcet"] == games["pstar"]["condorcet"],
        "pm_keeps_cycles": star_cycles <= pm_cycles,
        "pm_same_cycles": star_cycles == pm_cycles,
        "nash_pstar": vec(true.nash), "nash_pm": vec(nash_pm),
        "reward_pstar": vec(reward_star), "reward_rm": vec(reward_rm),
        "rlhf_pstar": vec(true.rlhf), "rlhf_rm": vec(rlhf_rm),
        "pstar_nash_vs_rlhf": true.nash_vs_rlhf,
        # What the demo's Nash-MD-PG vs RLHF cell under P* should approach at the style
        # level, given the judges they were trained against.
        "predicted_nash_pm_vs_rlhf_rm": None if rlhf_rm is None else float(nash_pm @ A_star @ rlhf_rm),
    }
    return _markdown(numbers), numbers


def _matrix_markdown(n: dict) -> list[str]:
    """One table, each cell 'P* / PM / RM' (RM left out when absent)."""
    judges = ["P_star", "P_pm"] + (["P_rm"] if n["P_rm"] is not None else [])
    label = " / ".join({"P_star": "P*", "P_pm": "PM", "P_rm": "RM"}[j] for j in judges)
    names = n["styles"]
    lines = [f"| P(row > column): {label} | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for i, row in enumerate(names):
        cells = ["-" if i == j else " / ".join(f"{n[k][i][j]:.3f}" for k in judges)
                 for j in range(len(names))]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _worst_cell(n: dict, key: str) -> str:
    d = np.abs(np.asarray(n[key]) - np.asarray(n["P_star"]))
    np.fill_diagonal(d, -1.0)  # 1/2 by definition, never the worst
    if d.max() <= 0.0:
        return "identical on every cell"
    i, j = np.unravel_index(np.argmax(d), d.shape)
    return (f"worst cell {n['styles'][i]} > {n['styles'][j]}: {n[key][i][j]:.3f} against "
            f"P* {n['P_star'][i][j]:.3f}")


def _cycle_text(cycles: list) -> str:
    return "; ".join(" > ".join(c + [c[0]]) for c in cycles) or "none"


def _markdown(n: dict) -> str:
    """The section's markdown from `judge_diagnostics`' numbers."""
    has_rm = n["P_rm"] is not None
    lines = _matrix_markdown(n) + [""]
    err = f"- max-abs difference to P* on these pairs: PM {n['pm_max_abs']:.3f} ({_worst_cell(n, 'P_pm')})"
    if has_rm:
        err += f"; RM {n['rm_max_abs']:.3f} ({_worst_cell(n, 'P_rm')})"
    lines.append(err)
    if n["world_max_abs"] is not None:
        lines.append(f"- sanity: `nlhf world --describe`'s P_style against P* on these pairs: max-abs "
                     f"{n['world_max_abs']:.3f} (near 0: both are P* on faithful summaries, where it "
                     "depends on the styles alone)")
    cond, cyc = n["condorcet"], n["cycles"]
    kept = "kept" if n["pm_keeps_condorcet"] else "**changed**"
    lines.append(f"- Condorcet winner: P* {cond['pstar'] or 'none'}; PM {cond['pm'] or 'none'} ({kept})"
                 + (f"; RM {cond['rm'] or 'none'}" if has_rm else ""))
    if n["pm_same_cycles"]:
        cyc_kept = "kept"
    else:
        cyc_kept = "P*'s kept, others added" if n["pm_keeps_cycles"] else "**P*'s cycle lost**"
    lines.append(f"- 3-cycles: P* {_cycle_text(cyc['pstar'])}; PM {_cycle_text(cyc['pm'])} ({cyc_kept})"
                 + (f"; RM {_cycle_text(cyc['rm'])}" if has_rm else ""))
    lines += ["", "Policies over styles these matrices predict: Nash = the regularised equilibrium "
              "pi = mu exp(P pi / tau) / Z (paper §4, eq. 2); BT-RLHF = mu exp(r / tau) / Z with the "
              "Bradley-Terry reward r fitted on pairs from mu x mu.", "",
              "| policy | tau | " + " | ".join(n["styles"]) + " |", "|---|---:|" + "---:|" * len(n["styles"])]
    rows = [("SFT mu", None, n["mu"]), ("Nash under P*", n["tau_nash"], n["nash_pstar"]),
            ("Nash under PM", n["tau_nash"], n["nash_pm"]),
            ("BT-RLHF, reward fitted to P*", n["tau_rlhf"], n["rlhf_pstar"])]
    if has_rm:
        rows.append(("BT-RLHF, reward fitted to RM", n["tau_rlhf"], n["rlhf_rm"]))
    for name, tau, v in rows:
        tau_text = "-" if tau is None else f"{tau:g}"
        lines.append(f"| {name} | {tau_text} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
    lines += ["", f"- P*(Nash under P* > BT-RLHF under P*) = {n['pstar_nash_vs_rlhf']:.3f}: the world's "
              "prediction with perfect judges"]
    if has_rm:
        lines.append(f"- P*(Nash under PM > BT-RLHF under RM) = {n['predicted_nash_pm_vs_rlhf_rm']:.3f}: the "
                     "prediction for policies that reach the equilibria of the learned judges")
    return "\n".join(lines)


def world_judge_diagnostics(world_dir: str, pm, rm=None, *, tau_nash: float, tau_rlhf: float,
                            n_per_cell: int = 400, seed: int = DEFAULT_SEED) -> tuple[str, dict]:
    """`judge_diagnostics` of a PM (and an RM) on a world: writes the pairs once, judges
    them with P* (`judges.WorldJudge(world_dir)`), the PM and the RM, and compares.

    Args:
      world_dir: the world (its raters are P*; its `style_mix` is mu).
      pm: a judge with `prob(prompts, ys, ys_alt)` -> [B] (`judges.load_judge` of a PM).
      rm: the same for a reward model, or None.
      tau_nash, tau_rlhf: the taus of the policies trained against them.
      n_per_cell, seed: see `style_pairs`.

    Returns:
      (markdown, numbers), numbers with "n_per_cell" added.
    """
    from nlhf_jax import judges
    from nlhf_jax.data.world import describe, generator

    config = generator.load_config(world_dir)
    pairs = style_pairs(n_per_cell, seed)
    P_star = style_matrix(judges.WorldJudge(world_dir).prob, pairs=pairs)
    P_pm = style_matrix(pm.prob, pairs=pairs)
    P_rm = None if rm is None else style_matrix(rm.prob, pairs=pairs)
    P_world = describe.describe_world(config, taus=()).P_style
    md, numbers = judge_diagnostics(P_star, P_pm, P_rm, np.asarray(config.style_mix), tau_nash, tau_rlhf,
                                    P_world=P_world)
    numbers["n_per_cell"] = n_per_cell
    head = (f"Style-level preference among faithful summaries of fresh posts: {n_per_cell} pairs per "
            "ordered cell, both summaries of one post, the same pairs for every judge; the diagonal is 1/2 "
            "by definition. Games are solved on (P + 1 - P^T) / 2.")
    return head + "\n\n" + md, numbers
