"""Mesh construction, the resolved PartitionSpec of every parameter kind, sharded init."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from nlhf_jax import partitioning
from nlhf_jax import types
from nlhf_jax.models import t5


def _cfg(**kw):
    base = dict(vocab_size=64, emb_dim=16, num_heads=4, head_dim=4, mlp_dim=32,
                num_encoder_layers=2, num_decoder_layers=2)
    base.update(kw)
    return t5.T5Config(**base)


@pytest.mark.parametrize(
    "cfg,n,expected",
    [
        (partitioning.MeshConfig(1, -1, 1), 8, (1, 8, 1)),
        (partitioning.MeshConfig(2, 2, 2), 8, (2, 2, 2)),
        (partitioning.MeshConfig(-1, 1, 1), 8, (8, 1, 1)),
        (partitioning.MeshConfig(2, -1, 2), 8, (2, 2, 2)),
    ],
)
def test_mesh_resolve(cfg, n, expected):
    assert cfg.resolve(n) == expected


@pytest.mark.parametrize(
    "cfg,match",
    [
        (partitioning.MeshConfig(-1, -1, 1), "at most one"),
        (partitioning.MeshConfig(3, -1, 1), "not divisible"),
        (partitioning.MeshConfig(2, 2, 1), "needs 4 devices"),
        (partitioning.MeshConfig(0, -1, 1), "positive"),
    ],
)
def test_mesh_resolve_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        cfg.resolve(8)


def test_make_mesh_axes():
    mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
    assert mesh.axis_names == ("data", "fsdp", "model")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "model": 2}


# What the default rules must give for each kind of parameter (flax resolves rules in
# order, skipping mesh axes already used by an earlier dimension).
EXPECTED_SPECS = {
    (types.VOCAB, types.EMBED): P("model", "fsdp"),
    (types.EMBED, types.VOCAB): P("fsdp", "model"),
    (types.EMBED, types.JOINED_KV): P("fsdp", "model"),
    (types.JOINED_KV, types.EMBED): P("model", "fsdp"),
    (types.EMBED, types.MLP): P("fsdp", "model"),
    (types.MLP, types.EMBED): P("model", "fsdp"),
    (types.EMBED,): P("fsdp"),
    (types.RELPOS_BUCKETS, types.HEADS): P(None, "model"),
    (types.LAYERS, types.EMBED, types.MLP): P(None, "fsdp", "model"),
    (types.LAYERS, types.EMBED): P(None, "fsdp"),
}


@pytest.mark.parametrize("axes,spec", list(EXPECTED_SPECS.items()))
def test_default_rules_resolve(axes, spec):
    assert partitioning.logical_to_spec(axes, partitioning.default_rules()) == spec


def test_activation_rules():
    rules = partitioning.default_rules()
    assert partitioning.logical_to_spec((types.ACT_BATCH, types.ACT_LENGTH, types.ACT_EMBED), rules) == P(("data", "fsdp"), None, None)
    assert partitioning.logical_to_spec((types.ACT_BATCH, types.ACT_LENGTH, types.ACT_VOCAB), rules) == P(("data", "fsdp"), None, "model")


@pytest.mark.parametrize("scan", [False, True])
def test_every_param_kind_is_covered_and_sharded_as_rules_say(scan):
    """Every leaf of a real model gets exactly the spec of its logical axes."""
    mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
    rules = partitioning.default_rules()
    model = t5.EncoderDecoder(_cfg(scan_layers=scan))
    init = lambda rng: t5.init_variables(model, rng)["params"]  # noqa: E731
    params, shardings = partitioning.sharded_init(init, mesh, rules, jax.random.key(0))
    boxed = jax.eval_shape(init, jax.random.key(0))
    axes = partitioning.logical_axes_tree(boxed)
    flat_axes = jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    seen = set()
    for ax, arr in zip(flat_axes, jax.tree_util.tree_leaves(params)):
        assert ax in EXPECTED_SPECS or (scan and ax[0] == types.LAYERS), ax
        want = partitioning.logical_to_spec(ax, rules)
        assert arr.sharding.spec == want, (ax, arr.sharding.spec, want)
        seen.add(ax)
    # the kinds a T5 encoder-decoder has
    assert len(seen) >= 6


def test_indivisible_dimension_is_replicated_not_an_error():
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 1, 8))
    model = t5.EncoderDecoder(_cfg(vocab_size=60))  # 60 % 8 != 0
    init = lambda rng: t5.init_variables(model, rng)["params"]  # noqa: E731
    params, _ = partitioning.sharded_init(init, mesh, partitioning.default_rules(), jax.random.key(0))
    assert params["token_embedder"]["embedding"].sharding.spec == P(None, "fsdp")
    assert params["decoder"]["stack"]["layers_0"]["mlp"]["wi_0"]["kernel"].sharding.spec == P("fsdp", "model")


def test_sharded_init_equals_plain_init():
    mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
    model = t5.EncoderDecoder(_cfg())
    init = lambda rng: t5.init_variables(model, rng)["params"]  # noqa: E731
    params, _ = partitioning.sharded_init(init, mesh, partitioning.default_rules(), jax.random.key(3))
    plain = t5.init_params(model, jax.random.key(3))
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_batch_assembly_single_process():
    mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 4, 1))
    batch = {"x": np.arange(16, dtype=np.int32).reshape(8, 2)}
    out = partitioning.host_local_batch_to_global(batch, mesh)
    assert out["x"].sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(out["x"]), batch["x"])
