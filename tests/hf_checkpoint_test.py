"""`save_t5` / `load_t5`: round trips, HF interoperability, sharding and error reports."""

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from nlhf_jax import decoding
from nlhf_jax import models
from nlhf_jax import testing
from nlhf_jax.checkpoints import hf

_V1_0 = dict(mlp_activations=("relu",), logits_via_embedding=True)
_V1_1 = dict(mlp_activations=("gelu", "linear"), logits_via_embedding=False)


def _params(config, seed=0):
    return testing.random_params(models.EncoderDecoder(config), seed)


def _batch(vocab_size):
    encoder_tokens = testing.random_tokens(5, 3, 10, vocab_size, min_length=2, append_eos=True)
    targets = testing.random_tokens(6, 3, 7, vocab_size, min_length=2, append_eos=True)
    return encoder_tokens, np.asarray(decoding.shift_right(targets))


def _our_logits(config, params, encoder_tokens, decoder_inputs):
    apply = jax.jit(models.EncoderDecoder(config).apply)
    return np.asarray(apply({"params": params}, encoder_tokens, decoder_inputs))


def _hf_logits(directory, encoder_tokens, decoder_inputs):
    hf_model = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
    with torch.no_grad():
        return hf_model(
            input_ids=torch.tensor(encoder_tokens, dtype=torch.long),
            attention_mask=torch.tensor(encoder_tokens != 0, dtype=torch.long),
            decoder_input_ids=torch.tensor(decoder_inputs, dtype=torch.long),
        ).logits.numpy()


def _read(directory):
    return safetensors.numpy.load_file(os.path.join(directory, hf.WEIGHTS_NAME))


def _write(directory, tensors):
    safetensors.numpy.save_file(
        tensors, os.path.join(directory, hf.WEIGHTS_NAME), metadata={"format": "pt"}
    )


@pytest.mark.parametrize("variant", [_V1_0, _V1_1], ids=["v1_0", "v1_1"])
def test_save_load_round_trip_is_bitwise(tmp_path, variant):
    config = testing.tiny_t5_config(num_decoder_layers=3, **variant)
    params = _params(config)
    hf.save_t5(config, params, tmp_path)
    loaded_config, loaded = hf.load_t5(tmp_path, dropout_rate=config.dropout_rate)
    assert loaded_config == config
    testing.assert_trees_equal(loaded, params)
    with open(tmp_path / hf.CONFIG_NAME) as f:
        written = json.load(f)
    assert written["architectures"] == ["T5ForConditionalGeneration"]
    assert written["model_type"] == "t5"
    assert ("lm_head.weight" in _read(tmp_path)) != config.logits_via_embedding


def test_scanned_params_are_unstacked_on_save(tmp_path):
    config = testing.tiny_t5_config(num_encoder_layers=3, scan_layers=True)
    params = _params(config)
    hf.save_t5(config, params, tmp_path)
    assert "encoder.block.2.layer.1.DenseReluDense.wo.weight" in _read(tmp_path)
    scan_config, scanned = hf.load_t5(tmp_path, scan_layers=True, dropout_rate=0.0)
    assert scan_config == config
    testing.assert_trees_equal(scanned, params)
    flat_config, flat = hf.load_t5(tmp_path)
    assert not flat_config.scan_layers
    np.testing.assert_array_equal(
        flat["encoder"]["stack"]["layers_2"]["mlp"]["wo"]["kernel"],
        params["encoder"]["stack"]["layers"]["mlp"]["wo"]["kernel"][2],
    )


@pytest.mark.parametrize("variant", [_V1_0, _V1_1], ids=["v1_0", "v1_1"])
def test_hf_from_pretrained_reproduces_our_logits(tmp_path, variant):
    config = testing.tiny_t5_config(**variant)
    params = _params(config, seed=1)
    hf.save_t5(config, params, tmp_path)
    encoder_tokens, decoder_inputs = _batch(config.vocab_size)
    np.testing.assert_allclose(
        _hf_logits(tmp_path, encoder_tokens, decoder_inputs),
        _our_logits(config, params, encoder_tokens, decoder_inputs),
        rtol=0, atol=1e-4,
    )


def test_sharded_round_trip_and_hf_loads_it(tmp_path):
    config = testing.tiny_t5_config()
    params = _params(config, seed=2)
    hf.save_t5(config, params, tmp_path, max_shard_size="20KB")
    with open(tmp_path / hf.INDEX_NAME) as f:
        index = json.load(f)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((tmp_path / s).exists() for s in shards)
    assert not (tmp_path / hf.WEIGHTS_NAME).exists()
    _, loaded = hf.load_t5(tmp_path)
    testing.assert_trees_equal(loaded, params)
    encoder_tokens, decoder_inputs = _batch(config.vocab_size)
    np.testing.assert_allclose(
        _hf_logits(tmp_path, encoder_tokens, decoder_inputs),
        _our_logits(config, params, encoder_tokens, decoder_inputs),
        rtol=0, atol=1e-4,
    )
    # Saving again unsharded removes the shards, so they cannot shadow the new file.
    hf.save_t5(config, params, tmp_path)
    assert sorted(os.listdir(tmp_path)) == [hf.CONFIG_NAME, hf.WEIGHTS_NAME]


def test_loads_hf_sharded_checkpoint(tmp_path):
    torch.manual_seed(0)
    hf_model = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    ))
    hf_model.save_pretrained(tmp_path / "single")
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="10KB")
    assert (tmp_path / "sharded" / hf.INDEX_NAME).exists()
    single_config, single = hf.load_t5(tmp_path / "single")
    sharded_config, sharded = hf.load_t5(tmp_path / "sharded")
    assert sharded_config == single_config
    testing.assert_trees_equal(sharded, single)
    np.testing.assert_array_equal(
        single["encoder"]["stack"]["layers_1"]["self_attention"]["out"]["kernel"],
        hf_model.encoder.block[1].layer[0].SelfAttention.o.weight.detach().numpy().T,
    )


def test_bfloat16_tensors_are_read(tmp_path):
    config = testing.tiny_t5_config()
    params = _params(config, seed=3)
    hf.save_t5(config, params, tmp_path / "ours", dtype="bfloat16")
    assert _read(tmp_path / "ours")["shared.weight"].dtype == ml_dtypes.bfloat16
    _, loaded = hf.load_t5(tmp_path / "ours")
    as_bf16 = jax.tree_util.tree_map(
        lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), params
    )
    testing.assert_trees_equal(loaded, as_bf16)
    _, kept = hf.load_t5(tmp_path / "ours", param_dtype="bfloat16")
    assert kept["token_embedder"]["embedding"].dtype == ml_dtypes.bfloat16

    # Also as written by torch.
    hf_model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours")
    hf_model.to(torch.bfloat16).save_pretrained(tmp_path / "torch")
    _, from_torch = hf.load_t5(tmp_path / "torch")
    testing.assert_trees_equal(from_torch, as_bf16)


@pytest.fixture()
def saved(tmp_path):
    config = testing.tiny_t5_config()
    hf.save_t5(config, _params(config), tmp_path)
    return tmp_path


def test_missing_tensor_is_reported(saved):
    name = "decoder.block.1.layer.1.EncDecAttention.k.weight"
    tensors = _read(saved)
    del tensors[name]
    _write(saved, tensors)
    with pytest.raises(ValueError) as err:
        hf.load_t5(saved)
    message = str(err.value)
    assert name in message and "(32, 32)" in message and "found none" in message
    assert hf.WEIGHTS_NAME in message


def test_extra_tensor_is_reported(saved):
    name = "encoder.block.7.layer.0.layer_norm.weight"
    tensors = _read(saved)
    tensors[name] = np.ones((32,), np.float32)
    _write(saved, tensors)
    with pytest.raises(ValueError) as err:
        hf.load_t5(saved)
    message = str(err.value)
    assert name in message and "expected none" in message and "(32,)" in message
    assert hf.WEIGHTS_NAME in message


def test_misshaped_tensor_is_reported(saved):
    name = "encoder.block.0.layer.1.DenseReluDense.wi_1.weight"
    tensors = _read(saved)
    assert tensors[name].shape == (64, 32)
    tensors[name] = np.zeros((48, 32), np.float32)
    _write(saved, tensors)
    with pytest.raises(ValueError) as err:
        hf.load_t5(saved)
    message = str(err.value)
    assert name in message and "(64, 32)" in message and "(48, 32)" in message
    assert hf.WEIGHTS_NAME in message


def test_differing_embedding_copy_is_rejected(saved):
    tensors = _read(saved)
    tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"].copy()
    _write(saved, tensors)
    hf.load_t5(saved)  # an equal copy is fine
    tensors["decoder.embed_tokens.weight"] = tensors["shared.weight"] + 1.0
    _write(saved, tensors)
    with pytest.raises(ValueError, match="decoder.embed_tokens.weight"):
        hf.load_t5(saved)


def test_separate_head_with_v1_0_scaling_is_rejected(tmp_path):
    config = testing.tiny_t5_config(**_V1_0)
    hf.save_t5(config, _params(config), tmp_path)
    tensors = _read(tmp_path)
    tensors["lm_head.weight"] = tensors["shared.weight"].copy()
    _write(tmp_path, tensors)
    hf.load_t5(tmp_path)  # a stored copy of the tied head is fine
    tensors["lm_head.weight"] *= 2.0
    _write(tmp_path, tensors)
    with pytest.raises(ValueError, match="lm_head.weight .* differs from shared.weight"):
        hf.load_t5(tmp_path)


def test_unsupported_feed_forward_proj(saved):
    with open(saved / hf.CONFIG_NAME) as f:
        config = json.load(f)
    config["feed_forward_proj"] = "gated-silu"
    with open(saved / hf.CONFIG_NAME, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="unsupported feed_forward_proj 'gated-silu'"):
        hf.load_t5(saved)


def test_architecture_overrides_are_rejected(saved):
    with pytest.raises(ValueError, match="emb_dim"):
        hf.load_t5(saved, emb_dim=64)


def test_config_conventions_of_both_transformers_generations():
    # transformers 4.x v1.0 file: no tying key -> tied head with output scaling.
    assert hf.config_from_hf({"feed_forward_proj": "relu"}).logits_via_embedding
    # 4.x v1.1 file.
    assert not hf.config_from_hf({"tie_word_embeddings": False}).logits_via_embedding
    # 5.x v1.1 file: tying forced true, scaling recorded separately.
    five = {"tie_word_embeddings": True, "scale_decoder_outputs": False}
    assert not hf.config_from_hf(five).logits_via_embedding
    assert hf.config_from_hf({"num_layers": 3}).num_decoder_layers == 3
    with pytest.raises(ValueError, match="bart"):
        hf.config_from_hf({"model_type": "bart"})
