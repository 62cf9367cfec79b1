"""seqio tasks: every task yields a batch offline; truncation is by rule and counted."""

import json
import os

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from nlhf_jax.data import jsonl, tasks, templates, vocab
from nlhf_jax.data.world import generator, vocab_training

LENGTHS = {"inputs": 128, "targets": 32}
SMALL = generator.WorldConfig(n_sft=(40, 8, 8), n_comparisons=(40, 8, 8), n_prompts_train=8)


def batch(name: str, split: str = "train", lengths=LENGTHS, batch_size: int = 4) -> dict:
    ds = seqio.get_dataset(
        name,
        task_feature_lengths=lengths,
        dataset_split=split,
        shuffle=False,
        feature_converter=seqio.EncDecFeatureConverter(pack=False),
        batch_size=batch_size,
    )
    return next(iter(ds.as_numpy_iterator()))


def first_example(name: str, split: str = "train", lengths=LENGTHS) -> dict:
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(sequence_length=lengths, split=split, shuffle=False)
    return next(iter(ds.as_numpy_iterator()))


def check_batch(b: dict, batch_size: int = 4, lengths=LENGTHS) -> None:
    assert b["encoder_input_tokens"].shape == (batch_size, lengths["inputs"])
    assert b["decoder_target_tokens"].shape == (batch_size, lengths["targets"])
    assert (b["encoder_input_tokens"][:, 0] > 1).all()  # real tokens, then padding
    assert (b["decoder_loss_weights"].sum(1) >= 1).all()  # at least EOS


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tasks") / "world")
    names = tasks.register_world_tasks(data_dir, config=SMALL)
    assert names == [tasks.WORLD_SFT, tasks.WORLD_COMPARISONS, tasks.WORLD_PROMPTS]
    assert not os.path.exists(data_dir)  # registration writes nothing
    yield data_dir
    tasks.register_world_tasks()  # restore the import-time default registration


def test_default_world_tasks_are_registered_on_import():
    for name in (tasks.WORLD_SFT, tasks.WORLD_COMPARISONS, tasks.WORLD_PROMPTS):
        assert name in seqio.TaskRegistry.names()


@pytest.mark.parametrize("name", [tasks.WORLD_SFT, tasks.WORLD_COMPARISONS, tasks.WORLD_PROMPTS])
@pytest.mark.parametrize("split", ["train", "test"])
def test_world_tasks_yield_batches(world_dir, name, split):
    check_batch(batch(name, split))
    assert os.path.exists(os.path.join(world_dir, "world.json"))  # generated on first use


def test_world_example_features(world_dir):
    ex = first_example(tasks.WORLD_COMPARISONS, lengths={**LENGTHS, "targets_alt": 32})
    assert ex["choice"] in (0, 1) and ex["id"].startswith(b"w0-cmp-train-")
    assert ex["inputs_pretokenized"].decode().startswith("SUBREDDIT: r/")
    assert ex["inputs_pretokenized"].decode().endswith(templates.TLDR_SUFFIX)
    assert ex["targets"][-1] == 1 and ex["targets_alt"][-1] == 1  # EOS
    assert not ex["inputs_truncated"] and not ex["targets_truncated"]
    prompt = first_example(tasks.WORLD_PROMPTS, split="test")
    assert prompt["targets"].tolist() == [1]
    sft = first_example(tasks.WORLD_SFT, split="test")
    assert prompt["inputs"].tolist() == sft["inputs"].tolist()  # eval prompts = SFT test posts
    v = vocab.world_vocabulary(world_dir)
    assert v.decode(sft["targets"].tolist()) == sft["targets_pretokenized"].decode().strip()


def test_truncation_keeps_the_suffix_and_is_counted(world_dir):
    tasks.TRUNCATIONS.reset()
    short = {"inputs": 24, "targets": 6}
    ex = first_example(tasks.WORLD_SFT, lengths=short)
    v = vocab.world_vocabulary(world_dir)
    suffix = v.encode(templates.TLDR_SUFFIX)
    assert len(ex["inputs"]) == 24 and ex["inputs"][-1] == v.eos_id
    assert ex["inputs"][-1 - len(suffix):-1].tolist() == suffix
    assert len(ex["targets"]) == 6 and ex["targets"][-1] == v.eos_id
    assert ex["inputs_truncated"] and ex["targets_truncated"]
    assert tasks.TRUNCATIONS.truncated[(tasks.WORLD_SFT, "inputs")] >= 1
    assert f"{tasks.WORLD_SFT} inputs: truncated" in tasks.truncation_report()
    check_batch(batch(tasks.WORLD_SFT, lengths=short), lengths=short)


# ---- Real-data tasks on small files in the real schemas ------------------------------


def write_jsonl(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def tldr_row(split: str, i: int) -> dict:
    return {"id": f"t3_{split}{i}", "subreddit": "relationships",
            "title": f"My (25F) roommate ate my lunch again #{i}",
            "post": "So this keeps happening. My roommate eats my food every week and "
                    "I don't know how to bring it up without a fight. Any advice?",
            "summary": "Roommate keeps eating my food, how do I confront her?"}  # fmt: skip


def openai_row(i: int, split: str) -> dict:
    return {
        "info": {"id": f"t3_c{i}", "post": "My dog ate my homework. Teacher didn't believe me.",
                 "title": "TIFU by trusting my dog", "subreddit": "tifu"},
        "summaries": [{"text": " Dog ate homework, teacher laughed.", "policy": "sup2",
                       "note": ""},
                      {"text": " I have a dog.", "policy": "ref", "note": None}],
        "choice": i % 2, "worker": f"w{i}", "batch": "batch7", "split": split,
        "extra": {"confidence": 6},
    }  # fmt: skip


@pytest.fixture(scope="module")
def tldr_files(tmp_path_factory, world_dir):
    root = tmp_path_factory.mktemp("tldr")
    for split in ("train", "valid", "test"):
        write_jsonl(root / "tldr_3_filtered" / f"{split}.jsonl",
                    [tldr_row(split, i) for i in range(6)])  # fmt: skip
    rows = [openai_row(i, s) for i, s in enumerate(["train"] * 6 + ["valid1"] * 4 + ["valid2"] * 4)]
    write_jsonl(root / "comparisons" / "batch1.json", rows[:7])
    write_jsonl(root / "comparisons" / "batch2.json", rows[7:])
    generator.ensure_world(world_dir, SMALL)
    return root, generator.vocab_path(world_dir)  # stands in for a T5 spiece.model


def test_tldr_tasks_yield_batches(tldr_files):
    root, vocab_path = tldr_files
    names = tasks.register_tldr_tasks(
        vocab_path=vocab_path,
        sft_path=str(root / "tldr_3_filtered"),
        comparisons_path=str(root / "comparisons"),
    )
    assert names == [tasks.TLDR_SFT, tasks.TLDR_COMPARISONS]
    for name in names:
        for split in ("train", "validation", "test"):
            check_batch(batch(name, split))
    ex = first_example(tasks.TLDR_COMPARISONS, split="test")
    assert ex["inputs_pretokenized"].decode() == templates.tldr_prompt(
        "tifu", "TIFU by trusting my dog", "My dog ate my homework. Teacher didn't believe me.")
    assert ex["targets_pretokenized"] == b" Dog ate homework, teacher laughed."
    assert ex["choice"] == 10 % 2  # the first valid2 line
    sft = first_example(tasks.TLDR_SFT)
    assert sft["targets_pretokenized"].decode() == " " + tldr_row("train", 0)["summary"]
    # A T5 vocabulary has 100 sentinel ids after the pieces.
    vocabulary = seqio.get_mixture_or_task(tasks.TLDR_SFT).output_features["inputs"].vocabulary
    assert vocabulary.vocab_size == vocab.sentencepiece_vocabulary(vocab_path).vocab_size + 100


def test_tldr_task_bad_line_raises_or_is_skipped(tldr_files, tmp_path, capsys):
    _, vocab_path = tldr_files
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [tldr_row("train", 0), tldr_row("train", 0), tldr_row("train", 1)])
    splits = {s: str(bad) for s in tasks.SEQIO_SPLITS}
    tasks.register_tldr_tasks(vocab_path=vocab_path, sft_path=splits)
    with pytest.raises(jsonl.DataError, match=rf"{bad}:2: duplicate id 't3_train0'"):
        batch(tasks.TLDR_SFT, batch_size=1)
    tasks.register_tldr_tasks(vocab_path=vocab_path, sft_path=splits, skip_invalid=True)
    check_batch(batch(tasks.TLDR_SFT, batch_size=2), batch_size=2)
    assert "skipped 1 invalid lines (duplicate id: 1)" in capsys.readouterr().err


def test_tfds_tasks_under_mock_data(tldr_files, tmp_path):
    _, vocab_path = tldr_files
    names = tasks.register_tfds_tasks(vocab_path=vocab_path, data_dir=str(tmp_path))
    assert names == ["xsum", "cnn_dailymail", "reddit_tifu"]
    with tfds.testing.mock_data(num_examples=4):
        for name in names:
            check_batch(batch(name, batch_size=2), batch_size=2)
            ex = first_example(name, split="validation")
            text = ex["inputs_pretokenized"].decode()
            assert text.endswith(templates.TLDR_SUFFIX)
            assert text.startswith("SUBREDDIT: r/tifu" if name == "reddit_tifu" else "ARTICLE: ")
            assert ex["targets_pretokenized"].startswith(b" ")


def test_tfds_task_without_prepared_data_fails_fast(tldr_files, tmp_path):
    _, vocab_path = tldr_files
    tasks.register_tfds_tasks(vocab_path=vocab_path, data_dir=str(tmp_path), names=["xsum"])
    with pytest.raises(AssertionError, match="could not find data"):
        batch("xsum")


def test_vocabulary_paths_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SentencePiece model"):
        tasks.register_tldr_tasks(vocab_path=str(tmp_path / "spiece.model"), sft_path="x")
    np.testing.assert_equal(vocab_training.EOS_ID, 1)
