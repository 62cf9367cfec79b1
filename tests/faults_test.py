"""Failure paths of a training run: NaN guard, damaged checkpoints, SIGTERM and SIGKILL.

The subprocess tests stop runs at named points (`nlhf_jax.faults`), not after a wait,
so they hit the same moment on an idle machine and a loaded one.
"""

import functools
import glob
import json
import os
import random
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from nlhf_jax import checkpointing
from nlhf_jax import faults
from nlhf_jax import metrics as metrics_lib
from nlhf_jax import partitioning
from nlhf_jax import steps
from nlhf_jax import train_state as ts
from nlhf_jax import trainer
from nlhf_jax.data import input_pipeline
from nlhf_jax.models import t5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------- in-process runs

CFG = t5.T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=1, num_decoder_layers=1)
TX = ts.OptimizerConfig(name="adamw").build()
DATA = input_pipeline.copy_task(num_examples=32, vocab_size=32, input_len=4, target_len=4)


class _Run:
    """A tiny SFT run driven through `trainer.run_loop`, as `nlhf train` drives it."""

    def __init__(self, model_dir, save_every=1, keep=3):
        self.mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 8, 1))
        self.rules = partitioning.default_rules()
        model = t5.EncoderDecoder(CFG)
        init = lambda rng: t5.init_variables(model, rng)["params"]  # noqa: E731
        self.state, self.shardings, _ = trainer.init_train_state(
            init, TX, self.mesh, self.rules, jax.random.key(0))
        self.ckpt = checkpointing.Checkpointer(model_dir, checkpointing.CheckpointConfig(
            save_every_steps=save_every, keep=keep, async_save=False))
        restored = self.ckpt.restore_latest(self.state, self.shardings)
        if restored is not None:
            self.state = restored
        self.writer = metrics_lib.MetricWriter(model_dir, tensorboard=False)
        step_fn = functools.partial(steps.sft_train_step, model=model, tx=TX)
        self.jitted = trainer.jit_step(step_fn, self.shardings, DATA.batch(0, 8), self.mesh)

    def loop(self, num_steps, step_fn=None, eval_fn=None):
        loop = trainer.LoopConfig(num_steps=num_steps, batch_size=8, progress=False, log_every=1)
        step_fn = step_fn or trainer.supervised_step_fn(self.jitted, DATA, loop, self.mesh)
        try:
            return trainer.run_loop(state=self.state, step_fn=step_fn, loop=loop, mesh=self.mesh,
                                    rules=self.rules, checkpointer=self.ckpt, writer=self.writer,
                                    eval_fn=eval_fn)
        finally:
            self.ckpt.close()
            self.writer.close()


def _nan_after(run, bad_step):
    """A step callback whose update at `bad_step` leaves NaN parameters while the loss it
    reports (computed before the update, as every step does) is finite."""
    loop = trainer.LoopConfig(num_steps=100, batch_size=8)
    real = trainer.supervised_step_fn(run.jitted, DATA, loop, run.mesh)

    def step_fn(state, step):
        state, metrics, texts = real(state, step)
        if step == bad_step:
            state = state.replace(params=jax.tree_util.tree_map(lambda x: x * jnp.nan, state.params))
        return state, metrics, texts

    return step_fn


def _restored_params(model_dir, step):
    item = os.path.join(model_dir, "checkpoints", str(step), "default")
    return ocp.PyTreeCheckpointer().restore(item)["params"]


def _all_finite(tree):
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(tree))


def test_nan_after_the_last_update_is_never_saved(tmp_path):
    """The last update turns the parameters to NaN with a finite loss: no checkpoint of it,
    the error names the last good step, and keep=3 rotation kept that step."""
    run = _Run(str(tmp_path), save_every=1, keep=3)
    with pytest.raises(trainer.NonFiniteLossError) as e:
        run.loop(6, step_fn=_nan_after(run, bad_step=5))
    msg = str(e.value)
    assert "non-finite values in the state after step 6" in msg, msg
    assert "params/" in msg and "last good checkpoint is step 5" in msg, msg
    steps_saved = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
    assert steps_saved == [3, 4, 5]
    assert _all_finite(_restored_params(str(tmp_path), 5))


def test_nan_in_the_middle_stops_before_the_next_save(tmp_path):
    """save_every=2: NaN after step 3's update; the save at step 4 is refused, the next
    loss (step 4's, computed from NaN parameters) would be NaN too."""
    run = _Run(str(tmp_path), save_every=2, keep=1)
    with pytest.raises(trainer.NonFiniteLossError, match="last good checkpoint is step 2"):
        run.loop(8, step_fn=_nan_after(run, bad_step=3))
    assert os.listdir(tmp_path / "checkpoints") == ["2"]
    assert _all_finite(_restored_params(str(tmp_path), 2))


def test_non_finite_final_eval_is_not_saved(tmp_path):
    run = _Run(str(tmp_path), save_every=2)
    with pytest.raises(trainer.NonFiniteLossError, match=r"eval/loss=nan in the final evaluation at step 4.*step 2"):
        run.loop(4, eval_fn=lambda params: {"eval/loss": float("nan")})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def _uninterrupted(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("full"))
    res = _Run(d, save_every=2).loop(6)
    return jax.device_get(res.state.params)


@pytest.fixture(scope="module")
def full_params(tmp_path_factory):
    return _uninterrupted(tmp_path_factory)


@pytest.mark.parametrize("damage", ["truncated_array", "missing_metadata"])
def test_damaged_latest_checkpoint_is_moved_aside_and_resume_is_exact(damage, tmp_path, full_params, caplog):
    d = str(tmp_path)
    _Run(d, save_every=2).loop(4)  # checkpoints 2 and 4
    item = os.path.join(d, "checkpoints", "4", "default")
    if damage == "truncated_array":
        # the array data (orbax's OCDBT layout: content-addressed files under d/)
        biggest = max(glob.glob(os.path.join(item, "d", "*")), key=os.path.getsize)
        with open(biggest, "r+b") as f:
            f.truncate(16)
    else:
        os.remove(os.path.join(item, "_METADATA"))
    caplog.set_level("WARNING")
    run = _Run(d, save_every=2)  # restores: step 4 is damaged, step 2 is read
    assert int(run.state.step) == 2
    report = " ".join(r.getMessage() for r in caplog.records)
    assert "checkpoint step 4 is damaged" in report, report
    assert ("tensor " in report) if damage == "truncated_array" else ("_METADATA is missing" in report)
    moved = os.path.join(d, "checkpoints_damaged", "4")
    assert os.path.isdir(moved), "the damaged step is moved aside, not deleted"
    res = run.loop(6)
    for a, b in zip(jax.tree_util.tree_leaves(res.state.params), jax.tree_util.tree_leaves(full_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    steps_logged = [r["step"] for r in metrics_lib.read_jsonl(os.path.join(d, "metrics.jsonl"))]
    assert steps_logged == [1, 2, 3, 4, 5, 6], "records of steps 3-4 are not duplicated"


def test_config_mismatch_is_not_mistaken_for_damage(tmp_path):
    d = str(tmp_path)
    _Run(d, save_every=2).loop(2)
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 8, 1))
    other = t5.EncoderDecoder(t5.T5Config(**{**CFG.__dict__, "mlp_dim": 64}))
    init = lambda rng: t5.init_variables(other, rng)["params"]  # noqa: E731
    state, shardings, _ = trainer.init_train_state(init, TX, mesh, partitioning.default_rules(),
                                                   jax.random.key(0))
    ckpt = checkpointing.Checkpointer(d, checkpointing.CheckpointConfig())
    with pytest.raises(checkpointing.CheckpointMismatchError, match="mlp"):
        ckpt.restore_latest(state, shardings)
    ckpt.close()
    assert not os.path.exists(os.path.join(d, "checkpoints_damaged"))


def test_metric_writer_resume_drops_later_records_and_cut_lines(tmp_path):
    w = metrics_lib.MetricWriter(str(tmp_path), tensorboard=False)
    for s in (1, 2, 3):
        w.write(s, {"a": s})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 4, "a"')  # cut short by a kill
    w = metrics_lib.MetricWriter(str(tmp_path), tensorboard=False)
    assert w.resume(2) == {"a": 2.0}
    w.write(3, {"a": 30})
    w.close()
    assert metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl")) == [
        {"step": 1, "a": 1.0}, {"step": 2, "a": 2.0}, {"step": 3, "a": 30.0}]


def test_fault_spec_parsing():
    plan = faults.parse("KILL@save#3, TERM@eval#1")
    assert plan == {"save": (signal.SIGKILL, 3), "eval": (signal.SIGTERM, 1)}
    with pytest.raises(ValueError, match="unknown point"):
        faults.parse("KILL@nowhere#1")
    with pytest.raises(ValueError, match="SIGNAL@POINT#N"):
        faults.parse("save#3")


# ---------------------------------------------------------------- `nlhf train` processes

NUM_STEPS = 40
GIN = """
from __gin__ import dynamic_registration
from nlhf_jax import train_state
from nlhf_jax import trainer
from nlhf_jax.data import input_pipeline
from nlhf_jax.models import t5

include 'configs/models/t5_1_1_tiny.gin'
include 'configs/runs/sft.gin'
t5.T5Config.vocab_size = 32
t5.T5Config.emb_dim = 16
t5.T5Config.num_heads = 2
t5.T5Config.head_dim = 8
t5.T5Config.mlp_dim = 32
t5.T5Config.dropout_rate = 0.1
TRAIN_DATA = @train/input_pipeline.copy_task()
train/input_pipeline.copy_task.num_examples = 64
EVAL_DATA = @eval/input_pipeline.copy_task()
eval/input_pipeline.copy_task.num_examples = 16
eval/input_pipeline.copy_task.seed = 1
input_pipeline.copy_task.vocab_size = 32
input_pipeline.copy_task.input_len = 6
input_pipeline.copy_task.target_len = 6
NUM_STEPS = %d
BATCH_SIZE = 8
SAVE_EVERY = 3
LEARNING_RATE = 0.01
trainer.LoopConfig.log_every = 2
trainer.LoopConfig.eval_every = 5
trainer.LoopConfig.progress = False
train_state.OptimizerConfig.name = "adamw"
train_state.ScheduleConfig.kind = "constant"
""" % NUM_STEPS


def _train(gin_path, model_dir, fault=None):
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("device_count=8", "device_count=2")
    env.pop(faults.ENV, None)
    if fault:
        env[faults.ENV] = fault
    cmd = [sys.executable, "-m", "nlhf_jax.main", "train", f"--gin_file={gin_path}",
           f"--gin.MODEL_DIR='{model_dir}'"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _final(model_dir):
    path = os.path.join(model_dir, "checkpoints")
    step = max(int(n) for n in os.listdir(path) if n.isdigit())
    return step, _restored_params(model_dir, step)


def _assert_same(params, ref):
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _assert_one_record_per_step(model_dir):
    logged = [r["step"] for r in metrics_lib.read_jsonl(os.path.join(model_dir, "metrics.jsonl"))]
    assert logged == sorted(set(logged)), f"duplicated or unordered steps: {logged}"
    # every step the uninterrupted run logs (log_every 2, eval_every 5) is there once
    assert logged == sorted(set(range(2, NUM_STEPS + 1, 2)) | set(range(5, NUM_STEPS + 1, 5))), logged


@pytest.fixture(scope="module")
def gin_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gin") / "faults.gin"
    path.write_text(GIN)
    return str(path)


@pytest.fixture(scope="module")
def reference(gin_file, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("ref") / "run")
    out = _train(gin_file, model_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    _assert_one_record_per_step(model_dir)
    return _final(model_dir)


def test_sigterm_at_any_point_saves_exits_zero_and_resumes_exactly(gin_file, reference, tmp_path):
    """SIGTERM at each point of a run, one after another in the same directory: every
    run exits 0 and leaves a complete checkpoint (no orbax temporary directory); the
    last run finishes bitwise where an uninterrupted run does."""
    model_dir = str(tmp_path / "run")
    out = _train(gin_file, model_dir, "TERM@start#1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert not glob.glob(os.path.join(model_dir, "checkpoints", "[0-9]*")), "nothing to save yet"
    assert "nothing saved" in out.stderr and "checkpoint saved" not in out.stderr
    saved = []
    for fault in ("TERM@step#2", "TERM@eval#1", "TERM@save#2", "TERM@final_save#1"):
        out = _train(gin_file, model_dir, fault)
        assert out.returncode == 0, (fault, out.stderr[-3000:])
        assert "SIGTERM received" in out.stderr, fault
        if fault != "TERM@final_save#1":  # the last one finishes instead of stopping
            assert "preempted: checkpoint saved" in out.stderr, fault
        ckpts = os.listdir(os.path.join(model_dir, "checkpoints"))
        assert not [n for n in ckpts if "tmp" in n], (fault, ckpts)
        saved.append(_final(model_dir)[0])
    assert saved == [2, 5, 9, NUM_STEPS], saved
    out = _train(gin_file, model_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    step, params = _final(model_dir)
    assert step == reference[0] == NUM_STEPS
    _assert_same(params, reference[1])
    _assert_one_record_per_step(model_dir)


def test_random_sigkills_always_resume_bitwise(gin_file, reference, tmp_path):
    """Eight SIGKILLs at points drawn at random (seeded) across the loop, evaluation and
    checkpoint writes (periodic and final, both in flight), each followed by a rerun of
    the same command: the run ends bitwise identical to an uninterrupted one."""
    # Each kill moves the run on by at most one evaluation interval (5 steps), so seven
    # fit before NUM_STEPS, and the eighth lands in the final save.
    rng = random.Random(15)
    points = ["start", "step", "eval", "save"]
    points += [rng.choice(points) for _ in range(3)]
    rng.shuffle(points)
    plan = [f"KILL@{p}#1" for p in points] + ["KILL@final_save#1"]
    assert len({p.split("#")[0] for p in plan}) == 5, plan  # every kind of point is drawn
    model_dir = str(tmp_path / "run")
    for fault in plan:
        out = _train(gin_file, model_dir, fault)
        assert out.returncode == -signal.SIGKILL, (fault, out.returncode, out.stderr[-3000:])
    out = _train(gin_file, model_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    step, params = _final(model_dir)
    assert step == NUM_STEPS
    _assert_same(params, reference[1])
    _assert_one_record_per_step(model_dir)
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
        assert all(json.loads(line) for line in f)
