"""Number-for-number parity with HuggingFace's PyTorch T5 on random weights.

Each case builds a tiny `transformers.T5ForConditionalGeneration`, saves it with
`save_pretrained` (safetensors), loads it with `load_t5` and compares teacher-forced
logits on padded batches and greedy decoding against HF `generate`.
"""

import functools

import jax
import numpy as np
import pytest
import torch
import transformers

from nlhf_jax import decoding
from nlhf_jax import models
from nlhf_jax import testing
from nlhf_jax.checkpoints import hf

_LOGITS_ATOL = 1e-4
_NEW_TOKENS = 10

# HF config kwargs; `untie` gives the model an lm_head of its own (transformers >= 5
# ties it to the embedding at construction, even for v1.1 configs).
_CASES = {
    "v1_0_relu_tied": dict(
        hf=dict(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                feed_forward_proj="relu", tie_word_embeddings=True),
        untie=False,
    ),
    "v1_1_gated_untied": dict(
        hf=dict(vocab_size=80, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                feed_forward_proj="gated-gelu", tie_word_embeddings=False),
        untie=True,
    ),
    # More encoder than decoder layers, num_heads * d_kv (36) != d_model (24), and few
    # buckets with a short max distance so the log-spaced buckets are exercised.
    "uneven_layers_and_heads": dict(
        hf=dict(vocab_size=64, d_model=24, d_kv=12, d_ff=40, num_layers=3,
                num_decoder_layers=2, num_heads=3, feed_forward_proj="gated-gelu",
                tie_word_embeddings=False, relative_attention_num_buckets=8,
                relative_attention_max_distance=12),
        untie=True,
    ),
}


@pytest.fixture(scope="module", params=sorted(_CASES))
def case(request, tmp_path_factory):
    """(HF torch model in eval mode, our config, our params, checkpoint directory)."""
    spec = _CASES[request.param]
    torch.manual_seed(0)
    hf_config = transformers.T5Config(
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        **spec["hf"],
    )
    hf_model = transformers.T5ForConditionalGeneration(hf_config)
    if spec["untie"]:
        vocab, d_model = hf_model.lm_head.weight.shape
        # Scaled like the tied head's d_model**-0.5 so logits stay O(1) to O(10).
        hf_model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, d_model) * d_model**-0.5)
    with torch.no_grad():
        # Make EOS the greedy choice now and then, so decoding stops mid-sequence for
        # some prompts and the alignment with HF's padding is exercised.
        hf_model.lm_head.weight[1] *= 3.0
    hf_model.eval()
    directory = tmp_path_factory.mktemp(request.param)
    hf_model.save_pretrained(directory)
    config, params = hf.load_t5(directory)
    return hf_model, config, params, directory


def _batch(vocab_size):
    encoder_tokens = testing.random_tokens(1, 4, 12, vocab_size, min_length=3, append_eos=True)
    targets = testing.random_tokens(2, 4, 9, vocab_size, min_length=2, append_eos=True)
    return encoder_tokens, np.asarray(decoding.shift_right(targets))


def _forward(config, params, encoder_tokens, decoder_inputs):
    apply = jax.jit(models.EncoderDecoder(config).apply)
    return np.asarray(apply({"params": params}, encoder_tokens, decoder_inputs))


def _hf_logits(hf_model, encoder_tokens, decoder_inputs):
    with torch.no_grad():
        out = hf_model(
            input_ids=torch.tensor(encoder_tokens, dtype=torch.long),
            attention_mask=torch.tensor(encoder_tokens != 0, dtype=torch.long),
            decoder_input_ids=torch.tensor(decoder_inputs, dtype=torch.long),
        )
    return out.logits.numpy()


def test_config_matches_hf(case):
    hf_model, config, _, _ = case
    hf_config = hf_model.config
    assert config.emb_dim == hf_config.d_model
    assert config.num_encoder_layers == hf_config.num_layers
    assert config.num_decoder_layers == hf_config.num_decoder_layers
    assert config.num_heads * config.head_dim == hf_config.num_heads * hf_config.d_kv
    assert config.logits_via_embedding == hf_config.scale_decoder_outputs
    assert config.mlp_activations == (("gelu", "linear") if hf_config.is_gated_act else ("relu",))


def test_logits_match_hf_on_padded_batch(case):
    hf_model, config, params, _ = case
    encoder_tokens, decoder_inputs = _batch(config.vocab_size)
    assert (encoder_tokens == 0).any(), "the batch should contain padding"
    expected = _hf_logits(hf_model, encoder_tokens, decoder_inputs)
    logits = _forward(config, params, encoder_tokens, decoder_inputs)
    assert logits.shape == expected.shape
    np.testing.assert_allclose(logits, expected, rtol=0, atol=_LOGITS_ATOL)


def test_scanned_layers_give_same_logits(case):
    hf_model, config, params, directory = case
    scan_config, scan_params = hf.load_t5(directory, scan_layers=True)
    assert scan_config.scan_layers
    layers = scan_params["encoder"]["stack"]["layers"]["self_attention"]["query"]["kernel"]
    assert layers.shape[0] == config.num_encoder_layers
    encoder_tokens, decoder_inputs = _batch(config.vocab_size)
    flat = _forward(config, params, encoder_tokens, decoder_inputs)
    scanned = _forward(scan_config, scan_params, encoder_tokens, decoder_inputs)
    np.testing.assert_allclose(scanned, flat, rtol=0, atol=1e-5)
    expected = _hf_logits(hf_model, encoder_tokens, decoder_inputs)
    np.testing.assert_allclose(scanned, expected, rtol=0, atol=_LOGITS_ATOL)


def _our_greedy(config, params, prompts):
    cfg = decoding.SamplingConfig(greedy=True, max_decode_len=_NEW_TOKENS, forbid_pad=False)
    generate = jax.jit(functools.partial(decoding.generate, models.EncoderDecoder(config), cfg=cfg))
    return generate(params, prompts, jax.random.split(jax.random.key(0), prompts.shape[0]))


def _hf_greedy(hf_model, prompts):
    """HF greedy tokens aligned with ours: [B, _NEW_TOKENS], 0 after EOS."""
    with torch.no_grad():
        out = hf_model.generate(
            input_ids=torch.tensor(prompts, dtype=torch.long),
            attention_mask=torch.tensor(prompts != 0, dtype=torch.long),
            do_sample=False, num_beams=1, max_new_tokens=_NEW_TOKENS,
            decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, use_cache=True,
        ).numpy()
    # HF output = [decoder start, generated...], shorter than max_new_tokens + 1 when
    # every row stopped early, finished rows padded with pad (0) -- our convention.
    assert (out[:, 0] == 0).all()
    generated = out[:, 1:]
    return np.pad(generated, ((0, 0), (0, _NEW_TOKENS - generated.shape[1])))


def test_greedy_decoding_matches_hf_generate(case):
    hf_model, config, params, _ = case
    prompts = testing.random_tokens(3, 8, 10, config.vocab_size, min_length=2, append_eos=True)
    expected = _hf_greedy(hf_model, prompts)
    out = _our_greedy(config, params, prompts)
    np.testing.assert_array_equal(np.asarray(out.tokens), expected)
    # Lengths count EOS; both early stops and full-length rows occur in these cases.
    is_eos = expected == 1
    want_lengths = np.where(is_eos.any(1), is_eos.argmax(1) + 1, _NEW_TOKENS)
    np.testing.assert_array_equal(np.asarray(out.lengths), want_lengths)
    assert (want_lengths < _NEW_TOKENS).any() and (want_lengths == _NEW_TOKENS).any()


# One case suffices: scanning changes the cache layout, not the per-config math.
@pytest.mark.parametrize("case", ["uneven_layers_and_heads"], indirect=True)
def test_scanned_greedy_decoding_matches(case):
    hf_model, _, _, directory = case
    scan_config, scan_params = hf.load_t5(directory, scan_layers=True)
    prompts = testing.random_tokens(4, 8, 10, scan_config.vocab_size, min_length=2, append_eos=True)
    out = _our_greedy(scan_config, scan_params, prompts)
    np.testing.assert_array_equal(np.asarray(out.tokens), _hf_greedy(hf_model, prompts))
