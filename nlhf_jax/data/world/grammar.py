"""The grammar of the embedded world: word inventories, facts and posts.

Why this module exists: the embedded world needs Reddit-like posts whose content is
known exactly, so that a parser can later decide, for any text, which facts it
mentions and which it invents. Every post is built from a handful of *facts*
(person, event, optional place, time, optional feeling). Every content word belongs to
exactly one inventory and, inside one post, to exactly one fact, so the mapping from
surface words back to facts is unambiguous (see `parser.py`).

Surface conventions (kept by the generator and relied upon by the parser):

* text is lowercase, words and punctuation are separated by single spaces;
* each event has a unique *keyword* noun (``job``, ``car``...); each place and time
  phrase ends in / contains a unique keyword (``gym``, ``monday``...);
* inside a post, persons, events, places, times and feelings are all distinct;
* the post ends with a question that names the main event's keyword: that is how the
  main point is marked (the title names it too).
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np

# ----------------------------------------------------------------------------------
# Inventories. Order matters only for TIMES (it is the chronological order).
# ----------------------------------------------------------------------------------

PEOPLE: tuple[str, ...] = (
    "sister", "brother", "mom", "dad", "boss", "roommate", "girlfriend", "boyfriend",
    "wife", "husband", "neighbor", "coworker", "cousin", "uncle", "aunt", "grandma",
    "grandpa", "friend", "landlord", "teacher", "coach", "son", "daughter", "nephew",
    "niece", "manager", "partner", "classmate",
)  # fmt: skip

# (verb, determiner, keyword noun). Keyword nouns are unique; verbs may repeat.
EVENTS: tuple[tuple[str, str, str], ...] = (
    ("lost", "the", "job"), ("broke", "a", "leg"), ("crashed", "the", "car"),
    ("adopted", "a", "puppy"), ("failed", "the", "exam"), ("won", "the", "lottery"),
    ("started", "a", "band"), ("sold", "the", "house"), ("cancelled", "the", "wedding"),
    ("forgot", "my", "birthday"), ("stole", "my", "bike"), ("quit", "the", "team"),
    ("bought", "a", "boat"), ("ruined", "the", "dinner"), ("missed", "the", "flight"),
    ("flooded", "the", "apartment"), ("borrowed", "my", "laptop"), ("read", "my", "diary"),
    ("painted", "the", "fence"), ("opened", "a", "bakery"), ("planned", "a", "trip"),
    ("found", "a", "wallet"), ("burned", "the", "cake"), ("cheated", "on", "taxes"),
    ("joined", "a", "cult"), ("wrecked", "the", "kitchen"), ("got", "a", "tattoo"),
    ("hid", "the", "letter"), ("dropped", "my", "phone"), ("broke", "the", "window"),
    ("skipped", "the", "funeral"), ("moved", "the", "piano"), ("sued", "the", "company"),
    ("ate", "my", "lunch"), ("adopted", "a", "kitten"), ("lost", "the", "ring"),
)  # fmt: skip

# (preposition, [determiner], keyword). The keyword is the last word.
PLACES: tuple[tuple[str, ...], ...] = (
    ("at", "the", "gym"), ("at", "the", "beach"), ("at", "the", "office"),
    ("at", "the", "airport"), ("at", "the", "mall"), ("in", "the", "park"),
    ("at", "the", "hospital"), ("at", "the", "church"), ("at", "the", "bar"),
    ("at", "the", "library"), ("at", "the", "station"), ("in", "the", "garage"),
    ("at", "the", "lake"), ("at", "the", "market"), ("at", "the", "stadium"),
    ("at", "the", "hotel"), ("at", "the", "zoo"), ("at", "the", "cafe"),
    ("in", "paris"), ("in", "texas"), ("in", "ohio"), ("in", "london"),
)  # fmt: skip

# Time phrases in chronological order (earliest first) and their keyword.
TIMES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("last", "year"), "year"), (("in", "march"), "march"), (("in", "june"), "june"),
    (("last", "month"), "month"), (("two", "weeks", "ago"), "weeks"),
    (("last", "week"), "week"), (("on", "monday"), "monday"),
    (("on", "tuesday"), "tuesday"), (("on", "wednesday"), "wednesday"),
    (("on", "thursday"), "thursday"), (("on", "friday"), "friday"),
    (("on", "saturday"), "saturday"), (("yesterday",), "yesterday"),
    (("last", "night"), "night"), (("this", "morning"), "morning"),
    (("today",), "today"),
)  # fmt: skip

FEELINGS: tuple[str, ...] = (
    "angry", "anxious", "happy", "sad", "confused", "excited", "guilty", "jealous",
    "relieved", "scared", "lonely", "proud", "embarrassed", "frustrated", "hopeful",
    "betrayed", "nervous", "grateful", "upset", "overwhelmed", "hurt", "furious",
)  # fmt: skip

SUBREDDITS: tuple[str, ...] = (
    "relationships", "tifu", "advice", "family", "work", "offmychest", "legaladvice",
    "amitheasshole",
)  # fmt: skip

# Sentences that carry no content unit (no inventory word): noise in posts.
FILLERS: tuple[tuple[str, ...], ...] = (
    ("sorry", "for", "the", "long", "post", "."),
    ("on", "mobile", ",", "sorry", "."),
    ("throwaway", "account", "for", "obvious", "reasons", "."),
    ("some", "context", "here", "."),
    ("this", "is", "really", "weird", "for", "me", "."),
)  # fmt: skip

FEELING_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("i", "felt", "{f}", "about", "it", "."),
    ("i", "am", "so", "{f}", "."),
    ("that", "made", "me", "{f}", "."),
)  # fmt: skip

QUESTION_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("what", "should", "i", "do", "about", "the", "{n}", "?"),
    ("how", "do", "i", "deal", "with", "the", "{n}", "?"),
    ("am", "i", "wrong", "to", "care", "about", "the", "{n}", "?"),
)  # fmt: skip

TITLE_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("my", "{p}", "{v}", "{d}", "{n}"),
    ("need", "advice", "about", "the", "{n}"),
    ("the", "{n}", "situation"),
)  # fmt: skip

# Words used by summaries (connectives, style markers) that posts may not contain.
SUMMARY_WORDS: tuple[str, ...] = (
    "because", "feeling", "first", "then", "finally", "and", ",", ":",
)  # fmt: skip

MAX_FACTS = 4  # facts per post; also the width of per-fact feature arrays
MAX_POST_WORDS = 64  # whitespace tokens (words and punctuation) in a post
PERSON_IDS = {w: i for i, w in enumerate(PEOPLE)}
EVENT_IDS = {e[2]: i for i, e in enumerate(EVENTS)}
PLACE_IDS = {p[-1]: i for i, p in enumerate(PLACES)}
TIME_IDS = {t[1]: i for i, t in enumerate(TIMES)}
FEELING_IDS = {w: i for i, w in enumerate(FEELINGS)}

# Category of every content word: the parser reads content through this table.
PERSON, EVENT, PLACE, TIME, FEELING = "person", "event", "place", "time", "feeling"
CONTENT_CATEGORY: dict[str, str] = {
    **{w: PERSON for w in PEOPLE},
    **{w: EVENT for w in EVENT_IDS},
    **{w: PLACE for w in PLACE_IDS},
    **{w: TIME for w in TIME_IDS},
    **{w: FEELING for w in FEELINGS},
}


@dataclasses.dataclass(frozen=True)
class Fact:
    """One fact of a post; fields are indices into the inventories."""

    person: int
    event: int
    place: Optional[int]  # None: the post does not say where
    time: int  # index into TIMES, i.e. its chronological rank
    feeling: Optional[int]  # None: the post gives no feeling for this fact

    @property
    def keyword(self) -> str:
        """The event's keyword noun: the word that marks this fact as covered."""
        return EVENTS[self.event][2]

    def clause(self, *, with_place: bool = False, with_time: bool = False) -> list[str]:
        """Words of 'my PERSON VERB DET NOUN [PLACE] [TIME]'."""
        verb, det, noun = EVENTS[self.event]
        words = ["my", PEOPLE[self.person], verb, det, noun]
        if with_place and self.place is not None:
            words += list(PLACES[self.place])
        if with_time:
            words += list(TIMES[self.time][0])
        return words


@dataclasses.dataclass(frozen=True)
class Post:
    """A generated post. `facts[main]` is the main point."""

    id: str
    subreddit: str
    title: str
    text: str
    facts: tuple[Fact, ...]
    main: int


def _choice(rng: np.random.Generator, n: int, k: int) -> list[int]:
    return [int(i) for i in rng.choice(n, size=k, replace=False)]


def sample_facts(rng: np.random.Generator, n_facts: int = MAX_FACTS) -> tuple[Fact, ...]:
    """Draws `n_facts` facts with all-distinct content words.

    Args:
      rng: the generator; consumed deterministically.
      n_facts: number of facts.

    Returns:
      The facts, in the order the post will tell them (not chronological).
    """
    people = _choice(rng, len(PEOPLE), n_facts)
    events = _choice(rng, len(EVENTS), n_facts)
    places = _choice(rng, len(PLACES), n_facts)
    times = _choice(rng, len(TIMES), n_facts)
    feelings = _choice(rng, len(FEELINGS), n_facts)
    has_place = rng.random(n_facts) < 0.6
    has_feeling = rng.random(n_facts) < 0.35
    return tuple(
        Fact(
            person=people[i],
            event=events[i],
            place=places[i] if has_place[i] else None,
            time=times[i],
            feeling=feelings[i] if has_feeling[i] else None,
        )
        for i in range(n_facts)
    )


def _fill(template: Sequence[str], **values: str) -> list[str]:
    return [values[w[1:-1]] if w.startswith("{") else w for w in template]


def render_post(
    rng: np.random.Generator, facts: Sequence[Fact], main: int
) -> tuple[str, str, str, tuple[Fact, ...]]:
    """Writes (subreddit, title, text) for the given facts.

    The main fact always carries a feeling sentence and is named by the closing
    question; optional details (filler, places, side feelings) are dropped, in that
    order, until the text fits in `MAX_POST_WORDS` tokens.

    Args:
      rng: the generator.
      facts: the facts, in telling order.
      main: index of the main fact.

    Returns:
      (subreddit, title, text, facts as told: dropped details set to None).
    """
    main_fact = facts[main]
    if main_fact.feeling is None:
        raise ValueError("the main fact must carry a feeling")
    time_first = rng.random(len(facts)) < 0.3
    feeling_tpl = [int(rng.integers(len(FEELING_TEMPLATES))) for _ in facts]
    filler = FILLERS[int(rng.integers(len(FILLERS)))] if rng.random() < 0.4 else ()
    question = QUESTION_TEMPLATES[int(rng.integers(len(QUESTION_TEMPLATES)))]
    title_tpl = TITLE_TEMPLATES[int(rng.integers(len(TITLE_TEMPLATES)))]
    subreddit = SUBREDDITS[int(rng.integers(len(SUBREDDITS)))]

    def build(keep_places: bool, keep_filler: bool, keep_side_feelings: bool) -> list[str]:
        words: list[str] = list(filler) if keep_filler else []
        for i, fact in enumerate(facts):
            clause = fact.clause(with_place=keep_places)
            when = list(TIMES[fact.time][0])
            words += (when + clause if time_first[i] else clause + when) + ["."]
            if fact.feeling is not None and (i == main or keep_side_feelings):
                words += _fill(FEELING_TEMPLATES[feeling_tpl[i]], f=FEELINGS[fact.feeling])
        return words + _fill(question, n=main_fact.keyword)

    for keep_places, keep_filler, keep_side_feelings in (
        (True, True, True), (True, False, True), (False, False, True), (False, False, False)
    ):  # fmt: skip
        words = build(keep_places, keep_filler, keep_side_feelings)
        if len(words) <= MAX_POST_WORDS:
            break
    # The facts as told: details that were dropped to fit are no longer facts of the post.
    told = tuple(
        dataclasses.replace(
            f,
            place=f.place if keep_places else None,
            feeling=f.feeling if (i == main or keep_side_feelings) else None,
        )
        for i, f in enumerate(facts)
    )
    verb, det, noun = EVENTS[main_fact.event]
    title = " ".join(_fill(title_tpl, p=PEOPLE[main_fact.person], v=verb, d=det, n=noun))
    return subreddit, title, " ".join(words), told


def sample_post(rng: np.random.Generator, post_id: str) -> Post:
    """Draws one post (facts, main point, surface text)."""
    facts = sample_facts(rng)
    main = int(rng.integers(len(facts)))
    if facts[main].feeling is None:  # the main point always comes with a feeling
        taken = {f.feeling for f in facts}
        free = [i for i in range(len(FEELINGS)) if i not in taken]
        feeling = free[int(rng.integers(len(free)))]
        facts = tuple(
            dataclasses.replace(f, feeling=feeling) if i == main else f
            for i, f in enumerate(facts)
        )
    subreddit, title, text, facts = render_post(rng, facts, main)
    return Post(id=post_id, subreddit=subreddit, title=title, text=text, facts=facts, main=main)


def vocabulary_words() -> list[str]:
    """Every word and punctuation token of posts, titles and summaries, sorted.

    Subreddit names are not included: they only occur inside prompts, as ``r/NAME``.
    """
    words: set[str] = set(PEOPLE) | set(FEELINGS) | set(SUMMARY_WORDS)
    for event in EVENTS:
        words.update(event)
    for place in PLACES:
        words.update(place)
    for phrase, _ in TIMES:
        words.update(phrase)
    for group in (FILLERS, FEELING_TEMPLATES, QUESTION_TEMPLATES, TITLE_TEMPLATES):
        for template in group:
            words.update(w for w in template if not w.startswith("{"))
    words.update(["my", "i", "."])
    return sorted(words)
