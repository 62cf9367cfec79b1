"""bench/gpu.py: the FLOP count, the peak table, the sizes, and a --tiny run end to end.

The end-to-end run is a subprocess on one CPU device (the script's train row uses one
device; the Nash-MD row's mesh spans all of them), with the suite's other XLA flags.
"""

import importlib
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "gpu.py")


@pytest.fixture(scope="module")
def gpu_bench():
    sys.path.insert(0, os.path.join(REPO, "bench"))  # as when the script runs
    try:
        yield importlib.import_module("gpu")
    finally:
        sys.path.remove(os.path.join(REPO, "bench"))


def _one_device_env() -> dict:
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = flags.strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _run(tmp_path, *extra):
    out = tmp_path / "tmp.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--out", str(out), *extra], cwd=REPO,
                          env=_one_device_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def test_train_flops_by_hand(gpu_bench):
    from nlhf_jax import testing

    # D 32, F 64 (gated: 2 input matmuls), V 64, H x d_kv = 32, 2 + 2 layers; B 1, L_in 4, L_t 2.
    config = testing.tiny_t5_config()
    mlp = 2 * 32 * 64 + 64 * 32
    encoder = 2 * 4 * (4 * 32 * 32 + mlp)
    decoder = 2 * (2 * (6 * 32 * 32 + mlp) + 4 * 2 * 32 * 32)
    logits = 2 * 32 * 64
    attention = 2 * (2 * 4 * 4 * 32) + 2 * (2 * 2 * 2 * 32 / 2 + 2 * 2 * 4 * 32)
    assert gpu_bench.train_flops(config, 1, 4, 2) == 6 * (encoder + decoder + logits + attention)
    assert gpu_bench.train_flops(config, 3, 4, 2) == 3 * gpu_bench.train_flops(config, 1, 4, 2)


def test_peak_table(gpu_bench):
    assert gpu_bench.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_bench.peak_bf16_tflops("NVIDIA H200") == 989.0
    assert gpu_bench.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_bench.peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_bench.peak_bf16_tflops("cpu") is None
    assert gpu_bench.peak_bf16_tflops("TPU v4") is None


@pytest.mark.parametrize("size", ["base", "large"])
def test_sizes_match_the_model_gin_files(gpu_bench, size):
    path = os.path.join(REPO, "configs", "models", f"t5_1_1_{size}.gin")
    with open(path, encoding="utf-8") as f:
        bound = dict(re.findall(r"^t5\.T5Config\.(\w+) = (\S+)$", f.read(), re.MULTILINE))
    for name, value in gpu_bench.SIZES[size].items():
        assert int(bound[name]) == value, (size, name)
    assert int(bound["vocab_size"]) == 32128


@pytest.mark.slow
def test_tiny_run_writes_every_row(tmp_path):
    result, stdout = _run(tmp_path)
    rows = {r["workload"]: r for r in result["rows"]}
    assert [r["size"] for r in result["rows"]] == ["tiny"] * 4
    assert set(rows) == {"train", "sample_ours", "sample_hf", "nash_md"}
    for row in rows.values():
        if row["status"].startswith("skipped: "):
            continue  # e.g. torch not importable: allowed, with its reason
        assert row["status"] == "ok", row
        assert row["value"] > 0 and row["s_per_call"] > 0 and row["times"], row
    assert rows["train"]["status"] == "ok" and rows["sample_ours"]["status"] == "ok"
    assert rows["nash_md"]["status"] == "ok"
    assert rows["train"]["mfu"] == "n/a"  # no peak FLOP/s for a CPU
    assert rows["train"]["tflop_per_step"] > 0
    assert result["backend"] == "cpu" and result["peak_bf16_tflops"] is None
    assert "| train | tiny |" in stdout and "| n/a |" in stdout


def test_budget_guard_skips_every_row(tmp_path):
    result, stdout = _run(tmp_path, "--budget_s", "0")
    assert [r["status"] for r in result["rows"]] == ["skipped: budget"] * 4
    assert "skipped: budget" in stdout
