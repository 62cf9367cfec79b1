"""`load_t5x` / `save_t5x`, `nlhf convert` and T5X initial checkpoints.

T5X checkpoints are written here by hand, in T5X's own layout (msgpack `checkpoint`
file, zarr v2 arrays: `.zarray` JSON plus gzip-compressed little-endian chunks), with a
name map written independently of `nlhf_jax.checkpoints.t5x`, so the reader is tested
against the format rather than against our writer.
"""

import gzip
import json
import math
import os

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import serialization

from nlhf_jax import checkpointing
from nlhf_jax import decoding
from nlhf_jax import main
from nlhf_jax import models
from nlhf_jax import partitioning
from nlhf_jax import testing
from nlhf_jax import train_state as train_state_lib
from nlhf_jax import trainer
from nlhf_jax.checkpoints import hf
from nlhf_jax.checkpoints import t5x
from nlhf_jax.models import t5

_V1_0 = dict(mlp_activations=("relu",), logits_via_embedding=True)
_V1_1 = dict(mlp_activations=("gelu", "linear"), logits_via_embedding=False)
# Flan-T5 is v1.1-shaped, with num_heads * head_dim != d_model (flan-t5-small: 6 x 64
# vs 512); an uneven decoder depth checks the per-side layer counts.
_FLAN = dict(_V1_1, num_heads=3, head_dim=8, num_decoder_layers=3)


def _params(config, seed=0):
    return testing.random_params(models.EncoderDecoder(config), seed)


def _t5x_arrays(config, params) -> dict:
    """Our params under T5X's (t5x `minimal` T5 / flaxformer) names, in T5X's shapes."""
    out = {"token_embedder/embedding": params["token_embedder"]["embedding"]}
    for side, n_layers in (("encoder", config.num_encoder_layers),
                           ("decoder", config.num_decoder_layers)):
        ours = params[side]
        # T5X: [heads, buckets]; ours: [buckets, heads].
        out[f"{side}/relpos_bias/rel_embedding"] = ours["relpos_bias"]["rel_embedding"].T
        out[f"{side}/{side}_norm/scale"] = ours[f"{side}_norm"]["scale"]
        for i in range(n_layers):
            layer, prefix = ours["stack"][f"layers_{i}"], f"{side}/layers_{i}"
            if side == "encoder":
                attentions = [("attention", "pre_attention_layer_norm",
                               "self_attention", "pre_self_attention_layer_norm")]
            else:
                attentions = [(a, n, a, n) for a, n in (
                    ("self_attention", "pre_self_attention_layer_norm"),
                    ("encoder_decoder_attention", "pre_cross_attention_layer_norm"))]
            for t5x_attention, t5x_norm, attention, norm in attentions:
                out[f"{prefix}/{t5x_norm}/scale"] = layer[norm]["scale"]
                for proj in ("query", "key", "value", "out"):
                    out[f"{prefix}/{t5x_attention}/{proj}/kernel"] = layer[attention][proj]["kernel"]
            out[f"{prefix}/pre_mlp_layer_norm/scale"] = layer["pre_mlp_layer_norm"]["scale"]
            for name, value in layer["mlp"].items():
                out[f"{prefix}/mlp/{name}/kernel"] = value["kernel"]
    if not config.logits_via_embedding:
        out["decoder/logits_dense/kernel"] = params["head"]["logits_dense"]["kernel"]
    return out


def _write_zarr_by_hand(directory, value, zarr_dtype):
    """A zarr v2 array as T5X writes it: gzip level 1, two chunks along the first axis."""
    os.makedirs(directory)
    rows = math.ceil(value.shape[0] / 2)
    chunks = [rows] + list(value.shape[1:])
    with open(os.path.join(directory, ".zarray"), "w") as f:
        json.dump({"zarr_format": 2, "shape": list(value.shape), "chunks": chunks,
                   "dtype": zarr_dtype, "compressor": {"id": "gzip", "level": 1},
                   "fill_value": None, "order": "C", "filters": None}, f)
    for i in range(math.ceil(value.shape[0] / rows)):
        chunk = np.zeros(chunks, value.dtype)
        part = value[i * rows:(i + 1) * rows]
        chunk[:len(part)] = part
        key = ".".join([str(i)] + ["0"] * (value.ndim - 1))
        with open(os.path.join(directory, key), "wb") as f:
            f.write(gzip.compress(chunk.astype(chunk.dtype.newbyteorder("<")).tobytes(), 1))


def _write_t5x_by_hand(step_dir, arrays, *, inline=(), bfloat16=False, subdir=""):
    """`checkpoint_<step>/`: msgpack with TensorStore specs for all but `inline` names."""
    os.makedirs(step_dir, exist_ok=True)
    target = {}
    for name, value in arrays.items():
        value = np.asarray(value, ml_dtypes.bfloat16 if bfloat16 else np.float32)
        if name in inline:
            leaf = value
        else:
            relative = "target." + name.replace("/", ".")
            zarr_dtype = "bfloat16" if bfloat16 else "<f4"
            _write_zarr_by_hand(os.path.join(step_dir, subdir, relative), value, zarr_dtype)
            leaf = {"driver": "zarr", "kvstore": {"driver": "file", "path": relative},
                    "metadata": {"shape": list(value.shape), "dtype": zarr_dtype}}
        node = target
        *parents, last = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    contents = {"version": 3, "optimizer": {
        "target": target,
        "state": {"step": np.int32(1000), "param_states": {"token_embedder": {"embedding": {
            "v_row": np.zeros((2,), np.float32), "v_col": np.zeros((3,), np.float32)}}}},
    }}
    with open(os.path.join(step_dir, "checkpoint"), "wb") as f:
        f.write(serialization.msgpack_serialize(contents))


def _logits(config, params):
    encoder_tokens = testing.random_tokens(5, 3, 10, config.vocab_size, min_length=2, append_eos=True)
    targets = testing.random_tokens(6, 3, 7, config.vocab_size, min_length=2, append_eos=True)
    apply = jax.jit(models.EncoderDecoder(config).apply)
    return np.asarray(apply({"params": params}, encoder_tokens, decoding.shift_right(targets)))


@pytest.mark.parametrize("variant", [_V1_0, _V1_1, _FLAN], ids=["v1_0", "v1_1", "flan"])
def test_t5x_layout_gives_the_hf_route_logits(tmp_path, variant):
    config = testing.tiny_t5_config(**variant)
    params = _params(config, seed=1)
    hf.save_t5(config, params, tmp_path / "hf")
    _, from_hf = hf.load_t5(tmp_path / "hf")
    arrays = _t5x_arrays(config, params)
    # T5X inlines small, unpartitioned arrays (norm scales) in the msgpack file.
    inline = {name for name in arrays if name.endswith("/scale")}
    _write_t5x_by_hand(tmp_path / "t5x" / "checkpoint_1000", arrays, inline=inline)
    from_t5x = t5x.load_t5x(tmp_path / "t5x" / "checkpoint_1000", config)
    testing.assert_trees_equal(from_t5x, params)
    np.testing.assert_allclose(_logits(config, from_t5x), _logits(config, from_hf), rtol=0, atol=1e-5)


@pytest.mark.parametrize("inline", [False, True], ids=["zarr", "inline"])
def test_save_load_round_trip_is_bitwise(tmp_path, inline):
    config = testing.tiny_t5_config(**_FLAN)
    params = _params(config, seed=2)
    step_dir = t5x.save_t5x(config, params, tmp_path, step=7, inline=inline)
    assert step_dir == os.path.join(tmp_path, "checkpoint_7")
    query = os.path.join(step_dir, "target.encoder.layers_0.attention.query.kernel")
    has_zarr = os.path.isfile(os.path.join(query, ".zarray"))
    assert has_zarr != inline
    testing.assert_trees_equal(t5x.load_t5x(tmp_path, config), params)
    with open(os.path.join(step_dir, "checkpoint"), "rb") as f:
        contents = serialization.msgpack_restore(f.read())
    assert contents["version"] == 3 and int(contents["optimizer"]["state"]["step"]) == 7
    # Scanned layers are stacked on load and unstacked on save.
    scan_config = testing.tiny_t5_config(**_FLAN, scan_layers=True)
    scanned = t5x.load_t5x(tmp_path, scan_config)
    np.testing.assert_array_equal(
        scanned["decoder"]["stack"]["layers"]["mlp"]["wo"]["kernel"][2],
        params["decoder"]["stack"]["layers_2"]["mlp"]["wo"]["kernel"],
    )
    t5x.save_t5x(scan_config, scanned, tmp_path / "again", inline=inline)
    testing.assert_trees_equal(t5x.load_t5x(tmp_path / "again", config), params)


def test_bfloat16_arrays_load(tmp_path):
    config = testing.tiny_t5_config()
    params = _params(config, seed=3)
    as_bf16 = jax.tree_util.tree_map(lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), params)
    _write_t5x_by_hand(tmp_path / "hand" / "checkpoint_0", _t5x_arrays(config, params), bfloat16=True)
    testing.assert_trees_equal(t5x.load_t5x(tmp_path / "hand", config), as_bf16)
    t5x.save_t5x(config, params, tmp_path / "ours", dtype="bfloat16")
    with open(tmp_path / "ours" / "checkpoint_0" / "target.token_embedder.embedding" / ".zarray") as f:
        assert json.load(f)["dtype"] == "bfloat16"
    testing.assert_trees_equal(t5x.load_t5x(tmp_path / "ours", config), as_bf16)
    kept = t5x.load_t5x(tmp_path / "ours", testing.tiny_t5_config(param_dtype="bfloat16"))
    assert kept["token_embedder"]["embedding"].dtype == ml_dtypes.bfloat16


def test_highest_step_and_state_subdirectory(tmp_path):
    config = testing.tiny_t5_config()
    arrays = _t5x_arrays(config, _params(config, seed=4))
    _write_t5x_by_hand(tmp_path / "checkpoint_5", arrays)
    newer = _params(config, seed=5)
    # Newer layout: the zarr arrays under checkpoint_<step>/state/.
    _write_t5x_by_hand(tmp_path / "checkpoint_20", _t5x_arrays(config, newer), subdir="state")
    assert t5x.is_t5x_directory(tmp_path) and t5x.is_t5x_directory(tmp_path / "checkpoint_5")
    assert not t5x.is_t5x_directory(tmp_path / "checkpoint_20" / "state")
    testing.assert_trees_equal(t5x.load_t5x(tmp_path, config), newer)


def test_missing_and_misshaped_parameters_are_named(tmp_path):
    config = testing.tiny_t5_config()
    arrays = _t5x_arrays(config, _params(config))
    missing = "decoder/layers_1/encoder_decoder_attention/key/kernel"
    misshaped = "encoder/layers_0/mlp/wi_1/kernel"
    assert arrays[misshaped].shape == (32, 64)
    del arrays[missing]
    arrays[misshaped] = np.zeros((32, 48), np.float32)
    _write_t5x_by_hand(tmp_path / "checkpoint_0", arrays)
    with pytest.raises(ValueError) as err:
        t5x.load_t5x(tmp_path, config)
    message = str(err.value)
    assert f"missing tensor '{missing}': expected shape (32, 32), found none" in message
    assert f"tensor '{misshaped}'" in message and "(32, 64)" in message and "(32, 48)" in message
    assert "target.encoder.layers_0.mlp.wi_1.kernel" in message  # the file it came from
    with pytest.raises(ValueError, match="params do not match the config"):
        t5x.save_t5x(testing.tiny_t5_config(mlp_dim=48), _params(config), tmp_path / "bad")


def test_initial_checkpoint_from_t5x_directory(tmp_path):
    config = t5.T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                         num_encoder_layers=1, num_decoder_layers=1)
    source = _params(config, seed=6)
    _write_t5x_by_hand(tmp_path / "t5x" / "checkpoint_100", _t5x_arrays(config, source))
    assert checkpointing.is_t5x_directory(str(tmp_path / "t5x"))
    assert not checkpointing.is_hf_directory(str(tmp_path / "t5x"))
    tx = train_state_lib.OptimizerConfig(name="adamw").build()
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 8, 1))
    network = t5.EncoderDecoder(config)
    state, shardings, _ = trainer.init_train_state(
        lambda rng: t5.init_variables(network, rng)["params"], tx, mesh,
        partitioning.default_rules(), jax.random.key(0),
    )
    cfg = checkpointing.CheckpointConfig(initial_checkpoint=str(tmp_path / "t5x"))
    own = checkpointing.Checkpointer(str(tmp_path / "run"), cfg)
    out, how = trainer.restore_or_init(
        checkpointer=own, state=state, shardings=shardings, tx=tx,
        load_t5x=lambda path: t5x.load_t5x(path, config),
    )
    assert "T5X" in how and int(out.step) == 0
    testing.assert_trees_equal(jax.device_get(out.params), source)
    with pytest.raises(ValueError, match="cannot read T5X"):
        trainer.restore_or_init(checkpointer=own, state=state, shardings=shardings, tx=tx)
    own.close()
    full = checkpointing.Checkpointer(str(tmp_path / "run2"), checkpointing.CheckpointConfig(
        initial_checkpoint=str(tmp_path / "t5x"), restore_mode="full_state"))
    with pytest.raises(ValueError, match="params_only"):
        trainer.restore_or_init(checkpointer=full, state=state, shardings=shardings, tx=tx,
                                load_t5x=lambda path: t5x.load_t5x(path, config))
    full.close()


def test_convert_hf_to_t5x_to_hf(tmp_path, capsys):
    config = testing.tiny_t5_config(**_V1_0)
    params = _params(config, seed=7)
    hf.save_t5(config, params, tmp_path / "hf")
    assert main.run(["convert", "--from", "hf", str(tmp_path / "hf"),
                     "--to", "t5x", str(tmp_path / "t5x"), "--step", "3"]) == 0
    assert t5x.is_t5x_directory(tmp_path / "t5x" / "checkpoint_3")
    testing.assert_trees_equal(t5x.load_t5x(tmp_path / "t5x", config), params)
    # The T5X copy records no architecture; convert wrote model_config.json beside it.
    assert main.run(["convert", "--from", "t5x", str(tmp_path / "t5x" / "checkpoint_3"),
                     "--to", "hf", str(tmp_path / "back")]) == 0
    loaded_config, loaded = hf.load_t5(tmp_path / "back")
    assert loaded_config == config
    testing.assert_trees_equal(loaded, params)
    # Explicit --config: an HF config.json; a missing one is a clear error.
    os.remove(tmp_path / "t5x" / checkpointing.MODEL_CONFIG_FILE)
    assert main.run(["convert", "--from", "t5x", str(tmp_path / "t5x"), "--to", "hf",
                     str(tmp_path / "again"), "--config", str(tmp_path / "hf" / "config.json")]) == 0
    testing.assert_trees_equal(hf.load_t5(tmp_path / "again")[1], params)
    capsys.readouterr()
    assert main.run(["convert", "--from", "t5x", str(tmp_path / "t5x"), "--to", "hf",
                     str(tmp_path / "none")]) == 1
    assert "pass --config" in capsys.readouterr().err
    assert main.run(["convert", "--from", "t5x", str(tmp_path / "t5x"), "--to", "hf",
                     str(tmp_path / "none"), "--config", "no_such_preset"]) == 1
    assert "flan_t5_small" in capsys.readouterr().err
