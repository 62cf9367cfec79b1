"""Judges: one interface for P(y > y' | x), whoever answers it.

Why this module exists: policy optimisation (Nash-MD-PG needs P(y > y' | x), RLHF a
reward) and evaluation (win rates under the ground truth P*) ask the same question of
different judges. Every judge here answers

    prob(prompts, ys, ys_alt) -> float64 [B],  P(ys[b] > ys_alt[b] | prompts[b])

on texts (prompts as the policy saw them, i.e. the TL;DR prompt; summaries as decoded
text), and `prob_tokens(prompt_ids, y_ids, y_alt_ids, vocabulary)` on the policy's
token ids. A model judge re-tokenises with its own vocabulary unless the policy's
vocabulary is the same SentencePiece model (compared by serialized bytes), so one
model's ids are never fed to another model with a different vocabulary.

Implementations: `WorldJudge` (the embedded world's rater population P*, the stand-in
for the paper's PaLM 2 judge), `PreferenceModelJudge` (a trained PM, both orders by
default) and `RewardModelJudge` (sigmoid of a trained RM's reward difference). Model
judges run jitted, with the batch sharded over the ('data', 'fsdp') mesh axes, in
chunks of `chunk_size` pairs so memory stays bounded.

`shift_check` measures how far each learned judge is from P* on pairs from another
distribution than the one it was fitted on (paper §3.3: a Bradley-Terry reward
depends on its sampling distribution; a preference model, ideally, does not).
"""

import functools
import json
import os
import re
from typing import Any, Optional, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nlhf_jax import partitioning
from nlhf_jax import preference_math
from nlhf_jax import types
from nlhf_jax.data import arrays
from nlhf_jax.data import pairwise
from nlhf_jax.data import templates
from nlhf_jax.models import preference
from nlhf_jax.models import t5

PyTree = types.PyTree
IdRows = arrays.IdRows


class Judge(Protocol):
    """What the policy-optimisation loop and the evaluators call."""

    def prob(self, prompts: Sequence[str], ys: Sequence[str], ys_alt: Sequence[str]) -> np.ndarray:
        """P(ys[b] > ys_alt[b] | prompts[b]), float64 [B]."""

    def prob_tokens(self, prompt_ids: IdRows, y_ids: IdRows, y_alt_ids: IdRows, vocabulary: Any) -> np.ndarray:
        """`prob` on token ids of `vocabulary` (the policy's)."""


_POST_RE = re.compile(r"POST:\s*(.*?)\s*(?:TL;DR:)?\s*$", re.DOTALL)


def post_from_prompt(prompt: str) -> str:
    """The post body inside a TL;DR prompt (`templates.post_prompt`), also after a
    SentencePiece round trip (which turns the newlines into spaces); text without a
    ``POST:`` marker is returned as it is (taken to be the post itself)."""
    m = _POST_RE.search(prompt)
    return m.group(1) if m else prompt


class WorldJudge:
    """The embedded world's ground-truth rater population P* (a `raters.RaterPanel`).

    Prompts are mapped back to their post (the raters read the post body, not the
    subreddit and title); posts may also be given as world post ids.
    """

    def __init__(self, data_dir: Optional[str] = None, raters=None):
        from nlhf_jax.data.world import raters as raters_lib

        if raters is None:
            raters = raters_lib.RaterPanel.for_world(data_dir) if data_dir else raters_lib.RaterPanel()
        self.raters = raters

    def prob(self, prompts: Sequence[str], ys: Sequence[str], ys_alt: Sequence[str]) -> np.ndarray:
        posts = [post_from_prompt(p) for p in prompts]
        return np.asarray(self.raters.prob(posts, list(ys), list(ys_alt)), np.float64)

    def prob_tokens(self, prompt_ids, y_ids, y_alt_ids, vocabulary) -> np.ndarray:
        return self.prob(*_decode(vocabulary, prompt_ids, y_ids, y_alt_ids))


class WorldBTReward:
    """The Bradley-Terry reward of the world's raters: the oracle RLHF reward.

    r(y) = r_style[style(y)] + quality(y) / T, where r_style is the BT reward that
    `nlhf world --describe` fits to P*'s style matrix on pairs drawn from the SFT style
    mix mu (`describe.WorldReport.reward_style`), quality(y) is the raters' shared
    quality utility and T the weight-averaged rater temperature. On two summaries of the
    same style P* is exactly sigmoid((quality(y) - quality(y')) / T) when the types share
    one temperature (the default world), so this is P*'s BT projection: what a perfect
    reward model trained on pairs from mu converges to, cycle removed. Text with no
    content word (style ``none``) gets the mean style reward plus the raters' mean
    utility gap between ``none`` and a style, in the same logit units.

    `rewards(prompts, ys)` for RLHF; `prob` = sigmoid(r(y) - r(y')) so that it can also
    stand in for a preference judge.
    """

    def __init__(self, data_dir: Optional[str] = None, seed: int = 0, n_posts: int = 256):
        from nlhf_jax.data.world import describe, generator
        from nlhf_jax.data.world import raters as raters_lib

        config = generator.load_config(data_dir) if data_dir else generator.WorldConfig(seed=seed)
        self.raters = raters_lib.RaterPanel(config.population)
        pop = config.population
        reward_style = describe.describe_world(config, n_posts=n_posts, taus=()).reward_style
        self.temperature = float(pop.weights @ pop.temperatures)
        gap = pop.weights @ ((pop.none_style - pop.style_table[:, :-1].mean(1)) / pop.temperatures)
        self.style_rewards = np.append(reward_style, reward_style.mean() + gap)  # [S + 1]

    def rewards(self, prompts: Sequence[str], ys: Sequence[str]) -> np.ndarray:
        """r(y) in logits, float64 [B]."""
        f = self.raters.features([post_from_prompt(p) for p in prompts], list(ys))
        return self.style_rewards[f.style] + self.raters.population.quality(f) / self.temperature

    def prob(self, prompts: Sequence[str], ys: Sequence[str], ys_alt: Sequence[str]) -> np.ndarray:
        d = self.rewards(prompts, ys) - self.rewards(prompts, ys_alt)
        return 0.5 * (1.0 + np.tanh(0.5 * d))  # sigmoid, exactly antisymmetric

    def prob_tokens(self, prompt_ids, y_ids, y_alt_ids, vocabulary) -> np.ndarray:
        return self.prob(*_decode(vocabulary, prompt_ids, y_ids, y_alt_ids))


def _decode(vocabulary: Any, *rows: IdRows) -> list[list[str]]:
    """Texts of each batch of id rows of the policy's `vocabulary`: a seqio vocabulary,
    a `pairwise.Tokenizer`, or a SentencePiece model (path or serialized bytes)."""
    if isinstance(vocabulary, (bytes, str, os.PathLike)):
        vocabulary = pairwise.Tokenizer(vocabulary)
    return [arrays.decode_tokens(vocabulary, r) for r in rows]


class _ModelJudge:
    """A PM or RM network with its input encoder, run jitted and sharded in chunks."""

    def __init__(
        self,
        network: nn.Module,
        params: PyTree,
        encoder: pairwise.PairEncoder,
        *,
        mesh: Optional[jax.sharding.Mesh] = None,
        rules: Optional[partitioning.LogicalRules] = None,
        chunk_size: int = 256,
    ):
        self.network = network
        self.encoder = encoder
        self.mesh = mesh or partitioning.make_mesh(partitioning.MeshConfig())
        self.rules = list(rules) if rules is not None else partitioning.default_rules()
        shards = self.mesh.shape[types.DATA] * self.mesh.shape[types.FSDP]
        self._shards = shards
        # Chunks are a multiple of the batch shards (one compilation per chunk shape).
        self.chunk_size = -(-max(chunk_size, 1) // shards) * shards
        self.params = _place_params(network, params, self.mesh, self.rules)
        self._batch_sharding = partitioning.batch_sharding(self.mesh, 2)
        self._fn = jax.jit(
            functools.partial(preference.target_logits, network,
                              target_token=encoder.target_token_id,
                              decoder_len=encoder.decoder_len),
            out_shardings=partitioning.replicated(self.mesh),
        )  # fmt: skip

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """Target logits of a [N, K] input array, float32 [N]: forward passes of at most
        2 x chunk_size rows (a chunk of pairs, both members), the last one padded."""
        n = len(inputs)
        out = np.zeros(n, np.float32)
        chunk = 2 * self._chunk_for(-(-n // 2))
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            for start in range(0, n, chunk):
                idx = np.arange(start, min(start + chunk, n))
                real = len(idx)
                # Padding rows repeat row 0 (an all-padding row would be a needless
                # special case for the attention masks); their outputs are dropped.
                idx = np.concatenate([idx, np.full(chunk - real, idx[0])])
                z = jax.device_get(self._fn(self.params, partitioning.put_global(inputs[idx], self._batch_sharding)))
                out[start:start + real] = z[:real]
        return out

    def pair_logits(self, inputs: np.ndarray, inputs_other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Target logits of two [B, K] input arrays, in the same forward passes: (float32
        [B], [B])."""
        z = self.logits(np.concatenate([inputs, inputs_other]))
        return z[: len(inputs)], z[len(inputs):]

    def _chunk_for(self, n: int) -> int:
        """Pairs per forward pass (both members: 2x the rows) for a call with `n` pairs.

        `chunk_size` bounds memory; a smaller call (a policy batch of 32 against the
        default 256) runs the next power of two at or above n, rounded to the batch
        shards, instead of padding to `chunk_size`: 8x less work per training step there,
        and still a handful of shapes to compile. `logits` runs 2x this many rows.
        """
        small = 1 << max(int(n) - 1, 0).bit_length()
        small = -(-small // self._shards) * self._shards
        return min(self.chunk_size, small)

    def _same_vocab(self, vocabulary) -> bool:
        return self.encoder.tokenizer.same_model(vocabulary)


class PreferenceModelJudge(_ModelJudge):
    """A trained PM: f(x, y, y') = sigmoid(target logit of the input (x, y, y')).

    Attributes:
      both_orders: `prob` returns (f(x, y, y') + 1 - f(x, y', y)) / 2 (exactly
        antisymmetric, 1/2 on identical summaries) instead of f(x, y, y').
    """

    def __init__(self, network, params, encoder, *, both_orders: bool = True, **kwargs):
        if encoder.kind != pairwise.PREFERENCE:
            raise ValueError("PreferenceModelJudge needs a preference-model input format")
        super().__init__(network, params, encoder, **kwargs)
        self.both_orders = both_orders

    def scores_from_inputs(self, inputs: np.ndarray, inputs_swapped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f(x, y, y'), f(x, y', y)) as float64 [B] each, from encoded inputs."""
        z, z_swapped = self.pair_logits(inputs, inputs_swapped)
        return preference_math.sigmoid(z), preference_math.sigmoid(z_swapped)

    def scores(self, prompts, ys, ys_alt) -> tuple[np.ndarray, np.ndarray]:
        """(f(x, y, y'), f(x, y', y)) as float64 [B] each, from texts."""
        enc = self.encoder
        return self.scores_from_inputs(enc.encode_texts(prompts, ys, ys_alt),
                                       enc.encode_texts(prompts, ys_alt, ys))  # fmt: skip

    def combine(self, f: np.ndarray, f_swapped: np.ndarray) -> np.ndarray:
        """What `prob` returns given both orders' scores."""
        return preference_math.both_orders(f, f_swapped) if self.both_orders else f

    def prob(self, prompts, ys, ys_alt) -> np.ndarray:
        return self.combine(*self.scores(prompts, ys, ys_alt))

    def prob_tokens(self, prompt_ids, y_ids, y_alt_ids, vocabulary) -> np.ndarray:
        if not self._same_vocab(vocabulary):
            return self.prob(*_decode(vocabulary, prompt_ids, y_ids, y_alt_ids))
        enc = self.encoder
        return self.combine(*self.scores_from_inputs(
            enc.encode_ids(prompt_ids, y_ids, y_alt_ids), enc.encode_ids(prompt_ids, y_alt_ids, y_ids)
        ))  # fmt: skip


class RewardModelJudge(_ModelJudge):
    """A trained RM: P(y > y' | x) = sigmoid(r(x, y) - r(x, y'))."""

    def __init__(self, network, params, encoder, **kwargs):
        if encoder.kind != pairwise.REWARD:
            raise ValueError("RewardModelJudge needs a reward-model input format")
        super().__init__(network, params, encoder, **kwargs)

    def rewards(self, prompts: Sequence[str], ys: Sequence[str]) -> np.ndarray:
        """r(x, y), float32 [B] (for RLHF)."""
        return self.logits(self.encoder.encode_texts(prompts, ys))

    def prob_from_inputs(self, inputs: np.ndarray, inputs_alt: np.ndarray) -> np.ndarray:
        """sigmoid(r(x, y) - r(x, y')) from encoded inputs (x, y) and (x, y'), [B, K] each."""
        return preference_math.bradley_terry(*self.pair_logits(inputs, inputs_alt))

    def prob(self, prompts, ys, ys_alt) -> np.ndarray:
        enc = self.encoder
        return self.prob_from_inputs(enc.encode_texts(prompts, ys), enc.encode_texts(prompts, ys_alt))

    def prob_tokens(self, prompt_ids, y_ids, y_alt_ids, vocabulary) -> np.ndarray:
        if not self._same_vocab(vocabulary):
            return self.prob(*_decode(vocabulary, prompt_ids, y_ids, y_alt_ids))
        enc = self.encoder
        return self.prob_from_inputs(enc.encode_ids(prompt_ids, y_ids), enc.encode_ids(prompt_ids, y_alt_ids))


def _place_params(network, params, mesh, rules) -> PyTree:
    """Puts `params` into the shardings the logical rules give them on `mesh`."""
    init = lambda rng: t5.init_variables(network, rng)["params"]  # noqa: E731
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(init, jax.random.key(0))
        shardings = partitioning.logical_shardings(boxed, mesh, rules)
    return jax.tree_util.tree_map(lambda x, s: jax.device_put(jnp.asarray(x), s), params, shardings)


def load_judge(
    model_dir: str,
    *,
    mesh: Optional[jax.sharding.Mesh] = None,
    rules: Optional[partitioning.LogicalRules] = None,
    chunk_size: int = 256,
    both_orders: bool = True,
):
    """A PM or RM judge from a finished run's directory alone.

    Reads `judge.json` (input format, target token, vocabulary copy), then
    `model_config.json` and the latest checkpoint's parameters (`trainer.load_frozen`).

    Args:
      model_dir: the run's directory.
      mesh, rules: where the model runs (default: all devices on the fsdp axis).
      chunk_size: pairs per forward pass.
      both_orders: PM only (see `PreferenceModelJudge`).

    Returns:
      A `PreferenceModelJudge` or a `RewardModelJudge`.
    """
    from nlhf_jax import trainer

    spec, encoder = pairwise.load_judge_spec(model_dir)
    mesh = mesh or partitioning.make_mesh(partitioning.MeshConfig())
    rules = list(rules) if rules is not None else partitioning.default_rules()
    _, network, params = trainer.load_frozen(model_dir, mesh, rules)
    kwargs = dict(mesh=mesh, rules=rules, chunk_size=chunk_size)
    if spec["kind"] == pairwise.PREFERENCE:
        return PreferenceModelJudge(network, params, encoder, both_orders=both_orders, **kwargs)
    return RewardModelJudge(network, params, encoder, **kwargs)


# ------------------------------------------------------------------------ metrics


def _clip(p: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(p, np.float64), 1e-7, 1.0 - 1e-7)


def _agreement(p: np.ndarray, target: np.ndarray) -> float:
    """Mean expected agreement of the decision p > 1/2 with target probabilities."""
    return float(np.mean(preference_math.decision_agreement(p, target)))


def expected_calibration_error(p: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """sum_b (n_b / N) |mean label_b - mean p_b| over `n_bins` equal-width bins of p."""
    p, labels = np.asarray(p, np.float64), np.asarray(labels, np.float64)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(labels[sel].mean() - p[sel].mean())
    return float(ece)


def preference_metrics(
    p: np.ndarray,
    *,
    labels: Optional[np.ndarray] = None,
    p_star: Optional[np.ndarray] = None,
    f: Optional[np.ndarray] = None,
    f_swapped: Optional[np.ndarray] = None,
) -> dict[str, float]:
    """How good a judge's probabilities are.

    Args:
      p: float [N], the judge's P(y > y').
      labels: float [N] in [0, 1], human labels (1 = y preferred).
      p_star: float [N], the ground truth P* (embedded world only).
      f, f_swapped: a PM's one-order scores f(x, y, y') and f(x, y', y), for the
        position bias.

    Returns:
      loss (cross-entropy vs labels), accuracy (vs labels), ece (vs labels),
      bayes_accuracy (accuracy of P*'s decision vs labels: the best any judge can do),
      bayes_agreement (p's decision vs P*'s), pstar_logloss (cross-entropy of p
      against the target P*), pstar_entropy (its floor, reached at p = P*),
      pstar_mae (mean |p - P*|), expected_accuracy (the accuracy expected against
      labels drawn from P*: mean of P* or 1 - P* for the side p picks, no label noise),
      bayes_expected_accuracy (the same for P*'s decision, mean max(P*, 1 - P*)),
      position_bias (mean |f(x,y,y') - (1 - f(x,y',y))|).
    """
    p = np.asarray(p, np.float64)
    pc = _clip(p)
    out: dict[str, float] = {"prob_mean": float(p.mean())}
    if labels is not None:
        labels = np.asarray(labels, np.float64)
        out["loss"] = preference_math.cross_entropy(labels, pc)
        out["accuracy"] = _agreement(p, labels)
        out["ece"] = expected_calibration_error(p, labels)
    if p_star is not None:
        ps = np.asarray(p_star, np.float64)
        out["bayes_agreement"] = _agreement(p, preference_math.bayes_decision(ps))
        out["pstar_logloss"] = preference_math.cross_entropy(ps, pc)
        out["pstar_entropy"] = preference_math.cross_entropy(ps, _clip(ps))
        out["pstar_mae"] = float(np.mean(np.abs(p - ps)))
        # The accuracy to expect against labels drawn from P*, without their noise: a
        # 1,000-pair test split's label accuracy moves by about a point by chance.
        out["expected_accuracy"] = _agreement(p, ps)
        out["bayes_expected_accuracy"] = _agreement(ps, ps)  # mean max(P*, 1 - P*)
        if labels is not None:
            out["bayes_accuracy"] = _agreement(ps, labels)
    if f is not None and f_swapped is not None:
        out["position_bias"] = float(np.mean(np.abs(np.asarray(f) - (1.0 - np.asarray(f_swapped)))))
    return out


def evaluate_inputs(
    judge, features: dict[str, np.ndarray], labels: np.ndarray, p_star: Optional[np.ndarray] = None,
    probs_out: Optional[list] = None,
) -> dict[str, float]:
    """`preference_metrics` of a model judge on encoded comparisons.

    A PM judge is scored as it will be used (both orders if it is set so); its
    one-order f is reported too (`f_accuracy`, `f_loss`), with the position bias.

    Args:
      judge: a `PreferenceModelJudge` or `RewardModelJudge`.
      features: `pairwise.preference_features` / `reward_features` of the pairs.
      labels, p_star: float [N] (see `preference_metrics`).
      probs_out: if given, the judge's P(y > y') [N] is appended to it (so callers
        that also need the probabilities do not run the model twice).
    """
    if isinstance(judge, PreferenceModelJudge):
        f, f_swapped = judge.scores_from_inputs(features["inputs"], features["inputs_swapped"])
        p = judge.combine(f, f_swapped)
        out = preference_metrics(p, labels=labels, p_star=p_star, f=f, f_swapped=f_swapped)
        one = preference_metrics(f, labels=labels)
        out.update(f_accuracy=one["accuracy"], f_loss=one["loss"])
    else:
        p = judge.prob_from_inputs(features["inputs"], features["inputs_alt"])
        out = preference_metrics(p, labels=labels, p_star=p_star)
    if probs_out is not None:
        probs_out.append(p)
    return out


def evaluate_texts(judge, texts: pairwise.ComparisonTexts, probs_out: Optional[list] = None) -> dict[str, float]:
    """`evaluate_inputs` on labelled comparison texts (e.g. a test split)."""
    build = (pairwise.preference_features if isinstance(judge, PreferenceModelJudge)
             else pairwise.reward_features)  # fmt: skip
    return evaluate_inputs(judge, build(judge.encoder, texts), texts.labels, texts.p_star, probs_out)


def world_pair_kinds(path: str) -> list[str]:
    """The kind of each world comparison in a JSONL file, from the summaries' notes.

    "faithful vs hallucinated", "both faithful", ...: the two qualities (sorted), then
    "same style" or "different styles". Raises ValueError naming the file and line when a
    row has no world note (`style/quality`), i.e. when the file is not world data.
    """
    kinds = []
    with open(path, encoding="utf-8") as f:
        rows = [(i, line) for i, line in enumerate(f, 1) if line.strip()]
    for line_no, line in rows:
        try:
            row = json.loads(line)
            notes = [s["note"].split("/") for s in row["summaries"]]
            (s0, q0), (s1, q1) = notes
        except (KeyError, TypeError, ValueError) as e:  # json errors are ValueErrors
            raise ValueError(f"{path}:{line_no}: no world note 'style/quality' on both summaries ({e!r})")
        quality = f"both {q0}" if q0 == q1 else " vs ".join(sorted([q0, q1]))
        kinds.append(f"{quality}, {'same style' if s0 == s1 else 'different styles'}")
    return kinds


def breakdown(p: np.ndarray, labels: np.ndarray, p_star: np.ndarray, kinds: Sequence[str]) -> list[dict]:
    """Where a judge loses accuracy against the Bayes decision, by kind of pair.

    Args:
      p, labels, p_star: float [N] (see `preference_metrics`).
      kinds: N labels (e.g. `world_pair_kinds`).

    Returns:
      One dict per kind, most pairs first: kind, n, accuracy, bayes_accuracy,
      bayes_agreement, and gap_points (the kind's share of the accuracy gap to the Bayes
      decision, in points of the whole set's accuracy: they sum to the overall gap).
    """
    p, labels, p_star = (np.asarray(a, np.float64) for a in (p, labels, p_star))
    kinds = np.asarray(kinds)
    bayes = preference_math.bayes_decision(p_star)
    out = []
    for kind in sorted(set(kinds.tolist())):
        sel = kinds == kind
        acc, bacc = _agreement(p[sel], labels[sel]), _agreement(p_star[sel], labels[sel])
        out.append({"kind": kind, "n": int(sel.sum()), "accuracy": acc, "bayes_accuracy": bacc,
                    "bayes_agreement": _agreement(p[sel], bayes[sel]),
                    "gap_points": 100.0 * (bacc - acc) * sel.sum() / len(p)})
    return sorted(out, key=lambda r: -r["n"])


# ------------------------------------------------------------- distribution shift


def shifted_pairs(
    n: int,
    seed: int = 1234,
    style_mix: Sequence[float] = (0.25, 0.25, 0.25, 0.25),
    quality_mix: Sequence[float] = (1.0, 0.0, 0.0, 0.0),
) -> tuple[list[str], list[str], list[str]]:
    """Pairs of world summaries from another distribution than the comparison data.

    The comparison data pair a reference summary with a noisier one, both in the SFT
    style mix. By default these pairs are two independent summaries of fresh posts
    with styles drawn uniformly and both faithful, so they differ in style only: the
    part of P* on which the rater types disagree (and which no reward represents).

    Args:
      n: number of pairs.
      seed: numpy seed (fresh posts come from their own stream).
      style_mix: distribution over `styles.STYLES` of each summary.
      quality_mix: distribution over `styles.QUALITIES` of each summary.

    Returns:
      (prompts (TL;DR prompt texts), ys, ys_alt), n each.
    """
    from nlhf_jax.data.world import grammar, styles

    rng = np.random.default_rng([seed, 7])
    prompts, ys, ys_alt = [], [], []
    for i in range(n):
        post = grammar.sample_post(rng, f"shift-{seed}-{i:06d}")
        prompts.append(templates.post_prompt({"subreddit": post.subreddit, "title": post.title,
                                              "post": post.text}))
        ys.append(styles.sample_summary(rng, post, style_mix, quality_mix)[0])
        ys_alt.append(styles.sample_summary(rng, post, style_mix, quality_mix)[0])
    return prompts, ys, ys_alt


def shift_check(
    pm_judge, rm_judge, world_judge, prompts: Sequence[str], ys: Sequence[str], ys_alt: Sequence[str]
) -> dict[str, float]:
    """Agreement of a PM judge and an RM judge with P* on the given pairs.

    Call it with pairs from another distribution than training (`shifted_pairs`, or
    policy samples): paper §3.3 predicts the Bradley-Terry reward's fit to P* depends
    on where its training pairs came from, the preference model's much less.

    Args:
      pm_judge, rm_judge: judges (any `Judge`; either may be None).
      world_judge: the ground truth (`WorldJudge`).
      prompts, ys, ys_alt: the pairs (prompts as the policy saw them).

    Returns:
      {"pm/..", "rm/.."}: pstar_logloss, pstar_entropy, pstar_mae, bayes_agreement;
      and "n_pairs", "pstar_decisive" (share of pairs with |P* - 1/2| > 0.1).
    """
    p_star = world_judge.prob(prompts, ys, ys_alt)
    out = {"n_pairs": float(len(ys)), "pstar_decisive": float(np.mean(np.abs(p_star - 0.5) > 0.1))}
    for name, judge in (("pm", pm_judge), ("rm", rm_judge)):
        if judge is None:
            continue
        m = preference_metrics(judge.prob(prompts, ys, ys_alt), p_star=p_star)
        out.update({f"{name}/{k}": v for k, v in m.items() if k != "prob_mean"})
    return out


def world_shift_report(
    pm_dir: str,
    rm_dir: str,
    data_dir: Optional[str] = None,
    n_pairs: int = 1000,
    seed: int = 1234,
    **pair_kwargs,
) -> dict[str, float]:
    """`shift_check` of two finished runs on `shifted_pairs` of the world (for the demo).

    Args:
      pm_dir, rm_dir: model directories of a PM run and an RM run.
      data_dir: the world whose rater population is P* (None: the default world).
      n_pairs, seed, **pair_kwargs: see `shifted_pairs`.
    """
    from nlhf_jax.data.world import generator

    world = WorldJudge(data_dir or generator.ensure_world())
    pairs = shifted_pairs(n_pairs, seed, **pair_kwargs)
    return shift_check(load_judge(pm_dir), load_judge(rm_dir), world, *pairs)
