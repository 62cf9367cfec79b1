"""Feature parser: what the raters see in a (post, summary) pair.

Why this module exists: the ground-truth judge P* must score *any* decoded text,
including the empty string and the garbage an untrained policy emits, with no model in
the loop. Everything the raters use is computed here by exact string rules, so the
judge is cheap, deterministic and auditable.

A post is parsed once into a `PostInfo` (its facts, their keywords and times, the main
point, the set of content words it supports). A summary is then reduced to a handful
of integers against that `PostInfo`; `featurize` does a batch and returns numpy arrays.

Rules (all on lowercase tokens; a token is a run of letters/digits or one other
non-space character):

* a fact is *covered* when its event keyword appears in the summary;
* a content word (person, event keyword, place keyword, time keyword, feeling) is
  *unsupported* when the post does not contain it: each distinct one counts once;
* *repeats* count content-word mentions beyond the first of each word;
* *unknown* counts tokens outside the world's vocabulary;
* the *style* comes from the surface form only (see `classify_style`).
"""

import dataclasses
import functools
import re
from typing import Sequence, Union

import numpy as np

from nlhf_jax.data.world import grammar, styles

_TOKEN_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
_SENTENCE_END = frozenset({".", "?", "!"})
_KNOWN_TOKENS = frozenset(grammar.vocabulary_words())


def tokenize(text: str) -> list[str]:
    """Lowercases and splits into word and punctuation tokens."""
    return _TOKEN_RE.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class PostInfo:
    """What the parser reads from a post.

    Attributes:
      keywords: event keyword of each fact, in telling order; at most
        `grammar.MAX_FACTS` (later ones are ignored).
      times: chronological rank of each fact's time (-1 if the post gives none).
      main: index into `keywords` of the main point (-1 if the post has no fact).
      supported: every content word that occurs in the post.
    """

    keywords: tuple[str, ...]
    times: tuple[int, ...]
    main: int
    supported: frozenset[str]


@functools.lru_cache(maxsize=65536)
def parse_post(text: str) -> PostInfo:
    """Parses a post (world-generated or not) into its facts and main point.

    Each sentence that introduces a new event keyword opens a fact; a time keyword in
    the same sentence dates it. The main point is the event named in the last question
    of the post (the world's posts end by asking about it); failing that, the first fact.

    Args:
      text: the post body.

    Returns:
      The parsed `PostInfo`.
    """
    tokens = tokenize(text)
    keywords: list[str] = []
    times: list[int] = []
    main_keyword = None
    sentence: list[str] = []
    for token in tokens + ["."]:
        if token not in _SENTENCE_END:
            sentence.append(token)
            continue
        events = [w for w in sentence if grammar.CONTENT_CATEGORY.get(w) == grammar.EVENT]
        when = [grammar.TIME_IDS[w] for w in sentence if w in grammar.TIME_IDS]
        for event in events:
            if event not in keywords and len(keywords) < grammar.MAX_FACTS:
                keywords.append(event)
                times.append(when[0] if when else -1)
        if token == "?" and events:
            main_keyword = events[-1]
        sentence = []
    supported = frozenset(w for w in tokens if w in grammar.CONTENT_CATEGORY)
    if main_keyword in keywords:
        main = keywords.index(main_keyword)
    else:
        main = 0 if keywords else -1
    return PostInfo(tuple(keywords), tuple(times), main, supported)


def classify_style(tokens: Sequence[str]) -> int:
    """Style of a summary from its surface form alone.

    Rules, first match wins: no content word at all -> ``none``; the first content
    word is a feeling -> ``feelings_first``; two or more sequence markers (first /
    then / finally) -> ``chronological``; three or more distinct event keywords ->
    ``exhaustive``; anything else -> ``concise``.

    Args:
      tokens: output of `tokenize`.

    Returns:
      An index into `styles.STYLE_NAMES`.
    """
    content = [w for w in tokens if w in grammar.CONTENT_CATEGORY]
    if not content:
        return styles.NONE_STYLE
    if grammar.CONTENT_CATEGORY[content[0]] == grammar.FEELING:
        return styles.STYLES.index("feelings_first")
    if sum(w in styles.SEQUENCE_MARKERS for w in tokens) >= 2:
        return styles.STYLES.index("chronological")
    events = {w for w in content if grammar.CONTENT_CATEGORY[w] == grammar.EVENT}
    if len(events) >= 3:
        return styles.STYLES.index("exhaustive")
    return styles.STYLES.index("concise")


def style_of(texts: Sequence[str]) -> np.ndarray:
    """Classifies a batch of summaries.

    Args:
      texts: B summaries (any strings).

    Returns:
      int32 [B] indices into `styles.STYLE_NAMES` (4 = ``none``).
    """
    return np.asarray([classify_style(tokenize(t)) for t in texts], dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class SummaryFeatures:
    """Per-summary features of a batch, all numpy arrays with leading dim B.

    Attributes:
      covered: bool [B, MAX_FACTS]; fact i of the post is mentioned (False beyond
        the post's facts).
      main_point: bool [B]; the main fact is covered.
      unsupported: int32 [B]; distinct content words absent from the post.
      n_words: int32 [B]; alphabetic/numeric tokens.
      repeats: int32 [B]; content-word mentions beyond the first.
      unknown: int32 [B]; tokens outside the world vocabulary.
      style: int32 [B]; index into `styles.STYLE_NAMES`.
    """

    covered: np.ndarray
    main_point: np.ndarray
    unsupported: np.ndarray
    n_words: np.ndarray
    repeats: np.ndarray
    unknown: np.ndarray
    style: np.ndarray

    def __len__(self) -> int:
        return int(self.style.shape[0])


PostLike = Union[str, PostInfo]


def _one(info: PostInfo, text: str) -> tuple:
    tokens = tokenize(text)
    content = [w for w in tokens if w in grammar.CONTENT_CATEGORY]
    present = set(content)
    covered = [k in present for k in info.keywords]
    covered += [False] * (grammar.MAX_FACTS - len(covered))
    main_point = info.main >= 0 and covered[info.main]
    return (
        covered,
        main_point,
        len(present - info.supported),
        sum(t[0].isalnum() for t in tokens),
        len(content) - len(present),
        sum(t not in _KNOWN_TOKENS for t in tokens),
        classify_style(tokens),
    )


def featurize(posts: Sequence[PostLike], summaries: Sequence[str]) -> SummaryFeatures:
    """Features of B summaries, each against its own post.

    Args:
      posts: B posts, as text (parsed and cached) or `PostInfo`.
      summaries: B summaries (any strings, including empty or garbage).

    Returns:
      `SummaryFeatures` with arrays of leading dimension B.

    Raises:
      ValueError: if the two sequences differ in length.
    """
    if len(posts) != len(summaries):
        raise ValueError(f"{len(posts)} posts but {len(summaries)} summaries")
    rows = [
        _one(p if isinstance(p, PostInfo) else parse_post(p), s)
        for p, s in zip(posts, summaries)
    ]
    cols = list(zip(*rows)) if rows else [()] * 7
    return SummaryFeatures(
        covered=np.asarray(cols[0], dtype=bool).reshape(len(rows), grammar.MAX_FACTS),
        main_point=np.asarray(cols[1], dtype=bool),
        unsupported=np.asarray(cols[2], dtype=np.int32),
        n_words=np.asarray(cols[3], dtype=np.int32),
        repeats=np.asarray(cols[4], dtype=np.int32),
        unknown=np.asarray(cols[5], dtype=np.int32),
        style=np.asarray(cols[6], dtype=np.int32),
    )
