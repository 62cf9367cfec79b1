"""Cached sampling: log-probs, per-row keys, EOS handling, greedy, config checks."""

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax import decoding
from nlhf_jax import testing
from nlhf_jax import types
from nlhf_jax.models import t5

_CONFIG = testing.tiny_t5_config(vocab_size=40)
_MAX_LEN = 12


@functools.lru_cache(maxsize=None)
def _jit_generate(config: t5.T5Config, cfg: decoding.SamplingConfig):
    return jax.jit(functools.partial(decoding.generate, t5.EncoderDecoder(config), cfg=cfg))


@pytest.fixture(scope="module")
def params():
    params = testing.random_params(t5.EncoderDecoder(_CONFIG), seed=0)
    # A larger EOS logit spread makes rows stop at varied lengths, some before the end.
    params["head"]["logits_dense"]["kernel"][:, types.EOS_ID] *= 3.0
    return params


def _prompts(seed=0, batch=8):
    return testing.random_tokens(seed, batch, 10, _CONFIG.vocab_size, min_length=2, append_eos=True)


def _keys(seed, batch=8):
    return jax.random.split(jax.random.key(seed), batch)


def _sample(params, prompts, rngs, **cfg):
    cfg = decoding.SamplingConfig(max_decode_len=_MAX_LEN, **cfg)
    return jax.device_get(_jit_generate(_CONFIG, cfg)(params, prompts, rngs)), cfg


@pytest.mark.parametrize(
    "cfg", [dict(temperature=0.7), dict(temperature=1.3, top_k=5), dict(greedy=True)],
    ids=["temperature", "top_k", "greedy"],
)
def test_cached_logprobs_equal_teacher_forced(params, cfg):
    prompts = _prompts()
    out, cfg = _sample(params, prompts, _keys(1), **cfg)
    assert out.tokens.shape == out.logprobs.shape == (8, _MAX_LEN)
    assert np.all(np.isfinite(out.logprobs)) and np.all(out.logprobs <= 0)
    expected = decoding.teacher_forced_logprobs(
        t5.EncoderDecoder(_CONFIG), params, prompts, out.tokens, out.lengths, cfg
    )
    np.testing.assert_allclose(out.logprobs, np.asarray(expected), rtol=0, atol=1e-5)
    if cfg.top_k:
        # Every sampled token lies in the top-k of its (teacher-forced) distribution.
        logits = t5.EncoderDecoder(_CONFIG).apply(
            {"params": params}, prompts, decoding.shift_right(out.tokens)
        )
        rank = np.sum(np.asarray(logits) > np.take_along_axis(
            np.asarray(logits), out.tokens[..., None], axis=-1), axis=-1)
        valid = np.arange(_MAX_LEN)[None] < out.lengths[:, None]
        assert np.all(rank[valid] < cfg.top_k)


def test_row_sample_depends_only_on_its_prompt_and_key(params):
    prompts, keys = _prompts(0), _keys(2)
    out, _ = _sample(params, prompts, keys, temperature=1.0)
    # Every other row replaced.
    others = _prompts(5)
    other_keys = _keys(6)
    row = 3
    mixed_prompts = others.copy()
    mixed_prompts[row] = prompts[row]
    mixed_keys = other_keys.at[row].set(keys[row])
    mixed, _ = _sample(params, mixed_prompts, mixed_keys, temperature=1.0)
    np.testing.assert_array_equal(mixed.tokens[row], out.tokens[row])
    np.testing.assert_allclose(mixed.logprobs[row], out.logprobs[row], rtol=0, atol=1e-6)
    assert not np.array_equal(mixed.tokens, out.tokens)
    # Rows moved to other positions in the batch.
    rolled, _ = _sample(params, np.roll(prompts, 2, axis=0), jnp.roll(keys, 2, axis=0),
                        temperature=1.0)
    np.testing.assert_array_equal(rolled.tokens, np.roll(out.tokens, 2, axis=0))
    np.testing.assert_array_equal(rolled.lengths, np.roll(out.lengths, 2, axis=0))


def test_eos_stops_a_row_and_lengths_count_it(params):
    out, _ = _sample(params, _prompts(7, batch=16), _keys(8, batch=16), temperature=1.0)
    positions = np.arange(_MAX_LEN)[None, :]
    ended = out.lengths < _MAX_LEN
    assert ended.any() and (~ended).any(), "both outcomes should occur with these seeds"
    # An ended row's last counted token is EOS, and nothing but padding follows it.
    last = np.take_along_axis(out.tokens, out.lengths[:, None] - 1, axis=1)[:, 0]
    assert np.all(last[ended] == types.EOS_ID)
    after = positions >= out.lengths[:, None]
    assert np.all(out.tokens[after] == types.PAD_ID)
    assert np.all(out.logprobs[after] == 0.0)
    # No EOS before the end, and no padding inside (forbid_pad is on by default).
    inside = positions < out.lengths[:, None] - 1
    assert not np.any(out.tokens[inside] == types.EOS_ID)
    assert not np.any(out.tokens[positions < out.lengths[:, None]] == types.PAD_ID)


def test_greedy_is_argmax_of_teacher_forced_logits(params):
    prompts = _prompts(9)
    out, _ = _sample(params, prompts, _keys(0), greedy=True)
    logits = np.array(t5.EncoderDecoder(_CONFIG).apply(
        {"params": params}, prompts, decoding.shift_right(out.tokens)
    ))
    logits[..., types.PAD_ID] = -np.inf  # forbid_pad
    valid = np.arange(_MAX_LEN)[None] < out.lengths[:, None]
    np.testing.assert_array_equal(logits.argmax(-1)[valid], out.tokens[valid])
    # Greedy ignores the keys.
    again, _ = _sample(params, prompts, _keys(1), greedy=True)
    np.testing.assert_array_equal(again.tokens, out.tokens)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(max_decode_len=0), "max_decode_len"),
    ],
)
def test_sampling_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        decoding.SamplingConfig(**kwargs)


def test_greedy_config_needs_no_temperature():
    assert decoding.SamplingConfig(greedy=True, temperature=0.0).greedy


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decoder_only_cached_steps_equal_full_forward(scan_layers):
    config = dataclasses.replace(_CONFIG, scan_layers=scan_layers)
    model = t5.DecoderOnly(config)
    params = testing.random_params(model, seed=1)
    tokens = testing.random_tokens(3, 3, 9, config.vocab_size, min_length=9)
    full = np.asarray(jax.jit(model.apply)({"params": params}, tokens))

    # The cache-creating call writes position 0; reset the index, as init_cache does,
    # so the first real step overwrites it.
    _, variables = model.apply(
        {"params": params}, tokens[:, :1], decode=True, max_decode_len=tokens.shape[1],
        mutable=["cache"],
    )
    cache = flax.core.unfreeze(variables["cache"])
    cache["decoder"]["index"] = jnp.zeros((), jnp.int32)

    @jax.jit
    def step(cache, token):
        logits, variables = model.apply(
            {"params": params, "cache": cache}, token, decode=True, mutable=["cache"]
        )
        return variables["cache"], logits[:, 0]

    stepped = []
    for t in range(tokens.shape[1]):
        cache, logits = step(cache, tokens[:, t : t + 1])
        stepped.append(np.asarray(logits))
    np.testing.assert_allclose(np.stack(stepped, axis=1), full, rtol=0, atol=1e-5)
