"""World generation: determinism, file formats, vocabulary, lazy regeneration."""

import collections
import dataclasses
import hashlib
import json
import logging
import os

import numpy as np
import pytest
import sentencepiece as spm

from nlhf_jax.data import jsonl, templates
from nlhf_jax.data.world import cli, generator, grammar, layout, parser, raters, styles

SMALL = generator.WorldConfig(n_sft=(300, 40, 40), n_comparisons=(600, 40, 40), n_prompts_train=60)


def file_hashes(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def read_lines(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("world") / "w")
    generator.generate(SMALL, out)
    return out


def test_same_seed_same_bytes_other_seed_other_world(world, tmp_path):
    again = str(tmp_path / "again")
    generator.generate(SMALL, again)
    first, second = file_hashes(world), file_hashes(again)
    assert len(first) == 11 and first == second  # world.json included
    other = str(tmp_path / "other")
    generator.generate(dataclasses.replace(SMALL, seed=1), other)
    third = file_hashes(other)
    assert set(third) == set(first)
    assert all(third[k] != first[k] for k in first)


def test_vocabulary_layout_and_every_world_word_is_one_piece(world):
    sp = spm.SentencePieceProcessor(model_file=generator.vocab_path(world))
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert sp.get_piece_size() <= SMALL.vocab_size
    assert [w for w in grammar.vocabulary_words() if len(sp.encode(w)) != 1] == []
    for symbol in generator.TEMPLATE_SYMBOLS:
        assert sp.encode(symbol, out_type=str)[-1] == symbol
    prompt = templates.tldr_prompt("tifu", "my dad sold the house", "my dad sold the house .")
    assert sp.decode(sp.encode(prompt)).split() == prompt.split()


def test_sft_files(world):
    rows = read_lines(generator.split_path(world, "sft", "train"))
    assert len(rows) == 300
    assert list(rows[0]) == ["id", "subreddit", "title", "post", "summary", "style", "quality"]
    styles_seen = collections.Counter(r["style"] for r in rows)
    assert set(styles_seen) == set(styles.STYLES)
    assert styles_seen.most_common(1)[0][0] == "feelings_first"  # mu's mode
    predicted = parser.style_of([r["summary"] for r in rows])
    assert [styles.STYLES[i] for i in predicted] == [r["style"] for r in rows]
    for r in rows:
        assert len(r["post"].split()) <= grammar.MAX_POST_WORDS
        assert sum(t.isalpha() for t in r["summary"].split()) <= styles.MAX_SUMMARY_WORDS
    records, report = jsonl.read_sft(generator.split_path(world, "sft", "test"))
    assert report.n_kept == 40 and report.n_skipped == 0


def test_comparison_files_in_openai_schema_with_noisy_labels(world):
    rows = read_lines(generator.split_path(world, "comparisons", "train"))
    assert len(rows) == 600
    r = rows[0]
    assert set(r) == {"info", "summaries", "choice", "worker", "batch", "split", "extra"}
    assert set(r["info"]) == {"id", "post", "title", "subreddit"}
    assert [set(s) for s in r["summaries"]] == [{"text", "policy", "note"}] * 2
    assert r["split"] == "train" and 1 <= r["extra"]["confidence"] <= 9
    names = {t.name for t in raters.RaterPopulation().types}
    assert {row["worker"].rsplit("-", 1)[0] for row in rows} == names
    for split, name in (("valid", "valid1"), ("test", "valid2")):
        assert {x["split"] for x in read_lines(generator.split_path(world, "comparisons", split))} \
            == {name}  # fmt: skip
    # The reference summary wins more often than the noisier one, yet not always.
    ref_wins = np.mean([row["summaries"][row["choice"]]["policy"] == "ref" for row in rows])
    assert 0.55 < ref_wins < 0.9
    # Labels are noisy draws with mean P*.
    judge = raters.RaterPanel()
    p = judge.prob([x["info"]["post"] for x in rows],
                         [x["summaries"][0]["text"] for x in rows],
                         [x["summaries"][1]["text"] for x in rows])  # fmt: skip
    choice = np.array([x["choice"] for x in rows])
    assert abs(np.mean(choice == 0) - p.mean()) < 0.05
    assert np.mean(choice[p > 0.9] == 0) > 0.85


def test_prompts_and_post_uniqueness(world):
    posts = collections.Counter()
    ids = set()
    for kind in ("sft", "comparisons"):
        for split in generator.SPLITS:
            for row in read_lines(generator.split_path(world, kind, split)):
                info = row.get("info", row)
                posts[info["post"]] += 1
                ids.add(info["id"])
    train_prompts = read_lines(generator.split_path(world, "prompts", "train"))
    for row in train_prompts:
        posts[row["post"]] += 1
        assert set(row) == {"id", "subreddit", "title", "post"}
    assert max(posts.values()) == 1  # no post text twice anywhere
    test_prompts = read_lines(generator.split_path(world, "prompts", "test"))
    sft_test = read_lines(generator.split_path(world, "sft", "test"))
    assert [p["id"] for p in test_prompts] == [s["id"] for s in sft_test]
    assert not {p["id"] for p in train_prompts} & {p["id"] for p in test_prompts}
    assert len(layout.load_posts(world)) == len(ids) + len(train_prompts)


def test_load_config_and_judge_for_world(world):
    assert generator.load_config(world) == SMALL
    judge = raters.RaterPanel.for_world(world)
    row = read_lines(generator.split_path(world, "sft", "test"))[0]
    p = judge.prob([row["id"], row["post"]], [row["summary"]] * 2, ["", ""])
    assert p[0] == p[1] > 0.99  # any reference beats empty text


def test_garbled_summaries_only_in_the_noisy_source(tmp_path):
    cfg = dataclasses.replace(SMALL, n_comparisons=(300, 4, 4), noisy_quality_mix=(0.4, 0.2, 0.2, 0.2))
    world = str(tmp_path / "g")
    generator.generate(cfg, world)
    rows = read_lines(generator.split_path(world, "comparisons", "train"))
    notes = collections.Counter()
    for row in rows:
        for s in row["summaries"]:
            notes[(s["policy"], s["note"].split("/")[1])] += 1
    assert notes[("ref", "garbled")] == 0 and notes[("noisy", "garbled")] > 30
    sft = read_lines(generator.split_path(world, "sft", "train"))
    assert "garbled" not in {r["quality"] for r in sft}


def test_config_mixes_are_checked_and_version_1_configs_load(world, tmp_path):
    with pytest.raises(ValueError, match="noisy_quality_mix .* 4 non-negative"):
        generator.WorldConfig(noisy_quality_mix=(0.4, 0.3, 0.3))
    with pytest.raises(ValueError, match="style_mix"):
        generator.WorldConfig(style_mix=(0.5, 0.5, 0.5, 0.5))
    # A world written before the garbled quality existed lists three qualities.
    old = tmp_path / "old"
    old.mkdir()
    with open(os.path.join(world, "world.json")) as f:
        meta = json.load(f)
    meta["config"]["quality_mix"] = [0.8, 0.1, 0.1]
    meta["config"]["noisy_quality_mix"] = [0.4, 0.3, 0.3]
    (old / "world.json").write_text(json.dumps(meta))
    cfg = generator.load_config(str(old))
    assert cfg.quality_mix == (0.8, 0.1, 0.1, 0.0) and cfg.noisy_quality_mix == (0.4, 0.3, 0.3, 0.0)


def test_ensure_world_is_lazy_cached_and_safe(tmp_path):
    target = str(tmp_path / "lazy")
    cfg = generator.WorldConfig(n_sft=(20, 5, 5), n_comparisons=(20, 5, 5), n_prompts_train=5)
    assert generator.ensure_world(target, cfg) == target
    stamp = os.path.getmtime(os.path.join(target, "world.json"))
    generator.ensure_world(target, cfg)  # identical config: reused, not rewritten
    assert os.path.getmtime(os.path.join(target, "world.json")) == stamp
    bigger = generator.WorldConfig(n_sft=(30, 5, 5), n_comparisons=(20, 5, 5), n_prompts_train=5)
    generator.ensure_world(target, bigger)  # stale cache: regenerated
    assert len(read_lines(generator.split_path(target, "sft", "train"))) == 30
    assert [n for n in os.listdir(tmp_path) if n.startswith(".world-")] == []
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no generated world"):
        generator.ensure_world(str(foreign), cfg)


def test_readers_use_a_given_world_of_any_config_as_it_is(tmp_path):
    """The SFT, prompt and comparison readers and the vocabulary never regenerate a
    world they are pointed at (they once regenerated a small or style-comparison world
    as the default one, under the reader that asked first)."""
    from nlhf_jax.data import arrays, pairwise, vocab

    target = str(tmp_path / "small")
    cfg = generator.WorldConfig(n_sft=(12, 4, 4), n_comparisons=(10, 4, 4), n_prompts_train=6)
    generator.ensure_world(target, cfg)
    stamp = os.path.getmtime(os.path.join(target, "world.json"))
    assert generator.world_dir(target) == os.path.abspath(target)
    assert len(arrays.world_sft("train", data_dir=target)) == 12
    assert len(arrays.world_prompts("train", data_dir=target)) == 6
    assert pairwise.world_data(data_dir=target).world_dir == target
    vocab.world_vocabulary(target)
    assert os.path.getmtime(os.path.join(target, "world.json")) == stamp
    assert generator.load_config(target).n_sft == (12, 4, 4)


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv("NLHF_DATA_DIR", "/somewhere/world")
    assert generator.default_data_dir(3) == "/somewhere/world"
    monkeypatch.delenv("NLHF_DATA_DIR")
    assert generator.default_data_dir(3).endswith(os.path.join(".cache", "nlhf_jax", "world-3"))


def test_generate_cli(tmp_path, capsys):
    out = str(tmp_path / "cli")
    argv = ["--generate", "--out", out, "--seed", "2", "--n-sft", "10", "2", "2",
            "--n-comparisons", "10", "2", "2", "--n-prompts", "3", "--n-style-comparisons", "5"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "wrote 10 files" in capsys.readouterr().out
    with open(os.path.join(out, "world.json")) as f:
        meta = json.load(f)
    assert meta["config"]["seed"] == 2 and meta["config"]["n_sft"] == [10, 2, 2]
    assert meta["config"]["n_style_comparisons"] == 5
    assert len(read_lines(os.path.join(out, "comparisons", "train.jsonl"))) == 15
    assert cli.main(["--generate"]) == 2


def test_more_comparisons_keep_the_smaller_world(tmp_path, monkeypatch):
    # Train comparisons past COMPARISON_BLOCK come last, from their own stream, and stay
    # out of the vocabulary's corpus: the smaller world is a prefix of the larger one.
    monkeypatch.setattr(generator, "COMPARISON_BLOCK", 12)
    small = generator.WorldConfig(n_sft=(10, 4, 4), n_comparisons=(12, 4, 4), n_prompts_train=4)
    big = dataclasses.replace(small, n_comparisons=(30, 4, 4))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ha, hb = generator.generate(small, a), generator.generate(big, b)
    train = os.path.join("comparisons", "train.jsonl")
    assert {k: v for k, v in ha.items() if k != train} == {k: v for k, v in hb.items() if k != train}
    rows_a = read_lines(os.path.join(a, train))
    rows_b = read_lines(os.path.join(b, train))
    assert len(rows_b) == 30 and rows_b[:12] == rows_a
    ids = [r["info"]["id"] for r in rows_b]
    assert len(set(ids)) == 30 and ids[12] == "w0-cmp-train-000012"
    posts = [r["info"]["post"] for r in rows_b] + [r["post"] for r in read_lines(os.path.join(b, "sft", "train.jsonl"))]
    assert len(set(posts)) == len(posts)  # still unique across the world


def test_style_comparisons_are_appended_and_keep_every_other_file(tmp_path, caplog):
    small = generator.WorldConfig(n_sft=(10, 4, 4), n_comparisons=(12, 4, 4), n_prompts_train=4)
    more = dataclasses.replace(small, n_style_comparisons=40)
    assert small.fingerprint() != more.fingerprint()
    # a world without the option keeps the fingerprint it had before the option existed
    legacy = dataclasses.asdict(small)
    del legacy["n_style_comparisons"]
    want = hashlib.sha256(json.dumps([generator.GENERATOR_VERSION, legacy], sort_keys=True).encode()).hexdigest()[:16]
    assert small.fingerprint() == want
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ha, hb = generator.generate(small, a), generator.generate(more, b)
    train = os.path.join("comparisons", "train.jsonl")
    assert {k: v for k, v in ha.items() if k != train} == {k: v for k, v in hb.items() if k != train}
    rows_a, rows_b = read_lines(os.path.join(a, train)), read_lines(os.path.join(b, train))
    assert len(rows_b) == 52 and rows_b[:12] == rows_a
    for r in rows_b[12:]:
        (sa, qa), (sb, qb) = (s["note"].split("/") for s in r["summaries"])
        assert sa != sb and {s["policy"] for s in r["summaries"]} == {"policy_a", "policy_b"}
        assert qa != "garbled" and qb != "garbled"
    records, _ = jsonl.read_comparisons(os.path.join(b, train))  # the real reader takes them
    assert len(records) == 52 and generator.load_config(b) == more
    with pytest.raises(ValueError, match="n_style_comparisons"):
        dataclasses.replace(small, n_style_comparisons=-1)
    # a cap applies to the regular comparisons; the style rows are read in full
    from nlhf_jax.data import pairwise

    def ids(data):
        texts = pairwise.read_comparison_texts(data.train, max_examples=data.max_train_examples,
                                               keep_last=data.keep_last_train)  # fmt: skip
        return texts.ids

    all_ids = [r["id"] for r in records]
    assert ids(pairwise.world_data(b, max_train_examples=5)) == all_ids[:5] + all_ids[12:]
    assert ids(pairwise.world_data(b, max_train_examples=100)) == all_ids
    assert ids(pairwise.world_data(b)) == all_ids
    assert ids(pairwise.world_data(b, max_train_examples=0)) == all_ids[12:]  # the style rows only
    with pytest.raises(ValueError, match="keeps only the style comparisons.*has none"):
        pairwise.world_data(a, max_train_examples=0)
    with pytest.raises(ValueError, match="keeps only the style comparisons.*style_comparisons=False"):
        pairwise.world_data(b, max_train_examples=0, style_comparisons=False)
    # ... unless asked for a prefix of the file: then say what the cap leaves out
    with caplog.at_level(logging.WARNING):
        prefix = pairwise.world_data(b, max_train_examples=20, style_comparisons=False)
    assert ids(prefix) == all_ids[:20]
    assert "32 of the world's 40 style comparisons" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pairwise.world_data(b, max_train_examples=52, style_comparisons=False)
        assert ids(pairwise.world_data(a, max_train_examples=5)) == all_ids[:5]
    assert "style comparisons" not in caplog.text
