"""The rater population P*: antisymmetry, quality agreement, labels, the RaterPanel."""

import itertools

import numpy as np
import pytest

from nlhf_jax.data.world import grammar, parser, raters, styles

GARBAGE = ["", "qzx blorp", "job job job job", ". . .", "the the the", "anxious"]


def random_pairs(n: int, seed: int):
    """n posts with two summaries each: references of any type, or garbage."""
    rng = np.random.default_rng(seed)
    posts, ys, alts = [], [], []
    for i in range(n):
        post = grammar.sample_post(rng, str(i))
        texts = []
        for _ in range(2):
            if rng.random() < 0.2:
                texts.append(GARBAGE[int(rng.integers(len(GARBAGE)))])
            else:
                texts.append(styles.render_summary(
                    rng, post, int(rng.integers(4)), int(rng.integers(3))))  # fmt: skip
        posts.append(post.text)
        ys.append(texts[0])
        alts.append(texts[1])
    return posts, ys, alts


def test_antisymmetric_and_half_on_ties():
    judge = raters.RaterPanel()
    posts, ys, alts = random_pairs(300, seed=0)
    p = judge.prob(posts, ys, alts)
    q = judge.prob(posts, alts, ys)
    assert p.shape == (300,) and p.dtype == np.float64
    np.testing.assert_allclose(p + q, 1.0, atol=1e-12)
    assert np.all(judge.prob(posts, ys, ys) == 0.5)
    assert ((p >= 0) & (p <= 1)).all()
    assert np.abs(p - 0.5).max() > 0.4  # not a constant judge


def test_every_type_prefers_quality_whatever_the_styles():
    pop = raters.RaterPopulation()
    rng = np.random.default_rng(1)
    post = grammar.sample_post(rng, "p")
    info = parser.parse_post(post.text)
    good = [styles.render_summary(rng, post, s, styles.FAITHFUL) for s in range(4)]
    bad = [styles.render_summary(rng, post, s, q) for s in range(4)
           for q in (styles.MISSES_MAIN, styles.HALLUCINATED)] + GARBAGE  # fmt: skip
    pairs = list(itertools.product(good, bad))
    f = parser.featurize([info] * len(pairs), [g for g, _ in pairs])
    f_bad = parser.featurize([info] * len(pairs), [b for _, b in pairs])
    assert (pop.preference_by_type(f, f_bad) > 0.99).all()


def test_not_bradley_terry_each_type_is():
    pop = raters.RaterPopulation()
    table = pop.style_table
    assert table.shape == (len(pop.types), len(styles.STYLE_NAMES))
    # Types disagree on the style order: there is no single scalar utility.
    orders = {tuple(np.argsort(-row[:4])) for row in table}
    assert len(orders) == len(pop.types)


def test_population_validation():
    with pytest.raises(ValueError, match="sum to"):
        raters.RaterPopulation(types=(raters.RaterType("a", 0.5, 0.1, (0, 0, 0, 0)),))
    with pytest.raises(ValueError, match="bad rater type"):
        raters.RaterPopulation(types=(raters.RaterType("a", 1.0, 0.0, (0, 0, 0, 0)),))


def test_sampled_labels_follow_p_star():
    pop = raters.RaterPopulation()
    posts, ys, alts = random_pairs(400, seed=2)
    f, f_alt = parser.featurize(posts, ys), parser.featurize(posts, alts)
    p = pop.preference(f, f_alt)
    rng = np.random.default_rng(0)
    wins = np.zeros(len(p))
    n_draws = 200
    for _ in range(n_draws):
        choice, rater, p_rater = pop.sample_labels(rng, f, f_alt)
        assert set(np.unique(choice)) <= {0, 1} and rater.max() < len(pop.types)
        assert ((p_rater >= 0) & (p_rater <= 1)).all()
        wins += choice == 0
    # Mean over pairs of the empirical win rate tracks the mean of P*.
    assert abs(wins.mean() / n_draws - p.mean()) < 0.01
    assert np.corrcoef(wins / n_draws, p)[0, 1] > 0.95


def test_judge_accepts_ids_texts_and_post_infos():
    rng = np.random.default_rng(4)
    post = grammar.sample_post(rng, "post-1")
    judge = raters.RaterPanel(posts_by_id={"post-1": post.text})
    ys = [styles.render_summary(rng, post, 0, 0)]
    alts = [styles.render_summary(rng, post, 1, 1)]
    by_id = judge.prob(["post-1"], ys, alts)
    by_text = judge.prob([post.text], ys, alts)
    by_info = judge.prob([parser.parse_post(post.text)], ys, alts)
    assert by_id == by_text == by_info and by_id[0] > 0.9
    assert judge.utilities(["post-1"], ys).shape == (4, 1)
    assert judge.style(["anxious because my dad crashed the car .", ""]).tolist() == [2, 4]
