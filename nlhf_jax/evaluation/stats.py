"""Win rates under a judge, their intervals, and distances between style distributions.

The paper's result is a matrix of P(column policy > row policy) under a judge, each
cell estimated on N prompts with one response per policy per prompt (§8, Tables 1-2).
`win_rate_matrix` computes it with a 95% Clopper-Pearson interval per cell. A judge
that returns probabilities p_i (the world's raters, a preference model) is summarised
by its mean, and the interval is Clopper-Pearson on round(sum p_i) successes out of N:
since p_i lies in [0, 1], Var(p_i) <= mean(p) (1 - mean(p)), so the binomial interval
is a conservative interval for E[p] (and exact for a 0/1 judge such as a human).
`ptau_cells` computes Table 2's P_tau matrix (a judge plus KL terms), with a normal
interval. Everything here is deterministic: no verdict is simulated.
"""

import dataclasses
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import scipy.stats

if TYPE_CHECKING:
    from nlhf_jax.evaluation import sampling

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


def compare(probs: np.ndarray) -> Comparison:
    """Summarises judge probabilities P(a_i > b_i), i < N, into a Comparison."""
    probs = np.asarray(probs, np.float64)
    if np.any((probs < 0) | (probs > 1)) or not np.all(np.isfinite(probs)):
        raise ValueError(f"judge probabilities must lie in [0, 1]; got min {probs.min()}, max {probs.max()}")
    wins = int(np.round(probs.sum()))
    lo, hi = clopper_pearson(wins, len(probs))
    return Comparison(float(probs.mean()), lo, hi, wins, len(probs))


def judge_texts(judge, prompts: Sequence[str], ys: Sequence[str], ys_alt: Sequence[str],
                chunk: int = 4096) -> np.ndarray:
    """`judge.prob(prompts, ys, ys_alt)` (the protocol of every judge, `judges.Judge`), in chunks."""
    parts = [np.asarray(judge.prob(prompts[i:i + chunk], ys[i:i + chunk], ys_alt[i:i + chunk]))
             for i in range(0, len(prompts), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0,))


def win_rate_matrix(
    names: Sequence[str],
    responses: dict[str, Sequence[str]],
    prompts: Sequence[str],
    prob_fn: ProbFn,
) -> dict[tuple[str, str], Comparison]:
    """Every cell P(column > row) under `prob_fn` (the judge), on the same prompts.

    Args:
      names: policy names (rows and columns).
      responses: name -> one response text per prompt.
      prompts: the N prompt texts (`templates.post_prompt`, as the judges take them).
      prob_fn: (prompts, ys, ys_alt) -> P(y > y_alt) [N].

    Returns:
      {(row, column): Comparison of column over row}; the diagonal is included.
    """
    out = {}
    for i, row in enumerate(names):
        for j, col in enumerate(names):
            if i == j:  # a policy against itself: exactly 1/2 under an antisymmetric judge
                n = len(prompts)
                lo, hi = clopper_pearson(n // 2, n)
                out[(row, col)] = Comparison(0.5, lo, hi, n // 2, n)
                continue
            if j < i:
                out[(row, col)] = out[(col, row)].mirrored()
                continue
            out[(row, col)] = compare(prob_fn(prompts, responses[col], responses[row]))
    return out


def ptau_cells(samples: "Sequence[sampling.PolicySamples]", prompts, pm_prob: ProbFn, tau: float,
               antisymmetric: bool = True) -> dict:
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
                cells[(r.name, c.name)] = Comparison(0.5, 0.5, 0.5, -1, len(prompts))
                continue
            p = np.asarray(pm_prob(prompts, c.texts, r.texts), np.float64)
            v = p - tau * (c.seq_logp - c.seq_ref_logp) + tau * (r.seq_logp - r.seq_ref_logp)
            se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
            cells[(r.name, c.name)] = Comparison(float(v.mean()), float(v.mean() - 1.96 * se),
                                                 float(v.mean() + 1.96 * se), -1, len(v))
    return cells


def style_distribution(styles: np.ndarray, num_styles: int) -> np.ndarray:
    """Histogram of style indices, normalised. [N] -> [num_styles]."""
    counts = np.bincount(np.asarray(styles), minlength=num_styles)[:num_styles]
    return counts / max(counts.sum(), 1)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())
