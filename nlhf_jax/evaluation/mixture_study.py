"""What the token-level mixture costs, measured exactly on a tiny enumerable policy.

Why this module exists: Nash-MD (paper §6, eq. 3) plays against the sequence-level
geometric mixture pi_beta(y) ∝ pi(y)^(1-beta) mu(y)^beta, normalised over whole
sequences. Nash-MD-PG as implemented (`policy.mixture_step`, paper App. F.1) samples
its alternative y' from the token-level mixture instead,

  pi_tok(y_t | y_<t) = pi(y_t | y_<t)^(1-beta) mu(y_t | y_<t)^beta / C_t(y_<t),

and the product of the per-token normalisers C_t is not the sequence normaliser Z.
Writing both in log space gives the identity everything here rests on:

  log pi_seq(y) = log pi_tok(y) + sum_t log C_t(y_<t) - log Z,   Z = E_tok[prod_t C_t],

so KL(tok || seq) = log E_tok[prod C_t] - E_tok[sum log C_t] (a Jensen gap). It is 0 when
prod_t C_t(y_<t) does not depend on y: L = 1, beta in {0, 1}, pi and mu differing only at
the first position, or conditionals that do not depend on the prefix.

Everything is exact enumeration in float64 over all V^L sequences of a tiny
autoregressive policy whose parameters are its per-position, per-prefix logits:

* `TinyPolicy`, `random_pair`: pi and mu; `distance` scales how far pi's logits are from mu's.
* `sequence_mixture`, `token_mixture`, `kl`, `total_variation`: the two mixtures.
* `expected_update`: the exact expectation of the Nash-MD-PG estimator (paper §7,
  `losses.policy_gradient_advantages`: A_n = P(y > y') - 1/2 - tau * sum_{m>=n} log(pi/mu))
  in logit space, against a fixed opponent (as in tests/policy_gradient_test.py);
  `population_objective` is the P_tau(pi_theta > pi') it is the gradient of.
* `nash_md_step`: the exact Nash-MD step pi_next ∝ pi' exp(eta P(y > pi')) (eq. 5).
* `resampled_mixture`, `resampling_sweep`: the law of `NashMDConfig.mixture="sequence"`
  (importance resampling of K token-level draws) and how fast it reaches pi_seq in K.
* `sweep`, `main`: the study (`python -m nlhf_jax.evaluation.mixture_study --out DIR`).
"""

import argparse
import dataclasses
import itertools
import json
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

BETAS = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)
LENGTHS = (1, 2, 3, 4, 5)
DISTANCES = (0.5, 1.0, 2.0)
DEFAULT_DISTANCE = 1.0
VOCAB = 4
SEEDS = tuple(range(10))
TAU = 0.008  # the paper's Nash-MD-PG KL coefficient (App. G)
ETA = 1.0  # Nash-MD step size of `nash_md_step` in the sweep (the mixture weight is beta)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _logsumexp(x: np.ndarray) -> float:
    m = x.max()
    return float(m + np.log(np.exp(x - m).sum()))


@dataclasses.dataclass(frozen=True)
class TinyPolicy:
    """An autoregressive policy over V^L fixed-length sequences, given by its logits.

    Attributes:
      logits: L arrays; logits[t] is float64 [V^t, V], the logits of y_t given the
        prefix whose base-V index (y_0 most significant) is the row.
    """

    logits: tuple

    @property
    def vocab(self) -> int:
        return self.logits[0].shape[-1]

    @property
    def length(self) -> int:
        return len(self.logits)

    def log_conditionals(self) -> list:
        """log pi(. | prefix) for each position: L arrays [V^t, V]."""
        return [_log_softmax(np.asarray(lg, np.float64)) for lg in self.logits]


def enumerate_sequences(vocab: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """All V^L sequences in base-V order, and each one's prefix index per position.

    Returns:
      tokens int [N, L]; prefixes int [N, L] (prefixes[n, t] = row of y_<t in logits[t]).
    """
    tokens = np.array(list(itertools.product(range(vocab), repeat=length)), np.int64).reshape(-1, length)
    index = tokens @ (vocab ** np.arange(length - 1, -1, -1))
    prefixes = np.stack([index // vocab ** (length - t) for t in range(length)], -1)
    return tokens, prefixes


def per_token_logps(log_cond: Sequence[np.ndarray], tokens: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
    """log p(y_t | y_<t) for every sequence and position. [N, L]"""
    return np.stack([log_cond[t][prefixes[:, t], tokens[:, t]] for t in range(tokens.shape[1])], -1)


def sequence_logps(policy: TinyPolicy) -> np.ndarray:
    """log pi(y) for every sequence, base-V order. [V^L]"""
    tokens, prefixes = enumerate_sequences(policy.vocab, policy.length)
    return per_token_logps(policy.log_conditionals(), tokens, prefixes).sum(-1)


def random_pair(
    vocab: int, length: int, distance: float, seed: int, *, mu_scale: float = 1.0
) -> tuple[TinyPolicy, TinyPolicy]:
    """(pi, mu) with mu's logits ~ N(0, mu_scale^2) and pi's = mu's + distance * N(0, 1)."""
    rng = np.random.default_rng(seed)
    mu = [mu_scale * rng.normal(size=(vocab**t, vocab)) for t in range(length)]
    pi = [m + distance * rng.normal(size=m.shape) for m in mu]
    return TinyPolicy(tuple(pi)), TinyPolicy(tuple(mu))


def token_mixture_conditionals(pi: TinyPolicy, mu: TinyPolicy, beta: float) -> list:
    """log pi_tok(. | prefix) = log_softmax((1-beta) log pi + beta log mu) per position
    (what `policy.mixture_step` and the sampler's log_softmax compute, App. F.1)."""
    return [_log_softmax((1 - beta) * a + beta * b) for a, b in zip(pi.log_conditionals(), mu.log_conditionals())]


def token_normalisers(pi: TinyPolicy, mu: TinyPolicy, beta: float) -> list:
    """log C_t(prefix) = log sum_v pi(v|.)^(1-beta) mu(v|.)^beta per position. L arrays [V^t]."""
    out = []
    for a, b in zip(pi.log_conditionals(), mu.log_conditionals()):
        x = (1 - beta) * a + beta * b
        m = x.max(-1)
        out.append(m + np.log(np.exp(x - m[:, None]).sum(-1)))
    return out


def token_mixture(pi: TinyPolicy, mu: TinyPolicy, beta: float) -> np.ndarray:
    """log pi_tok(y) for every sequence: the product of the per-token mixtures. [V^L]"""
    tokens, prefixes = enumerate_sequences(pi.vocab, pi.length)
    return per_token_logps(token_mixture_conditionals(pi, mu, beta), tokens, prefixes).sum(-1)


def sequence_mixture(pi: TinyPolicy, mu: TinyPolicy, beta: float) -> np.ndarray:
    """log pi_seq(y) = (1-beta) log pi(y) + beta log mu(y) - log Z (paper §6, eq. 3). [V^L]"""
    x = (1 - beta) * sequence_logps(pi) + beta * sequence_logps(mu)
    return x - _logsumexp(x)


def kl(logp: np.ndarray, logq: np.ndarray) -> float:
    """KL(p || q) = sum_y p(y) (log p(y) - log q(y)) from log-probabilities."""
    p = np.exp(logp)
    return float(np.sum(np.where(p > 0, p * (logp - logq), 0.0)))


def total_variation(logp: np.ndarray, logq: np.ndarray) -> float:
    return float(0.5 * np.abs(np.exp(logp) - np.exp(logq)).sum())


def random_preference(n: int, seed: int, scale: float = 2.0) -> np.ndarray:
    """P = sigmoid(A - A^T), A ~ N(0, scale^2): P + P^T = 1, P_ii = 1/2 (as in the PG test)."""
    a = np.random.default_rng(seed).normal(size=(n, n)) * scale
    return 1 / (1 + np.exp(-(a - a.T)))


def structured_preference(tokens: np.ndarray, vocab: int, seed: int, cycle: float = 1.0) -> np.ndarray:
    """Bradley-Terry on an additive per-token score plus a rock-paper-scissors part.

    P(y > y') = sigmoid(r(y) - r(y') + cycle * sin(2 pi (k(y) - k(y')) / 3)), with
    r(y) = sum_t w[t, y_t] and k(y) = (sum_t y_t) mod 3: transitive within a class,
    cyclic across the three classes. P + P^T = 1 and P_ii = 1/2.
    """
    w = np.random.default_rng(seed).normal(size=(tokens.shape[1], vocab))
    r = w[np.arange(tokens.shape[1])[None], tokens].sum(-1)
    k = tokens.sum(-1) % 3
    s = np.sin(2 * np.pi * (k[:, None] - k[None, :]) / 3)
    return 1 / (1 + np.exp(-(r[:, None] - r[None, :] + cycle * s)))


def expected_update(pi: TinyPolicy, mu: TinyPolicy, pref: np.ndarray, alt_logp: np.ndarray, tau: float) -> list:
    """Exact E_{y~pi, y'~pi'}[Nash-MD-PG estimator] in pi's logit space, pi' held fixed.

    The estimator is the project's (`losses.policy_gradient_advantages`, paper §7):
    sum_n grad log pi(y_n | y_<n) * A_n with A_n = P(y > y') - 1/2 - tau * sum_{m>=n}
    log(pi(y_m|.) / mu(y_m|.)); its expectation is grad P_tau(pi_theta > pi') with pi'
    fixed (`population_objective`). The gradient of log pi(y_n | p) with respect to
    logits[n][p] is onehot(y_n) - pi(. | p).

    Args:
      pi, mu: the policy (differentiated) and the reference.
      pref: [N, N], P(y_i > y_j).
      alt_logp: [N], log pi'(y') of the fixed opponent.
      tau: KL coefficient.

    Returns:
      L arrays shaped like pi.logits: the ascent direction (minus the loss gradient).
    """
    tokens, prefixes = enumerate_sequences(pi.vocab, pi.length)
    lc_pi = pi.log_conditionals()
    lp = per_token_logps(lc_pi, tokens, prefixes)
    lm = per_token_logps(mu.log_conditionals(), tokens, prefixes)
    weight = np.exp(lp.sum(-1))
    reward = pref @ np.exp(alt_logp)  # E_{y'}[P(y > y')]
    ratio_to_go = np.flip(np.cumsum(np.flip(lp - lm, -1), -1), -1)
    adv = (reward - 0.5)[:, None] - tau * ratio_to_go
    grads = []
    for t in range(pi.length):
        coef = weight * adv[:, t]
        g = np.zeros_like(lc_pi[t])
        np.add.at(g, (prefixes[:, t], tokens[:, t]), coef)
        mass = np.zeros(lc_pi[t].shape[0])
        np.add.at(mass, prefixes[:, t], coef)
        grads.append(g - mass[:, None] * np.exp(lc_pi[t]))
    return grads


def population_objective(logits, mu: TinyPolicy, pref, alt_logp, tau: float):
    """P_tau(pi_theta > pi') - tau KL(pi', mu) = pi^T P pi' - tau KL(pi_theta, mu), pi' fixed.

    Written in jax.numpy so `jax.grad` of it can be compared with `expected_update`
    (call it under `with jax.enable_x64(True):` for float64).
    """
    length, vocab = len(logits), logits[0].shape[-1]
    tokens, prefixes = enumerate_sequences(vocab, length)
    lp = sum(
        jax.nn.log_softmax(jnp.asarray(logits[t])[prefixes[:, t]], -1)[np.arange(len(tokens)), tokens[:, t]]
        for t in range(length)
    )
    lm = jnp.asarray(sequence_logps(mu))
    p = jnp.exp(lp)
    return p @ jnp.asarray(pref) @ jnp.exp(jnp.asarray(alt_logp)) - tau * jnp.sum(p * (lp - lm))


def nash_md_step(alt_logp: np.ndarray, pref: np.ndarray, eta: float) -> np.ndarray:
    """log pi_next = log pi' + eta P(y > pi') - c (paper eq. 5, with pi' the mixture). [N]"""
    x = alt_logp + eta * (pref @ np.exp(alt_logp))
    return x - _logsumexp(x)


def resampled_mixture(pi: TinyPolicy, mu: TinyPolicy, beta: float, k: int, *, n_draws: int = 20000,
                      seed: int = 0) -> np.ndarray:
    """log-law of sampling-importance-resampling from the token-level mixture: K draws
    from pi_tok, one kept with probability w / sum w, w = pi_seq / pi_tok (what
    `online._sequence_mixture` does with NashMDConfig.mixture="sequence").

    P(pick = y) = pi_tok(y) w(y) E[K / (w(y) + S)], S the sum of the other K - 1 draws'
    weights. The expectation is over S only, estimated from `n_draws` Monte Carlo sums
    (weights normalised to E_tok[w] = 1); everything else is enumerated. K = 1 gives
    pi_tok exactly, K -> infinity pi_seq.

    Returns:
      float64 [V^L].
    """
    tok, seq = token_mixture(pi, mu, beta), sequence_mixture(pi, mu, beta)
    w = np.exp(seq - tok)  # pi_seq / pi_tok: E_tok[w] = 1
    if k == 1:
        return tok
    rng = np.random.default_rng(seed)
    others = rng.choice(len(tok), size=(n_draws, k - 1), p=np.exp(tok) / np.exp(tok).sum())
    s = w[others].sum(-1)  # [n_draws]
    factor = np.mean(k / (w[:, None] + s[None, :]), axis=1)  # [V^L]
    law = np.exp(tok) * w * factor
    return np.log(law / law.sum())


def resampling_sweep(ks: Sequence[int] = (1, 2, 4, 8, 16, 64), beta: float = 0.125,
                     lengths: Sequence[int] = (3, 5), distances: Sequence[float] = DISTANCES,
                     seeds: Sequence[int] = SEEDS, vocab: int = VOCAB, tau: float = TAU) -> list:
    """TV to pi_seq and relative Nash-MD-PG update bias (as `compare`'s rel_bias) of the
    resampled mixture, per K; seed means (random preference).

    Returns:
      rows: dicts with length, distance, k, tv, rel_bias.
    """
    rows = []
    for length, dist in itertools.product(lengths, distances):
        tokens, _ = enumerate_sequences(vocab, length)
        acc = {k: [] for k in ks}
        for seed in seeds:
            pi, mu = random_pair(vocab, length, dist, seed)
            pref = random_preference(len(tokens), 1000 + seed)
            seq = sequence_mixture(pi, mu, beta)
            g_seq = _flat(expected_update(pi, mu, pref, seq, tau))
            for k in ks:
                law = resampled_mixture(pi, mu, beta, k, seed=seed)
                g = _flat(expected_update(pi, mu, pref, law, tau))
                acc[k].append((total_variation(law, seq), np.linalg.norm(g - g_seq) / np.linalg.norm(g_seq)))
        for k in ks:
            vals = np.array(acc[k])
            rows.append({"length": length, "distance": dist, "k": k, "tv": float(vals[:, 0].mean()),
                         "rel_bias": float(vals[:, 1].mean())})
    return rows


def resampling_table(rows: list, key: str) -> str:
    """Markdown: rows (L, distance), columns K."""
    ks = sorted({r["k"] for r in rows})
    lines = ["| L | distance | " + " | ".join(f"K={k}" for k in ks) + " |", "|---" * (len(ks) + 2) + "|"]
    for length, dist in sorted({(r["length"], r["distance"]) for r in rows}):
        vals = {r["k"]: r[key] for r in rows if r["length"] == length and r["distance"] == dist}
        lines.append(f"| {length} | {dist:g} | " + " | ".join(_fmt(vals[k]) for k in ks) + " |")
    return "\n".join(lines)


def _flat(tree: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(x) for x in tree])


def compare(pi: TinyPolicy, mu: TinyPolicy, pref: np.ndarray, beta: float, *, tau: float = TAU,
            eta: float = ETA) -> dict:
    """Every measured quantity for one (pi, mu, P, beta).

    Returns:
      kl_seq_tok, kl_tok_seq: KL(pi_seq || pi_tok), KL(pi_tok || pi_seq);
      tv: total variation between them; kl_pi_mu: KL(pi || mu), for scale;
      pref_gap: E_pi[P(y > pi_tok)] - E_pi[P(y > pi_seq)];
      rel_bias: ||g_tok - g_seq|| / ||g_seq||, cosine (and 1 - cosine): cos(g_tok, g_seq), where g_x is
        `expected_update` against opponent x; grad_norm_seq: ||g_seq||;
      step_kl: KL(next_seq || next_tok) of `nash_md_step` from each mixture (its anchor
        and opponent); step_kl_opponent: the same with the anchor pi_seq in both, only the
        opponent differing (what the PG estimator sees: its anchor is mu, not the mixture).
    """
    seq, tok = sequence_mixture(pi, mu, beta), token_mixture(pi, mu, beta)
    lpi, lmu = sequence_logps(pi), sequence_logps(mu)
    g_seq = _flat(expected_update(pi, mu, pref, seq, tau))
    g_tok = _flat(expected_update(pi, mu, pref, tok, tau))
    norm = np.linalg.norm(g_seq)
    cos = float(g_seq @ g_tok / max(norm * np.linalg.norm(g_tok), 1e-300))
    next_seq = nash_md_step(seq, pref, eta)
    next_tok = nash_md_step(tok, pref, eta)
    x = seq + eta * (pref @ np.exp(tok))
    next_opp = x - _logsumexp(x)
    p = np.exp(lpi)
    return {
        "kl_seq_tok": kl(seq, tok),
        "kl_tok_seq": kl(tok, seq),
        "tv": total_variation(seq, tok),
        "kl_pi_mu": kl(lpi, lmu),
        "pref_gap": float(p @ pref @ (np.exp(tok) - np.exp(seq))),
        "rel_bias": float(np.linalg.norm(g_tok - g_seq) / max(norm, 1e-300)),
        "cosine": cos,
        "one_minus_cosine": 1.0 - cos,
        "grad_norm_seq": float(norm),
        "step_kl": kl(next_seq, next_tok),
        "step_kl_opponent": kl(next_seq, next_opp),
    }


def sweep(
    betas: Sequence[float] = BETAS,
    lengths: Sequence[int] = LENGTHS,
    distances: Sequence[float] = DISTANCES,
    seeds: Sequence[int] = SEEDS,
    vocab: int = VOCAB,
    tau: float = TAU,
    eta: float = ETA,
) -> list:
    """`compare` over the grid, averaged over seeds, for both preference kinds.

    Returns:
      rows: dicts with preference, length, distance, beta, and for every metric of
      `compare` its seed mean ("<metric>") and seed maximum ("<metric>_max").
    """
    rows = []
    for kind, length, dist in itertools.product(("random", "structured"), lengths, distances):
        per_beta = {b: [] for b in betas}
        for seed in seeds:
            pi, mu = random_pair(vocab, length, dist, seed)
            tokens, _ = enumerate_sequences(vocab, length)
            if kind == "random":
                pref = random_preference(len(tokens), 1000 + seed)
            else:
                pref = structured_preference(tokens, vocab, 1000 + seed)
            for b in betas:
                per_beta[b].append(compare(pi, mu, pref, b, tau=tau, eta=eta))
        for b in betas:
            row = {"preference": kind, "length": length, "distance": dist, "beta": b}
            for key in per_beta[b][0]:
                vals = np.array([r[key] for r in per_beta[b]])
                row[key], row[key + "_max"] = float(vals.mean()), float(vals.max())
            rows.append(row)
    return rows


def plot(rows: list, path: str, distance: float = DEFAULT_DISTANCE, preference: str = "random",
         n_seeds: int = len(SEEDS)) -> None:
    """KL(seq || tok), relative update bias and Nash-MD step KL vs beta, one line per L."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["distance"] == distance and r["preference"] == preference]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("kl_seq_tok", "KL(seq-level || token-level mixture)"),
              ("rel_bias", "||g_tok - g_seq|| / ||g_seq||  (Nash-MD-PG update)"),
              ("step_kl", "KL(next_seq || next_tok)  (exact Nash-MD step)"))
    for ax, (key, title) in zip(axes, panels):
        for length in sorted({r["length"] for r in sel}):
            pts = sorted((r["beta"], r[key]) for r in sel if r["length"] == length)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"L = {length}")
        ax.axvline(0.125, color="grey", ls=":", lw=1)
        ax.set_xlabel("beta (mixture weight on mu)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Token-level vs sequence-level geometric mixture (V = {VOCAB}, pi-mu logit distance "
                 f"{distance}, {preference} preference, exact enumeration, mean of {n_seeds} seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x: float) -> str:
    # Quantities that are exactly 0 in exact arithmetic come out at ~1e-16 in float64.
    return "0" if abs(x) < 1e-12 else f"{x:.3g}"


def table(rows: list, key: str, distance: float = DEFAULT_DISTANCE, preference: str = "random") -> str:
    """Markdown table of `key` (seed mean), rows L, columns beta; |x| < 1e-12 shown as 0."""
    sel = [r for r in rows if r["distance"] == distance and r["preference"] == preference]
    betas = sorted({r["beta"] for r in sel})
    lines = ["| L | " + " | ".join(f"β={b:g}" for b in betas) + " |", "|---" * (len(betas) + 1) + "|"]
    for length in sorted({r["length"] for r in sel}):
        vals = {r["beta"]: r[key] for r in sel if r["length"] == length}
        lines.append(f"| {length} | " + " | ".join(_fmt(vals[b]) for b in betas) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (JSON, figure, tables)")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = sweep(lengths=args.lengths, seeds=args.seeds)
    meta = {"vocab": VOCAB, "lengths": args.lengths, "betas": list(BETAS), "distances": list(DISTANCES),
            "seeds": args.seeds, "tau": TAU, "eta": ETA, "mu_logit_scale": 1.0}
    with open(os.path.join(args.out, "mixture_study.json"), "w") as f:
        json.dump({"config": meta, "rows": rows}, f, indent=1)
    plot(rows, os.path.join(args.out, "mixture_study.png"), n_seeds=len(args.seeds))
    plot(rows, os.path.join(args.out, "mixture_study_structured.png"), preference="structured",
         n_seeds=len(args.seeds))
    parts = []
    for pref in ("random", "structured"):
        for dist in DISTANCES:
            for key in ("kl_seq_tok", "kl_tok_seq", "tv", "rel_bias", "one_minus_cosine", "pref_gap", "step_kl",
                        "step_kl_opponent", "kl_pi_mu"):
                parts.append(f"### {key}, {pref} preference, distance {dist}\n\n{table(rows, key, dist, pref)}\n")
    sir = resampling_sweep(lengths=[n for n in (3, 5) if n in args.lengths] or args.lengths[-1:],
                           seeds=args.seeds)
    with open(os.path.join(args.out, "mixture_resampling.json"), "w") as f:
        json.dump({"config": {**meta, "beta": 0.125}, "rows": sir}, f, indent=1)
    for key in ("tv", "rel_bias"):
        parts.append(f"### resampled mixture (beta 0.125, random preference): {key} against the "
                     f"sequence-level mixture, by candidates K\n\n{resampling_table(sir, key)}\n")
    with open(os.path.join(args.out, "mixture_study_tables.md"), "w") as f:
        f.write("\n".join(parts))
    print("\n".join(parts[:9]))


if __name__ == "__main__":
    main()
