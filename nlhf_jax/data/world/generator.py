"""Generates the embedded world's datasets and vocabulary into a directory.

Why this module exists: every stage of the pipeline (SFT, preference and reward
models, policy training, evaluation) reads the world through files in the same formats
as the real data, so switching to real data changes paths, not code. Generation is a
pure function of a `WorldConfig`: the same seed gives byte-identical files (numpy
Generators seeded per stream, no global state, fixed JSON key order, a
deterministically trained SentencePiece model).

Layout of a world directory::

    world.json                       config, fingerprint, file list
    sft/{train,valid,test}.jsonl     TL;DR schema (+ style, quality of the summary)
    comparisons/{train,valid,test}.jsonl  OpenAI comparisons schema; `split` is
                                     train / valid1 / valid2 as in the real data
    prompts/{train,valid,test}.jsonl posts only; train posts are fresh, valid and
                                     test reuse the SFT valid/test posts (evaluation
                                     can then compare with the reference summaries)
    vocab/world.model                SentencePiece, T5 id layout

Every post text is unique across the whole world, so no prompt used for training
appears among the evaluation posts.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from nlhf_jax.data import templates
from nlhf_jax.data.world import grammar, layout, parser, raters, styles

# The directory layout is part of this module's interface (`generator.split_path`, ...).
# It is defined in `layout`, through which the raters read a world without importing
# this module (which imports them).
from nlhf_jax.data.world.layout import SPLITS, WORLD_FILE, split_path, vocab_path

# 2: the `garbled` quality (off by default; the data of version 1 is unchanged).
GENERATOR_VERSION = 2
COMPARISON_SPLIT_NAMES = {"train": "train", "valid": "valid1", "test": "valid2"}
# SFT style frequencies (concise, exhaustive, feelings_first, chronological): the
# reference distribution mu of the style game; see raters.py for why these values.
DEFAULT_STYLE_MIX = (0.15, 0.2, 0.5, 0.15)
N_WORKERS_PER_TYPE = 8
# Train comparisons beyond the first COMPARISON_BLOCK are drawn last, from a stream of
# their own, and stay out of the vocabulary's corpus: a world with more comparisons keeps
# every other file, its first COMPARISON_BLOCK train comparisons and its vocabulary (so
# its token ids) byte for byte, and models trained on the smaller world still apply.
COMPARISON_BLOCK = 20000
# Prompt-template markers kept whole in the world vocabulary (otherwise the unigram
# model spells them letter by letter: the corpus is too repetitive to learn them).
TEMPLATE_SYMBOLS = ("SUBREDDIT:", "TITLE:", "POST:", "TL;DR:") + tuple(
    f"r/{s}" for s in grammar.SUBREDDITS
)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a generated world.

    Attributes:
      seed: the world's seed.
      n_sft: (train, valid, test) SFT pairs.
      n_comparisons: (train, valid, test) labelled comparison pairs.
      n_prompts_train: fresh prompts for policy training.
      style_mix: reference (SFT) style distribution over `styles.STYLES`.
      quality_mix: reference quality distribution over `styles.QUALITIES`.
      noisy_quality_mix: quality distribution of the second, noisier summary source
        of the comparison pairs (same style mix, so pairs cover the SFT styles).
      population: the rater population that labels the comparisons.
      vocab_size: at most this many SentencePiece pieces (the closed world supports
        about 270; every world word is then a single piece).
    """

    seed: int = 0
    n_sft: tuple[int, int, int] = (20000, 500, 500)
    # 90k train comparisons, about the size of OpenAI's TL;DR comparison set (92k); the
    # PM overfits 20k (see README). The first COMPARISON_BLOCK are those of a 20k world.
    n_comparisons: tuple[int, int, int] = (90000, 1000, 1000)
    n_prompts_train: int = 5000
    style_mix: tuple[float, ...] = DEFAULT_STYLE_MIX
    # References never garble (a zero weight leaves the draws of version 1 unchanged, so
    # the SFT files are byte-identical to that version's).
    quality_mix: tuple[float, ...] = (0.8, 0.1, 0.1, 0.0)
    # The noisier source may also write `styles.GARBLED` summaries, the errors a small
    # trained policy makes (RL policies on the default world drift into them: the
    # judges never saw one). Off by default: with (0.4, 0.2, 0.2, 0.2) the quick demo's
    # PM fell from 0.76 to 0.65 accuracy (Bayes 0.83 -> 0.79) and its policies still
    # garbled as often; see the README. A zero weight keeps version 1's bytes.
    noisy_quality_mix: tuple[float, ...] = (0.4, 0.3, 0.3, 0.0)
    population: raters.RaterPopulation = raters.RaterPopulation()
    vocab_size: int = 512
    # Extra train comparisons between two summaries of *distinct* styles, both at the
    # reference quality: what a dataset that compares several policies' outputs adds.
    # In the ref-vs-noisy pairs quality decides most labels and the style game is left
    # to a few thousand pairs; a PM trained on style pairs alone learns P*'s cycle
    # (docs/results-world.md). Style pairs are drawn from mu x mu off the diagonal, so
    # the Bradley-Terry reward fitted on them is the one `nlhf world --describe` fits.
    # Appended after the other train comparisons from a stream of their own: every other
    # file (vocabulary and SFT data included) is byte-identical to the world without them.
    n_style_comparisons: int = 0

    def __post_init__(self):
        if self.n_style_comparisons < 0:
            raise ValueError(f"WorldConfig.n_style_comparisons = {self.n_style_comparisons} must be >= 0")
        for name in ("style_mix", "quality_mix", "noisy_quality_mix"):
            mix = getattr(self, name)
            want = len(styles.STYLES) if name == "style_mix" else len(styles.QUALITIES)
            names = styles.STYLES if name == "style_mix" else styles.QUALITIES
            if len(mix) != want or min(mix) < 0 or abs(sum(mix) - 1.0) > 1e-6:
                raise ValueError(
                    f"WorldConfig.{name} = {tuple(mix)} must be {want} non-negative "
                    f"probabilities summing to 1, over {names}"
                )

    def fingerprint(self) -> str:
        """A hash of the config and the generator version (cache key)."""
        fields = dataclasses.asdict(self)
        if not fields["n_style_comparisons"]:  # worlds from before the option keep their key
            del fields["n_style_comparisons"]
        blob = json.dumps([GENERATOR_VERSION, fields], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_data_dir(seed: int = 0) -> str:
    """$NLHF_DATA_DIR if set, else ~/.cache/nlhf_jax/world-<seed>."""
    env = os.environ.get("NLHF_DATA_DIR")
    if env:
        return env
    return os.path.join(os.path.expanduser("~"), ".cache", "nlhf_jax", f"world-{seed}")


class _PostSampler:
    """Draws posts whose texts are unique across the whole world."""

    def __init__(self):
        self.seen: set[str] = set()

    def __call__(self, rng: np.random.Generator, post_id: str) -> grammar.Post:
        while True:
            post = grammar.sample_post(rng, post_id)
            if post.text not in self.seen:
                self.seen.add(post.text)
                return post


def _write_jsonl(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=True) + "\n")


def _post_fields(post: grammar.Post) -> dict:
    return {"id": post.id, "subreddit": post.subreddit, "title": post.title, "post": post.text}


def _ref_and_noisy(config: WorldConfig, rng: np.random.Generator, post: grammar.Post) -> list:
    """The default comparison: a reference summary and a noisier one, styles from mu."""
    ref = styles.sample_summary(rng, post, config.style_mix, config.quality_mix)
    noisy = styles.sample_summary(rng, post, config.style_mix, config.noisy_quality_mix)
    return [(ref, "ref"), (noisy, "noisy")]


def _two_styles(config: WorldConfig, rng: np.random.Generator, post: grammar.Post) -> list:
    """A style comparison: two reference-quality summaries of distinct styles, the
    styles drawn from mu x mu conditioned on differing (see `n_style_comparisons`)."""
    mu = np.asarray(config.style_mix)
    while True:
        a, b = (int(x) for x in rng.choice(len(styles.STYLES), size=2, p=mu))
        if a != b:
            break
    out = []
    for style, source in ((a, "policy_a"), (b, "policy_b")):
        quality = int(rng.choice(len(styles.QUALITIES), p=np.asarray(config.quality_mix)))
        out.append(((styles.render_summary(rng, post, style, quality), style, quality), source))
    return out


def _comparisons(
    config: WorldConfig, rng: np.random.Generator, posts: list[grammar.Post], split: str,
    draw=_ref_and_noisy,
) -> list[dict]:
    pop = config.population
    texts, notes, sources = [], [], []
    for post in posts:
        pair = draw(config, rng, post)
        if rng.random() < 0.5:  # position carries no information
            pair.reverse()
        texts.append((pair[0][0][0], pair[1][0][0]))
        notes.append(tuple(f"{styles.STYLES[s]}/{styles.QUALITIES[q]}" for (_, s, q), _ in pair))
        sources.append((pair[0][1], pair[1][1]))
    infos = [parser.parse_post(p.text) for p in posts]
    f0 = parser.featurize(infos, [t[0] for t in texts])
    f1 = parser.featurize(infos, [t[1] for t in texts])
    choice, rater, p_rater = pop.sample_labels(rng, f0, f1)
    worker_no = rng.integers(N_WORKERS_PER_TYPE, size=len(posts))
    rows = []
    for i, post in enumerate(posts):
        rows.append(
            {
                "info": {"id": post.id, "post": post.text, "title": post.title,
                         "subreddit": post.subreddit},  # fmt: skip
                "summaries": [
                    {"text": templates.summary_target(texts[i][j]), "policy": sources[i][j],
                     "note": notes[i][j]}  # fmt: skip
                    for j in range(2)
                ],
                "choice": int(choice[i]),
                "worker": f"{pop.types[rater[i]].name}-{int(worker_no[i])}",
                "batch": f"world-{config.seed}",
                "split": COMPARISON_SPLIT_NAMES[split],
                # OpenAI's 1-9 confidence scale, from how sure the drawn rater was.
                "extra": {"confidence": int(1 + round(8 * abs(2 * p_rater[i] - 1)))},
            }
        )
    return rows


def generate(config: WorldConfig, out_dir: str) -> dict[str, str]:
    """Writes a whole world into `out_dir` (created if needed, files overwritten).

    Args:
      config: the world's config.
      out_dir: destination directory.

    Returns:
      Relative path -> sha256 of every file written (also stored in world.json).
    """
    sampler = _PostSampler()
    streams = {name: np.random.default_rng([config.seed, i]) for i, name in enumerate(
        ["sft/train", "sft/valid", "sft/test", "comparisons/train", "comparisons/valid",
         "comparisons/test", "prompts/train"])}  # fmt: skip
    sft_posts: dict[str, list[grammar.Post]] = {}
    corpus: list[str] = []
    for split, n in zip(SPLITS, config.n_sft):
        rng = streams[f"sft/{split}"]
        rows, posts = [], []
        for i in range(n):
            post = sampler(rng, f"w{config.seed}-sft-{split}-{i:06d}")
            text, style, quality = styles.sample_summary(
                rng, post, config.style_mix, config.quality_mix
            )
            posts.append(post)
            rows.append(_post_fields(post) | {"summary": text, "style": styles.STYLES[style],
                                              "quality": styles.QUALITIES[quality]})  # fmt: skip
            corpus += [templates.tldr_prompt(post.subreddit, post.title, post.text), text]
        sft_posts[split] = posts
        _write_jsonl(split_path(out_dir, "sft", split), rows)
    first_train: list[dict] = []
    for split, n in zip(SPLITS, config.n_comparisons):
        rng = streams[f"comparisons/{split}"]
        if split == "train":
            n = min(n, COMPARISON_BLOCK)
        posts = [sampler(rng, f"w{config.seed}-cmp-{split}-{i:06d}") for i in range(n)]
        rows = _comparisons(config, rng, posts, split)
        _write_jsonl(split_path(out_dir, "comparisons", split), rows)
        corpus += [r["summaries"][j]["text"].strip() for r in rows for j in range(2)]
        if split == "train":
            first_train = rows
    rng = streams["prompts/train"]
    train_prompts = [
        sampler(rng, f"w{config.seed}-prompt-train-{i:06d}") for i in range(config.n_prompts_train)
    ]
    for split, posts in (("train", train_prompts), ("valid", sft_posts["valid"]),
                         ("test", sft_posts["test"])):  # fmt: skip
        _write_jsonl(split_path(out_dir, "prompts", split), [_post_fields(p) for p in posts])
    # Every world word appears at least once, so rare words still get their piece.
    corpus += grammar.vocabulary_words()
    from nlhf_jax.data.world import vocab_training  # imports sentencepiece: only when writing

    vocab_training.train_sentencepiece(
        corpus, vocab_path(out_dir), vocab_size=config.vocab_size, seed=config.seed,
        user_symbols=TEMPLATE_SYMBOLS,
    )  # fmt: skip
    _append_train_comparisons(config, out_dir, sampler, first_train)
    return _write_meta(config, out_dir)


def _append_train_comparisons(config: WorldConfig, out_dir: str, sampler, first_train: list) -> None:
    """Train comparisons written after the vocabulary, from streams of their own, so the
    smaller world's files stay a prefix: those past COMPARISON_BLOCK (stream [seed, 7])
    and the style comparisons (stream [seed, 9]), in that order."""
    n_train = config.n_comparisons[0]
    if n_train > COMPARISON_BLOCK:
        rng = np.random.default_rng([config.seed, 7])
        posts = [sampler(rng, f"w{config.seed}-cmp-train-{i:06d}") for i in range(COMPARISON_BLOCK, n_train)]
        _write_jsonl(split_path(out_dir, "comparisons", "train"),
                     first_train + _comparisons(config, rng, posts, "train"))  # fmt: skip
    if config.n_style_comparisons:
        rng = np.random.default_rng([config.seed, 9])
        posts = [sampler(rng, f"w{config.seed}-cmpstyle-train-{i:06d}") for i in range(config.n_style_comparisons)]
        rows = _comparisons(config, rng, posts, "train", draw=_two_styles)
        with open(split_path(out_dir, "comparisons", "train"), "a", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(row, ensure_ascii=True) + "\n" for row in rows)


def _write_meta(config: WorldConfig, out_dir: str) -> dict[str, str]:
    """Hashes every file of `out_dir` into world.json (with the config); returns them."""
    hashes = {}
    for root, _, names in sorted(os.walk(out_dir)):
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, out_dir)
            if rel != WORLD_FILE:
                with open(full, "rb") as f:
                    hashes[rel] = hashlib.sha256(f.read()).hexdigest()
    meta = {
        "generator_version": GENERATOR_VERSION,
        "fingerprint": config.fingerprint(),
        "config": dataclasses.asdict(config),
        "files": hashes,
    }
    with open(os.path.join(out_dir, WORLD_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    return hashes


def is_current(data_dir: str, config: WorldConfig) -> bool:
    """Whether `data_dir` holds a generated world of exactly `config`."""
    return _is_current(data_dir, config)


def _is_current(data_dir: str, config: WorldConfig) -> bool:
    try:
        with open(os.path.join(data_dir, WORLD_FILE), encoding="utf-8") as f:
            return json.load(f).get("fingerprint") == config.fingerprint()
    except (OSError, ValueError):
        return False


def ensure_world(data_dir: Optional[str] = None, config: Optional[WorldConfig] = None) -> str:
    """Generates the world into `data_dir` unless an identical one is already there.

    A directory holding a world of another config (another fingerprint) is
    regenerated; a non-empty directory that holds no world is left alone (error).
    Generation goes to a temporary sibling directory first and is then renamed, so a
    reader never sees a half-written world.

    Args:
      data_dir: the directory; None: `default_data_dir(config.seed)`.
      config: the world's config; None: `WorldConfig()`.

    Returns:
      The directory.

    Raises:
      FileExistsError: if `data_dir` is a non-empty directory without world.json.
    """
    config = config or WorldConfig()
    data_dir = os.path.abspath(data_dir or default_data_dir(config.seed))
    if _is_current(data_dir, config):
        return data_dir
    if os.path.isdir(data_dir) and os.listdir(data_dir):
        if not os.path.exists(os.path.join(data_dir, WORLD_FILE)):
            raise FileExistsError(f"{data_dir} is not empty and holds no generated world")
    parent = os.path.dirname(data_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".world-", dir=parent)
    try:
        generate(config, tmp)
        if _is_current(data_dir, config):  # another process finished first
            return data_dir
        if os.path.isdir(data_dir):
            shutil.rmtree(data_dir)
        os.rename(tmp, data_dir)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return data_dir


def world_dir(data_dir: Optional[str] = None, seed: int = 0) -> str:
    """The world the data readers use: `data_dir` as it is when it holds a world, whatever
    its config (a smaller test world, one with style comparisons); otherwise the default
    world of `seed`, generated on first use into `data_dir` or `default_data_dir(seed)`.

    Only `ensure_world` with an explicit config regenerates a world of another config;
    a reader never does, so the SFT data, the prompts, the comparisons and the vocabulary
    of one run always come from the same world.
    """
    if data_dir and _is_world(data_dir):
        return os.path.abspath(data_dir)
    return ensure_world(data_dir or default_data_dir(seed), WorldConfig(seed=seed))


def _is_world(data_dir: str) -> bool:
    return os.path.exists(os.path.join(data_dir, WORLD_FILE))


def load_config(data_dir: str) -> WorldConfig:
    """The `WorldConfig` a generated world was written with (from its world.json)."""
    raw = layout.read_config_fields(data_dir)
    population = raters.RaterPopulation.from_dict(raw.pop("population"))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    for name in ("quality_mix", "noisy_quality_mix"):  # version 1 had no `garbled`
        missing = len(styles.QUALITIES) - len(fields.get(name, ()))
        if name in fields and missing > 0:
            fields[name] = fields[name] + (0.0,) * missing
    return WorldConfig(**fields, population=population)
