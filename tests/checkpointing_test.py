"""Checkpoints: exact resume after SIGKILL, SIGTERM, mesh change, mismatches, NaN guard."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import numpy as np
import pytest

from nlhf_jax import checkpointing
from nlhf_jax import input_pipeline
from nlhf_jax import partitioning
from nlhf_jax import train_state as ts
from nlhf_jax import trainer
from nlhf_jax.models import t5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))

GIN = """
from __gin__ import dynamic_registration
from nlhf_jax import input_pipeline
from nlhf_jax import train_state
from nlhf_jax.models import t5
import slow_dataset

include 'configs/models/t5_1_1_tiny.gin'
include 'configs/runs/sft.gin'
t5.T5Config.vocab_size = 32
t5.T5Config.emb_dim = 16
t5.T5Config.num_heads = 2
t5.T5Config.head_dim = 8
t5.T5Config.mlp_dim = 32
t5.T5Config.dropout_rate = 0.1
TRAIN_DATA = @slow_dataset.slow_copy_task()
slow_dataset.slow_copy_task.num_examples = 64
slow_dataset.slow_copy_task.vocab_size = 32
slow_dataset.slow_copy_task.input_len = 6
slow_dataset.slow_copy_task.target_len = 6
NUM_STEPS = 24
BATCH_SIZE = 8
SAVE_EVERY = 4
LEARNING_RATE = 0.01
train_state.OptimizerConfig.name = "adamw"
train_state.ScheduleConfig.kind = "constant"
"""


def _train_cmd(gin_path, model_dir, *extra):
    return [sys.executable, "-m", "nlhf_jax.main", "train", f"--gin_file={gin_path}",
            f"--gin.MODEL_DIR='{model_dir}'", "--gin.trainer.LoopConfig.progress=False", *extra]


def _env(devices=4):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = os.pathsep.join([TESTS, REPO, env.get("PYTHONPATH", "")])
    return env


def _final_params(model_dir):
    path = os.path.join(model_dir, "checkpoints")
    step = max(int(n) for n in os.listdir(path) if n.isdigit())
    import orbax.checkpoint as ocp

    restored = ocp.PyTreeCheckpointer().restore(os.path.join(path, str(step), "default"))
    return step, restored["params"]


@pytest.fixture(scope="module")
def gin_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gin") / "slow.gin"
    path.write_text(GIN)
    return str(path)


@pytest.fixture(scope="module")
def uninterrupted(gin_file, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("full") / "run")
    subprocess.run(_train_cmd(gin_file, model_dir), check=True, cwd=REPO, env=_env(),
                   capture_output=True)
    return _final_params(model_dir)


def _wait_for_step(model_dir, step, proc, timeout=300):
    marker = os.path.join(model_dir, "checkpoints", str(step), "commit_success.txt")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isdir(os.path.join(model_dir, "checkpoints", str(step))) and not any(
            n.endswith(".orbax-checkpoint-tmp") or "tmp" in n
            for n in os.listdir(os.path.join(model_dir, "checkpoints"))
        ):
            return
        if os.path.exists(marker):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc={proc.returncode}) before step {step} was saved")
        time.sleep(0.05)
    raise AssertionError(f"step {step} was not saved within {timeout}s")


def test_sigkill_then_resume_is_bitwise_exact(gin_file, uninterrupted, tmp_path):
    model_dir = str(tmp_path / "run")
    proc = subprocess.Popen(_train_cmd(gin_file, model_dir), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_step(model_dir, 8, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = max(int(n) for n in os.listdir(os.path.join(model_dir, "checkpoints")) if n.isdigit())
    assert killed_at < 24, "the run finished before it could be killed"
    subprocess.run(_train_cmd(gin_file, model_dir), check=True, cwd=REPO, env=_env(), capture_output=True)
    step, params = _final_params(model_dir)
    ref_step, ref_params = uninterrupted
    assert step == ref_step == 24
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_saves_and_exits_zero_then_resumes(gin_file, uninterrupted, tmp_path):
    model_dir = str(tmp_path / "run")
    proc = subprocess.Popen(_train_cmd(gin_file, model_dir), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_step(model_dir, 4, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "preempted" in err or "SIGTERM" in err
    subprocess.run(_train_cmd(gin_file, model_dir), check=True, cwd=REPO, env=_env(), capture_output=True)
    _, params = _final_params(model_dir)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(uninterrupted[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------ in-process tests

CFG = t5.T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=1, num_decoder_layers=1)
TX = ts.OptimizerConfig(name="adamw").build()


def _state(mesh_cfg, cfg=CFG, seed=0):
    mesh = partitioning.make_mesh(mesh_cfg)
    model = t5.EncoderDecoder(cfg)
    init = lambda rng: t5.init_variables(model, rng)["params"]  # noqa: E731
    state, shardings, _ = trainer.init_train_state(init, TX, mesh, partitioning.default_rules(), jax.random.key(seed))
    return state, shardings


def test_saved_on_2x4_restores_on_8x1(tmp_path):
    state, _ = _state(partitioning.MeshConfig(2, 4, 1), seed=1)
    ckpt = checkpointing.Checkpointer(str(tmp_path), checkpointing.CheckpointConfig(async_save=False))
    ckpt.save(state.replace(step=state.step + 5), force=True)
    ckpt.close()
    target, shardings = _state(partitioning.MeshConfig(8, 1, 1), seed=2)
    ckpt = checkpointing.Checkpointer(str(tmp_path), checkpointing.CheckpointConfig())
    restored = ckpt.restore_latest(target, shardings)
    assert int(restored.step) == 5
    for a, b, s in zip(jax.tree_util.tree_leaves(restored.params), jax.tree_util.tree_leaves(state.params),
                       jax.tree_util.tree_leaves(shardings.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding.mesh.shape["data"] == 8 and a.sharding.spec == s.spec


def test_mismatched_checkpoint_names_the_first_bad_path(tmp_path):
    state, _ = _state(partitioning.MeshConfig(1, 8, 1))
    ckpt = checkpointing.Checkpointer(str(tmp_path), checkpointing.CheckpointConfig(async_save=False))
    ckpt.save(state, force=True)
    ckpt.close()
    other = t5.T5Config(**{**CFG.__dict__, "mlp_dim": 64})
    target, shardings = _state(partitioning.MeshConfig(1, 8, 1), cfg=other)
    ckpt = checkpointing.Checkpointer(str(tmp_path), checkpointing.CheckpointConfig())
    with pytest.raises(checkpointing.CheckpointMismatchError) as e:
        ckpt.restore_latest(target, shardings)
    msg = str(e.value)
    assert "mlp" in msg and "(16, 32)" in msg and "(16, 64)" in msg
    # params_only from another run's directory reports the same way
    with pytest.raises(checkpointing.CheckpointMismatchError, match="mlp"):
        checkpointing.restore_params(str(tmp_path), target.params, shardings.params)
    # a missing entry
    deeper = t5.T5Config(**{**CFG.__dict__, "num_decoder_layers": 2})
    target, shardings = _state(partitioning.MeshConfig(1, 8, 1), cfg=deeper)
    with pytest.raises(checkpointing.CheckpointMismatchError, match="layers_1.*no such entry"):
        checkpointing.restore_params(str(tmp_path), target.params, shardings.params)


def test_restore_modes_from_initial_checkpoint(tmp_path):
    src, _ = _state(partitioning.MeshConfig(1, 8, 1), seed=3)
    src = src.replace(step=src.step + 7)
    ckpt = checkpointing.Checkpointer(str(tmp_path / "src"), checkpointing.CheckpointConfig(async_save=False))
    ckpt.save(src, force=True)
    ckpt.close()
    for mode, want_step in (("params_only", 0), ("full_state", 7), ("none", 0)):
        state, shardings = _state(partitioning.MeshConfig(2, 2, 2), seed=4)
        cfg = checkpointing.CheckpointConfig(restore_mode=mode, initial_checkpoint=str(tmp_path / "src"))
        own = checkpointing.Checkpointer(str(tmp_path / mode), cfg)
        out, how = trainer.restore_or_init(checkpointer=own, state=state, shardings=shardings, tx=TX)
        own.close()
        assert int(out.step) == want_step, how
        ref = state if mode == "none" else src
        np.testing.assert_array_equal(
            np.asarray(out.params["token_embedder"]["embedding"]),
            np.asarray(ref.params["token_embedder"]["embedding"]),
        )
    with pytest.raises(ValueError, match="restore_mode"):
        checkpointing.CheckpointConfig(restore_mode="params")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    mesh_cfg = partitioning.MeshConfig(1, 8, 1)
    mesh = partitioning.make_mesh(mesh_cfg)
    rules = partitioning.default_rules()
    import functools

    from nlhf_jax import metrics as metrics_lib
    from nlhf_jax import steps

    good = input_pipeline.copy_task(num_examples=32, vocab_size=32, input_len=4, target_len=4)
    bad_feats = dict(good.features)
    bad_feats["decoder_loss_weights"] = np.full_like(good.features["decoder_loss_weights"], np.nan)
    bad = input_pipeline.ArrayDataset(bad_feats)
    state, shardings = _state(mesh_cfg)
    model = t5.EncoderDecoder(CFG)
    step_fn = functools.partial(steps.sft_train_step, model=model, tx=TX)
    jitted = trainer.jit_step(step_fn, shardings, good.batch(0, 8), mesh)
    ckpt = checkpointing.Checkpointer(str(tmp_path), checkpointing.CheckpointConfig(save_every_steps=2, async_save=False))
    writer = metrics_lib.MetricWriter(str(tmp_path), tensorboard=False)
    res = trainer.run_loop(state=state, jitted_step=jitted, dataset=good,
                           loop=trainer.LoopConfig(num_steps=4, batch_size=8, progress=False),
                           mesh=mesh, rules=rules, checkpointer=ckpt, writer=writer)
    with pytest.raises(trainer.NonFiniteLossError, match=r"non-finite sft/loss=nan at step 4.*last good checkpoint is step 4"):
        trainer.run_loop(state=res.state, jitted_step=jitted, dataset=bad,
                         loop=trainer.LoopConfig(num_steps=8, batch_size=8, progress=False),
                         mesh=mesh, rules=rules, checkpointer=ckpt, writer=writer)
    assert ckpt.latest_step() == 4
    ckpt.close()
    writer.close()
