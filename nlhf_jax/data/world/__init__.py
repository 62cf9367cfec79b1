"""The embedded summarization world: posts, summaries, a known rater population.

Why this package exists: it lets the whole NLHF pipeline run offline in minutes with a
ground-truth judge P* (the role PaLM 2 plays in the paper) and a predictable outcome.
Posts are built from facts (`grammar`), summaries in four styles and three qualities
(`styles`); a parser turns any text into rater features (`parser`); a population of
rater types defines P* (`raters`); the style game is measured and solved exactly
(`game`, `describe`); `generator` writes the datasets and vocabulary (trained by
`vocab_training`) in the directory `layout`; `cli` is ``nlhf world``. Everything here
depends on numpy only, but for `vocab_training` (SentencePiece, imported when a world
is written).
"""

from nlhf_jax.data.world.describe import WorldReport, describe_world, format_report
from nlhf_jax.data.world.generator import WorldConfig, default_data_dir, ensure_world
from nlhf_jax.data.world.layout import load_posts
from nlhf_jax.data.world.parser import PostInfo, SummaryFeatures, featurize, parse_post, style_of
from nlhf_jax.data.world.raters import RaterPanel, RaterPopulation, RaterType
from nlhf_jax.data.world.styles import NONE_STYLE, QUALITIES, STYLE_NAMES, STYLES
