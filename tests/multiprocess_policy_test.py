"""Online policy optimisation on many hosts: 2 local processes x 2 CPU devices train
exactly like 1 process x 4 devices, through `launch/multiprocess_cpu.sh` and the
world's own gin configs: Nash-MD-PG against a learned PM (whose jitted forward pass is
a global computation), RLHF against P*'s Bradley-Terry reward and IPO-MD against P*
(host-side judges; IPO-MD also takes the reference log-probs of both responses).

Tolerances. Parameters: 1e-5 (they agree to ~1e-7: only the order of the cross-host
gradient reduction differs). Everything the hosts compute from the samples (rewards,
preferences, lengths, style shares): 1e-5, which also proves the rollouts are the same
token for token. Losses: 1e-5 of the run's largest |loss|. The RLHF surrogate is a batch
mean of (r - mean r) * log pi(y) with |r| ~ 30 and |log pi(y)| ~ 50 summed in float32,
so two summation orders leave ~1e-4 absolute on a loss that nets out near 1 (measured:
8e-5 on -1.644 after two updates, on a run whose first loss is -31).
"""

import json
import os
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

from nlhf_jax import partitioning
from nlhf_jax import run_train
from nlhf_jax import trainer
from nlhf_jax.data.world import generator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = generator.WorldConfig(n_sft=(32, 4, 4), n_comparisons=(64, 8, 8), n_prompts_train=16)
TINY = ["--gin.t5.T5Config.emb_dim=16", "--gin.t5.T5Config.mlp_dim=32", "--gin.t5.T5Config.num_heads=2",
        "--gin.t5.T5Config.head_dim=8", "--gin.t5.T5Config.num_encoder_layers=1",
        "--gin.t5.T5Config.num_decoder_layers=1", "--gin.trainer.LoopConfig.progress=False",
        "--gin.train_state.ScheduleConfig.warmup_steps=1", "--gin.NUM_STEPS=2", "--gin.BATCH_SIZE=8"]
STEPS = 3
# Host-side metrics: computed from the samples, identical when the rollouts are.
SAMPLE_KEYS = ("policy/reward", "nashmd/pref_vs_alt", "rollout/length", "rollout/eos_rate",
               "world/style/concise", "world/style/exhaustive", "world/tv_to_nash", "world/tv_to_rlhf")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny world, an SFT run and a PM on it (trained here, on this process's 8 devices)."""
    root = tmp_path_factory.mktemp("mp_policy")
    world = str(root / "world")
    generator.generate(WORLD, world)
    sft, pm = str(root / "sft"), str(root / "pm")
    for gin_file, model_dir, extra in (
        ("configs/experiments/world_sft.gin", sft, [f"--gin.arrays.world_sft.data_dir='{world}'"]),
        ("configs/experiments/world_pm.gin", pm, [f"--gin.pairwise.world_data.data_dir='{world}'",
                                                  f"--gin.INITIAL_CHECKPOINT='{sft}'"]),
    ):
        rc = run_train.main([f"--gin_file={os.path.join(REPO, gin_file)}", f"--gin.MODEL_DIR='{model_dir}'",
                             *TINY, *extra])
        gin.clear_config()
        assert rc == 0, gin_file
    return root, world, sft, pm


def _policy_args(algorithm, world, sft, pm):
    """(gin file, flags) of a 3-step world policy run: Nash-MD-PG against the PM, IPO-MD
    against P* (`configs/overlays/oracle_judge.gin`), or RLHF against P*'s BT reward
    (`configs/overlays/oracle_bt_reward.gin`)."""
    flags = [f"--gin.NUM_STEPS={STEPS}", "--gin.BATCH_SIZE=8", "--gin.MAX_DECODE_LEN=8",
             "--gin.trainer.LoopConfig.log_every=1", "--gin.trainer.LoopConfig.progress=False",
             "--gin.arrays.world_prompts.input_len=80", f"--gin.SFT_DIR='{sft}'",
             f"--gin.arrays.world_prompts.data_dir='{world}'", f"--gin.vocab.world_vocabulary.data_dir='{world}'",
             f"--gin.describe.StyleMonitor.data_dir='{world}'"]
    if algorithm == "nash_md":
        return "configs/experiments/world_nash_md.gin", flags + [f"--gin.JUDGE_DIR='{pm}'"]
    if algorithm == "ipo_md":
        return "configs/experiments/world_ipo_md.gin", flags + [
            "--gin_file=configs/overlays/oracle_judge.gin", f"--gin.judges.WorldJudge.data_dir='{world}'"]
    return "configs/experiments/world_rlhf.gin", flags + [
        "--gin_file=configs/overlays/oracle_bt_reward.gin", f"--gin.judges.WorldBTReward.data_dir='{world}'",
        "--gin.judges.WorldBTReward.n_posts=16"]


def _one_process(gin_file, model_dir, flags):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "nlhf_jax.main", "train", f"--gin_file={gin_file}",
                             f"--gin.MODEL_DIR='{model_dir}'", *flags], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_processes(gin_file, model_dir, flags):
    env = dict(os.environ, NLHF=os.path.join(os.path.dirname(sys.executable), "nlhf"), NPROC="2", DEVICES="2")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(["bash", "launch/multiprocess_cpu.sh", gin_file, model_dir, *flags], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]


def _records(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _params(model_dir):
    mesh = partitioning.make_mesh(partitioning.MeshConfig())
    _, _, params = trainer.load_frozen(model_dir, mesh, partitioning.default_rules())
    return jax.device_get(params)


@pytest.mark.slow
def test_two_processes_train_policies_like_one(runs):
    root, world, sft, pm = runs
    algorithms = ("nash_md", "rlhf", "ipo_md")
    single = {a: str(root / f"one_{a}") for a in algorithms}
    multi = {a: str(root / f"two_{a}") for a in algorithms}
    # The single-process references run side by side, then each 2-process run.
    procs = {}
    for a in algorithms:
        gin_file, flags = _policy_args(a, world, sft, pm)
        procs[a] = _one_process(gin_file, single[a], flags)
    for a, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{a} on one process:\n{out[-4000:]}"
    for a in algorithms:
        gin_file, flags = _policy_args(a, world, sft, pm)
        _two_processes(gin_file, multi[a], flags)

    for a in algorithms:
        one, two = _records(single[a]), _records(multi[a])
        assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, STEPS + 1)), a
        scale = max(1.0, max(abs(r["policy/loss"]) for r in one))
        for r1, r2 in zip(one, two):
            assert abs(r1["policy/loss"] - r2["policy/loss"]) <= 1e-5 * scale, (a, r1["step"], r1, r2)
            keys = [k for k in SAMPLE_KEYS if k in r1]
            assert "world/style/concise" in keys and len(keys) >= 5, sorted(r1)
            for k in keys:
                assert abs(r1[k] - r2[k]) <= 1e-5, (a, r1["step"], k, r1[k], r2[k])
        assert all(os.path.exists(os.path.join(multi[a], f"process_{i}.log")) for i in range(2))
        p1, p2 = _params(single[a]), _params(multi[a])
        leaves1, leaves2 = jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)
        assert len(leaves1) == len(leaves2) > 0
        for x, y in zip(leaves1, leaves2):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
        # the runs moved the policy (the comparison is not between two copies of the SFT)
        sft_params = jax.tree_util.tree_leaves(_params(sft))
        assert max(float(np.max(np.abs(x - s))) for x, s in zip(leaves1, sft_params)) > 1e-4, a
