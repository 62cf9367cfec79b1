"""The T5 networks: full-size shapes, bucketing, axis names, dropout, causality, remat."""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.t5 import modeling_t5

from nlhf_jax import decoding
from nlhf_jax import testing
from nlhf_jax import types
from nlhf_jax.models import layers
from nlhf_jax.models import t5

# google/t5-v1_1-xxl (HF config names in comments).
_XXL = t5.T5Config(
    vocab_size=32128,  # vocab_size
    emb_dim=4096,  # d_model
    num_heads=64,  # num_heads
    num_encoder_layers=24,  # num_layers
    num_decoder_layers=24,  # num_decoder_layers
    head_dim=64,  # d_kv
    mlp_dim=10240,  # d_ff
    mlp_activations=("gelu", "linear"),  # feed_forward_proj="gated-gelu"
    logits_via_embedding=False,  # separate lm_head
)
# The published size of T5 v1.1 XXL ("11B"; the checkpoint holds 11.1e9 parameters).
_XXL_PUBLISHED = 11.1e9


def _expected_count(c: t5.T5Config) -> int:
    """Parameter count of a T5 encoder-decoder, by formula."""
    inner = c.num_heads * c.head_dim
    attention = 4 * c.emb_dim * inner  # q, k, v [D, H*Dh] and out [H*Dh, D]
    mlp = (len(c.mlp_activations) + 1) * c.emb_dim * c.mlp_dim  # wi(_k) [D, F], wo [F, D]
    encoder_layer = attention + mlp + 2 * c.emb_dim  # two RMSNorm scales
    decoder_layer = 2 * attention + mlp + 3 * c.emb_dim
    relpos = c.relative_attention_num_buckets * c.num_heads  # one table per stack
    embedding = c.vocab_size * c.emb_dim
    head = 0 if c.logits_via_embedding else c.vocab_size * c.emb_dim
    return (
        embedding + head
        + c.num_encoder_layers * encoder_layer + relpos + c.emb_dim
        + c.num_decoder_layers * decoder_layer + relpos + c.emb_dim
    )


def _abstract_params(config):
    model = t5.EncoderDecoder(config)
    return jax.eval_shape(functools.partial(t5.init_params, model), jax.random.key(0))


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_xxl_parameter_count_without_allocating(scan_layers):
    abstract = _abstract_params(dataclasses.replace(_XXL, scan_layers=scan_layers))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(abstract))
    count = _count(abstract)
    assert count == _expected_count(_XXL) == 11_135_332_352
    assert abs(count - _XXL_PUBLISHED) / _XXL_PUBLISHED < 0.01


def test_xxl_parameter_count_matches_hf_on_meta_device():
    hf_config = transformers.T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    )
    with torch.device("meta"):  # shapes only: nothing is allocated
        hf_model = transformers.T5ForConditionalGeneration(hf_config)
        # transformers >= 5 ties lm_head to the embedding even for v1.1 configs; the
        # published v1.1 checkpoints hold a separate head, as our untied config does.
        hf_model.lm_head.weight = torch.nn.Parameter(torch.empty(32128, 4096))
    assert hf_model.lm_head.weight.device.type == "meta"
    hf_count = sum(p.numel() for p in hf_model.parameters())
    assert hf_count == _count(_abstract_params(_XXL))


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 20), (8, 12), (64, 256)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket_matches_hf(bidirectional, num_buckets, max_distance):
    offsets = np.arange(-600, 601)  # key minus query, both directions, beyond max_distance
    ours = layers.relative_position_bucket(
        jnp.asarray(offsets, jnp.int32), bidirectional, num_buckets, max_distance
    )
    theirs = modeling_t5.T5Attention._relative_position_bucket(
        torch.tensor(offsets), bidirectional=bidirectional, num_buckets=num_buckets,
        max_distance=max_distance,
    )
    np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())
    assert int(np.max(ours)) == num_buckets - 1


@pytest.mark.parametrize(
    "model_cls,overrides",
    [
        (t5.EncoderDecoder, dict()),
        (t5.EncoderDecoder, dict(mlp_activations=("relu",), logits_via_embedding=True)),
        (t5.EncoderDecoder, dict(scan_layers=True)),
        (t5.DecoderOnly, dict()),
        (t5.DecoderOnly, dict(scan_layers=True, remat_policy="full")),
    ],
    ids=["v1_1", "v1_0", "scanned", "decoder_only", "decoder_only_scanned"],
)
def test_every_parameter_has_logical_axis_names(model_cls, overrides):
    config = testing.tiny_t5_config(**overrides)
    variables = jax.eval_shape(
        functools.partial(t5.init_variables, model_cls(config)), jax.random.key(0)
    )
    leaves = jax.tree_util.tree_leaves_with_path(
        variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )
    assert leaves
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.Partitioned), f"{name} carries no axis names"
        assert len(leaf.names) == len(leaf.value.shape), name
        assert set(leaf.names) <= set(types.PARAM_AXES), (name, leaf.names)
        if config.scan_layers and "stack" in name:
            assert leaf.names[0] == types.LAYERS, (name, leaf.names)


def _dropout_key(seed):
    # Threefry dropout masks make XLA's CPU compile of a backward pass several times
    # slower; the RBG generator compiles fast and the properties tested do not depend
    # on the generator.
    return jax.random.key(seed, impl="unsafe_rbg")


def _inputs(vocab_size):
    encoder_tokens = testing.random_tokens(0, 3, 9, vocab_size, min_length=2)
    targets = testing.random_tokens(1, 3, 6, vocab_size, min_length=2, append_eos=True)
    return encoder_tokens, np.asarray(decoding.shift_right(targets)), targets


def test_dropout_only_when_enabled():
    config = testing.tiny_t5_config(dropout_rate=0.3)
    model = t5.EncoderDecoder(config)
    params = testing.random_params(model)
    encoder_tokens, decoder_inputs, _ = _inputs(config.vocab_size)

    @functools.partial(jax.jit, static_argnums=2)
    def forward(rng, params, enable_dropout):
        return model.apply(
            {"params": params}, encoder_tokens, decoder_inputs, enable_dropout=enable_dropout,
            rngs={"dropout": rng},
        )

    k1, k2 = _dropout_key(1), _dropout_key(2)
    plain = model.apply({"params": params}, encoder_tokens, decoder_inputs)
    np.testing.assert_array_equal(forward(k1, params, False), forward(k2, params, False))
    # Jitted and op-by-op evaluation may round differently.
    np.testing.assert_allclose(forward(k1, params, False), plain, rtol=0, atol=1e-5)
    dropped = forward(k1, params, True)
    assert np.max(np.abs(dropped - plain)) > 1e-2
    assert np.max(np.abs(dropped - forward(k2, params, True))) > 1e-2
    np.testing.assert_array_equal(dropped, forward(k1, params, True))


def test_decoder_only_shape_and_causality():
    config = testing.tiny_t5_config()
    model = t5.DecoderOnly(config)
    params = testing.random_params(model)
    tokens = testing.random_tokens(2, 2, 10, config.vocab_size, min_length=10)
    changed = tokens.copy()
    changed[:, 6] = (changed[:, 6] - 2 + 1) % (config.vocab_size - 2) + 2
    forward = jax.jit(model.apply)
    logits = np.asarray(forward({"params": params}, tokens))
    logits_changed = np.asarray(forward({"params": params}, changed))
    assert logits.shape == (2, 10, config.vocab_size) and logits.dtype == np.float32
    np.testing.assert_allclose(logits_changed[:, :6], logits[:, :6], rtol=0, atol=1e-6)
    assert np.all(np.max(np.abs(logits_changed[:, 6:] - logits[:, 6:]), axis=-1) > 1e-4)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_full_remat_gives_same_loss_and_grads(scan_layers):
    config = testing.tiny_t5_config(dropout_rate=0.1, scan_layers=scan_layers)
    remat_config = dataclasses.replace(config, remat_policy="full")
    params = testing.random_params(t5.EncoderDecoder(config))
    assert (
        jax.tree_util.tree_structure(_abstract_params(remat_config))
        == jax.tree_util.tree_structure(params)
    )
    encoder_tokens, decoder_inputs, targets = _inputs(config.vocab_size)

    def loss_and_grads(config):
        model = t5.EncoderDecoder(config)

        def loss_fn(params):
            # Dropout on: rematerialisation must replay the same masks.
            logits = model.apply(
                {"params": params}, encoder_tokens, decoder_inputs, enable_dropout=True,
                rngs={"dropout": _dropout_key(3)},
            )
            logps = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logps, targets[..., None], axis=-1))

        return jax.jit(jax.value_and_grad(loss_fn))(params)

    loss, grads = loss_and_grads(config)
    remat_loss, remat_grads = loss_and_grads(remat_config)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    jax.tree_util.tree_map(
        functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), remat_grads, grads
    )
