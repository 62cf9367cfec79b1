"""Nash-MD-PG's sequence-level mixture option (NashMDConfig.mixture="sequence"):
importance weights checked exactly against the token mixture's normalisers, and the
resampled alternative's law against the exact sequence-level mixture, by enumerating
every response of a tiny policy (vocabulary {PAD, EOS, 2, 3}, at most 3 tokens)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax import decoding
from nlhf_jax import online
from nlhf_jax import policy
from nlhf_jax import testing
from nlhf_jax.models import t5

CFG = t5.T5Config(vocab_size=4, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                  num_encoder_layers=1, num_decoder_layers=1)
MODEL = t5.EncoderDecoder(CFG)
MAX_LEN = 3
BETA = 0.4
SCFG = decoding.SamplingConfig(temperature=1.0, max_decode_len=MAX_LEN)
PROMPT = np.array([[2, 3, 1]], np.int32)


SEQS, LENS = testing.all_responses((2, 3), eos=1, max_len=MAX_LEN)  # every response
N = len(SEQS)  # every response: 15
INDEX = {tuple(t[:n]): i for i, (t, n) in enumerate(zip(SEQS.tolist(), LENS.tolist()))}


def _params(seed, scale):
    return jax.tree_util.tree_map(lambda x: x * scale, t5.init_params(MODEL, jax.random.key(seed)))


THETA, MU = _params(2, 1.5), _params(3, 1.5)


def _full(params):
    """Normalised log-probs over the vocabulary at every position of every response. [N, L, V]"""
    prompts = jnp.asarray(np.repeat(PROMPT, N, 0))
    return policy.normalise(MODEL.apply({"params": params}, prompts, decoding.shift_right(jnp.asarray(SEQS))))


def _exact(beta):
    """(log q: the token-level mixture's law over the N responses, log of the per-token
    normalisers summed, log p_seq: the sequence-level mixture's law). [N] each."""
    mixed = (1 - beta) * _full(THETA) + beta * _full(MU)  # [N, L, V], unnormalised
    log_c = jax.nn.logsumexp(mixed, axis=-1)  # log C_n(y_<n)
    mask = np.arange(MAX_LEN)[None] < LENS[:, None]
    tok = jnp.take_along_axis(mixed, jnp.asarray(SEQS)[..., None], -1)[..., 0]
    log_q = np.asarray(jnp.where(mask, tok - log_c, 0.0).sum(-1), np.float64)
    log_norm = np.asarray(jnp.where(mask, log_c, 0.0).sum(-1), np.float64)
    log_unnorm = np.asarray(jnp.where(mask, tok, 0.0).sum(-1), np.float64)  # (1-b) log pi + b log mu
    log_seq = log_unnorm - np.log(np.exp(log_unnorm).sum())
    return log_q, log_norm, log_seq


def test_weights_are_the_products_of_the_token_normalisers():
    log_q, log_norm, _ = _exact(BETA)
    assert abs(np.exp(log_q).sum() - 1) < 1e-5  # the enumeration covers every response
    token_lp = np.zeros((N, MAX_LEN), np.float32)  # what the sampler reports: log q per token
    mixed = (1 - BETA) * _full(THETA) + BETA * _full(MU)
    per_tok = jnp.take_along_axis(jax.nn.log_softmax(mixed, -1), jnp.asarray(SEQS)[..., None], -1)[..., 0]
    token_lp[:] = np.where(np.arange(MAX_LEN)[None] < LENS[:, None], per_tok, 0.0)
    draws = decoding.DecodeOutput(jnp.asarray(SEQS), jnp.asarray(token_lp), jnp.asarray(LENS))
    log_w = online.mixture_log_weights(MODEL, THETA, MU, jnp.asarray(np.repeat(PROMPT, N, 0)), draws,
                                       BETA, SCFG)
    np.testing.assert_allclose(np.asarray(log_w), log_norm, atol=1e-5)
    assert np.ptp(log_norm) > 0.05  # the two mixtures differ on this policy pair


def _resample(beta, candidates, rows, seed=0):
    cfg = online.NashMDConfig(algorithm="nash_md", mixture="sequence", mixture_candidates=candidates,
                              max_decode_len=MAX_LEN)
    fn = jax.jit(functools.partial(online._sequence_mixture, model=MODEL, cfg=cfg))
    out, ess = fn(THETA, MU, jnp.asarray(np.repeat(PROMPT, rows, 0)), jax.random.key(seed), beta)
    picks = np.array([INDEX[tuple(t[:n])] for t, n in zip(np.asarray(out.tokens).tolist(),
                                                             np.asarray(out.lengths).tolist())])
    return np.bincount(picks, minlength=N) / rows, np.asarray(ess)


def test_resampling_moves_the_alternative_to_the_sequence_level_mixture():
    log_q, _, log_seq = _exact(BETA)
    q, p_seq = np.exp(log_q), np.exp(log_seq)
    gap = 0.5 * np.abs(q - p_seq).sum()
    assert gap > 0.1, gap
    rows = 6000
    freq1, ess1 = _resample(BETA, 1, rows)  # K = 1: the token-level mixture itself
    freq16, ess16 = _resample(BETA, 16, rows)
    tv = lambda a, b: 0.5 * np.abs(a - b).sum()  # noqa: E731
    noise = 0.5 * np.sqrt(N / rows)  # about the TV of an empirical law of `rows` draws
    assert tv(freq1, q) < noise and np.all(ess1 == 1.0)
    assert tv(freq16, p_seq) < noise < gap - noise, (tv(freq16, p_seq), noise, gap)
    assert tv(freq16, p_seq) < 0.5 * tv(freq16, q)
    assert 0.0 < ess16.min() and ess16.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_at_beta_0_and_1_the_two_mixtures_coincide(beta):
    _, log_norm, _ = _exact(beta)
    np.testing.assert_allclose(log_norm, 0.0, atol=1e-5)  # every C_n = 1: weights all equal
    _, ess = _resample(beta, 4, 64)
    np.testing.assert_allclose(ess, 1.0, atol=1e-5)


def test_config_checks():
    with pytest.raises(ValueError, match="mixture='bogus'"):
        online.NashMDConfig(mixture="bogus")
    with pytest.raises(ValueError, match="is for nash_md"):
        online.NashMDConfig(algorithm="ipo_md", mixture="sequence")
    with pytest.raises(ValueError, match="temperature 1.0"):
        online.NashMDConfig(mixture="sequence", temperature=0.7)
    with pytest.raises(ValueError, match="mixture_candidates"):
        online.NashMDConfig(mixture="sequence", mixture_candidates=0)
