"""Decoder-only prefill: one forward pass over the prompt fills the same cache as one
cached step per prompt token, for prompts of different lengths in one batch."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax import decoding
from nlhf_jax import partitioning
from nlhf_jax import testing
from nlhf_jax import types
from nlhf_jax.models import t5

_CONFIG = testing.tiny_t5_config(vocab_size=40, num_decoder_layers=3)
_PROMPT_LEN = 7
_MAX_LEN = 6


def _model(scan_layers: bool = False) -> t5.DecoderOnly:
    return t5.DecoderOnly(dataclasses.replace(_CONFIG, scan_layers=scan_layers))


def _prompts(seed: int = 0, batch: int = 4) -> np.ndarray:
    """Right-padded prompts of lengths 2.._PROMPT_LEN (row 0 full)."""
    return testing.random_tokens(seed, batch, _PROMPT_LEN, _CONFIG.vocab_size, min_length=2)


@functools.lru_cache(maxsize=None)
def _jit_generate(cfg: decoding.SamplingConfig, stepwise_prefill: bool):
    return jax.jit(functools.partial(
        decoding.generate_decoder_only, _model(), cfg=cfg, stepwise_prefill=stepwise_prefill))


def _masked_forward(model, params, prompts, continuation):
    """Full (uncached) forward over left-aligned prompt + continuation, padding masked:
    logits [B, T, V] of the positions predicting the continuation."""
    aligned, mask = decoding.left_align(prompts)
    tokens = jnp.concatenate([aligned, continuation], axis=1)
    mask = jnp.concatenate([mask, jnp.ones(continuation.shape, bool)], axis=1)
    logits = model.apply({"params": params}, tokens, input_mask=mask)
    k, t = prompts.shape[1], continuation.shape[1]
    return logits[:, k - 1 : k - 1 + t]


def test_left_align_moves_padding_to_the_front():
    prompts = np.array([[5, 6, 7], [8, 0, 0], [0, 0, 0]], np.int32)
    tokens, mask = decoding.left_align(prompts)
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [0, 0, 8], [0, 0, 0]])
    # The empty row keeps its last position visible, as a start token.
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1], [0, 0, 1]])


@pytest.mark.parametrize("stepwise_prefill", [False, True], ids=["one_pass", "stepwise"])
@pytest.mark.parametrize("scan_layers", [False, True], ids=["layers", "scanned"])
def test_prefill_and_cached_steps_equal_full_forward(scan_layers, stepwise_prefill):
    model = _model(scan_layers)
    params = testing.random_params(model, seed=1)
    prompts = _prompts(2)
    assert len(set((prompts != types.PAD_ID).sum(1))) > 1, "rows should differ in length"
    continuation = testing.random_tokens(3, prompts.shape[0], _MAX_LEN, _CONFIG.vocab_size,
                                         min_length=_MAX_LEN)

    @jax.jit
    def cached_logits(params, prompts, continuation):
        cache, first = decoding.init_decoder_only_cache(
            model, params, prompts, _MAX_LEN, stepwise_prefill=stepwise_prefill)
        step = decoding.decoder_only_tokens_to_logits(model, params)
        inputs = jnp.concatenate([first[:, None], continuation[:, :-1]], axis=1)
        _, logits = jax.lax.scan(lambda c, tok: step(tok[:, None], c)[::-1], cache, inputs.T)
        return jnp.swapaxes(logits, 0, 1)

    cached = np.asarray(cached_logits(params, prompts, continuation))
    assert cached.shape == (prompts.shape[0], _MAX_LEN, _CONFIG.vocab_size)
    # Each row alone, unpadded: the padding must leave no trace.
    for b, row in enumerate(prompts):
        n = int(np.sum(row != types.PAD_ID))
        seq = np.concatenate([row[:n], continuation[b]])[None]
        full = np.asarray(model.apply({"params": params}, seq))[0, n - 1 : n - 1 + _MAX_LEN]
        np.testing.assert_allclose(cached[b], full, rtol=0, atol=1e-5, err_msg=f"row {b}")
    # The whole padded batch in one masked forward pass.
    masked = np.asarray(_masked_forward(model, params, prompts, continuation))
    np.testing.assert_allclose(cached, masked, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "cfg", [dict(greedy=True), dict(temperature=0.8), dict(temperature=1.2, top_k=6)],
    ids=["greedy", "temperature", "top_k"],
)
def test_one_pass_and_stepwise_prefill_sample_the_same(cfg):
    model = _model()
    params = testing.random_params(model, seed=4)
    # A larger EOS logit spread makes rows stop at varied lengths, some before the end.
    params["head"]["logits_dense"]["kernel"][:, types.EOS_ID] *= 3.0
    prompts = _prompts(5, batch=8)
    rngs = jax.random.split(jax.random.key(6), prompts.shape[0])
    cfg = decoding.SamplingConfig(max_decode_len=_MAX_LEN, **cfg)
    one_pass = jax.device_get(_jit_generate(cfg, False)(params, prompts, rngs))
    stepwise = jax.device_get(_jit_generate(cfg, True)(params, prompts, rngs))
    np.testing.assert_array_equal(one_pass.tokens, stepwise.tokens)
    np.testing.assert_array_equal(one_pass.lengths, stepwise.lengths)
    np.testing.assert_allclose(one_pass.logprobs, stepwise.logprobs, rtol=0, atol=1e-5)
    # And both are the log-probs of a full forward pass's sampling distribution.
    logps = decoding.sampling_logprobs(
        _masked_forward(model, params, prompts, jnp.asarray(one_pass.tokens)), cfg)
    expected = np.take_along_axis(np.asarray(logps), one_pass.tokens[..., None], axis=-1)[..., 0]
    valid = np.arange(_MAX_LEN)[None] < one_pass.lengths[:, None]
    np.testing.assert_allclose(one_pass.logprobs[valid], expected[valid], rtol=0, atol=1e-5)
    assert np.all(one_pass.tokens[~valid] == types.PAD_ID)


def test_one_token_prompts_equal_their_padded_form():
    """K = 1 leaves nothing to prefill; padding the same prompts to K = 3 must not
    change what is sampled (two padding keys masked in the one-pass prefill)."""
    model = _model()
    params = testing.random_params(model, seed=7)
    prompts = np.array([[9], [4]], np.int32)
    cfg = decoding.SamplingConfig(max_decode_len=_MAX_LEN, temperature=1.0, eos_id=-1)
    rngs = jax.random.split(jax.random.key(0), 2)
    out = jax.device_get(_jit_generate(cfg, False)(params, prompts, rngs))
    padded = jax.device_get(_jit_generate(cfg, False)(params, np.pad(prompts, ((0, 0), (0, 2))), rngs))
    np.testing.assert_array_equal(out.tokens, padded.tokens)
    np.testing.assert_allclose(out.logprobs, padded.logprobs, rtol=0, atol=1e-5)
    assert out.tokens.shape == (2, _MAX_LEN) and np.all(out.lengths == _MAX_LEN)


def test_decode_call_longer_than_the_cache_raises():
    model = _model()
    params = testing.random_params(model, seed=0)
    with pytest.raises(ValueError, match="exceeds the cache"):
        model.apply({"params": params}, jnp.ones((1, 5), jnp.int32), decode=True, max_decode_len=3,
                    mutable=["cache"])


def test_sharded_one_pass_generate_equals_single_device():
    """Under a (data, fsdp, model) = (2, 2, 2) mesh with the default rules, params
    sharded and the batch split over (data, fsdp), as the training phases run."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))
    rules = partitioning.default_rules()
    model = _model()
    init = lambda rng: t5.init_variables(model, rng)["params"]  # noqa: E731
    params, _ = partitioning.sharded_init(init, mesh, rules, jax.random.key(3))
    prompts, rngs = _prompts(8, batch=8), jax.random.split(jax.random.key(9), 8)
    cfg = decoding.SamplingConfig(max_decode_len=_MAX_LEN, temperature=1.0)
    expected = jax.device_get(_jit_generate(cfg, True)(jax.device_get(params), prompts, rngs))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        batch = partitioning.batch_sharding(mesh, 2)
        out = _jit_generate(cfg, False)(params, jax.device_put(prompts, batch),
                                        jax.device_put(rngs, partitioning.batch_sharding(mesh, 1)))
        out = jax.device_get(out)
    np.testing.assert_array_equal(out.tokens, expected.tokens)
    np.testing.assert_allclose(out.logprobs, expected.logprobs, rtol=0, atol=1e-5)


def test_logits_from_skips_the_head_on_the_prompt_only():
    """DecoderOnly(..., logits_from=k): the same logits and gradients as the full
    output sliced from k, the head run on the later positions only."""
    model = _model()
    params = testing.random_params(model, seed=3)
    tokens = jnp.asarray(testing.random_tokens(1, 3, 9, _CONFIG.vocab_size, min_length=9))
    k = 5
    full = model.apply({"params": params}, tokens)
    part = model.apply({"params": params}, tokens, logits_from=k)
    assert part.shape == (3, 9 - k, _CONFIG.vocab_size)
    np.testing.assert_allclose(np.asarray(part), np.asarray(full[:, k:]), rtol=1e-5, atol=1e-5)

    def score(p, sliced):
        out = model.apply({"params": p}, tokens, logits_from=k if sliced else 0)
        out = out if sliced else out[:, k:]
        return jnp.sum(jax.nn.log_softmax(out)[..., 3])

    for a, b in zip(jax.tree_util.tree_leaves(jax.grad(score)(params, True)),
                    jax.tree_util.tree_leaves(jax.grad(score)(params, False))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
