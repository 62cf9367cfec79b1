"""Failure paths of data and checkpoint input: every error names the file and the place.

JSONL readers: undecodable bytes, unknown ``split`` values, per-split counts, empty
files. HF checkpoints: corrupt safetensors, invalid or ill-typed ``config.json``,
non-finite tensors. Every file is tiny and written by the test in the real format.
"""

import json
import re

import numpy as np
import pytest

# The tiny-checkpoint helpers of the HF round-trip tests (tests/ is on sys.path).
from hf_checkpoint_test import _params, _read, _write
from data_jsonl_test import comparison_row, sft_row, write
from nlhf_jax import testing
from nlhf_jax.checkpoints import hf
from nlhf_jax.data import jsonl

# ---- JSONL: undecodable bytes ------------------------------------------------------


def _write_bytes(path, lines: list[bytes]) -> str:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return str(path)


def _with_bad_byte(row: dict) -> bytes:
    # A Latin-1 "é" (0xE9) inside the post: valid JSON text, invalid UTF-8.
    return json.dumps(row).encode("utf-8").replace(b"house last", b"maison \xe9 last")


def test_undecodable_line_names_file_and_line(tmp_path):
    path = _write_bytes(tmp_path / "train.jsonl", [
        json.dumps(sft_row(0)).encode(), _with_bad_byte(sft_row(1)), json.dumps(sft_row(2)).encode(),
    ])  # fmt: skip
    with pytest.raises(jsonl.DataError, match=rf"^{re.escape(path)}:2: not valid UTF-8") as err:
        jsonl.read_sft(path)
    assert err.value.line == 2 and err.value.kind == "not UTF-8"


def test_undecodable_line_is_skipped_and_counted(tmp_path, capsys):
    path = _write_bytes(tmp_path / "train.jsonl", [
        json.dumps(sft_row(0)).encode(), _with_bad_byte(sft_row(1)), json.dumps(sft_row(2)).encode(),
    ])  # fmt: skip
    records, report = jsonl.read_sft(path, skip_invalid=True)
    # The bad line does not poison the lines after it.
    assert [r["id"] for r in records] == ["t3_0", "t3_2"]
    assert dict(report.skipped) == {"not UTF-8": 1}
    assert f"{path}:2: not valid UTF-8" in capsys.readouterr().err


# ---- JSONL: splits -----------------------------------------------------------------


def test_split_counts_are_reported_per_file(tmp_path):
    rows = [comparison_row(i, split=s) for i, s in enumerate(["train"] * 3 + ["valid1"] * 2)]
    path = write(tmp_path / "batch1.json", rows)
    messages = []
    records, report = jsonl.read_comparisons(path, splits=("train",), report_fn=messages.append)
    assert len(records) == 3
    assert dict(report.split_counts[path]) == {"train": 3, "valid1": 2}
    assert f"{path}: 3 train, 2 valid1; kept 3, skipped 0" in "\n".join(messages)


def test_unknown_split_is_an_error_naming_value_file_first_line_and_count(tmp_path):
    splits = ["train", "Train", "train", "Train", "valid1"]
    path = write(tmp_path / "batch1.json", [comparison_row(i, split=s) for i, s in enumerate(splits)])
    with pytest.raises(jsonl.DataError, match=rf"^{re.escape(path)}:2: unknown split 'Train' "
                       r"in 2 rows \(first at line 2\)") as err:  # fmt: skip
        jsonl.read_comparisons(path, splits=("train",))
    assert err.value.kind == "unknown split" and "train, valid1, valid2" in str(err.value)


def test_unknown_split_is_skipped_with_counts_under_skip_invalid(tmp_path):
    splits = ["train", "Train", "train", "Train", "valid1"]
    path = write(tmp_path / "batch1.json", [comparison_row(i, split=s) for i, s in enumerate(splits)])
    messages = []
    records, report = jsonl.read_comparisons(path, splits=("train",), skip_invalid=True,
                                             report_fn=messages.append)  # fmt: skip
    assert [r["id"] for r in records] == ["t3_0", "t3_2"]
    assert dict(report.skipped) == {"unknown split": 2}
    out = "\n".join(messages)
    assert f"{path}:2: unknown split 'Train' in 2 rows (first at line 2)" in out
    # Without a split filter, the rows are kept (the caller takes the file whole), but
    # the misspelt value is still reported.
    messages.clear()
    every, report = jsonl.read_comparisons(path, report_fn=messages.append)
    assert len(every) == 5 and report.n_skipped == 0
    assert f"{path}:2: unknown split 'Train' in 2 rows" in "\n".join(messages)


# ---- JSONL: empty files ------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n  \n"], ids=["empty", "blank lines"])
def test_empty_file_is_an_error(tmp_path, content):
    empty = tmp_path / "valid.jsonl"
    empty.write_text(content)
    with pytest.raises(jsonl.DataError, match=rf"^{re.escape(str(empty))}: no records") as err:
        jsonl.read_sft(str(empty))
    assert err.value.kind == "empty file"
    # Also when it is one of several files.
    good = write(tmp_path / "train.jsonl", [sft_row(0)])
    with pytest.raises(jsonl.DataError, match=re.escape(str(empty))):
        jsonl.read_sft([good, str(empty)])


def test_file_with_every_line_skipped_is_an_error(tmp_path):
    path = write(tmp_path / "train.jsonl", ["{oops", sft_row(1, summary="")])
    with pytest.raises(jsonl.DataError, match=rf"^{re.escape(path)}: no valid records; all 2 "
                       r"lines skipped") as err:  # fmt: skip
        jsonl.read_sft(path, skip_invalid=True, report_fn=None)
    assert err.value.kind == "empty file"


def test_no_rows_of_the_requested_splits_is_an_error(tmp_path):
    path = write(tmp_path / "batch1.json", [comparison_row(0), comparison_row(1)])
    with pytest.raises(jsonl.DataError, match=rf"{re.escape(path)}.*no records of splits "
                       r"\['valid2'\].*2 train"):  # fmt: skip
        jsonl.read_comparisons(path, splits=("valid2",), report_fn=None)


# ---- HF checkpoints ----------------------------------------------------------------


@pytest.fixture()
def saved(tmp_path):
    config = testing.tiny_t5_config()
    hf.save_t5(config, _params(config), tmp_path)
    return tmp_path


def test_truncated_safetensors_names_the_file(saved):
    weights = saved / hf.WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{re.escape(str(weights))}: not a readable "
                       r"safetensors file \(.*incomplete metadata"):  # fmt: skip
        hf.load_t5(saved)


def test_invalid_config_json_names_file_line_and_column(saved):
    path = saved / hf.CONFIG_NAME
    text = path.read_text().replace('"d_ff": 64,', '"d_ff": 64,,')
    assert text.splitlines()[4].endswith(",,")  # line 5 of the indented file
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:5:\d+: invalid JSON"):
        hf.load_t5(saved)


@pytest.mark.parametrize("field, value, expected", [
    ("d_model", "32", "an integer"),
    ("num_layers", 2.0, "an integer"),
    ("layer_norm_epsilon", "1e-6", "a number"),
    ("scale_decoder_outputs", "false", "a boolean"),
    ("feed_forward_proj", ["relu"], "a string"),
])  # fmt: skip
def test_ill_typed_config_field_names_file_field_and_type(saved, field, value, expected):
    path = saved / hf.CONFIG_NAME
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: field '{field}' must be "
                       rf"{expected}, got {re.escape(json.dumps(value))}"):  # fmt: skip
        hf.load_t5(saved)


def test_non_finite_tensor_names_file_tensor_and_count(saved):
    name = "encoder.block.1.layer.0.SelfAttention.q.weight"
    tensors = _read(saved)
    tensors[name][0, :3] = np.nan
    tensors[name][1, 0] = -np.inf
    _write(saved, tensors)
    with pytest.raises(ValueError, match=rf"tensor '{re.escape(name)}' in "
                       rf"{re.escape(str(saved / hf.WEIGHTS_NAME))} has 4 non-finite values"):
        hf.load_t5(saved)
