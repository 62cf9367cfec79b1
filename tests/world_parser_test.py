"""The feature parser on hand-written posts and summaries, and on generated ones."""

import numpy as np
import pytest

from nlhf_jax.data.world import grammar, parser, styles

POST = (
    "my sister lost the job at the gym last week . i felt anxious about it . "
    "on monday my dad crashed the car . yesterday my boss sold the house in paris . "
    "that made me angry . my uncle adopted a puppy today . what should i do about the job ?"
)
CONCISE, EXHAUSTIVE, FEELINGS, CHRONO = range(4)


def features(summary: str, post: str = POST) -> dict:
    f = parser.featurize([post], [summary])
    return {
        "covered": f.covered[0].tolist(),
        "main": bool(f.main_point[0]),
        "unsupported": int(f.unsupported[0]),
        "n_words": int(f.n_words[0]),
        "repeats": int(f.repeats[0]),
        "unknown": int(f.unknown[0]),
        "style": int(f.style[0]),
    }


def test_parse_post_finds_facts_times_and_main_point():
    info = parser.parse_post(POST)
    assert info.keywords == ("job", "car", "house", "puppy")
    assert info.main == 0  # named by the closing question
    assert [grammar.TIMES[t][1] for t in info.times] == ["week", "monday", "yesterday", "today"]
    assert {"sister", "gym", "anxious", "paris", "angry", "uncle"} <= info.supported


def test_main_point_is_the_event_of_the_last_question():
    info = parser.parse_post(POST.replace("about the job ?", "about the puppy ?"))
    assert info.keywords[info.main] == "puppy"


@pytest.mark.parametrize(
    "summary, style, covered",
    [
        ("my sister lost the job last week .", CONCISE, [1, 0, 0, 0]),
        ("my sister lost the job , my dad crashed the car , my boss sold the house and "
         "my uncle adopted a puppy .", EXHAUSTIVE, [1, 1, 1, 1]),
        ("anxious because my sister lost the job .", FEELINGS, [1, 0, 0, 0]),
        ("feeling anxious : my sister lost the job .", FEELINGS, [1, 0, 0, 0]),
        ("first my sister lost the job last week , then my dad crashed the car on monday .",
         CHRONO, [1, 1, 0, 0]),
    ],
)  # fmt: skip
def test_each_style_faithful(summary, style, covered):
    f = features(summary)
    assert f["style"] == style
    assert f["covered"] == [bool(c) for c in covered]
    assert f["main"] and f["unsupported"] == 0 and f["repeats"] == 0 and f["unknown"] == 0


def test_hallucinated_fact_counts_unsupported_content_words():
    f = features("my sister lost the job and my cousin bought a boat .")
    assert f["main"]
    assert f["unsupported"] == 2  # cousin, boat
    assert f["style"] == CONCISE


def test_wrong_detail_is_unsupported():
    assert features("my sister lost the job in london .")["unsupported"] == 1


def test_missing_main_point():
    f = features("my dad crashed the car on monday .")
    assert not f["main"] and f["covered"] == [False, True, False, False]
    assert f["unsupported"] == 0


def test_empty_text():
    f = features("")
    assert f == {"covered": [False] * 4, "main": False, "unsupported": 0, "n_words": 0,
                 "repeats": 0, "unknown": 0, "style": styles.NONE_STYLE}  # fmt: skip


def test_garbage_tokens():
    f = features("qzx ?? blorp ¿ 12 zzz")
    assert f["style"] == styles.NONE_STYLE
    assert not f["main"]
    assert f["unknown"] == 5  # qzx blorp ¿ 12 zzz ("?" is a world token)
    assert f["n_words"] == 4


def test_repetition_and_case_and_glued_punctuation():
    f = features("My sister lost the JOB.job job")
    assert f["main"] and f["repeats"] == 2 and f["unknown"] == 0
    assert f["n_words"] == 7


def test_batch_shapes_and_post_info_input():
    info = parser.parse_post(POST)
    f = parser.featurize([info, POST, info], ["", "my dad crashed the car .", "x"])
    assert f.covered.shape == (3, grammar.MAX_FACTS) and f.covered.dtype == bool
    for arr in (f.main_point, f.unsupported, f.n_words, f.repeats, f.unknown, f.style):
        assert arr.shape == (3,)
    assert len(f) == 3
    with pytest.raises(ValueError, match="2 posts but 1 summaries"):
        parser.featurize([POST, POST], ["a"])
    empty = parser.featurize([], [])
    assert empty.covered.shape == (0, grammar.MAX_FACTS) and len(empty) == 0


def test_style_of_matches_the_generator_and_features_are_crisp():
    rng = np.random.default_rng(3)
    garbled_kinds = [0, 0]  # [unsupported, repeated]
    for i in range(150):
        post = grammar.sample_post(rng, str(i))
        assert len(post.text.split()) <= grammar.MAX_POST_WORDS
        info = parser.parse_post(post.text)
        assert info.keywords == tuple(f.keyword for f in post.facts) and info.main == post.main
        for style in range(len(styles.STYLES)):
            for quality in range(len(styles.QUALITIES)):
                text = styles.render_summary(rng, post, style, quality)
                f = parser.featurize([info], [text])
                assert f.style[0] == style, text
                assert f.main_point[0] == (quality != styles.MISSES_MAIN), text
                assert f.n_words[0] <= styles.MAX_SUMMARY_WORDS
                assert f.unknown[0] == 0
                if quality == styles.GARBLED:  # exactly one swapped word: repeated or unsupported
                    assert f.unsupported[0] + f.repeats[0] == 1, text
                    garbled_kinds[int(f.repeats[0])] += 1
                else:
                    assert f.unsupported[0] == (2 if quality == styles.HALLUCINATED else 0), text
                    assert f.repeats[0] == 0, text
    assert min(garbled_kinds) > 100, garbled_kinds  # both kinds of garbling occur
