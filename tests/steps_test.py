"""SFT step: sharded == single device, microbatching == full batch, schedules, memory."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax import partitioning
from nlhf_jax import steps
from nlhf_jax import train_state as ts
from nlhf_jax import trainer
from nlhf_jax.data import input_pipeline
from nlhf_jax.models import t5

CFG = t5.T5Config(vocab_size=64, emb_dim=16, num_heads=4, head_dim=4, mlp_dim=32,
                  num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.1)
DATA = input_pipeline.copy_task(num_examples=64, vocab_size=64, input_len=6, target_len=6)
TX = ts.OptimizerConfig(name="adafactor", schedule=ts.ScheduleConfig("constant", 1e-2)).build()


def _run(mesh_cfg, devices=None, num_microbatches=1, n_steps=2):
    mesh = partitioning.make_mesh(mesh_cfg, devices)
    rules = partitioning.default_rules()
    model = t5.EncoderDecoder(CFG)
    init = lambda rng: t5.init_variables(model, rng)["params"]  # noqa: E731
    state, shardings, _ = trainer.init_train_state(init, TX, mesh, rules, jax.random.key(0))
    step_fn = functools.partial(steps.sft_train_step, model=model, tx=TX,
                                cfg=steps.StepConfig(num_microbatches=num_microbatches, z_loss=1e-4))
    jitted = trainer.jit_step(step_fn, shardings, DATA.batch(0, 8), mesh)
    losses = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        for i in range(n_steps):
            batch = partitioning.host_local_batch_to_global(DATA.batch(i, 8), mesh)
            state, metrics = jitted(state, batch, jax.random.key(7))
            losses.append(float(metrics["sft/loss"]))
    return state, shardings, losses


@pytest.fixture(scope="module")
def single_device():
    return _run(partitioning.MeshConfig(1, 1, 1), devices=jax.devices()[:1])


@pytest.mark.parametrize("mesh_cfg", [partitioning.MeshConfig(1, 8, 1),
                                      partitioning.MeshConfig(2, 2, 2),
                                      partitioning.MeshConfig(8, 1, 1)])
def test_sharded_step_matches_single_device(mesh_cfg, single_device):
    ref_state, _, ref_losses = single_device
    state, shardings, losses = _run(mesh_cfg)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    # parameters stay sharded as the rules say, after the update
    for arr, want in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(shardings.params)):
        assert arr.sharding.spec == want.spec


def test_microbatching_matches_full_batch(single_device):
    _, _, ref_losses = single_device
    # dropout keys differ per microbatch, so compare without dropout
    global CFG
    saved = CFG
    try:
        CFG = t5.T5Config(**{**saved.__dict__, "dropout_rate": 0.0})
        _, _, full = _run(partitioning.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
        _, _, micro = _run(partitioning.MeshConfig(1, 1, 1), devices=jax.devices()[:1], num_microbatches=4)
    finally:
        CFG = saved
    np.testing.assert_allclose(micro, full, atol=1e-5)


def test_schedules():
    const = ts.ScheduleConfig("constant", 0.5).build()
    warm = ts.ScheduleConfig("linear_warmup", 1.0, warmup_steps=10).build()
    rsqrt = ts.ScheduleConfig("rsqrt", 1.0, warmup_steps=100).build()
    assert float(const(1000)) == 0.5
    np.testing.assert_allclose([float(warm(s)) for s in (0, 4, 9, 50)], [0.1, 0.5, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose([float(rsqrt(s)) for s in (0, 100, 400)], [0.1, 0.1, 0.05], rtol=1e-6)
    cosine = ts.ScheduleConfig("warmup_cosine", 1.0, warmup_steps=10, decay_steps=110,
                               end_fraction=0.1).build()  # fmt: skip
    np.testing.assert_allclose([float(cosine(s)) for s in (0, 9, 10, 60, 110, 500)],
                               [0.1, 1.0, 1.0, 0.55, 0.1, 0.1], rtol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="decay_steps=5 must exceed warmup_steps=10"):
        ts.ScheduleConfig("warmup_cosine", 1.0, warmup_steps=10, decay_steps=5).build()
    with pytest.raises(ValueError, match="kind='cosine'"):
        ts.ScheduleConfig("cosine").build()
    with pytest.raises(ValueError, match="name='lion'"):
        ts.OptimizerConfig(name="lion").build()


def test_cross_entropy_matches_numpy():
    from nlhf_jax import losses

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    targets = rng.integers(0, 5, size=(2, 3))
    weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    loss, w, zl = losses.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), z_loss=0.1)
    logz = np.log(np.exp(logits).sum(-1))
    nll = logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), ((nll + 0.1 * logz**2) * weights).sum(), rtol=1e-5)
    assert float(w) == 3.0
    np.testing.assert_allclose(float(zl), (0.1 * logz**2 * weights).sum(), rtol=1e-5)


def test_xxl_train_state_bytes_per_device_without_allocation():
    """t5_1_1 XXL + Adafactor on a fake 8-device fsdp x model mesh, by eval_shape."""
    cfg = t5.T5Config(vocab_size=32128, emb_dim=4096, num_heads=64, head_dim=64, mlp_dim=10240,
                      num_encoder_layers=24, num_decoder_layers=24, scan_layers=True)
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 4, 2))
    model = t5.EncoderDecoder(cfg)
    tx = ts.OptimizerConfig(name="adafactor").build()
    init = lambda rng: t5.init_variables(model, rng)["params"]  # noqa: E731
    abstract, shardings = trainer.abstract_train_state(init, tx, mesh, partitioning.default_rules())
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(abstract.params))
    param_bytes = partitioning.per_device_bytes(shardings.params, abstract.params)
    opt_bytes = partitioning.per_device_bytes(shardings.opt_state, abstract.opt_state)
    print(f"XXL: {n_params / 1e9:.3f}B params; per device: params {param_bytes / 2**30:.2f} GiB, "
          f"Adafactor state {opt_bytes / 2**30:.3f} GiB")
    assert abs(n_params - 11.14e9) / 11.14e9 < 0.01
    # fully sharded over 8 devices: one eighth of 4 bytes per parameter (tiny
    # replicated leaves such as layer norms and relpos tables aside)
    assert n_params * 4 / 8 <= param_bytes < n_params * 4 / 8 * 1.01
    # factored second moments: far smaller than the parameters
    assert opt_bytes < param_bytes * 0.01
