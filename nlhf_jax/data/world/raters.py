"""The ground-truth rater population P* of the embedded world.

Why this module exists: NLHF is about preferences that no single scalar reward can
represent. The world's judge is a *population* of rater types k with shares w_k, each a
Bradley-Terry rater on its own utility u_k:

    P*(y > y' | x) = sum_k w_k * sigmoid((u_k(y) - u_k(y')) / T_k).

It is antisymmetric by construction and P*(y > y | x) = 1/2, but it is not
Bradley-Terry as a whole. Utilities share one *quality* part, on which every type
agrees (cover the main point, invent nothing, stay within length, no repetition or
garbage), and differ in a *style* part. The style parts are four strict orders over
the styles, chosen so that the aggregate has a preference cycle and a Condorcet winner
(``concise``) that is not the style a Bradley-Terry reward fitted on SFT-distribution
pairs ranks first (``exhaustive``): see `game.py` and ``nlhf world --describe``.

Style spreads within a type stay below the quality penalties, so for every type a
faithful summary of any style beats a summary of any style that misses the main point
or invents a fact: quality is the transitive component every method can improve on.
"""

import dataclasses
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from nlhf_jax import preference_math
from nlhf_jax.data.world import layout, parser, styles


@dataclasses.dataclass(frozen=True)
class RaterType:
    """One rater type.

    Attributes:
      name: a label (also written into the comparison data's `worker` field).
      weight: its share w_k of the population.
      temperature: T_k; lower is more decisive.
      style_utility: utility of each style in `styles.STYLES` order, shape [4].
    """

    name: str
    weight: float
    temperature: float
    style_utility: tuple[float, ...]


# How these values were chosen. Any aggregate of sigmoid raters is a mixture of strict
# style orders (a Bradley-Terry rater is a Plackett-Luce mixture), so a linear program
# over the 24 orders shows what is reachable: a Condorcet winner (concise) that the
# SFT-pair BT reward ranks second, a cycle among the other three styles, and the
# largest head-to-head margin of concise over exhaustive. Its solution uses the four
# orders below; shares, spacings, temperatures and the SFT style mix were then tuned
# numerically to maximise the predicted P(Nash > RLHF) at tau 0.01-0.05 (rounded).
# Each type's style spread (2.1) is below the quality penalties (3.0 for a missed main
# point, 1.5 per invented word), so quality always dominates. tests/world_game_test.py
# pins the properties.
DEFAULT_TYPES: tuple[RaterType, ...] = (
    # concise > exhaustive > feelings_first > chronological: want the point, fast.
    RaterType("skimmer", 0.44, 0.15, (0.85, 0.4, -0.3, -0.95)),
    # feelings_first > concise > chronological > exhaustive: want to know how OP feels.
    RaterType("empath", 0.125, 0.15, (0.35, -1.05, 1.05, -0.35)),
    # chronological > concise > exhaustive > feelings_first: want the timeline.
    RaterType("historian", 0.13, 0.15, (0.35, -0.35, -1.05, 1.05)),
    # chronological > exhaustive > feelings_first > concise: want the whole story.
    RaterType("storyteller", 0.305, 0.15, (-1.05, 0.35, -0.35, 1.05)),
)


@dataclasses.dataclass(frozen=True)
class RaterPopulation:
    """Rater types plus the quality coefficients they all share.

    Attributes:
      types: the rater types; weights must sum to 1.
      main_point: utility of covering the main point.
      unsupported: penalty per distinct content word not in the post.
      overlength: penalty per word beyond `styles.MAX_SUMMARY_WORDS`.
      repeat: penalty per repeated content-word mention.
      unknown: penalty per token outside the world vocabulary.
      none_style: style utility of text with no content word (all types).
    """

    types: tuple[RaterType, ...] = DEFAULT_TYPES
    main_point: float = 3.0
    unsupported: float = 1.5
    overlength: float = 0.25
    repeat: float = 0.5
    unknown: float = 0.25
    none_style: float = -3.0

    @classmethod
    def from_dict(cls, fields: Mapping) -> "RaterPopulation":
        """The population from its `dataclasses.asdict` form (as a world.json holds it)."""
        fields = dict(fields)
        types = tuple(
            RaterType(**{**t, "style_utility": tuple(t["style_utility"])})
            for t in fields.pop("types")
        )
        return cls(types=types, **fields)

    def __post_init__(self):
        total = sum(t.weight for t in self.types)
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"rater weights sum to {total}, not 1")
        for t in self.types:
            if t.temperature <= 0 or len(t.style_utility) != len(styles.STYLES):
                raise ValueError(f"bad rater type {t}")

    @property
    def weights(self) -> np.ndarray:
        """float64 [K]."""
        return np.asarray([t.weight for t in self.types])

    @property
    def temperatures(self) -> np.ndarray:
        """float64 [K]."""
        return np.asarray([t.temperature for t in self.types])

    @property
    def style_table(self) -> np.ndarray:
        """float64 [K, 5]: style utilities, the last column for the ``none`` style."""
        table = np.asarray([t.style_utility for t in self.types], dtype=np.float64)
        return np.concatenate([table, np.full((len(self.types), 1), self.none_style)], 1)

    def quality(self, f: parser.SummaryFeatures) -> np.ndarray:
        """The shared quality utility, float64 [B]."""
        over = np.maximum(f.n_words - styles.MAX_SUMMARY_WORDS, 0)
        return (
            self.main_point * f.main_point
            - self.unsupported * f.unsupported
            - self.overlength * over
            - self.repeat * f.repeats
            - self.unknown * f.unknown
        )

    def utilities(self, f: parser.SummaryFeatures) -> np.ndarray:
        """u_k(y) for every type and summary, float64 [K, B]."""
        return self.style_table[:, f.style] + self.quality(f)[None, :]

    def preference_by_type(
        self, f: parser.SummaryFeatures, f_alt: parser.SummaryFeatures
    ) -> np.ndarray:
        """sigmoid((u_k(y) - u_k(y')) / T_k), float64 [K, B] (`preference_math.logistic_raters`).

        The sigmoid is written as (1 + tanh(d / 2)) / 2: tanh is odd in floating point,
        so swapping y and y' gives exactly 1 - p up to one rounding, and d = 0 gives
        exactly 1/2.
        """
        return preference_math.logistic_raters(
            self.utilities(f), self.utilities(f_alt), self.temperatures[:, None]
        )

    def preference(self, f: parser.SummaryFeatures, f_alt: parser.SummaryFeatures) -> np.ndarray:
        """P*(y > y' | x) for a batch, float64 [B]."""
        return self.weights @ self.preference_by_type(f, f_alt)

    def sample_labels(
        self,
        rng: np.random.Generator,
        f: parser.SummaryFeatures,
        f_alt: parser.SummaryFeatures,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noisy human-like labels: draw one rater type per pair, then its verdict.

        The label's marginal probability of preferring y is exactly P*(y > y' | x).

        Args:
          rng: the generator.
          f: features of y, batch B.
          f_alt: features of y', batch B.

        Returns:
          choice: int32 [B], 0 if y is preferred, 1 if y' is (OpenAI convention).
          rater: int32 [B], index of the rater type drawn.
          p_rater: float64 [B], that type's probability of preferring y.
        """
        by_type = self.preference_by_type(f, f_alt)
        rater = rng.choice(len(self.types), size=len(f), p=self.weights).astype(np.int32)
        p_rater = by_type[rater, np.arange(len(f))]
        choice = (rng.random(len(f)) >= p_rater).astype(np.int32)
        return choice, rater, p_rater


PostRef = Union[str, parser.PostInfo]


class RaterPanel:
    """The rater population P* judging texts in batches: the world's stand-in for PaLM 2.

    `prob(prompts, ys, ys_alt)` is the judge protocol of `judges.Judge`, with the
    prompts being what the raters read: the posts, as text, as `parser.PostInfo`, or
    as ids found in `posts_by_id` (for instance the ids of a generated world, see
    `for_world`). `judges.WorldJudge` wraps a panel for callers that hold TL;DR
    prompts instead.
    """

    def __init__(
        self,
        population: Optional[RaterPopulation] = None,
        posts_by_id: Optional[Mapping[str, str]] = None,
    ):
        self.population = population or RaterPopulation()
        self._posts_by_id = dict(posts_by_id or {})

    @classmethod
    def for_world(cls, data_dir: str) -> "RaterPanel":
        """The panel of a generated world: its population, and its posts by id."""
        population = RaterPopulation.from_dict(layout.read_config_fields(data_dir)["population"])
        return cls(population, layout.load_posts(data_dir))

    def _posts(self, posts: Sequence[PostRef]) -> list[PostRef]:
        return [self._posts_by_id.get(p, p) if isinstance(p, str) else p for p in posts]

    def features(self, posts: Sequence[PostRef], texts: Sequence[str]) -> parser.SummaryFeatures:
        """Parser features of B texts against their posts."""
        return parser.featurize(self._posts(posts), texts)

    def prob(
        self, prompts: Sequence[PostRef], ys: Sequence[str], ys_alt: Sequence[str]
    ) -> np.ndarray:
        """P*(ys[b] > ys_alt[b] | prompts[b]), float64 [B]; the prompts are posts."""
        return self.population.preference(
            self.features(prompts, ys), self.features(prompts, ys_alt)
        )

    def utilities(self, posts: Sequence[PostRef], texts: Sequence[str]) -> np.ndarray:
        """Per-type utilities, float64 [K, B]."""
        return self.population.utilities(self.features(posts, texts))

    @staticmethod
    def style(texts: Sequence[str]) -> np.ndarray:
        """Style index of each text, int32 [B] (see `styles.STYLE_NAMES`)."""
        return parser.style_of(texts)
