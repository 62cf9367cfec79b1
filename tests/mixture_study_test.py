"""The token- vs sequence-level mixture study: exact identities and the update's definition.

Everything is float64 enumeration over V^L sequences (`evaluation.mixture_study`); the
identities come from log pi_seq(y) = log pi_tok(y) + sum_t log C_t(y_<t) - log Z.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax import losses
from nlhf_jax import policy
from nlhf_jax.evaluation import mixture_study as ms

BETAS = (0.0, 0.125, 0.3, 0.5, 1.0)


def _pair(length=3, vocab=3, distance=1.0, seed=0):
    return ms.random_pair(vocab, length, distance, seed)


def _pref(length=3, vocab=3, seed=7):
    tokens, _ = ms.enumerate_sequences(vocab, length)
    return ms.random_preference(len(tokens), seed)


@pytest.mark.parametrize("length", [1, 2, 4])
def test_enumeration_sums_to_one(length):
    pi, mu = _pair(length)
    tokens, prefixes = ms.enumerate_sequences(3, length)
    assert len(np.unique(tokens, axis=0)) == 3**length
    for lp in (ms.sequence_logps(pi), ms.sequence_logps(mu), ms.token_mixture(pi, mu, 0.3),
               ms.sequence_mixture(pi, mu, 0.3)):
        assert abs(np.exp(lp).sum() - 1) < 1e-12
    assert prefixes[:, 0].max() == 0 and prefixes[:, -1].max() == 3 ** (length - 1) - 1


@pytest.mark.parametrize("beta", BETAS)
def test_length_one_mixtures_coincide(beta):
    pi, mu = _pair(1, vocab=5, distance=2.0)
    out = ms.compare(pi, mu, ms.random_preference(5, 1), beta, tau=0.1)
    assert out["kl_seq_tok"] < 1e-13 and abs(out["kl_tok_seq"]) < 1e-13 and out["tv"] < 1e-13
    assert out["rel_bias"] < 1e-12 and abs(out["step_kl"]) < 1e-13


@pytest.mark.parametrize("beta, which", [(0.0, 0), (1.0, 1)])
def test_endpoints_are_pi_and_mu(beta, which):
    pi, mu = _pair(4, distance=2.0)
    own = ms.sequence_logps((pi, mu)[which])
    np.testing.assert_allclose(ms.token_mixture(pi, mu, beta), own, atol=1e-12)
    np.testing.assert_allclose(ms.sequence_mixture(pi, mu, beta), own, atol=1e-12)
    out = ms.compare(pi, mu, _pref(4), beta, tau=0.1)
    assert out["rel_bias"] < 1e-12 and abs(out["kl_seq_tok"]) < 1e-13


def test_mixtures_differ_in_general():
    """The study is not vacuous: for L >= 2 and 0 < beta < 1 the two mixtures differ."""
    pi, mu = _pair(3, distance=2.0)
    out = ms.compare(pi, mu, _pref(3), 0.5, tau=0.1)
    assert out["kl_seq_tok"] > 1e-4 and out["rel_bias"] > 1e-3 and out["cosine"] < 1


@pytest.mark.parametrize("beta", [0.125, 0.5, 0.8])
def test_normaliser_identity(beta):
    """log pi_seq = log pi_tok + sum_t log C_t - log Z, Z = E_tok[prod C_t], and
    KL(tok || seq) = log E_tok[prod C] - E_tok[sum log C] (a Jensen gap)."""
    pi, mu = _pair(4, distance=1.5, seed=3)
    tokens, prefixes = ms.enumerate_sequences(3, 4)
    log_c = ms.token_normalisers(pi, mu, beta)
    sum_log_c = np.stack([log_c[t][prefixes[:, t]] for t in range(4)], -1).sum(-1)
    tok, seq = ms.token_mixture(pi, mu, beta), ms.sequence_mixture(pi, mu, beta)
    log_z = np.log(np.sum(np.exp(tok + sum_log_c)))
    np.testing.assert_allclose(seq, tok + sum_log_c - log_z, atol=1e-12)
    p_tok = np.exp(tok)
    np.testing.assert_allclose(ms.kl(tok, seq), log_z - p_tok @ sum_log_c, atol=1e-12)


@pytest.mark.parametrize("beta", [0.125, 0.5])
def test_uniform_reference_is_temperature(beta):
    """mu uniform per token: the token mixture samples pi at temperature 1 / (1 - beta) token
    by token, the sequence mixture is pi(y)^(1-beta) normalised over whole sequences."""
    pi, _ = _pair(3, distance=2.0)
    mu = ms.TinyPolicy(tuple(np.zeros_like(x) for x in pi.logits))
    tempered = ms.TinyPolicy(tuple((1 - beta) * x for x in pi.logits))
    np.testing.assert_allclose(ms.token_mixture(pi, mu, beta), ms.sequence_logps(tempered), atol=1e-12)
    x = (1 - beta) * ms.sequence_logps(pi)
    np.testing.assert_allclose(ms.sequence_mixture(pi, mu, beta), x - np.log(np.exp(x).sum()), atol=1e-12)
    assert ms.kl(ms.sequence_mixture(pi, mu, beta), ms.token_mixture(pi, mu, beta)) > 1e-5


def _differ_only_at(position, length=4, seed=5):
    pi, mu = _pair(length, distance=2.0, seed=seed)
    logits = tuple(p if t == position else m for t, (p, m) in enumerate(zip(pi.logits, mu.logits)))
    return ms.TinyPolicy(logits), mu


@pytest.mark.parametrize("beta", [0.125, 0.6])
def test_differ_only_at_first_position_coincide(beta):
    """C_0 is one constant and C_t = 1 for t >= 1, so prod C_t does not depend on y."""
    pi, mu = _differ_only_at(0)
    np.testing.assert_allclose(ms.token_mixture(pi, mu, beta), ms.sequence_mixture(pi, mu, beta), atol=1e-12)
    assert ms.compare(pi, mu, _pref(4), beta, tau=0.1)["rel_bias"] < 1e-10


@pytest.mark.parametrize("beta", [0.125, 0.6])
def test_differ_only_at_last_position(beta):
    """Only C_{L-1}(y_<L-1) is not 1: pi_seq reweights pi's prefixes by it, and
    KL(tok || seq) = log E_pi[C] - E_pi[log C] over the prefix."""
    length = 4
    pi, mu = _differ_only_at(length - 1)
    log_c = ms.token_normalisers(pi, mu, beta)
    for t in range(length - 1):
        np.testing.assert_allclose(log_c[t], 0.0, atol=1e-12)
    prefix_pi = np.exp(ms.sequence_logps(ms.TinyPolicy(pi.logits[:-1])))  # = mu's on the prefix
    c = np.exp(log_c[-1])
    want = np.log(prefix_pi @ c) - prefix_pi @ log_c[-1]
    got = ms.kl(ms.token_mixture(pi, mu, beta), ms.sequence_mixture(pi, mu, beta))
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert got > 1e-6


def test_prefix_independent_conditionals_coincide():
    """C_t(prefix) constant in the prefix (each position's logits shared by all prefixes)."""
    rng = np.random.default_rng(0)
    make = lambda: ms.TinyPolicy(tuple(np.tile(rng.normal(size=(1, 3)) * 2, (3**t, 1)) for t in range(4)))
    pi, mu = make(), make()
    np.testing.assert_allclose(ms.token_mixture(pi, mu, 0.3), ms.sequence_mixture(pi, mu, 0.3), atol=1e-12)


def test_token_mixture_is_the_projects_mixture_step():
    """Per-token conditionals equal log_softmax of `policy.mixture_step`'s output."""
    pi, mu = _pair(3, vocab=4, distance=2.0)
    beta = 0.3
    lc = ms.token_mixture_conditionals(pi, mu, beta)
    for t in range(3):
        step = policy.mixture_step(lambda tok, s, t=t: (jnp.asarray(pi.logits[t], jnp.float32), s),
                                   lambda tok, s, t=t: (jnp.asarray(mu.logits[t], jnp.float32), s),
                                   jnp.float32(beta), forbid_pad=False)
        mixed, _ = step(None, (None, None))
        np.testing.assert_allclose(np.asarray(jax.nn.log_softmax(mixed, -1)), lc[t], atol=2e-6)


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_expected_update_is_grad_of_population_objective(beta):
    pi, mu = _pair(3, distance=1.0, seed=2)
    pref, tau = _pref(3), 0.3
    alt = ms.token_mixture(pi, mu, beta)
    got = ms.expected_update(pi, mu, pref, alt, tau)
    with jax.enable_x64(True):
        want = jax.grad(ms.population_objective)([jnp.asarray(x) for x in pi.logits], mu, pref, alt, tau)
        want = [np.asarray(w) for w in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-12)
    assert max(np.abs(g).max() for g in got) > 1e-3


def _pg_batch_grad(pi, mu, y_idx, reward, weights, tau):
    """Gradient (ascent) in pi's logits of the project's Nash-MD-PG loss on the rows given."""
    length, vocab = pi.length, pi.vocab
    tokens, prefixes = ms.enumerate_sequences(vocab, length)
    tok, pre = tokens[y_idx], prefixes[y_idx]
    ref = ms.per_token_logps(mu.log_conditionals(), tok, pre)
    mask = jnp.ones(tok.shape, jnp.float32)

    def loss(logits):
        lp = jnp.stack([jax.nn.log_softmax(logits[t][pre[:, t]], -1)[jnp.arange(len(tok)), tok[:, t]]
                        for t in range(length)], -1)
        adv = losses.policy_gradient_advantages(jnp.asarray(reward, jnp.float32), lp, jnp.asarray(ref, jnp.float32),
                                                mask, jnp.float32(tau), jnp.float32(0.5))
        return losses.policy_gradient_loss(lp, adv, mask, jnp.asarray(weights, jnp.float32))[0]

    grads = jax.grad(loss)([jnp.asarray(x, jnp.float32) for x in pi.logits])
    return [-np.asarray(g, np.float64) for g in grads]


def test_expected_update_is_the_projects_estimator_in_expectation():
    """Enumerating (y, y') with weights pi(y) pi'(y') through `losses` (float32) gives
    `expected_update`, as in tests/policy_gradient_test.py."""
    pi, mu = _pair(2, distance=1.0, seed=4)
    pref, tau, beta = _pref(2), 0.3, 0.4
    alt = ms.token_mixture(pi, mu, beta)
    n = len(alt)
    yi, ai = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    yi, ai = yi.ravel(), ai.ravel()
    w = np.exp(ms.sequence_logps(pi))[yi] * np.exp(alt)[ai]
    got = ms._flat(_pg_batch_grad(pi, mu, yi, pref[yi, ai], w, tau))
    want = ms._flat(ms.expected_update(pi, mu, pref, alt, tau))
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert np.abs(want).max() > 1e-3


def _sample_token_mixture(pi, mu, beta, n, rng):
    """y' token by token from the per-token mixture; returns sequence indices [n]."""
    lc = ms.token_mixture_conditionals(pi, mu, beta)
    prefix = np.zeros(n, np.int64)
    for t in range(pi.length):
        probs = np.exp(lc[t][prefix])
        tok = (rng.random(n)[:, None] > np.cumsum(probs, -1)).sum(-1).clip(max=pi.vocab - 1)
        prefix = prefix * pi.vocab + tok
    return prefix


def test_monte_carlo_estimate_matches_exact_update():
    """Samples y ~ pi, y' ~ the token-level mixture (drawn token by token), the project's
    estimator averaged: within Monte-Carlo error of `expected_update` against pi_tok."""
    pi, mu = _pair(3, distance=1.0, seed=6)
    pref, tau, beta, n = _pref(3), 0.3, 0.5, 8000
    rng = np.random.default_rng(0)
    y = _sample_token_mixture(pi, mu, 0.0, n, rng)  # beta = 0: pi itself
    alt = _sample_token_mixture(pi, mu, beta, n, rng)
    got = ms._flat(_pg_batch_grad(pi, mu, y, pref[y, alt], np.full(n, 1.0 / n), tau))
    want = ms._flat(ms.expected_update(pi, mu, pref, ms.token_mixture(pi, mu, beta), tau))
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    print(f"MC relative error {rel:.3f}")
    assert rel < 0.2, rel
    # the sampler's distribution: empirical frequencies of y' vs the enumerated pi_tok
    freq = np.bincount(alt, minlength=27) / n
    assert 0.5 * np.abs(freq - np.exp(ms.token_mixture(pi, mu, beta))).sum() < 0.06


def test_nash_md_step_endpoints_and_normalisation():
    pi, mu = _pair(3, distance=1.0)
    pref = _pref(3)
    seq = ms.sequence_mixture(pi, mu, 0.3)
    nxt = ms.nash_md_step(seq, pref, 1.0)
    assert abs(np.exp(nxt).sum() - 1) < 1e-12
    np.testing.assert_allclose(ms.nash_md_step(seq, pref, 0.0), seq, atol=1e-12)
    # eq. 5: log pi_next - log pi' - eta P(y > pi') is one constant
    d = nxt - seq - pref @ np.exp(seq)
    assert np.ptp(d) < 1e-12


def test_main_writes_json_and_figure(tmp_path):
    ms.main(["--out", str(tmp_path), "--lengths", "1", "2", "--seeds", "0"])
    data = json.loads((tmp_path / "mixture_study.json").read_text())
    rows = data["rows"]
    assert len(rows) == 2 * 2 * len(ms.DISTANCES) * len(ms.BETAS)
    assert all(r["rel_bias"] < 1e-12 for r in rows if r["length"] == 1)
    assert any(r["kl_seq_tok"] > 1e-6 for r in rows if r["length"] == 2)
    assert (tmp_path / "mixture_study.png").stat().st_size > 1000


def test_resampled_mixture_goes_from_token_to_sequence_level_as_one_over_k():
    pi, mu = _pair(length=3, distance=1.0)
    tok, seq = ms.token_mixture(pi, mu, 0.125), ms.sequence_mixture(pi, mu, 0.125)
    np.testing.assert_allclose(ms.resampled_mixture(pi, mu, 0.125, 1), tok)  # K = 1: the sampler's law
    tvs = [ms.total_variation(ms.resampled_mixture(pi, mu, 0.125, k), seq) for k in (1, 4, 16)]
    assert tvs[0] == pytest.approx(ms.total_variation(tok, seq))
    assert tvs[0] > 4 * tvs[1] * 0.8 and tvs[1] > 4 * tvs[2] * 0.8  # bias ~ 1/K
    law = np.exp(ms.resampled_mixture(pi, mu, 0.125, 4))
    assert abs(law.sum() - 1) < 1e-12
    for beta in (0.0, 1.0):  # the mixtures coincide: resampling changes nothing
        np.testing.assert_allclose(ms.resampled_mixture(pi, mu, beta, 8), ms.token_mixture(pi, mu, beta),
                                   atol=1e-12)
