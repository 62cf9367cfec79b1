"""Summary styles and quality variants: how reference summaries are written.

Why this module exists: the world's rater population disagrees about *styles* (that is
where the preference cycle and the Condorcet-versus-Bradley-Terry gap live) and agrees
about *quality* (faithful, covers the main point). Reference summaries are therefore
written as the product of a style and a quality variant, in configurable proportions;
the same code writes the SFT targets, both sides of the comparison pairs, and the
per-type samples from which `game.py` computes the style-level game.

Styles (the classifier in `parser.py` recovers them from the surface form alone):

* ``concise``: the main point in one clause (``my sister lost the job last week .``);
* ``exhaustive``: every fact, one clause each, joined by commas and ``and``;
* ``feelings_first``: opens with the feeling (``anxious because my sister lost ...``);
* ``chronological``: two or three facts in time order, ``first ... , then ...``.

Quality variants:

* ``faithful``: every content word is supported by the post and the main point is in;
* ``misses_main``: the main fact is left out (another fact takes its place);
* ``hallucinated``: the main point is in, but a fact that is not in the post (an unused
  person doing an unused event) is added or swapped in;
* ``garbled``: the main point is in, but one clause takes its person or its event from
  another clause (one repeated content word) or from nowhere in the post (one
  unsupported word). These are the errors a small trained summariser makes when it
  copies the wrong part of a clause, and RL policies trained against learned judges
  drift into them (the judges never saw one). References never garble; the noisier
  comparison source does when `WorldConfig.noisy_quality_mix` gives them weight (zero by
  default: see the README for what they did to the demo's judges).
"""

import dataclasses
from typing import Sequence

import numpy as np

from nlhf_jax.data.world import grammar

STYLES: tuple[str, ...] = ("concise", "exhaustive", "feelings_first", "chronological")
# Index returned by the classifier for text with no content word at all (empty text,
# garbage): not a style a reference ever has, but one every rater dislikes.
NONE_STYLE = len(STYLES)
STYLE_NAMES: tuple[str, ...] = STYLES + ("none",)
QUALITIES: tuple[str, ...] = ("faithful", "misses_main", "hallucinated", "garbled")
FAITHFUL, MISSES_MAIN, HALLUCINATED, GARBLED = 0, 1, 2, 3
MAX_SUMMARY_WORDS = 24  # alphabetic words; references never exceed it
SEQUENCE_MARKERS = ("first", "then", "finally")
FEELING_OPENERS = (("{f}", "because"), ("feeling", "{f}", ":"), ("{f}", ","))


def _invented_fact(rng: np.random.Generator, post: grammar.Post, time: int = 0) -> grammar.Fact:
    """A person the post does not mention doing an event the post does not mention.

    Two unsupported content words, whatever the style; `time` (a rank in
    `grammar.TIMES`) is only rendered by the chronological style, which passes a time
    the post does contain.
    """
    used_people = {f.person for f in post.facts}
    used_events = {f.event for f in post.facts}
    people = [i for i in range(len(grammar.PEOPLE)) if i not in used_people]
    events = [i for i in range(len(grammar.EVENTS)) if i not in used_events]
    return grammar.Fact(
        person=people[int(rng.integers(len(people)))],
        event=events[int(rng.integers(len(events)))],
        place=None,
        time=time,
        feeling=None,
    )


def _garbled_fact(
    rng: np.random.Generator, post: grammar.Post, fact: grammar.Fact, shown: Sequence[grammar.Fact]
) -> grammar.Fact:
    """`fact` with its person or its event swapped for another one.

    Half the time the replacement comes from another fact in `shown` (the summary then
    repeats that content word), otherwise from the inventory words the post does not
    use (one unsupported word). Callers never pass the main fact with an event swap, so
    the main point stays covered.
    """
    field = "person" if rng.random() < 0.5 else "event"
    others = [f for f in shown if getattr(f, field) != getattr(fact, field)]
    if others and rng.random() < 0.5:
        source = others[int(rng.integers(len(others)))]
        return dataclasses.replace(fact, **{field: getattr(source, field)})
    used = {getattr(f, field) for f in post.facts}
    size = len(grammar.PEOPLE) if field == "person" else len(grammar.EVENTS)
    free = [i for i in range(size) if i not in used]
    return dataclasses.replace(fact, **{field: free[int(rng.integers(len(free)))]})


def _garbled_main(
    rng: np.random.Generator, post: grammar.Post, main: grammar.Fact, quality: int
) -> tuple:
    """For one-clause styles: (the main fact, an extra clause or None), garbled when
    `quality` is `GARBLED` (otherwise `main` and None, drawing nothing).

    Either the main fact's person becomes one the post does not use (one unsupported
    word), or a side fact's person is said to do the main event too (the event keyword
    repeats).
    """
    if quality != GARBLED:
        return main, None
    side = post.facts[_others(post)[int(rng.integers(3))]]
    if rng.random() < 0.5:
        used = {f.person for f in post.facts}
        free = [i for i in range(len(grammar.PEOPLE)) if i not in used]
        return dataclasses.replace(main, person=free[int(rng.integers(len(free)))]), None
    return main, dataclasses.replace(side, event=main.event, place=None)


def _one_clause_end(rng, post, quality, words: list[str], extra) -> list[str]:
    """The end of a one-clause style: `words`, then a hallucinated summary's invented
    fact and a garbled one's extra clause (`_garbled_main`), then the full stop."""
    if quality == HALLUCINATED:
        words += ["and"] + _invented_fact(rng, post).clause()
    if extra is not None:
        words += ["and"] + extra.clause()
    return words + ["."]


def _n_words(words: Sequence[str]) -> int:
    return sum(w.isalpha() for w in words)


def _others(post: grammar.Post) -> list[int]:
    return [i for i in range(len(post.facts)) if i != post.main]


def _concise(rng, post, quality) -> list[str]:
    others = _others(post)
    focus = post.facts[post.main if quality != MISSES_MAIN else others[int(rng.integers(3))]]
    focus, extra = _garbled_main(rng, post, focus, quality)
    words = focus.clause(with_place=rng.random() < 0.2, with_time=rng.random() < 0.4)
    return _one_clause_end(rng, post, quality, words, extra)


def _exhaustive(rng, post, quality) -> list[str]:
    facts = list(post.facts)
    if quality == MISSES_MAIN:
        del facts[post.main]
    elif quality == HALLUCINATED:  # swap one side fact for an invented one
        facts[_others(post)[int(rng.integers(3))]] = _invented_fact(rng, post)
    elif quality == GARBLED:
        i = _others(post)[int(rng.integers(3))]
        facts[i] = _garbled_fact(rng, post, facts[i], facts)
    words: list[str] = []
    for i, fact in enumerate(facts):
        if i:
            words.append("and" if i == len(facts) - 1 else ",")
        words += fact.clause()
    return words + ["."]


def _feelings_first(rng, post, quality) -> list[str]:
    main = post.facts[post.main]
    focus = main
    if quality == MISSES_MAIN:  # the feeling is real, but tied to the wrong event
        focus = post.facts[_others(post)[int(rng.integers(3))]]
    feeling = grammar.FEELINGS[focus.feeling if focus.feeling is not None else main.feeling]
    opener = FEELING_OPENERS[int(rng.integers(len(FEELING_OPENERS)))]
    focus, extra = _garbled_main(rng, post, focus, quality)
    words = [feeling if w == "{f}" else w for w in opener] + focus.clause()
    return _one_clause_end(rng, post, quality, words, extra)


def _chronological(rng, post, quality) -> list[str]:
    others = _others(post)
    order = [int(i) for i in rng.permutation(others)]
    if quality == MISSES_MAIN:
        chosen = [post.facts[i] for i in order[:3]]
    else:
        chosen = [post.facts[post.main]] + [post.facts[i] for i in order[:2]]
        if quality == HALLUCINATED:
            # It replaces side fact order[0] and borrows that fact's (supported) time.
            chosen[1] = _invented_fact(rng, post, time=post.facts[order[0]].time)
    chosen = chosen[: 2 + int(rng.random() < 0.5)]  # the first two always stay
    if quality == GARBLED:  # chosen[1] is a side fact; only the first two always stay
        chosen[1] = _garbled_fact(rng, post, chosen[1], chosen[:2])
    while True:
        story = sorted(chosen, key=lambda f: f.time)
        words: list[str] = []
        for i, fact in enumerate(story):
            if i:
                words.append(",")
            words.append(SEQUENCE_MARKERS[i])
            words += fact.clause(with_time=True)
        words.append(".")
        if _n_words(words) <= MAX_SUMMARY_WORDS or len(chosen) == 2:
            return words
        chosen = chosen[:2]


_RENDERERS = (_concise, _exhaustive, _feelings_first, _chronological)


def render_summary(rng: np.random.Generator, post: grammar.Post, style: int, quality: int) -> str:
    """Writes one reference summary of `post` in the given style and quality.

    Args:
      rng: the generator.
      post: the post to summarise (with its facts and main point).
      style: index into `STYLES`.
      quality: index into `QUALITIES`.

    Returns:
      The summary text (at most `MAX_SUMMARY_WORDS` alphabetic words).
    """
    words = _RENDERERS[style](rng, post, quality)
    if _n_words(words) > MAX_SUMMARY_WORDS:
        raise AssertionError(f"summary too long: {' '.join(words)!r}")
    return " ".join(words)


def sample_summary(
    rng: np.random.Generator,
    post: grammar.Post,
    style_mix: Sequence[float],
    quality_mix: Sequence[float],
) -> tuple[str, int, int]:
    """Draws a style and a quality from the mixes, then writes the summary.

    Args:
      rng: the generator.
      post: the post.
      style_mix: probabilities over `STYLES`, shape [4].
      quality_mix: probabilities over `QUALITIES`, shape [4].

    Returns:
      (text, style index, quality index).
    """
    style = int(rng.choice(len(STYLES), p=np.asarray(style_mix)))
    quality = int(rng.choice(len(QUALITIES), p=np.asarray(quality_mix)))
    return render_summary(rng, post, style, quality), style, quality
