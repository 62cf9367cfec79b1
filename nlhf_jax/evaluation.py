"""Evaluation: sample policies, compare them under a judge, and summarise.

The paper's result is a matrix of P(column policy > row policy) under a judge, each
cell estimated on N prompts with one response per policy per prompt (§8, Tables 1-2).
`win_rate_matrix` computes it with a 95% Clopper-Pearson interval per cell. A judge
that returns probabilities p_i (the world's raters, a preference model) is summarised
by its mean, and the interval is Clopper-Pearson on round(sum p_i) successes out of N:
since p_i lies in [0, 1], Var(p_i) <= mean(p) (1 - mean(p)), so the binomial interval
is a conservative interval for E[p] (and exact for a 0/1 judge such as a human).
"""

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import jax
import numpy as np
import scipy.stats

from nlhf_jax import decoding
from nlhf_jax import policy
from nlhf_jax import types

Array = types.Array
PyTree = types.PyTree
ProbFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]


def clopper_pearson(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact binomial (1 - alpha) interval for a success probability."""
    if trials <= 0:
        return 0.0, 1.0
    lo = 0.0 if successes == 0 else scipy.stats.beta.ppf(alpha / 2, successes, trials - successes + 1)
    hi = 1.0 if successes == trials else scipy.stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
    return float(lo), float(hi)


@dataclasses.dataclass
class Comparison:
    """P(a > b) over N prompts.

    Attributes:
      mean: the mean of the judge's probabilities (the estimate).
      lo, hi: 95% Clopper-Pearson interval.
      wins: round(sum of probabilities), the successes of the interval (out of n).
      n: number of comparisons.
    """

    mean: float
    lo: float
    hi: float
    wins: int
    n: int

    def mirrored(self) -> "Comparison":
        """P(b > a) under an antisymmetric judge: 1 - mean, the interval reflected
        (wins = -1, "not a count", stays -1)."""
        wins = self.n - self.wins if self.wins >= 0 else -1
        return Comparison(1 - self.mean, 1 - self.hi, 1 - self.lo, wins, self.n)


def compare(probs: np.ndarray, seed: int = 0) -> Comparison:
    """Summarises judge probabilities P(a_i > b_i), i < N, into a Comparison."""
    del seed  # deterministic: no simulated verdicts
    probs = np.asarray(probs, np.float64)
    if np.any((probs < 0) | (probs > 1)) or not np.all(np.isfinite(probs)):
        raise ValueError(f"judge probabilities must lie in [0, 1]; got min {probs.min()}, max {probs.max()}")
    wins = int(np.round(probs.sum()))
    lo, hi = clopper_pearson(wins, len(probs))
    return Comparison(float(probs.mean()), lo, hi, wins, len(probs))


def sample_texts(
    model,
    params: PyTree,
    prompts: np.ndarray,
    vocabulary,
    cfg: decoding.SamplingConfig,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = False,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Samples one response per prompt, in batches, jitted once.

    Row i's key is fold_in(key(seed), i): results do not depend on the batch size.

    Args:
      model: EncoderDecoder; params: its parameters.
      prompts: int [N, K].
      vocabulary: to decode the responses.
      cfg: decoding settings (recorded by callers with the results).

    Returns:
      (texts [N], tokens int32 [N, L], lengths int32 [N]).
    """
    from nlhf_jax.data import arrays

    n = len(prompts)
    base = jax.random.key(seed)
    fn = jax.jit(functools.partial(policy.sample, model, cfg=cfg))
    toks, lens = [], []
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import auto as tqdm

        starts = tqdm.tqdm(starts, desc="sampling", leave=False)
    for start in starts:
        idx = np.arange(start, start + batch_size)
        real = min(batch_size, n - start)
        rows = np.minimum(idx, n - 1)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(idx)
        out = jax.device_get(fn(params, prompts[rows], keys))
        toks.append(np.asarray(out.tokens)[:real])
        lens.append(np.asarray(out.lengths)[:real])
    tokens, lengths = np.concatenate(toks), np.concatenate(lens)
    return arrays.decode_tokens(vocabulary, tokens, lengths), tokens, lengths


def style_distribution(styles: np.ndarray, num_styles: int) -> np.ndarray:
    """Histogram of style indices, normalised. [N] -> [num_styles]."""
    counts = np.bincount(np.asarray(styles), minlength=num_styles)[:num_styles]
    return counts / max(counts.sum(), 1)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


def win_rate_matrix(
    names: Sequence[str],
    responses: dict[str, Sequence[str]],
    posts: Sequence[str],
    prob_fn: ProbFn,
    seed: int = 0,
) -> dict[tuple[str, str], Comparison]:
    """Every cell P(column > row) under `prob_fn` (the judge), on the same prompts.

    Args:
      names: policy names (rows and columns).
      responses: name -> one response text per post.
      posts: the N prompts (as the judge takes them).
      prob_fn: (posts, ys, ys_alt) -> P(y > y_alt) [N].
      seed: seeds the simulated verdicts of the intervals.

    Returns:
      {(row, column): Comparison of column over row}; the diagonal is included.
    """
    out = {}
    for i, row in enumerate(names):
        for j, col in enumerate(names):
            if i == j:  # a policy against itself: exactly 1/2 under an antisymmetric judge
                n = len(posts)
                lo, hi = clopper_pearson(n // 2, n)
                out[(row, col)] = Comparison(0.5, lo, hi, n // 2, n)
                continue
            if j < i:
                out[(row, col)] = out[(col, row)].mirrored()
                continue
            probs = prob_fn(posts, responses[col], responses[row])
            out[(row, col)] = compare(probs, seed=seed + 1000 * i + j)
    return out


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


def judge_texts(judge, posts: Sequence[str], ys: Sequence[str], ys_alt: Sequence[str],
                chunk: int = 4096) -> np.ndarray:
    """Calls `judge.preference` (world) or `judge.prob` (model judges) in chunks."""
    fn = getattr(judge, "prob", None) or getattr(judge, "preference")
    parts = [np.asarray(fn(posts[i:i + chunk], ys[i:i + chunk], ys_alt[i:i + chunk]))
             for i in range(0, len(posts), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0,))


def world_sft_report(
    model,
    params: Optional[PyTree],
    dataset,
    vocabulary,
    world_judge,
    cfg: decoding.SamplingConfig,
    num_posts: int = 1000,
    seed: int = 0,
) -> dict:
    """How an SFT policy compares with the reference summaries on held-out posts.

    Args:
      model, params: the policy.
      dataset: an `arrays.sft_dataset` of held-out (post, reference summary) pairs.
      vocabulary: the policy's vocabulary.
      world_judge: `raters.Judge` of the world.
      cfg: decoding settings.

    Returns:
      dict with P*(sample > reference) and its interval, the style distributions of
      samples and references, and their total-variation distance.
    """
    from nlhf_jax.data.world import styles

    n = min(num_posts, len(dataset))
    prompts = dataset.features["encoder_input_tokens"][:n]
    posts = dataset.meta["posts"][:n]
    refs = dataset.meta["summaries"][:n]
    texts, _, lengths = sample_texts(model, params, prompts, vocabulary, cfg, seed=seed)
    cmp_ = compare(judge_texts(world_judge, posts, texts, refs), seed=seed)
    k = len(styles.STYLE_NAMES)
    s_samples = style_distribution(world_judge.style(texts), k)
    s_refs = style_distribution(world_judge.style(refs), k)
    return {
        "num_posts": n,
        "p_sample_over_reference": cmp_.mean,
        "ci95": [cmp_.lo, cmp_.hi],
        "style_names": list(styles.STYLE_NAMES),
        "sample_styles": s_samples.round(4).tolist(),
        "reference_styles": s_refs.round(4).tolist(),
        "style_tv": total_variation(s_samples, s_refs),
        "mean_length": float(np.mean(lengths)),
        "examples": [{"post": posts[i], "sample": texts[i], "reference": refs[i]} for i in range(3)],
        "decoding": dataclasses.asdict(cfg),
    }
