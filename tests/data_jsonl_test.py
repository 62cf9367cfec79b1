"""Bad input lines: errors name the file, the line and the problem; skips are counted."""

import json

import pytest

from nlhf_jax.data import jsonl


def sft_row(i: int, **over) -> dict:
    row = {"id": f"t3_{i}", "subreddit": "relationships", "title": "my dad sold the house",
           "post": "my dad sold the house last week . what should i do ?",
           "summary": "my dad sold the house ."}  # fmt: skip
    row.update(over)
    return row


def comparison_row(i: int, **over) -> dict:
    row = {
        "info": {"id": f"t3_{i}", "post": "my dad sold the house .", "title": "house",
                 "subreddit": "tifu"},  # fmt: skip
        "summaries": [{"text": " my dad sold the house .", "policy": "ref", "note": ""},
                      {"text": " my mom sold the car .", "policy": "sup2", "note": ""}],
        "choice": 0, "worker": "w1", "batch": "batch3", "split": "train",
        "extra": {"confidence": 7},
    }  # fmt: skip
    row.update(over)
    return row


def write(path, lines) -> str:
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return str(path)


SFT_CASES = [
    ("not JSON", "{this is not json", r"not valid JSON"),
    ("not an object", json.dumps([1, 2]), r"not a JSON object"),
    ("missing field", {k: v for k, v in sft_row(1).items() if k != "summary"},
     r"missing field 'summary'"),
    ("empty text", sft_row(1, post="   "), r"field 'post' is empty"),
    ("non-string text", sft_row(1, summary=42), r"field 'summary' must be a string, got int"),
    ("duplicate id", sft_row(0), r"duplicate id 't3_0' \(first seen at .*:1\)"),
]  # fmt: skip


@pytest.mark.parametrize("kind, bad, message", SFT_CASES, ids=[c[0] for c in SFT_CASES])
def test_sft_bad_line_names_file_line_and_problem(tmp_path, kind, bad, message):
    path = write(tmp_path / "train.jsonl", [sft_row(0), bad, sft_row(2)])
    with pytest.raises(jsonl.DataError, match=rf"^{path}:2: {message}") as err:
        jsonl.read_sft(path)
    assert err.value.path == path and err.value.line == 2 and err.value.kind == kind


COMPARISON_CASES = [
    ("not JSON", "not json at all", r"not valid JSON"),
    ("missing field", {k: v for k, v in comparison_row(1).items() if k != "choice"},
     r"missing field 'choice'"),
    ("missing field", comparison_row(1, info={"id": "x", "title": "t"}),
     r"missing field 'info.post'"),
    ("missing field", comparison_row(1, summaries=[{"policy": "a"}, {"text": "b"}]),
     r"missing field 'summaries\[0\].text'"),
    ("bad choice", comparison_row(1, choice=2), r"choice must be 0 or 1, got 2"),
    ("bad choice", comparison_row(1, choice="0"), r"choice must be 0 or 1, got '0'"),
    ("bad choice", comparison_row(1, choice=True), r"choice must be 0 or 1, got True"),
    ("empty text", comparison_row(1, summaries=[{"text": " "}, {"text": "b"}]),
     r"field 'summaries\[0\].text' is empty"),
    ("non-string text", comparison_row(1, summaries=[{"text": "a"}, {"text": None}]),
     r"field 'summaries\[1\].text' must be a string, got NoneType"),
    ("bad summaries", comparison_row(1, summaries=[{"text": "a"}]),
     r"field 'summaries' must be a list of 2"),
    ("duplicate id", comparison_row(0), r"duplicate comparison of post id 't3_0'"),
]  # fmt: skip


@pytest.mark.parametrize("kind, bad, message", COMPARISON_CASES)
def test_comparison_bad_line_names_file_line_and_problem(tmp_path, kind, bad, message):
    path = write(tmp_path / "batch1.json", [comparison_row(0), "", bad, comparison_row(2)])
    # Line 2 is blank (ignored); the bad line is line 3.
    with pytest.raises(jsonl.DataError, match=rf"^{path}:3: {message}") as err:
        jsonl.read_comparisons(path)
    assert err.value.kind == kind


def test_same_post_with_other_summaries_is_not_a_duplicate(tmp_path):
    other = comparison_row(0, summaries=[{"text": "x"}, {"text": "y"}])
    path = write(tmp_path / "c.jsonl", [comparison_row(0), other])
    records, _ = jsonl.read_comparisons(path)
    assert len(records) == 2


def test_skip_invalid_counts_and_prints_a_summary(tmp_path, capsys):
    lines = [sft_row(0), "{oops", sft_row(1, summary=""), sft_row(2, post=3), sft_row(0),
             {k: v for k, v in sft_row(4).items() if k != "title"}, sft_row(5)]  # fmt: skip
    path = write(tmp_path / "valid.jsonl", lines)
    records, report = jsonl.read_sft(path, skip_invalid=True)
    assert [r["id"] for r in records] == ["t3_0", "t3_5"]
    assert report.n_lines == 7 and report.n_kept == 2 and report.n_skipped == 5
    assert dict(report.skipped) == {"not JSON": 1, "empty text": 1, "non-string text": 1,
                                    "duplicate id": 1, "missing field": 1}  # fmt: skip
    err = capsys.readouterr().err
    assert f"read {path}: kept 2 of 7 lines" in err
    assert "skipped 5 invalid lines" in err and f"{path}:2: not valid JSON" in err
    assert report.summary() in err


def test_clean_read_prints_nothing(tmp_path, capsys):
    path = write(tmp_path / "a.jsonl", [sft_row(0), sft_row(1)])
    records, report = jsonl.read_sft(path)
    assert len(records) == 2 and report.n_skipped == 0
    assert capsys.readouterr().err == ""


def test_post_truncation_is_counted(tmp_path, capsys):
    long_post = " ".join(["word"] * 30)
    path = write(tmp_path / "a.jsonl", [sft_row(0, post=long_post), sft_row(1)])
    records, report = jsonl.read_sft(path, max_post_words=20)
    assert records[0]["post"] == " ".join(["word"] * 20)
    assert records[1]["post"] == sft_row(1)["post"]
    assert dict(report.truncated) == {"post": 1}
    assert "truncated post in 1 records to its first 20 words" in capsys.readouterr().err


def test_comparison_split_filter_news_items_and_directories(tmp_path):
    news = {
        "info": {"id": "cnn-1", "article": "a long article .", "site": "cnn"},
        "summaries": [{"text": "a"}, {"text": "b"}],
        "choice": 1,
        "split": "valid2",
    }
    write(tmp_path / "batch1.json", [comparison_row(0), comparison_row(1, split="valid1")])
    write(tmp_path / "batch2.json", [news])
    (tmp_path / "README.txt").write_text("not data")
    every, _ = jsonl.read_comparisons(str(tmp_path))
    assert [r["id"] for r in every] == ["t3_0", "t3_1", "cnn-1"]
    test, report = jsonl.read_comparisons(str(tmp_path / "*.json"), splits=("valid2",))
    assert len(test) == 1 and report.n_lines == 1
    assert test[0]["post"] == "a long article ." and test[0]["subreddit"] == "cnn"
    assert test[0]["choice"] == 1 and test[0]["confidence"] == -1
    assert every[0]["summary_0"] == "my dad sold the house ." and every[0]["confidence"] == 7


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        jsonl.read_sft(str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match="no JSONL files"):
        jsonl.read_sft(str(tmp_path / "*.jsonl"))
