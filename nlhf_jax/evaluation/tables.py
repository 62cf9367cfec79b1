"""What an evaluation writes: the win-rate matrix (markdown, CSV, JSON, heatmap), each
policy's style distribution next to the regularised Nash equilibrium over styles, and
the quality of its samples under the world's parser."""

import csv
import dataclasses
import json
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from nlhf_jax.evaluation import stats

if TYPE_CHECKING:
    from nlhf_jax.evaluation import sampling


def matrix_markdown(names: Sequence[str], cells: dict, digits: int = 3) -> str:
    """Markdown table: rows = opponents, columns = the policy whose win rate is shown."""
    head = "| row \\ column | " + " | ".join(names) + " |"
    sep = "|---|" + "---:|" * len(names)
    lines = [head, sep]
    for row in names:
        vals = []
        for col in names:
            c = cells[(row, col)]
            vals.append(f"{c.mean:.{digits}f} [{c.lo:.2f}, {c.hi:.2f}]")
        lines.append(f"| {row} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def write_outputs(out_dir: str, names: list, cells: dict, title: str, extra: dict) -> str:
    """matrix.md / .csv / .json and heatmap.png under out_dir. Returns the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    md = f"### {title}\n\nP(column > row), 95% interval in brackets.\n\n" + matrix_markdown(names, cells)
    with open(os.path.join(out_dir, "matrix.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(out_dir, "matrix.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "column", "p_column_over_row", "ci_lo", "ci_hi", "wins", "n"])
        for (r, c), v in cells.items():
            w.writerow([r, c, v.mean, v.lo, v.hi, v.wins, v.n])
    payload = {"title": title, "names": names,
               "cells": {f"{r}|{c}": dataclasses.asdict(v) for (r, c), v in cells.items()}, **extra}
    with open(os.path.join(out_dir, "matrix.json"), "w") as f:
        json.dump(payload, f, indent=1)
    heatmap(os.path.join(out_dir, "heatmap.png"), names, cells, title)
    return md


def heatmap(path: str, names: list, cells: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.array([[cells[(r, c)].mean for c in names] for r in names])
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.0 * len(names) + 1.5))
    im = ax.imshow(m, cmap="RdBu", vmin=0.2, vmax=0.8)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xlabel("column policy (its win rate)")
    ax.set_ylabel("row policy (opponent)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def style_table(samples: "list[sampling.PolicySamples]", world_dir: str,
                taus: Sequence[float]) -> tuple[str, dict]:
    """Each policy's style distribution vs the regularised Nash equilibrium over styles."""
    from nlhf_jax.data.world import describe, generator, raters, styles

    names = list(styles.STYLE_NAMES)
    k = len(names)
    rep = describe.describe_world(generator.load_config(world_dir), taus=tuple(taus))
    nash = {float(pr.tau): np.asarray(pr.nash) for pr in rep.style_predictions}
    nash_full = {t: padded_styles(eq, k) for t, eq in nash.items()}
    rows, data = [], {}
    header = "| policy | " + " | ".join(names) + " | TV to Nash(tau) |"
    rows += [header, "|---|" + "---:|" * (k + 1)]
    for s in samples:
        dist = stats.style_distribution(raters.RaterPanel.style(s.texts), k)
        tv = {t: stats.total_variation(dist, eq) for t, eq in nash_full.items()}
        data[s.name] = {"styles": dist.tolist(), "tv_to_nash": tv}
        tv_txt = ", ".join(f"{t:g}: {v:.2f}" for t, v in tv.items())
        rows.append(f"| {s.name} | " + " | ".join(f"{x:.2f}" for x in dist) + f" | {tv_txt} |")
    for t, eq in nash_full.items():
        rows.append(f"| Nash eq. tau={t:g} | " + " | ".join(f"{x:.2f}" for x in eq) + " | - |")
    return "\n".join(rows), {"styles": data, "nash": {str(t): v.tolist() for t, v in nash.items()}}



def quality_table(samples: "list[sampling.PolicySamples]", world_dir: str,
                  posts: Sequence[str]) -> tuple[str, dict]:
    """Each policy's quality under the world's parser: the errors the judges must catch.

    Columns: share of samples covering the main point, with a word the post does not
    support, with a repeated content word (a clause copied into the wrong place), mean
    number of words, and the raters' shared quality utility (higher is better; see
    `raters.RaterPopulation.quality`).
    """
    from nlhf_jax.data.world import raters

    judge = raters.RaterPanel.for_world(world_dir)
    rows = ["| policy | main point | unsupported word | repeated word | words | quality |",
            "|---|---:|---:|---:|---:|---:|"]
    data = {}
    for s in samples:
        f = judge.features(posts, s.texts)
        d = {"main_point": float(f.main_point.mean()), "unsupported": float((f.unsupported > 0).mean()),
             "repeated": float((f.repeats > 0).mean()), "words": float(f.n_words.mean()),
             "quality": float(judge.population.quality(f).mean())}
        data[s.name] = d
        rows.append(f"| {s.name} | {d['main_point']:.2f} | {d['unsupported']:.2f} | {d['repeated']:.2f} "
                    f"| {d['words']:.1f} | {d['quality']:.2f} |")
    return "\n".join(rows), data

def padded_styles(eq: np.ndarray, k: int) -> np.ndarray:
    """A distribution over the first len(eq) styles as one over all k (zeros past it)."""
    full = np.zeros(k)
    full[: len(eq)] = eq
    return full


def style_curves(path: str, runs: dict, smooth: int = 3) -> dict:
    """Figure of each policy run's style shares and TV distance to its Nash(tau) by step.

    Reads the `world/*` metrics that `describe.StyleMonitor` logs on every step (the
    step's samples; each record averages the steps since the previous one), with a
    moving average over `smooth` records. Runs without them are skipped.

    Args:
      path: the PNG to write.
      runs: {policy name: its run directory (with metrics.jsonl)}.
      smooth: moving-average window in records.

    Returns:
      {name: {"step": [...], "concise": [...], "exhaustive": [...], "tv_to_nash": [...]}}
      (smoothed), also the figure's data; {} and no file when no run has the metrics.
    """
    from nlhf_jax import metrics as metrics_lib

    keys = ("world/style/concise", "world/style/exhaustive", "world/tv_to_nash")
    curves = {}
    for name, run_dir in runs.items():
        f = os.path.join(run_dir, "metrics.jsonl")
        rows = [r for r in metrics_lib.read_jsonl(f) if all(k in r for k in keys)] if os.path.isfile(f) else []
        if not rows:
            continue
        w = max(1, min(smooth, len(rows)))
        avg = lambda v: np.convolve(np.asarray(v, np.float64), np.ones(w) / w, mode="valid")  # noqa: E731
        curves[name] = {"step": [r["step"] for r in rows][w - 1:],
                        **{k.split("/")[-1]: avg([r[k] for r in rows]).tolist() for k in keys}}
    if not curves:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, c in curves.items():
        for ax, key in zip(axes, ("concise", "exhaustive", "tv_to_nash")):
            ax.plot(c["step"], c[key], label=name)
    for ax, title in zip(axes, ("share of concise samples", "share of exhaustive samples",
                                "TV(style shares, Nash(tau))")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return curves


def quality_by_style_table(samples: "list[sampling.PolicySamples]", world_dir: str,
                           posts: Sequence[str]) -> tuple[str, dict]:
    """`quality_table` split by the style of each sample: can a policy be faithful in
    every style? The world's style-level prediction assumes faithful summaries on both
    sides; when a policy's summaries of one style carry more errors, the raters' quality
    terms (much larger than the style terms) decide instead, and a judge that sees
    quality well pushes towards the style the policy writes most faithfully.

    Returns:
      (markdown: one row per policy and style with samples of it, columns share of the
      policy's samples, main point, unsupported, repeated, quality; {policy: {style: {...}}}).
    """
    from nlhf_jax.data.world import raters, styles

    judge = raters.RaterPanel.for_world(world_dir)
    rows = ["| policy | style | share | main point | unsupported word | repeated word | quality |",
            "|---|---|---:|---:|---:|---:|---:|"]
    data: dict = {}
    for s in samples:
        f = judge.features(posts, s.texts)
        quality = judge.population.quality(f)
        data[s.name] = {}
        for k, name in enumerate(list(styles.STYLES) + ["none"]):
            sel = np.asarray(f.style) == k
            if not sel.any():
                continue
            d = {"share": float(sel.mean()), "main_point": float(f.main_point[sel].mean()),
                 "unsupported": float((f.unsupported[sel] > 0).mean()),
                 "repeated": float((f.repeats[sel] > 0).mean()), "quality": float(quality[sel].mean())}
            data[s.name][name] = d
            rows.append(f"| {s.name} | {name} | {d['share']:.2f} | {d['main_point']:.2f} | "
                        f"{d['unsupported']:.2f} | {d['repeated']:.2f} | {d['quality']:.2f} |")
    return "\n".join(rows), data
