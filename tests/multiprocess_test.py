"""Two local processes x 2 CPU devices train exactly like one process x 4 devices."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--gin.NUM_STEPS=6", "--gin.trainer.LoopConfig.log_every=1",
         "--gin.trainer.LoopConfig.progress=False", "--gin.BATCH_SIZE=8",
         "--gin.t5.T5Config.emb_dim=16", "--gin.t5.T5Config.mlp_dim=32",
         "--gin.t5.T5Config.num_heads=2", "--gin.t5.T5Config.head_dim=8",
         "--gin.t5.T5Config.num_encoder_layers=1", "--gin.t5.T5Config.num_decoder_layers=1"]
GIN = "configs/experiments/copy_sft.gin"


def _losses(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["sft/loss"] for r in rows if "sft/loss" in r]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, NLHF=os.path.join(bindir, "nlhf"), NPROC="2", DEVICES="2")
    env.pop("XLA_FLAGS", None)
    mp_dir = str(tmp_path / "mp")
    proc = subprocess.run(["bash", "launch/multiprocess_cpu.sh", GIN, mp_dir, *FLAGS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sp_dir = str(tmp_path / "sp")
    env1 = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    subprocess.run([sys.executable, "-m", "nlhf_jax.main", "train", f"--gin_file={GIN}",
                    f"--gin.MODEL_DIR='{sp_dir}'", *FLAGS], cwd=REPO, env=env1, check=True,
                   capture_output=True, timeout=600)
    mp, sp = _losses(mp_dir), _losses(sp_dir)
    assert len(mp) == len(sp) == 6
    for a, b in zip(mp, sp):
        assert abs(a - b) <= 1e-5, (mp, sp)
