"""Checkpoints: mesh change, mismatches, restore modes, NaN guard."""


import jax
import numpy as np
import pytest

from nlhf_jax import checkpointing
from nlhf_jax import partitioning
from nlhf_jax import train_state as ts
from nlhf_jax import trainer
from nlhf_jax.data import input_pipeline
from nlhf_jax.models import t5

# Exact resume after SIGKILL and SIGTERM, at every point of a run, is tested with
# deterministic fault injection in faults_test.py.


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
    loop = trainer.LoopConfig(num_steps=4, batch_size=8, progress=False)
    res = trainer.run_loop(state=state, step_fn=trainer.supervised_step_fn(jitted, good, loop, mesh), loop=loop,
                           mesh=mesh, rules=rules, checkpointer=ckpt, writer=writer)
    with pytest.raises(trainer.NonFiniteLossError, match=r"non-finite sft/loss=nan at step 4.*last good checkpoint is step 4"):
        loop = trainer.LoopConfig(num_steps=8, batch_size=8, progress=False)
        trainer.run_loop(state=res.state, step_fn=trainer.supervised_step_fn(jitted, bad, loop, mesh), loop=loop,
                         mesh=mesh, rules=rules, checkpointer=ckpt, writer=writer)
    assert ckpt.latest_step() == 4
    ckpt.close()
    writer.close()
