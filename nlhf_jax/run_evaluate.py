"""`nlhf evaluate`: the paper's win-rate matrix for a set of trained policies.

    nlhf evaluate --policy sft=runs/demo/sft --policy nashmd=runs/demo/nash_md \
        --judge world --num_prompts 1000 --out runs/demo/eval

For every pair of policies, the same N held-out prompts, one response per policy per
prompt (decoding settings recorded), and every cell P(column > row) with a 95%
Clopper-Pearson interval (Table 1 of the paper). Judges: the world's raters P*
(`world`), a preference model (`pm:DIR`, scored in both orders), a reward model
(`rm:DIR`), and P_tau (`ptau:DIR`, Table 2: the preference model plus the KL terms
tau * [log pi_r(y_r)/mu(y_r) - log pi_c(y_c)/mu(y_c)] with mu the SFT policy).
Outputs: matrix.md, matrix.csv, matrix.json (everything needed to recompute),
heatmap.png and, on the world, the style distribution of each policy next to the
regularised Nash equilibrium over styles.
"""

import argparse
import csv
import dataclasses
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from nlhf_jax import decoding
from nlhf_jax import evaluation


@dataclasses.dataclass
class PolicySamples:
    name: str
    model_dir: str
    texts: list
    tokens: np.ndarray
    lengths: np.ndarray
    seq_logp: Optional[np.ndarray] = None  # log pi(y | x) [N]
    seq_ref_logp: Optional[np.ndarray] = None  # log mu(y | x) [N]


def sample_policies(
    policies: Sequence[tuple[str, str]],
    prompts: np.ndarray,
    vocabulary,
    cfg: decoding.SamplingConfig,
    seed: int = 0,
    reference_dir: Optional[str] = None,
) -> list[PolicySamples]:
    """One response per policy per prompt; with `reference_dir`, also the sequence
    log-probs under each policy and under mu (for the P_tau judge)."""
    import jax

    from nlhf_jax import partitioning
    from nlhf_jax import policy as policy_lib
    from nlhf_jax import trainer

    mesh = partitioning.make_mesh(partitioning.MeshConfig())
    rules = partitioning.default_rules()
    ref = trainer.load_frozen(reference_dir, mesh, rules) if reference_dir else None
    out = []
    for i, (name, model_dir) in enumerate(policies):
        _, net, params = trainer.load_frozen(model_dir, mesh, rules)
        # independent samples per policy (two copies of one policy are two samples)
        texts, toks, lens = evaluation.sample_texts(net, params, prompts, vocabulary, cfg,
                                                    seed=seed + 7919 * i)
        s = PolicySamples(name, model_dir, texts, toks, lens)
        if ref is not None:
            lp = jax.jit(lambda p, x, t, n, m=net: policy_lib.token_logprobs(m, p, x, t, n, cfg))
            s.seq_logp = np.asarray(lp(params, prompts, toks, lens)).sum(-1)
            lp_ref = jax.jit(lambda p, x, t, n, m=ref[1]: policy_lib.token_logprobs(m, p, x, t, n, cfg))
            s.seq_ref_logp = np.asarray(lp_ref(ref[2], prompts, toks, lens)).sum(-1)
        out.append(s)
    return out


def ptau_cells(samples: list[PolicySamples], posts, pm_prob, tau: float, antisymmetric: bool = True) -> dict:
    """Table 2's P_tau(column > row) = E[P(y_c > y_r)] - tau KL_c + tau KL_r (single-sample
    KL estimates on the same prompts), with a normal-approximation 95% interval.

    With an antisymmetric `pm_prob` (a PM judge scoring both orders, the default) the
    per-prompt value v(r, c) is exactly 1 - v(c, r) and v(r, r) = 1/2, so only the cells
    above the diagonal run the model (n (n - 1) / 2 of n^2 calls); pass
    `antisymmetric=False` for a one-order judge to compute every cell.
    """
    cells = {}
    for i, r in enumerate(samples):
        for j, c in enumerate(samples):
            if antisymmetric and j < i:
                cells[(r.name, c.name)] = cells[(c.name, r.name)].mirrored()
                continue
            if antisymmetric and i == j:
                cells[(r.name, c.name)] = evaluation.Comparison(0.5, 0.5, 0.5, -1, len(posts))
                continue
            p = np.asarray(pm_prob(posts, c.texts, r.texts), np.float64)
            v = p - tau * (c.seq_logp - c.seq_ref_logp) + tau * (r.seq_logp - r.seq_ref_logp)
            se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
            cells[(r.name, c.name)] = evaluation.Comparison(float(v.mean()), float(v.mean() - 1.96 * se),
                                                            float(v.mean() + 1.96 * se), -1, len(v))
    return cells


def write_outputs(out_dir: str, names: list, cells: dict, title: str, extra: dict) -> str:
    """matrix.md / .csv / .json and heatmap.png under out_dir. Returns the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    md = f"### {title}\n\nP(column > row), 95% interval in brackets.\n\n" + evaluation.matrix_markdown(names, cells)
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


def style_table(samples: list[PolicySamples], world_dir: str, taus: Sequence[float]) -> tuple[str, dict]:
    """Each policy's style distribution vs the regularised Nash equilibrium over styles."""
    from nlhf_jax.data.world import describe, raters, styles

    names = list(styles.STYLE_NAMES)
    k = len(names)
    rep = describe.describe_world(_world_config(world_dir), taus=tuple(taus))
    nash = {float(pr.tau): np.asarray(pr.nash) for pr in rep.style_predictions}
    rows, data = [], {}
    header = "| policy | " + " | ".join(names) + " | TV to Nash(tau) |"
    rows += [header, "|---|" + "---:|" * (k + 1)]
    for s in samples:
        dist = evaluation.style_distribution(raters.Judge.style(s.texts), k)
        tv = {}
        for t, eq in nash.items():
            eq_full = np.zeros(k)
            eq_full[: len(eq)] = eq
            tv[t] = evaluation.total_variation(dist, eq_full)
        data[s.name] = {"styles": dist.tolist(), "tv_to_nash": tv}
        tv_txt = ", ".join(f"{t:g}: {v:.2f}" for t, v in tv.items())
        rows.append(f"| {s.name} | " + " | ".join(f"{x:.2f}" for x in dist) + f" | {tv_txt} |")
    for t, eq in nash.items():
        eq_full = np.zeros(k)
        eq_full[: len(eq)] = eq
        rows.append(f"| Nash eq. tau={t:g} | " + " | ".join(f"{x:.2f}" for x in eq_full) + " | - |")
    return "\n".join(rows), {"styles": data, "nash": {str(t): v.tolist() for t, v in nash.items()}}


def quality_table(samples: list[PolicySamples], world_dir: str, posts: Sequence[str]) -> tuple[str, dict]:
    """Each policy's quality under the world's parser: the errors the judges must catch.

    Columns: share of samples covering the main point, with a word the post does not
    support, with a repeated content word (a clause copied into the wrong place), mean
    number of words, and the raters' shared quality utility (higher is better; see
    `raters.RaterPopulation.quality`).
    """
    from nlhf_jax.data.world import raters

    judge = raters.Judge.for_world(world_dir)
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


def _world_config(world_dir: str):
    from nlhf_jax.data.world import generator

    return generator.load_config(world_dir)


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="nlhf evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", action="append", required=True, metavar="NAME=DIR",
                   help="a policy run directory (repeat); SFT included")
    p.add_argument("--judge", default="world", help="world | pm:DIR | rm:DIR | ptau:DIR")
    p.add_argument("--reference", default=None, help="mu for ptau (default: the policy named 'sft')")
    p.add_argument("--tau", type=float, default=0.008, help="KL coefficient of P_tau")
    p.add_argument("--world_dir", default=None, help="the embedded world (default: seed 0's)")
    p.add_argument("--split", default="valid+test", help="prompt split(s) of the world")
    p.add_argument("--num_prompts", type=int, default=1000)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max_decode_len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    policies = []
    for spec in a.policy:
        if "=" not in spec:
            p.error(f"--policy {spec!r}: expected NAME=DIR")
        name, d = spec.split("=", 1)
        if not os.path.isdir(d):
            p.error(f"--policy {spec!r}: no directory {d}")
        policies.append((name, d))
    from nlhf_jax.data import arrays, vocab
    from nlhf_jax.data.world import generator, raters

    world_dir = generator.ensure_world(a.world_dir or generator.default_data_dir(0))
    voc = vocab.world_vocabulary(world_dir)
    ds = arrays.world_prompts(a.split, data_dir=world_dir, max_examples=a.num_prompts)
    posts = ds.meta["posts"]
    cfg = decoding.SamplingConfig(temperature=a.temperature, max_decode_len=a.max_decode_len)
    kind, _, jdir = a.judge.partition(":")
    ref_dir = None
    if kind == "ptau":
        ref_dir = a.reference or dict(policies).get("sft")
        if not ref_dir:
            p.error("--judge ptau needs --reference or a policy named 'sft'")
    samples = sample_policies(policies, ds.features["prompts"], voc, cfg, a.seed, ref_dir)
    names = [s.name for s in samples]
    if kind == "world":
        prob = raters.Judge.for_world(world_dir).preference
        title = "world raters P*"
    elif kind in ("pm", "rm", "ptau"):
        from nlhf_jax import judges

        judge = judges.load_judge(jdir) if hasattr(judges, "load_judge") else None
        if judge is None:
            p.error(f"cannot load a judge from {jdir}")
        prob = judge.prob
        title = {"pm": "preference model", "rm": "reward model", "ptau": f"P_tau (tau={a.tau})"}[kind]
    else:
        p.error(f"--judge {a.judge!r}: expected world, pm:DIR, rm:DIR or ptau:DIR")
    responses = {s.name: s.texts for s in samples}
    if kind == "ptau":
        cells = ptau_cells(samples, posts, prob, a.tau, antisymmetric=getattr(judge, "both_orders", False))
    else:
        cells = evaluation.win_rate_matrix(names, responses, posts, lambda x, y, z: evaluation.judge_texts(
            type("J", (), {"prob": staticmethod(prob)})(), x, y, z), seed=a.seed)
    extra = {"decoding": dataclasses.asdict(cfg), "num_prompts": len(posts), "split": a.split,
             "policies": dict(policies), "judge": a.judge}
    md = write_outputs(a.out, names, cells, title, extra)
    st_md, st = style_table(samples, world_dir, (0.01, 0.02, 0.05, 0.1))
    q_md, q = quality_table(samples, world_dir, posts)
    with open(os.path.join(a.out, "styles.md"), "w") as f:
        f.write(st_md + "\n\n" + q_md + "\n")
    with open(os.path.join(a.out, "styles.json"), "w") as f:
        json.dump({**st, "quality": q}, f, indent=1)
    print(md)
    print()
    print(st_md)
    print()
    print(q_md)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
