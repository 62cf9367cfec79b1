"""Comparison data as model inputs for the preference model (PM) and reward model (RM).

Why this module exists: the PM and RM are trained on comparisons and later asked, as
judges, about pairs the policy sampled. Both uses must build the encoder input in
exactly the same way, so there is one `PairEncoder` that turns (prompt, y, y') into
token ids, and its settings are written next to a trained model (`judge.json`) so a
judge can be rebuilt from the model directory alone.

Input format (paper §8 / App. G.1; spec §6.2): the PM reads one prompt holding the
text and both summaries and is asked which is better, "1 or 2"; the RM reads the text
and one summary. Both are scored by one designated target token at the first decoder
position (decoder input = [0]). The template is configurable: a vocabulary without
digits (the embedded world's) needs other words.

Tokenisation rule: every field (prompt, y, y') and every literal piece of the template
is tokenised on its own and the ids are concatenated, then EOS. So the same ids come
out whether a field arrives as text or as ids of the same SentencePiece model (the
judges skip re-tokenisation then). Truncation rule (counted, never silent): each
summary keeps its first `max_summary_len` tokens, then the prompt keeps as many of its
first tokens as still fit in `max_input_len`.
"""

import dataclasses
import json
import logging
import os
import re
import shutil
from typing import Any, Optional, Sequence

import numpy as np
import sentencepiece as spm

from nlhf_jax.data import input_pipeline
from nlhf_jax import types
from nlhf_jax.data import arrays
from nlhf_jax.data import jsonl
from nlhf_jax.data import templates

IdRows = arrays.IdRows
PREFERENCE, REWARD = "preference", "reward"
JUDGE_FILE = "judge.json"
VOCAB_FILE = "spiece.model"

# The paper's pairwise classifier prompt (App. G.1; its exact wording is not public)
# and the reward model's single-summary variant, for T5 SentencePiece vocabularies.
PM_TEMPLATE = (
    "{prompt}\n\nSummary 1: {y}\n\nSummary 2: {y_alt}\n\nWhich summary is better, 1 or 2?"
)
RM_TEMPLATE = "{prompt}\n\nSummary: {y}\n\nIs this a good summary?"
# The embedded world's vocabulary has no digits and no capitals (they would all be
# <unk>). Its templates mark the summaries with "x" and "q", pieces that no world text
# contains, so each summary's start is unambiguous ("first" / "then" would also occur
# inside chronological summaries); the target token is a world word.
WORLD_PM_TEMPLATE = "{prompt} x : {y} q : {y_alt} ?"
WORLD_RM_TEMPLATE = "{prompt} x : {y} ?"
WORLD_TARGET_TOKEN = "first"
# World prompts take at most 79 tokens and summaries at most 27, so a PM input is at
# most 79 + 27 + 27 + 7 template tokens + EOS = 141 and an RM input at most 111:
# these lengths never truncate world data.
WORLD_PM_INPUT_LEN = 144
WORLD_RM_INPUT_LEN = 112
WORLD_SUMMARY_LEN = 32
# The world PM's two-stack layout (`InputFormat.decoder_template`, the default of
# configs/experiments/world_pm.gin): the encoder reads the RM's input, the decoder
# "q : y' ?" (at most 27 + 3 tokens).
WORLD_PM_ENCODER_TEMPLATE = "{prompt} x : {y}"
WORLD_PM_DECODER_TEMPLATE = "q : {y_alt} ?"
WORLD_PM_DECODER_LEN = 40

_FIELD_RE = re.compile(r"\{(prompt|y|y_alt)\}")


@dataclasses.dataclass(frozen=True)
class InputFormat:
    """How a PM or RM input is written.

    Attributes:
      template: text with the fields {prompt}, {y} and (PM only) {y_alt}, each once.
      target_token: the text of the token whose logit at the first decoder position
        is the score (must be one piece of the vocabulary; a bare leading "▁" piece
        is ignored).
      max_input_len: encoder length K, EOS included.
      max_summary_len: tokens kept of each summary.
      decoder_template: PM only, optional: text holding {y_alt} once, written into
        the *decoder* input instead of the encoder (the template then holds {prompt}
        and {y}); the score is the target token's logit after the decoder's last
        token. Why: T5 has no absolute positions, so a one-input PM must learn from
        relative positions alone which summary a token belongs to; a small model
        trained from scratch does so slowly (on the embedded world a 2-layer PM
        stayed at chance for 1,000 steps). Across the two stacks the roles are free,
        and an SFT initialisation already reads a summary in the decoder while
        attending to the post. "" (default) keeps everything in the encoder.
      max_decoder_len: decoder length L of that layout (the decoder input is the
        start token followed by these L columns).
    """

    template: str = PM_TEMPLATE
    target_token: str = "1"
    max_input_len: int = 512
    max_summary_len: int = 64
    decoder_template: str = ""
    max_decoder_len: int = 0

    def __post_init__(self):
        fields = _FIELD_RE.findall(self.template)
        dec_fields = _FIELD_RE.findall(self.decoder_template)
        if self.decoder_template:
            if dec_fields != ["y_alt"] or sorted(fields) != ["prompt", "y"]:
                raise ValueError(
                    "InputFormat.decoder_template must hold {y_alt} once (and nothing "
                    "else), the template {prompt} and {y}; got decoder fields "
                    f"{dec_fields} in {self.decoder_template!r}, fields {fields} in "
                    f"{self.template!r}"
                )
            if self.max_decoder_len <= self.max_summary_len:
                raise ValueError(
                    f"InputFormat: max_decoder_len={self.max_decoder_len} must exceed "
                    f"max_summary_len={self.max_summary_len} with a decoder_template"
                )
        elif sorted(fields) not in (["prompt", "y"], ["prompt", "y", "y_alt"]):
            raise ValueError(
                f"InputFormat.template must hold {{prompt}}, {{y}} and optionally {{y_alt}} "
                f"once each; got fields {fields} in {self.template!r}"
            )
        n_encoder = len([f for f in fields if f != "prompt"])
        if self.max_summary_len <= 0 or self.max_input_len <= n_encoder * self.max_summary_len:
            raise ValueError(
                f"InputFormat: max_input_len={self.max_input_len} must exceed {n_encoder} x "
                f"max_summary_len={self.max_summary_len} (> 0)"
            )

    @property
    def kind(self) -> str:
        """"preference" when the template (or decoder template) holds {y_alt}, else
        "reward"."""
        return PREFERENCE if "{y_alt}" in self.template + self.decoder_template else REWARD

    @property
    def decoder_len(self) -> int:
        """L, the decoder columns appended to every encoded row (0: encoder only)."""
        return self.max_decoder_len if self.decoder_template else 0


class Tokenizer:
    """A SentencePiece model, identified by its serialized bytes.

    Accepts a `seqio.SentencePieceVocabulary` (its model file; T5's extra ids come
    after the pieces and do not change the ids of text), a path to a ``.model`` file,
    serialized model bytes, or another `Tokenizer`.
    """

    def __init__(self, vocabulary: Any):
        path = getattr(vocabulary, "sentencepiece_model_file", None)  # seqio
        if isinstance(vocabulary, Tokenizer):
            proto = vocabulary.model_bytes
        elif isinstance(vocabulary, bytes):
            proto = vocabulary
        elif isinstance(vocabulary, (str, os.PathLike)) or path:
            with open(path or vocabulary, "rb") as f:
                proto = f.read()
        elif hasattr(vocabulary, "sp_model"):  # a seqio vocabulary built from bytes
            proto = vocabulary.sp_model
        else:
            raise TypeError(f"not a SentencePiece vocabulary: {type(vocabulary).__name__}")
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        # Re-serialised, so two loads of one model compare equal whatever their source.
        self.model_bytes: bytes = self.sp.serialized_model_proto()

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def same_model(self, other: Any) -> bool:
        """Whether `other` is the same SentencePiece model (compares serialized bytes)."""
        try:
            return Tokenizer(other).model_bytes == self.model_bytes
        except TypeError:
            return False

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in self.sp.encode(list(texts))] if texts else []

    def decode(self, ids: Sequence[int]) -> str:
        """One row of ids -> text, like a seqio vocabulary's `decode`; rows of a batch,
        with their EOS and padding, go through `arrays.decode_tokens`."""
        return self.sp.decode([int(t) for t in ids])

    def piece_id(self, text: str) -> int:
        """The id of the single piece that `text` encodes to.

        Raises:
          ValueError: if it is several pieces or unknown to the vocabulary.
        """
        ids = list(self.sp.encode(text))
        bare = self.sp.piece_to_id("▁")
        if len(ids) > 1 and ids[0] == bare:
            ids = ids[1:]
        if len(ids) != 1 or ids[0] == self.sp.unk_id():
            pieces = self.sp.encode(text, out_type=str)
            raise ValueError(
                f"target token {text!r} is not one known piece of this vocabulary "
                f"(it encodes to {pieces}); choose another InputFormat.target_token"
            )
        return int(ids[0])


class PairEncoder:
    """Writes PM inputs (prompt, y, y') or RM inputs (prompt, y) as token ids.

    Attributes:
      fmt: the `InputFormat`.
      tokenizer: the model's own `Tokenizer`.
      target_token_id: the id scored at the first decoder position.
      truncated: how many inputs had a field cut so far, by field.
    """

    def __init__(self, fmt: InputFormat, tokenizer: Tokenizer):
        self.fmt = fmt
        self.tokenizer = tokenizer
        self.target_token_id = tokenizer.piece_id(fmt.target_token)
        # The template split into literal texts and field names, in order.
        parts = _FIELD_RE.split(fmt.template)
        self._layout: list[tuple[str, Any]] = []
        for i, part in enumerate(parts):
            if i % 2:
                self._layout.append(("field", part))
            elif part.strip():
                self._layout.append(("literal", tokenizer.encode([part])[0]))
        literal = sum(len(v) for k, v in self._layout if k == "literal")
        n_summaries = sum(1 for k, v in self._layout if k == "field" and v != "prompt")
        self._decoder_layout: list[tuple[str, Any]] = []
        for i, part in enumerate(_FIELD_RE.split(fmt.decoder_template)):
            if i % 2:
                self._decoder_layout.append(("field", part))
            elif part.strip():
                self._decoder_layout.append(("literal", tokenizer.encode([part])[0]))
        decoder_literal = sum(len(v) for k, v in self._decoder_layout if k == "literal")
        if fmt.decoder_template and decoder_literal + fmt.max_summary_len > fmt.max_decoder_len:
            raise ValueError(
                f"InputFormat: max_decoder_len={fmt.max_decoder_len} leaves no room for "
                f"{decoder_literal} template tokens and {fmt.max_summary_len} summary tokens"
            )
        if literal + 1 + n_summaries * fmt.max_summary_len >= fmt.max_input_len:
            raise ValueError(
                f"InputFormat: max_input_len={fmt.max_input_len} leaves no room for the "
                f"prompt ({literal} template tokens, {n_summaries} x {fmt.max_summary_len} "
                "summary tokens, EOS)"
            )
        self._literal_len = literal
        self.truncated: dict[str, int] = {"prompt": 0, "y": 0, "y_alt": 0}

    @property
    def kind(self) -> str:
        return self.fmt.kind

    @property
    def decoder_len(self) -> int:
        """Columns at the end of each row that are decoder input (0: none)."""
        return self.fmt.decoder_len

    def encode_ids(
        self, prompt_ids: IdRows, y_ids: IdRows, y_alt_ids: Optional[IdRows] = None
    ) -> np.ndarray:
        """Assembles inputs from fields already tokenised with `self.tokenizer`.

        Args:
          prompt_ids, y_ids, y_alt_ids: B id rows each (EOS and padding are dropped);
            y_alt_ids only for a PM.

        Returns:
          int32 [B, max_input_len], 0-padded, EOS-terminated; with a decoder template
          int32 [B, max_input_len + max_decoder_len], the decoder part (no EOS) last.
        """
        fmt = self.fmt
        if (y_alt_ids is not None) != (fmt.kind == PREFERENCE):
            raise ValueError(f"a {fmt.kind} input takes {'y and y_alt' if fmt.kind == PREFERENCE else 'y only'}")
        n = len(prompt_ids)
        if len(y_ids) != n or (y_alt_ids is not None and len(y_alt_ids) != n):
            raise ValueError("prompts and summaries differ in number")
        out = np.zeros((n, fmt.max_input_len + fmt.decoder_len), np.int32)
        encoder_fields = {v for k, v in self._layout if k == "field"}
        for b in range(n):
            fields = {"prompt": arrays.strip_ids(prompt_ids[b]), "y": arrays.strip_ids(y_ids[b])}
            if y_alt_ids is not None:
                fields["y_alt"] = arrays.strip_ids(y_alt_ids[b])
            for name in ("y", "y_alt"):
                if name in fields and len(fields[name]) > fmt.max_summary_len:
                    fields[name] = fields[name][: fmt.max_summary_len]
                    self.truncated[name] += 1
            room = fmt.max_input_len - 1 - self._literal_len - sum(
                len(v) for k, v in fields.items() if k != "prompt" and k in encoder_fields
            )
            if len(fields["prompt"]) > room:
                fields["prompt"] = fields["prompt"][:room]
                self.truncated["prompt"] += 1
            row: list[int] = []
            for kind, value in self._layout:
                row += value if kind == "literal" else fields[value]
            row.append(types.EOS_ID)
            out[b, : len(row)] = row
            if self._decoder_layout:
                dec: list[int] = []
                for kind, value in self._decoder_layout:
                    dec += value if kind == "literal" else fields[value]
                out[b, fmt.max_input_len : fmt.max_input_len + len(dec)] = dec
        return out

    def encode_texts(
        self, prompts: Sequence[str], ys: Sequence[str], ys_alt: Optional[Sequence[str]] = None
    ) -> np.ndarray:
        """Like `encode_ids`, from texts (summaries are stripped of outer spaces)."""
        tok = self.tokenizer
        y_alt_ids = None if ys_alt is None else tok.encode([s.strip() for s in ys_alt])
        return self.encode_ids(tok.encode(prompts), tok.encode([s.strip() for s in ys]), y_alt_ids)

    def spec(self) -> dict:
        """What `judge.json` records about the input (see `save_judge_spec`)."""
        return {"kind": self.kind, **dataclasses.asdict(self.fmt),
                "target_token_id": self.target_token_id}


def save_judge_spec(model_dir: str, encoder: PairEncoder, **extra) -> str:
    """Writes `<model_dir>/judge.json` and copies the vocabulary next to it.

    The copy makes a model directory self-contained: `load_judge_spec` rebuilds the
    encoder from it alone, wherever the training vocabulary lived.
    """
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, VOCAB_FILE), "wb") as f:
        f.write(encoder.tokenizer.model_bytes)
    spec = {**encoder.spec(), "vocab_file": VOCAB_FILE, **extra}
    path = os.path.join(model_dir, JUDGE_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=2, sort_keys=True)
    shutil.move(tmp, path)
    return path


def load_judge_spec(model_dir: str) -> tuple[dict, PairEncoder]:
    """Reads `judge.json`: (the raw spec, the `PairEncoder` it describes).

    Raises:
      FileNotFoundError: if the directory holds no judge.json.
      ValueError: if the vocabulary's target token id differs from the recorded one.
    """
    path = os.path.join(model_dir, JUDGE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not a preference/reward model directory")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    names = {f.name for f in dataclasses.fields(InputFormat)}
    fmt = InputFormat(**{k: v for k, v in spec.items() if k in names})
    encoder = PairEncoder(fmt, Tokenizer(os.path.join(model_dir, spec["vocab_file"])))
    if encoder.target_token_id != spec["target_token_id"]:
        raise ValueError(f"{path}: target token id {spec['target_token_id']} recorded, "
                         f"{encoder.target_token_id} found in the vocabulary")
    return spec, encoder


# ----------------------------------------------------------------------- datasets


@dataclasses.dataclass(frozen=True)
class ComparisonData:
    """Where a PM/RM run reads its comparisons (OpenAI format) and vocabulary.

    Attributes:
      train: file, directory or glob of comparison JSONL.
      vocab_path: the SentencePiece model the network's embedding was trained with.
      eval: evaluation comparisons (None: no evaluation).
      train_splits, eval_splits: keep only these `split` values (e.g. ("train",),
        ("valid2",) for the OpenAI files); None keeps every line.
      world_dir: a generated world: adds the ground-truth P*(y > y') of every pair
        (feature `p_star`), for the metrics against P*.
      labels: "choice" (the human label, 1 if summaries[0] is preferred) or "p_star"
        (soft labels P* from the world; needs world_dir).
      max_train_examples: use at most this many training comparisons (the first rows).
      keep_last_train: also use the last this-many rows of the training file whatever
        the cap (a world's style comparisons, appended last; see `world_data`).
      skip_invalid: skip bad JSONL lines (counted) instead of failing.
    """

    train: str
    vocab_path: str
    eval: Optional[str] = None
    train_splits: Optional[tuple[str, ...]] = None
    eval_splits: Optional[tuple[str, ...]] = None
    world_dir: Optional[str] = None
    labels: str = "choice"
    max_train_examples: Optional[int] = None
    keep_last_train: int = 0
    skip_invalid: bool = False

    def __post_init__(self):
        if self.keep_last_train < 0:
            raise ValueError(f"ComparisonData.keep_last_train={self.keep_last_train} must be >= 0")
        if self.labels not in ("choice", "p_star"):
            raise ValueError(f"ComparisonData.labels={self.labels!r}; expected choice or p_star")
        if self.labels == "p_star" and not self.world_dir:
            raise ValueError("ComparisonData.labels='p_star' needs world_dir")


def world_data(
    data_dir: Optional[str] = None, seed: int = 0, labels: str = "choice",
    max_train_examples: Optional[int] = None, style_comparisons: bool = True,
) -> ComparisonData:
    """The embedded world's comparisons (generated on first use): train, valid, vocab.

    Args:
      data_dir: the world directory (None: `generator.default_data_dir(seed)`).
      seed: the world's seed (default config otherwise).
      labels: see `ComparisonData`.
      max_train_examples: use at most this many of the world's regular train comparisons
        (the first rows of train.jsonl); None: all of them; 0: only the style
        comparisons (the PM style fine-tune, configs/experiments/world_pm_style.gin).
      style_comparisons: also use the world's `WorldConfig.n_style_comparisons` rows
        (appended after the regular ones), whatever `max_train_examples` is. False: a
        prefix of the file only, which leaves them out under a cap (logged).
    """
    from nlhf_jax.data.world import generator

    data_dir = generator.world_dir(data_dir, seed)
    config = generator.load_config(data_dir)
    n_style = config.n_style_comparisons
    if max_train_examples == 0 and not (style_comparisons and n_style):
        raise ValueError(
            f"{data_dir}: max_train_examples=0 keeps only the style comparisons, but "
            + ("style_comparisons=False" if n_style else "this world has none (n_style_comparisons=0 "
               "in its world.json; generate one with `nlhf world --generate --n-style-comparisons N`)"))
    if not style_comparisons or max_train_examples is None or not n_style:
        _warn_dropped_style_comparisons(data_dir, config, max_train_examples)
        keep_last = 0
    else:
        # The regular rows are capped, the style rows (the file's last) kept in full.
        max_train_examples = min(max_train_examples, config.n_comparisons[0])
        keep_last = n_style
    return ComparisonData(
        train=generator.split_path(data_dir, "comparisons", "train"),
        eval=generator.split_path(data_dir, "comparisons", "valid"),
        vocab_path=generator.vocab_path(data_dir),
        world_dir=data_dir, labels=labels, max_train_examples=max_train_examples,
        keep_last_train=keep_last,
    )  # fmt: skip


def _warn_dropped_style_comparisons(data_dir: str, config, max_train_examples: Optional[int]) -> None:
    """Warns when a cap on the training comparisons cuts off a world's style comparisons.

    `WorldConfig.n_style_comparisons` rows come after the others in train.jsonl, and a
    prefix cap below the file's length drops them first.
    """
    if max_train_examples is None:
        return
    regular = config.n_comparisons[0]
    if config.n_style_comparisons and max_train_examples < regular + config.n_style_comparisons:
        kept = max(0, max_train_examples - regular)
        logging.warning(
            "%s: max_train_examples=%d keeps the first %d train comparisons; %d of the world's "
            "%d style comparisons (the last rows of train.jsonl) are left out",
            data_dir, max_train_examples, max_train_examples,
            config.n_style_comparisons - kept, config.n_style_comparisons,
        )  # fmt: skip


@dataclasses.dataclass
class ComparisonTexts:
    """Comparisons as texts: B pairs with labels.

    Attributes:
      prompts: the TL;DR prompt of each post (what the policy sees).
      posts: the post bodies (what the world's raters read).
      ys, ys_alt: summaries[0] and summaries[1].
      labels: float64 [B], P(y preferred): 1 - choice, or P* (soft labels).
      p_star: float64 [B] ground truth P*(y > y'), or None off the world.
      ids: post ids.
    """

    prompts: list[str]
    posts: list[str]
    ys: list[str]
    ys_alt: list[str]
    labels: np.ndarray
    p_star: Optional[np.ndarray]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ys)


def read_comparison_texts(
    path: str,
    *,
    splits: Optional[Sequence[str]] = None,
    world_dir: Optional[str] = None,
    labels: str = "choice",
    max_examples: Optional[int] = None,
    keep_last: int = 0,
    skip_invalid: bool = False,
) -> ComparisonTexts:
    """Reads OpenAI-format comparisons into `ComparisonTexts` (see `ComparisonData`):
    the first `max_examples` records (all when None) and, after them, the last
    `keep_last` records not already taken, in file order."""
    records, _ = jsonl.read_comparisons(path, splits=splits, skip_invalid=skip_invalid)
    if max_examples is not None:
        head = min(max_examples, len(records))
        tail = max(head, len(records) - keep_last)
        records = records[:head] + records[tail:]
    if not records:
        raise ValueError(f"{path}: no comparisons (splits={splits})")
    texts = ComparisonTexts(
        prompts=[templates.post_prompt(r) for r in records],
        posts=[r["post"] for r in records],
        ys=[r["summary_0"] for r in records],
        ys_alt=[r["summary_1"] for r in records],
        labels=1.0 - np.asarray([r["choice"] for r in records], np.float64),
        p_star=None,
        ids=[r["id"] for r in records],
    )
    if world_dir:
        from nlhf_jax.data.world import raters

        panel = raters.RaterPanel.for_world(world_dir)
        texts.p_star = np.asarray(panel.prob(texts.posts, texts.ys, texts.ys_alt))
        if labels == "p_star":
            texts.labels = texts.p_star.copy()
    return texts


def preference_features(encoder: PairEncoder, texts: ComparisonTexts) -> dict[str, np.ndarray]:
    """PM features: `inputs` (x, y, y') and `inputs_swapped` (x, y', y), int32 [B, K];
    `labels` float32 [B] = P(y preferred); `p_star` float32 [B] on the world."""
    tok = encoder.tokenizer
    prompts = tok.encode(texts.prompts)
    ys, ys_alt = tok.encode([s.strip() for s in texts.ys]), tok.encode([s.strip() for s in texts.ys_alt])
    feats = {
        "inputs": encoder.encode_ids(prompts, ys, ys_alt),
        "inputs_swapped": encoder.encode_ids(prompts, ys_alt, ys),
        "labels": texts.labels.astype(np.float32),
    }
    if texts.p_star is not None:
        feats["p_star"] = texts.p_star.astype(np.float32)
    return feats


def reward_features(encoder: PairEncoder, texts: ComparisonTexts) -> dict[str, np.ndarray]:
    """RM features: `inputs` (x, y) and `inputs_alt` (x, y'), int32 [B, K]; `labels`
    and (on the world) `p_star` as in `preference_features`."""
    tok = encoder.tokenizer
    prompts = tok.encode(texts.prompts)
    feats = {
        "inputs": encoder.encode_ids(prompts, tok.encode([s.strip() for s in texts.ys])),
        "inputs_alt": encoder.encode_ids(prompts, tok.encode([s.strip() for s in texts.ys_alt])),
        "labels": texts.labels.astype(np.float32),
    }
    if texts.p_star is not None:
        feats["p_star"] = texts.p_star.astype(np.float32)
    return feats


def comparison_dataset(
    encoder: PairEncoder, texts: ComparisonTexts, name: str = "comparisons"
) -> input_pipeline.ArrayDataset:
    """The PM or RM features of `texts` (by `encoder.kind`), texts kept in `.meta`."""
    before = dict(encoder.truncated)
    build = preference_features if encoder.kind == PREFERENCE else reward_features
    ds = input_pipeline.ArrayDataset(build(encoder, texts), name=name)
    cut = {k: encoder.truncated[k] - before[k] for k in before if encoder.truncated[k] > before[k]}
    if cut:
        logging.warning("%s: inputs truncated by the documented rule (field: count) %s "
                        "out of %d pairs", name, cut, len(texts))  # fmt: skip
    ds.meta = {"texts": texts, "truncated": cut}
    return ds
