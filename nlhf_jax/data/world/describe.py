"""The world's expected outcome, computed from its own parameters.

Why this module exists: the deep experiments (SFT, RLHF, Nash-MD-PG...) take hours;
what they *should* find is computable in a second, because the rater population's
preferences over response types form a small game. This module measures that game on
generated text and solves it, so the prediction is on record before anything trains
(``nlhf world --describe``), and tests can pin the properties the world must keep.

Two games are reported:

* the *style* game: styles compared among faithful summaries (quality held fixed, so
  only the style disagreements are left), with the SFT style distribution as mu and
  a Bradley-Terry reward fitted on pairs drawn from it;
* the *style x quality* game over 16 response types, with the SFT distribution as mu
  and the reward fitted on the comparison-pair distribution (reference versus noisier
  summaries), which is what the deep pipeline's reward model sees. It adds the
  transitive quality component on which every method improves over SFT.
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np

from nlhf_jax.data.world import game, generator, parser, styles

TAUS = (0.005, 0.01, 0.02, 0.05, 0.1)


@dataclasses.dataclass(frozen=True)
class WorldReport:
    """Everything `nlhf world --describe` prints.

    Attributes:
      config: the world's config.
      P_style: [S, S] style matrix among faithful summaries.
      P_sft: [S, S] style matrix when both sides have the SFT quality mix.
      mu: [S] SFT style distribution.
      reward_style: [S] BT reward fitted on P_style, pairs ~ mu x mu.
      reward_sft: [S] BT reward fitted on P_sft, pairs ~ mu x mu.
      condorcet: Condorcet winner of P_style (None if none).
      cycles: 3-cycles of P_style.
      style_predictions: per-tau predictions on (P_style, mu, reward_style).
      type_game: the measured 12-type game.
      type_mu: [S*Q] SFT distribution over types.
      type_reward: [S*Q] BT reward fitted on comparison pairs.
      type_predictions: per-tau predictions on the type game.
    """

    config: generator.WorldConfig
    P_style: np.ndarray
    P_sft: np.ndarray
    mu: np.ndarray
    reward_style: np.ndarray
    reward_sft: np.ndarray
    condorcet: Optional[int]
    cycles: list
    style_predictions: list
    type_game: game.TypeGame
    type_mu: np.ndarray
    type_reward: np.ndarray
    type_predictions: list

    @property
    def bt_first(self) -> int:
        """Style the SFT-pair BT reward ranks first."""
        return int(np.argmax(self.reward_style))

    @property
    def condorcet_margin(self) -> float:
        """P(Condorcet winner > BT-first style) - 1/2 (nan without a winner)."""
        if self.condorcet is None:
            return float("nan")
        return float(self.P_style[self.condorcet, self.bt_first] - 0.5)


def describe_world(
    config: Optional[generator.WorldConfig] = None,
    n_posts: int = 256,
    taus: Sequence[float] = TAUS,
) -> WorldReport:
    """Measures and solves the world's games.

    Args:
      config: the world (population, style and quality mixes, seed); default world
        if None.
      n_posts: posts over which the type game is measured.
      taus: regularisation strengths to predict for.

    Returns:
      The `WorldReport`.
    """
    config = config or generator.WorldConfig()
    type_game = game.measure_type_game(config.population, n_posts=n_posts, seed=config.seed)
    mu = np.asarray(config.style_mix, dtype=np.float64)
    p_style = type_game.style_matrix([1.0] + [0.0] * (len(styles.QUALITIES) - 1))
    p_sft = type_game.style_matrix(config.quality_mix)
    reward_style = game.bt_fit(p_style, np.outer(mu, mu))
    reward_sft = game.bt_fit(p_sft, np.outer(mu, mu))
    ref = np.outer(mu, config.quality_mix).ravel()
    noisy = np.outer(mu, config.noisy_quality_mix).ravel()
    type_reward = game.bt_fit(type_game.P, _comparison_pair_weights(config, ref, noisy))
    return WorldReport(
        config=config,
        P_style=p_style,
        P_sft=p_sft,
        mu=mu,
        reward_style=reward_style,
        reward_sft=reward_sft,
        condorcet=game.condorcet_winner(p_style),
        cycles=game.three_cycles(p_style),
        style_predictions=game.predict(p_style, mu, reward_style, taus),
        type_game=type_game,
        type_mu=ref,
        type_reward=type_reward,
        type_predictions=_predict_on_support(type_game.P, ref, type_reward, taus),
    )


def _comparison_pair_weights(config: generator.WorldConfig, ref: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """[T, T] distribution of (type, type) over the train comparisons: reference vs
    noisier summaries, plus the optional style comparisons (two reference-quality
    summaries, styles from mu x mu off the diagonal). T = styles x qualities."""
    w = 0.5 * (np.outer(ref, noisy) + np.outer(noisy, ref))
    n_ref, n_style = config.n_comparisons[0], config.n_style_comparisons
    if not n_style:
        return w
    mu, q = np.asarray(config.style_mix), np.asarray(config.quality_mix)
    styles_off = np.outer(mu, mu) * (1 - np.eye(len(mu)))
    style_pairs = np.einsum("ij,a,b->iajb", styles_off / styles_off.sum(), q, q).reshape(w.shape)
    return (n_ref * w + n_style * style_pairs) / (n_ref + n_style)


def _predict_on_support(P, mu, reward, taus) -> list:
    """`game.predict` over the types mu draws (garbled ones it never does: a policy
    regularised towards mu gives them no mass), with the vectors padded back to all types."""
    keep = np.flatnonzero(mu > 0)
    out = []
    for p in game.predict(P[np.ix_(keep, keep)], mu[keep], reward[keep], taus):
        nash, rlhf = np.zeros(len(mu)), np.zeros(len(mu))
        nash[keep], rlhf[keep] = p.nash, p.rlhf
        out.append(dataclasses.replace(p, nash=nash, rlhf=rlhf))
    return out


class StyleMonitor:
    """Style shares of a policy's samples and their distance to the world's predictions,
    as per-step training metrics (the curves of `docs/results-world.md`).

    Called with the step's decoded samples y (B strings), it returns

      world/style/<name>   share of each style among the samples with a style;
      world/style/none     share of samples with no content (no style);
      world/tv_to_nash     total variation between the style shares and Nash(tau), the
                           regularised equilibrium of the style game (paper §3, Eq. 1 with
                           mu = the SFT style mix);
      world/tv_to_rlhf     the same to the RLHF policy mu exp(r / tau) / Z under the
                           Bradley-Terry reward fitted on pairs from mu.

    Args:
      tau: the run's regularisation (a policy run binds its TAU).
      data_dir: a world directory (its config); None: the default world of `seed`.
      seed: the world's seed when `data_dir` is None.
      n_posts: posts over which the style game is measured (once, at construction).
    """

    def __init__(self, tau: float, data_dir: Optional[str] = None, seed: int = 0, n_posts: int = 256):
        config = generator.load_config(data_dir) if data_dir else generator.WorldConfig(seed=seed)
        pred = describe_world(config, n_posts=n_posts, taus=(tau,)).style_predictions[0]
        self.nash, self.rlhf, self.tau = np.asarray(pred.nash), np.asarray(pred.rlhf), float(tau)

    def __call__(self, texts: Sequence[str]) -> dict[str, float]:
        k = len(styles.STYLES)
        counts = np.bincount(parser.style_of(texts), minlength=k + 1).astype(np.float64)
        styled = counts[:k].sum()
        share = counts[:k] / styled if styled else np.full(k, np.nan)
        out = {f"world/style/{name}": float(x) for name, x in zip(styles.STYLES, share)}
        out["world/style/none"] = float(counts[k:].sum() / max(len(texts), 1))
        out["world/tv_to_nash"] = float(0.5 * np.abs(share - self.nash).sum())
        out["world/tv_to_rlhf"] = float(0.5 * np.abs(share - self.rlhf).sum())
        return out


def _vec(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in v) + ")"


def _matrix(P: np.ndarray, names: Sequence[str]) -> list[str]:
    width = max(len(n) for n in names) + 2
    lines = [" " * width + "".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(names, P):
        lines.append(f"{name:<{width}}" + "".join(f"{x:>{width}.3f}" for x in row))
    return lines


def _ranking(r: np.ndarray) -> str:
    return " > ".join(f"{styles.STYLES[i]} ({r[i]:+.3f})" for i in np.argsort(-r))


def format_report(rep: WorldReport) -> str:
    """Renders a `WorldReport` as the text `nlhf world --describe` prints."""
    names = list(styles.STYLES)
    cfg = rep.config
    out = [f"Embedded summarization world (seed {cfg.seed})", ""]
    out.append("Rater population: P*(y > y'|x) = sum_k w_k sigmoid((u_k(y) - u_k(y')) / T_k)")
    out.append(f"  {'type':<12}{'w_k':>6}{'T_k':>6}   style utilities " + _vec_names(names))
    for t in cfg.population.types:
        out.append(f"  {t.name:<12}{t.weight:>6.3f}{t.temperature:>6.2f}   {_vec(t.style_utility)}")
    pop = cfg.population
    out.append(
        f"  shared quality: +{pop.main_point} main point covered, -{pop.unsupported} per "
        f"unsupported content word, -{pop.overlength} per word over "
        f"{styles.MAX_SUMMARY_WORDS}, -{pop.repeat} per repeat, -{pop.unknown} per unknown "
        f"token; no content at all: style utility {pop.none_style}"
    )
    out += ["", "Style-level preference P(row > column), faithful summaries on both sides:"]
    out += ["  " + line for line in _matrix(rep.P_style, names)]
    out += ["", "Same, both sides with the SFT quality mix "
            f"{dict(zip(styles.QUALITIES, cfg.quality_mix))}:"]  # fmt: skip
    out += ["  " + line for line in _matrix(rep.P_sft, names)]
    out += ["", "SFT style distribution mu: " + ", ".join(
        f"{n} {m:.3f}" for n, m in zip(names, rep.mu))]  # fmt: skip
    out.append("Bradley-Terry reward fitted on pairs from mu:")
    out.append("  faithful styles: " + _ranking(rep.reward_style))
    out.append("  SFT quality mix: " + _ranking(rep.reward_sft))
    cond = "none" if rep.condorcet is None else names[rep.condorcet]
    out.append(f"Condorcet (head-to-head) winner: {cond}; BT first: {names[rep.bt_first]}; "
               f"P({cond} > {names[rep.bt_first]}) = {0.5 + rep.condorcet_margin:.3f} "
               f"(margin {rep.condorcet_margin:.3f})")  # fmt: skip
    for c in rep.cycles:
        out.append("Preference cycle: " + " > ".join(names[i] for i in c + (c[0],)) + "  ("
                   + ", ".join(f"{rep.P_style[a, b]:.3f}" for a, b in zip(c, c[1:] + c[:1]))
                   + ")")  # fmt: skip
    out += ["", "Prediction at the style level: Nash = regularised equilibrium "
            "pi = mu exp(P pi / tau) / Z; RLHF = mu exp(r / tau) / Z with the BT reward; "
            "styles " + _vec_names(names)]  # fmt: skip
    out.append(f"  {'tau':<7}{'Nash equilibrium':<34}{'RLHF policy':<34}{_HEAD}")
    for p in rep.style_predictions:
        out.append(f"  {p.tau:<7g}{_vec(p.nash):<34}{_vec(p.rlhf):<34}{_wins(p)}")
    nq = len(styles.QUALITIES)
    out += ["", f"Prediction on the style x quality game ({len(styles.STYLES) * nq} response types; reward fitted on "
            "the comparison pairs: reference vs noisier summaries); style marginals, and "
            "the faithful share:"]  # fmt: skip
    out.append(f"  {'tau':<7}{'Nash styles':<34}{'faithful':>9}  {'RLHF styles':<34}"
               f"{'faithful':>9}{_HEAD}")  # fmt: skip
    for p in rep.type_predictions:
        n, r = p.nash.reshape(-1, nq), p.rlhf.reshape(-1, nq)
        out.append(f"  {p.tau:<7g}{_vec(n.sum(1)):<34}{n[:, 0].sum():>9.3f}  "
                   f"{_vec(r.sum(1)):<34}{r[:, 0].sum():>9.3f}{_wins(p)}")  # fmt: skip
    sft_faithful = float(np.asarray(cfg.quality_mix)[0])
    out.append(f"  (SFT is {sft_faithful:.0%} faithful; every method gains on it through quality)")
    return "\n".join(out)


_HEAD = f"{'P(Nash>RLHF)':>13}{'P(Nash>SFT)':>13}{'P(RLHF>SFT)':>13}"


def _wins(p: game.Prediction) -> str:
    return f"{p.nash_vs_rlhf:>13.3f}{p.nash_vs_sft:>13.3f}{p.rlhf_vs_sft:>13.3f}"


def _vec_names(names: Sequence[str]) -> str:
    return "(" + ", ".join(names) + ")"
