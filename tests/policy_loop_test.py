"""The online loop (run_policy): every algorithm runs, resumes exactly, never touches
frozen models; the sharded update equals the single-device one (policy gradient and
IPO); schedules."""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax import checkpointing
from nlhf_jax import online
from nlhf_jax import partitioning
from nlhf_jax import run_policy
from nlhf_jax import run_train
from nlhf_jax import steps
from nlhf_jax import train_state as ts
from nlhf_jax import trainer
from nlhf_jax.data import input_pipeline
from nlhf_jax.models import t5

CFG = t5.T5Config(vocab_size=16, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=1, num_decoder_layers=1)
LOOP = dict(batch_size=8, progress=False, log_every=1)


class _Vocab:
    def decode(self, ids):
        return " ".join(str(i) for i in ids)


class _ShortIsBetter:
    """A deterministic judge: prefers the shorter response (and rewards brevity)."""

    def prob(self, posts, ys, ys_alt):
        d = np.array([len(b.split()) - len(a.split()) for a, b in zip(ys, ys_alt)], np.float64)
        return 1 / (1 + np.exp(-d))

    def rewards(self, posts, ys):
        return -np.array([len(a.split()) for a in ys], np.float64) / 4


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("sft"))
    data = input_pipeline.copy_task(num_examples=64, vocab_size=16, input_len=5, target_len=6)
    run_train.train(model_dir=d, model=CFG, dataset=data,
                    loop=trainer.LoopConfig(num_steps=2, batch_size=8, progress=False),
                    checkpoint=checkpointing.CheckpointConfig(async_save=False))
    return d


@pytest.fixture(scope="module")
def prompts():
    data = input_pipeline.copy_task(num_examples=32, vocab_size=16, input_len=5, target_len=6, seed=5)
    ds = input_pipeline.ArrayDataset({"prompts": data.features["encoder_input_tokens"]})
    ds.meta = {"prompts": [f"post {i}" for i in range(32)]}
    return ds


def _words(ys):  # a sample metric: logged on every step next to the update's metrics
    return {"samples/mean_words": float(np.mean([len(y.split()) for y in ys]))}


def _run(model_dir, sft_dir, prompts, steps_, algorithm="nash_md", beta=0.125, save_every=2, **nashmd):
    return run_policy.train_policy(
        sample_metrics=_words,
        model_dir=model_dir, sft_dir=sft_dir, prompts=prompts, judge=_ShortIsBetter(),
        vocabulary=_Vocab(), loop=trainer.LoopConfig(num_steps=steps_, **LOOP),
        nashmd=online.NashMDConfig(algorithm=algorithm, beta=beta, tau=0.05, max_decode_len=6,
                                   log_samples_every=1, **nashmd),
        optimizer=ts.OptimizerConfig(name="adamw", schedule=ts.ScheduleConfig("constant", 3e-3)),
        checkpoint=checkpointing.CheckpointConfig(save_every_steps=save_every, async_save=False),
    )


def _params(model_dir):
    mesh = partitioning.make_mesh(partitioning.MeshConfig())
    return trainer.load_frozen(model_dir, mesh, partitioning.default_rules())[2]


@pytest.mark.parametrize("algorithm,beta", [("nash_md", 0.125), ("nash_ema", 0.9), ("rlhf", 0.0)])
def test_algorithms_run_and_leave_frozen_models_alone(algorithm, beta, sft_dir, prompts, tmp_path):
    before = _params(sft_dir)
    res = _run(str(tmp_path / algorithm), sft_dir, prompts, 3, algorithm, beta)
    after = _params(sft_dir)
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(res.state.params),
                                                          jax.tree_util.tree_leaves(before))]
    assert max(moved) > 0
    rows = [r for r in open(os.path.join(tmp_path / algorithm, "metrics.jsonl"))]
    assert len(rows) == 3 and "policy/kl_ref" in rows[-1] and "samples/y" in rows[-1]
    assert all("samples/mean_words" in json.loads(r) for r in rows)
    if algorithm != "rlhf":
        assert "nashmd/pref_vs_alt" in rows[-1]
    if algorithm == "nash_ema":
        # the averaged policy (EMA*) is saved next to the last iterate, and lies between
        ema = _params(str(tmp_path / algorithm / "ema"))
        leaf = lambda t: np.asarray(t["token_embedder"]["embedding"])  # noqa: E731
        assert np.abs(leaf(ema) - leaf(before)).max() < np.abs(leaf(res.state.params) - leaf(before)).max()


def test_sequence_level_mixture_runs_and_logs_its_effective_sample_size(sft_dir, prompts, tmp_path):
    res = _run(str(tmp_path / "seq"), sft_dir, prompts, 2, mixture="sequence", mixture_candidates=3)
    rows = [json.loads(r) for r in open(os.path.join(tmp_path / "seq", "metrics.jsonl"))]
    assert int(res.state.step) == 2 and len(rows) == 2
    assert all(0.0 < r["nashmd/mixture_ess"] <= 1.0 + 1e-6 for r in rows)
    assert all(np.isfinite(r["policy/loss"]) for r in rows)


def test_resume_is_exact(sft_dir, prompts, tmp_path):
    full = _run(str(tmp_path / "full"), sft_dir, prompts, 4)
    _run(str(tmp_path / "split"), sft_dir, prompts, 2)
    resumed = _run(str(tmp_path / "split"), sft_dir, prompts, 4)
    assert int(resumed.state.step) == 4 and resumed.steps_run == 2
    for a, b in zip(jax.tree_util.tree_leaves(full.state.params), jax.tree_util.tree_leaves(resumed.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_policy_update_matches_single_device():
    rng = np.random.default_rng(0)
    b, length = 8, 5
    batch = {
        "prompts": rng.integers(2, 16, size=(b, 4)).astype(np.int32),
        "tokens": rng.integers(2, 16, size=(b, length)).astype(np.int32),
        "lengths": rng.integers(1, length + 1, size=(b,)).astype(np.int32),
        "reward": rng.random(b).astype(np.float32),
        "reference_logps": -rng.random((b, length)).astype(np.float32),
        "tau": np.full((b,), 0.1, np.float32),
        "example_weights": np.ones((b,), np.float32),
    }
    tx = ts.OptimizerConfig(name="adamw").build()
    model = t5.EncoderDecoder(CFG)
    results = []
    for mesh_cfg, devices in [(partitioning.MeshConfig(1, 1, 1), jax.devices()[:1]),
                              (partitioning.MeshConfig(1, 8, 1), None),
                              (partitioning.MeshConfig(2, 2, 2), None),
                              (partitioning.MeshConfig(8, 1, 1), None)]:
        mesh = partitioning.make_mesh(mesh_cfg, devices)
        rules = partitioning.default_rules()
        init = lambda r: t5.init_variables(model, r)["params"]  # noqa: E731
        state, shard, _ = trainer.init_train_state(init, tx, mesh, rules, jax.random.key(0))
        fn = trainer.jit_step(functools.partial(steps.policy_update_step, model=model, tx=tx), shard, batch, mesh)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            state, m = fn(state, partitioning.host_local_batch_to_global(batch, mesh), jax.random.key(1))
        results.append((float(m["policy/loss"]), state.params))
    for loss, params in results[1:]:
        assert abs(loss - results[0][0]) < 1e-5
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(results[0][1])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.parametrize("algorithm,beta", [("online_ipo", 0.0), ("ipo_md", 0.125)])
def test_ipo_algorithms_run_and_leave_frozen_models_alone(algorithm, beta, sft_dir, prompts, tmp_path):
    before = _params(sft_dir)
    res = _run(str(tmp_path / algorithm), sft_dir, prompts, 3, algorithm, beta)
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(_params(sft_dir))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(res.state.params),
                                                          jax.tree_util.tree_leaves(before))]
    assert max(moved) > 0
    rows = [json.loads(r) for r in open(os.path.join(tmp_path / algorithm, "metrics.jsonl"))]
    assert len(rows) == 3
    for r in rows:
        for key in ("policy/loss", "policy/log_ratio", "policy/margin_abs", "policy/target_abs",
                    "policy/reward", "opt/grad_norm", "nashmd/pref_vs_alt", "rollout/alt_length",
                    "rollout/alt_eos_rate", "samples/mean_words"):
            assert np.isfinite(r[key]), (key, r)
        assert 0.0 <= r["nashmd/pref_vs_alt"] <= 1.0 and r["policy/loss"] >= 0.0
        # KL(pi || mu) is estimated only where both samples come from pi
        assert ("policy/kl_ref" in r) == (algorithm == "online_ipo")
    assert "samples/y_alt" in rows[-1]


def _ipo_batch(b=8, length=5, seed=0):
    rng = np.random.default_rng(seed)
    tok = lambda: rng.integers(2, 16, size=(b, length)).astype(np.int32)  # noqa: E731
    lens = lambda: rng.integers(1, length + 1, size=(b,)).astype(np.int32)  # noqa: E731
    return {
        "prompts": rng.integers(2, 16, size=(b, 4)).astype(np.int32),
        "tokens": tok(), "lengths": lens(), "alt_tokens": tok(), "alt_lengths": lens(),
        "pref": rng.random(b).astype(np.float32),
        "reference_logps": -rng.random((b, length)).astype(np.float32),
        "alt_reference_logps": -rng.random((b, length)).astype(np.float32),
        "tau": np.full((b,), 0.1, np.float32),
        "example_weights": np.ones((b,), np.float32),
    }


def test_sharded_and_microbatched_ipo_update_match_single_device():
    """Pairs stay aligned whatever the mesh or the microbatch split."""
    batch = _ipo_batch()
    tx = ts.OptimizerConfig(name="adamw").build()
    model = t5.EncoderDecoder(CFG)
    results = []
    for mesh_cfg, devices, micro in [(partitioning.MeshConfig(1, 1, 1), jax.devices()[:1], 1),
                                     (partitioning.MeshConfig(1, 1, 1), jax.devices()[:1], 4),
                                     (partitioning.MeshConfig(2, 2, 2), None, 1),
                                     (partitioning.MeshConfig(8, 1, 1), None, 2)]:
        mesh = partitioning.make_mesh(mesh_cfg, devices)
        rules = partitioning.default_rules()
        init = lambda r: t5.init_variables(model, r)["params"]  # noqa: E731
        state, shard, _ = trainer.init_train_state(init, tx, mesh, rules, jax.random.key(0))
        step = functools.partial(steps.ipo_update_step, model=model, tx=tx,
                                 cfg=steps.PolicyStepConfig(num_microbatches=micro))
        fn = trainer.jit_step(step, shard, batch, mesh)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            state, m = fn(state, partitioning.host_local_batch_to_global(batch, mesh), jax.random.key(1))
        results.append((float(m["policy/loss"]), state.params))
    assert np.isfinite(results[0][0]) and results[0][0] > 0
    for loss, params in results[1:]:
        assert abs(loss - results[0][0]) < 1e-4 * max(1.0, results[0][0])
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(results[0][1])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_ipo_eos_penalty_is_antisymmetric():
    """A missing EOS lowers P(y > y') when y lacks it and raises it when y' does."""
    eos = online.NashMDConfig().sampling().eos_id
    tok = np.array([[5, eos, 0], [5, 6, 7], [5, 6, 7], [5, eos, 0]], np.int32)
    lens = np.array([2, 3, 3, 2], np.int32)
    roll = online.Rollout(prompts=np.ones((4, 2), np.int32), tokens=tok, lengths=lens,
                          alt_tokens=tok[[1, 0, 3, 2]], alt_lengths=lens[[1, 0, 3, 2]],
                          has_eos=tok[np.arange(4), lens - 1] == eos)
    phases = online.Phases(sample=None, update=None, ema=None, mesh=None,
                           reference=lambda params, p, t, n: np.zeros(t.shape, np.float32))
    cfg = online.NashMDConfig(algorithm="online_ipo", missing_eos_penalty=0.2)
    batch, alt_eos = online._ipo_batch(phases, {"reference": None}, roll, roll, np.full(4, 0.5), cfg)
    np.testing.assert_array_equal(alt_eos, [False, True, True, False])
    np.testing.assert_allclose(batch["pref"], [0.7, 0.3, 0.3, 0.7], rtol=1e-6)
    assert batch["alt_reference_logps"].shape == (4, 3)


def test_schedules_and_config():
    s = online.LinearSchedule(0.5, 0.1, steps=4)
    np.testing.assert_allclose([float(s(t)) for t in (0, 2, 4, 10)], [0.5, 0.3, 0.1, 0.1], rtol=1e-6)
    assert float(online.LinearSchedule(0.2)(100)) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="algorithm='dpo'"):
        online.NashMDConfig(algorithm="dpo")
    for algorithm in ("online_ipo", "ipo_md"):
        assert online.NashMDConfig(algorithm=algorithm).algorithm in online.IPO_ALGORITHMS
