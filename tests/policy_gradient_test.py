"""The Nash-MD-PG estimator is unbiased, checked exactly by enumerating every response;
and so is the online-IPO / IPO-MD update (Calandriello et al. 2024), by enumerating
every pair.

Tiny T5 (vocabulary {pad, eos, a, b}), responses of at most 3 tokens: 15 possible
sequences per prompt. pi' (the beta-mixture of pi_theta and mu) is held fixed, as in
the paper's objective P_tau(pi_theta > pi') (§7, App. eq. 14); for IPO the sampling
distribution rho of both responses is held fixed likewise.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax import decoding
from nlhf_jax import losses
from nlhf_jax import online
from nlhf_jax import policy
from nlhf_jax import steps
from nlhf_jax import testing
from nlhf_jax.models import t5
from nlhf_jax.tabular import games as games_lib
from nlhf_jax.tabular import solvers

CFG = t5.T5Config(vocab_size=4, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                  num_encoder_layers=1, num_decoder_layers=1)
MODEL = t5.EncoderDecoder(CFG)
MAX_LEN = 3
TAU = 0.3
BETA = 0.3
TEMP = 0.8
SCFG = decoding.SamplingConfig(temperature=TEMP, max_decode_len=MAX_LEN)
STEP_CFG = steps.PolicyStepConfig(temperature=TEMP)
PROMPTS = np.array([[2, 3, 1], [3, 3, 1]], np.int32)


SEQS, LENS = testing.all_responses((2, 3), eos=1, max_len=MAX_LEN)  # every response
N = len(SEQS)  # 15
INDEX = {tuple(t[:n]): i for i, (t, n) in enumerate(zip(SEQS.tolist(), LENS.tolist()))}


def _params(seed, scale=0.5):
    p = t5.init_params(MODEL, jax.random.key(seed))
    return jax.tree_util.tree_map(lambda x: x * scale, p)


THETA = _params(0)
MU = _params(1)
rng = np.random.default_rng(0)
_A = rng.normal(size=(len(PROMPTS), N, N)) * 2
PREF = 1 / (1 + np.exp(-(_A - np.swapaxes(_A, 1, 2))))  # P + P^T = 1, P_ii = 1/2


def _seq_logps(params, prompt_idx):
    """log pi(y | x) for all 15 sequences of prompt x. [N]"""
    prompts = jnp.asarray(np.repeat(PROMPTS[prompt_idx][None], N, 0))
    lp = policy.token_logprobs(MODEL, params, prompts, jnp.asarray(SEQS), jnp.asarray(LENS), SCFG)
    return lp.sum(-1), lp


def _mixture_seq_logps(theta, prompt_idx):
    prompts = jnp.asarray(np.repeat(PROMPTS[prompt_idx][None], N, 0))
    dec_in = decoding.shift_right(jnp.asarray(SEQS))
    lp_t = policy.normalise(MODEL.apply({"params": theta}, prompts, dec_in))
    lp_m = policy.normalise(MODEL.apply({"params": MU}, prompts, dec_in))
    mix = jax.nn.log_softmax(((1 - BETA) * lp_t + BETA * lp_m) / TEMP, -1)
    tok = jnp.take_along_axis(mix, jnp.asarray(SEQS)[..., None], -1)[..., 0]
    mask = jnp.arange(MAX_LEN)[None] < jnp.asarray(LENS)[:, None]
    return jnp.sum(jnp.where(mask, tok, 0.0), -1)


def test_enumeration_covers_the_support():
    for x in range(len(PROMPTS)):
        for params in (THETA, MU):
            assert abs(float(jnp.exp(_seq_logps(params, x)[0]).sum()) - 1) < 1e-5
        assert abs(float(jnp.exp(_mixture_seq_logps(THETA, x)).sum()) - 1) < 1e-5


def _objective(theta, alt_probs):
    """P_tau(pi_theta > pi') with pi' fixed, averaged over the prompts."""
    total = 0.0
    for x in range(len(PROMPTS)):
        lp, _ = _seq_logps(theta, x)
        lmu, _ = _seq_logps(MU, x)
        p = jnp.exp(lp)
        total += p @ jnp.asarray(PREF[x]) @ alt_probs[x] - TAU * jnp.sum(p * (lp - lmu))
    return total / len(PROMPTS)


@pytest.fixture(scope="module")
def exact():
    alt = [jnp.exp(_mixture_seq_logps(THETA, x)) for x in range(len(PROMPTS))]
    return jax.grad(_objective)(THETA, alt), alt


def _loss_grad(theta, batch):
    fn = functools.partial(steps.policy_loss_fn, model=MODEL, cfg=STEP_CFG)
    return jax.grad(lambda p: fn(p, batch, None)[0])(theta)


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)])


def test_expected_estimator_equals_exact_gradient(exact):
    """sum over (x, y, y') of pi(y|x) pi'(y'|x) * estimator == grad P_tau, to 1e-5."""
    grad_exact, alt = exact
    rows = []
    for x in range(len(PROMPTS)):
        p_y = np.exp(np.asarray(_seq_logps(THETA, x)[0]))
        _, ref_tok = _seq_logps(MU, x)
        for i, j in itertools.product(range(N), range(N)):
            rows.append((x, i, j, p_y[i] * float(alt[x][j]) / len(PROMPTS), np.asarray(ref_tok[i])))
    batch = {
        "prompts": jnp.asarray(PROMPTS[[r[0] for r in rows]]),
        "tokens": jnp.asarray(SEQS[[r[1] for r in rows]]),
        "lengths": jnp.asarray(LENS[[r[1] for r in rows]]),
        "reward": jnp.asarray([PREF[r[0], r[1], r[2]] for r in rows], jnp.float32),
        "reference_logps": jnp.asarray(np.stack([r[4] for r in rows])),
        "tau": jnp.full((len(rows),), TAU, jnp.float32),
        "example_weights": jnp.asarray([r[3] for r in rows], jnp.float32),
    }
    g = _flat(_loss_grad(THETA, batch))
    np.testing.assert_allclose(-g, _flat(grad_exact), atol=1e-5)
    assert np.abs(_flat(grad_exact)).max() > 1e-3  # not a vacuous comparison


def test_sampled_estimator_is_unbiased(exact):
    """The average over many sampled batches matches within Monte Carlo error."""
    grad_exact = _flat(exact[0])
    batch_size, n_batches = 512, 60

    @jax.jit
    def one_batch(key):
        k_x, k_y, k_alt = jax.random.split(key, 3)
        xi = jax.random.randint(k_x, (batch_size,), 0, len(PROMPTS))
        prompts = jnp.asarray(PROMPTS)[xi]
        y = policy.sample(MODEL, THETA, prompts, jax.random.split(k_y, batch_size), SCFG)
        alt = policy.sample_mixture(MODEL, THETA, MU, prompts, jax.random.split(k_alt, batch_size), BETA, SCFG)
        ref = policy.token_logprobs(MODEL, MU, prompts, y.tokens, y.lengths, SCFG)
        return xi, y.tokens, y.lengths, alt.tokens, alt.lengths, ref

    grad_fn = jax.jit(_loss_grad)
    grads = []
    for b in range(n_batches):
        xi, yt, yl, at, al, ref = jax.device_get(one_batch(jax.random.key(100 + b)))
        yi = [INDEX[tuple(t[:n])] for t, n in zip(yt.tolist(), yl.tolist())]
        ai = [INDEX[tuple(t[:n])] for t, n in zip(at.tolist(), al.tolist())]
        batch = {
            "prompts": jnp.asarray(PROMPTS[xi]), "tokens": jnp.asarray(yt), "lengths": jnp.asarray(yl),
            "reward": jnp.asarray(PREF[xi, yi, ai], jnp.float32), "reference_logps": jnp.asarray(ref),
            "tau": jnp.full((batch_size,), TAU, jnp.float32),
            "example_weights": jnp.full((batch_size,), 1.0 / batch_size, jnp.float32),
        }
        grads.append(-_flat(grad_fn(THETA, batch)))
    grads = np.stack(grads)
    mean = grads.mean(0)
    se = grads.std(0, ddof=1) / np.sqrt(n_batches)
    z = np.abs(mean - grad_exact) / np.maximum(se, 1e-12)
    live = se > 1e-9
    assert live.sum() > 50
    print(f"max |z| {z[live].max():.2f} over {live.sum()} coordinates; rel err "
          f"{np.linalg.norm(mean - grad_exact) / np.linalg.norm(grad_exact):.3f}")
    assert z[live].max() < 5.5, f"max z-score {z[live].max():.2f}"
    assert np.all(np.abs(mean - grad_exact)[~live] < 1e-6)
    # and the estimate is informative: relative error well below 1
    assert np.linalg.norm(mean - grad_exact) < 0.25 * np.linalg.norm(grad_exact)


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.7, 1.0])
def test_mixture_per_token_distribution(beta):
    """The sampler's per-token distribution is softmax((1-b) log p_theta + b log p_mu)."""
    prompts = jnp.asarray(np.repeat(PROMPTS, 4, 0))
    cfg = decoding.SamplingConfig(temperature=1.0, max_decode_len=MAX_LEN)
    out = policy.sample_mixture(MODEL, THETA, MU, prompts, jax.random.split(jax.random.key(3), 8), beta, cfg)
    dec_in = decoding.shift_right(out.tokens)
    lp_t = policy.normalise(MODEL.apply({"params": THETA}, prompts, dec_in))
    lp_m = policy.normalise(MODEL.apply({"params": MU}, prompts, dec_in))
    want = jax.nn.log_softmax((1 - beta) * lp_t + beta * lp_m, -1)
    want_tok = jnp.take_along_axis(want, out.tokens[..., None], -1)[..., 0]
    mask = jnp.arange(MAX_LEN)[None] < out.lengths[:, None]
    np.testing.assert_allclose(np.where(mask, out.logprobs, 0), np.where(mask, want_tok, 0), atol=1e-6)


def test_mixture_endpoints_reproduce_policy_and_reference_key_for_key():
    prompts = jnp.asarray(np.repeat(PROMPTS, 16, 0))
    keys = jax.random.split(jax.random.key(5), 32)
    cfg = decoding.SamplingConfig(temperature=1.0, max_decode_len=MAX_LEN)
    for beta, params in ((0.0, THETA), (1.0, MU)):
        mix = policy.sample_mixture(MODEL, THETA, MU, prompts, keys, beta, cfg)
        own = policy.sample(MODEL, params, prompts, keys, cfg)
        np.testing.assert_array_equal(np.asarray(mix.tokens), np.asarray(own.tokens))
        np.testing.assert_array_equal(np.asarray(mix.lengths), np.asarray(own.lengths))


def test_ema_update():
    ema = {"w": jnp.array([1.0, 2.0])}
    new = steps.ema_update(ema, {"w": jnp.array([3.0, 0.0])}, 0.9)
    np.testing.assert_allclose(np.asarray(new["w"]), [1.2, 1.8], rtol=1e-6)
    assert steps.ema_update(ema, {"w": jnp.array([3.0, 0.0])}, 1.0)["w"].tolist() == [1.0, 2.0]


# ------------------------------------------------------------ online IPO and IPO-MD


def test_ipo_loss_matches_numpy_and_ignores_padding():
    rng_ = np.random.default_rng(1)
    b, length = 5, 4
    lp, alt_lp, ref, alt_ref = (-rng_.random((b, length)).astype(np.float32) for _ in range(4))
    lengths, alt_lengths = np.array([1, 4, 2, 3, 4]), np.array([4, 1, 3, 2, 2])
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.float32)
    alt_mask = (np.arange(length)[None] < alt_lengths[:, None]).astype(np.float32)
    pref, tau, w = rng_.random(b), np.full(b, 0.2), rng_.random(b)
    # garbage at padding must not matter
    junk = lambda x, m: np.where(m > 0, x, 1e3).astype(np.float32)  # noqa: E731
    loss, weight, h = losses.ipo_loss(junk(lp, mask), junk(alt_lp, alt_mask), junk(ref, mask),
                                      junk(alt_ref, alt_mask), mask, alt_mask, pref, tau, w)
    g = ((lp - ref) * mask).sum(-1)
    g_alt = ((alt_lp - alt_ref) * alt_mask).sum(-1)
    want = np.sum(w * (g - g_alt - (pref - 0.5) / tau) ** 2)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(weight), w.sum(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(h), g - g_alt, rtol=1e-5, atol=1e-6)
    # the soft-label form p (h - 1/(2 tau))^2 + (1 - p) (h + 1/(2 tau))^2 differs by a
    # constant only: same gradient in h
    hh = g - g_alt
    soft = lambda h_: np.sum(w * (pref * (h_ - 0.5 / tau) ** 2 + (1 - pref) * (h_ + 0.5 / tau) ** 2))  # noqa: E731
    eps = 1e-3 * np.eye(b)
    d_soft = [(soft(hh + e) - soft(hh - e)) / 2e-3 for e in eps]
    d_ipo = [(np.sum(w * (hh + e - (pref - 0.5) / tau) ** 2) - np.sum(w * (hh - e - (pref - 0.5) / tau) ** 2))
             / 2e-3 for e in eps]
    np.testing.assert_allclose(d_soft, d_ipo, rtol=1e-6)
    # the gradient flows through both responses' policy log-probs, never mu's
    grads = jax.grad(lambda a, c, r, q: losses.ipo_loss(a, c, r, q, mask, alt_mask, pref, tau, w)[0],
                     argnums=(0, 1, 2, 3))(lp, alt_lp, ref, alt_ref)
    assert np.abs(grads[0]).max() > 0 and np.abs(grads[1]).max() > 0
    assert np.abs(grads[2]).max() == 0 and np.abs(grads[3]).max() == 0
    np.testing.assert_array_equal(np.asarray(grads[0]) * (1 - mask), 0.0)


@pytest.mark.parametrize("beta", [0.0, 0.4])
def test_ipo_loss_gradient_is_the_tabular_one(beta):
    """On a tabular policy pi = softmax(theta), the IPO loss summed over all pairs with
    weights rho(y) rho(y') has gradient `tabular.solvers.ipo_gradient` (the exact
    dynamics of `online_ipo` / `ipo_md`)."""
    game = games_lib.random_game(2, 5, seed=3)
    tau = 0.3
    theta0 = np.random.default_rng(2).normal(size=(2, 5))
    log_mu = np.log(game.ref)
    log_pi0 = theta0 - np.log(np.exp(theta0).sum(-1, keepdims=True))
    log_rho = (1 - beta) * log_pi0 + beta * log_mu
    log_rho -= np.log(np.exp(log_rho).sum(-1, keepdims=True))
    c, i, j = (a.ravel() for a in np.meshgrid(np.arange(2), np.arange(5), np.arange(5), indexing="ij"))
    w = np.exp(log_rho[c, i] + log_rho[c, j])
    ones = np.ones((len(c), 1), np.float32)

    def loss(theta):
        log_pi = jax.nn.log_softmax(theta, -1)
        return losses.ipo_loss(log_pi[c, i][:, None], log_pi[c, j][:, None], log_mu[c, i][:, None],
                               log_mu[c, j][:, None], ones, ones, game.pref[c, i, j],
                               jnp.full(len(c), tau), w)[0]

    got = jax.grad(loss)(jnp.asarray(theta0, jnp.float32))
    want = solvers.ipo_gradient(game, log_pi0, tau, log_rho)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    assert np.abs(want).max() > 1e-2


def _ipo_population_loss(theta, rho):
    """E_{y, y' ~ rho} (g(y) - g(y') - (P(y > y') - 1/2) / tau)^2 with rho fixed, in closed
    form (no pairs): 2 Var_rho(g) - (4 / tau) sum_y rho(y) g(y) (P(y > rho) - 1/2) plus
    a constant (expand the square; P - 1/2 is antisymmetric). Averaged over prompts."""
    total = 0.0
    for x in range(len(PROMPTS)):
        g = _seq_logps(theta, x)[0] - _seq_logps(MU, x)[0]
        mean = rho[x] @ g
        var = rho[x] @ jnp.square(g - mean)
        total += 2 * var - 4 / TAU * jnp.sum(rho[x] * g * (jnp.asarray(PREF[x]) @ rho[x] - 0.5))
    return total / len(PROMPTS)


def _rho(algorithm, x):
    """The sampling distribution of both responses: pi_theta (online IPO) or the
    token-level mixture the sampler draws from (IPO-MD), as sequence probabilities."""
    if algorithm == "online_ipo":
        return jnp.exp(_seq_logps(THETA, x)[0])
    return jnp.exp(_mixture_seq_logps(THETA, x))


@pytest.mark.parametrize("algorithm", ["online_ipo", "ipo_md"])
def test_expected_ipo_update_equals_exact_gradient(algorithm):
    """sum over (x, y, y') of rho(y|x) rho(y'|x) * grad of the IPO loss == grad of the
    population loss with rho fixed (closed form), to 1e-5: the update is unbiased."""
    rho = [_rho(algorithm, x) for x in range(len(PROMPTS))]
    grad_exact = _flat(jax.grad(_ipo_population_loss)(THETA, rho))
    rows = []
    for x in range(len(PROMPTS)):
        r = np.asarray(rho[x], np.float64)
        ref_tok = np.asarray(_seq_logps(MU, x)[1])
        for i, j in itertools.product(range(N), range(N)):
            rows.append((x, i, j, r[i] * r[j] / len(PROMPTS), ref_tok[i], ref_tok[j]))
    col = lambda k: [r_[k] for r_ in rows]  # noqa: E731
    batch = {
        "prompts": jnp.asarray(PROMPTS[col(0)]),
        "tokens": jnp.asarray(SEQS[col(1)]), "lengths": jnp.asarray(LENS[col(1)]),
        "alt_tokens": jnp.asarray(SEQS[col(2)]), "alt_lengths": jnp.asarray(LENS[col(2)]),
        "pref": jnp.asarray([PREF[x, i, j] for x, i, j in zip(col(0), col(1), col(2))], jnp.float32),
        "reference_logps": jnp.asarray(np.stack(col(4))),
        "alt_reference_logps": jnp.asarray(np.stack(col(5))),
        "tau": jnp.full((len(rows),), TAU, jnp.float32),
        "example_weights": jnp.asarray(col(3), jnp.float32),
    }
    fn = functools.partial(steps.ipo_loss_fn, model=MODEL, cfg=STEP_CFG,
                           on_policy=algorithm == "online_ipo")
    weight = float(np.sum(col(3)))
    g = _flat(jax.grad(lambda p: fn(p, batch, None)[0])(THETA)) / weight
    np.testing.assert_allclose(g, grad_exact, atol=1e-5)
    assert np.abs(grad_exact).max() > 1e-2  # not a vacuous comparison


def test_ipo_md_differs_from_online_ipo():
    """The mixture matters: at beta = 0.3 the two population gradients differ."""
    grads = [_flat(jax.grad(_ipo_population_loss)(THETA, [_rho(a, x) for x in range(len(PROMPTS))]))
             for a in ("online_ipo", "ipo_md")]
    assert np.abs(grads[0] - grads[1]).max() > 1e-3


def test_ipo_sample_phase_draws_both_responses_from_rho():
    """online_ipo: y, y' ~ pi_theta; ipo_md: y, y' ~ the mixture, so beta = 0 equals
    online_ipo key for key and beta = 1 equals online_ipo run with mu's parameters;
    y and y' use different keys."""
    prompts = jnp.asarray(np.repeat(PROMPTS, 16, 0))
    frozen = {"reference": MU}
    cfg = lambda a: online.NashMDConfig(algorithm=a, max_decode_len=MAX_LEN)  # noqa: E731
    phase = lambda a, params, beta: online.sample_phase(  # noqa: E731
        params, frozen, prompts, jax.random.key(7), beta, model=MODEL, cfg=cfg(a))
    own = phase("online_ipo", THETA, 0.0)
    for beta, params in ((0.0, THETA), (1.0, MU)):
        mix, want = phase("ipo_md", THETA, beta), phase("online_ipo", params, 0.0)
        for field in ("tokens", "lengths", "alt_tokens", "alt_lengths", "has_eos"):
            np.testing.assert_array_equal(np.asarray(getattr(mix, field)), np.asarray(getattr(want, field)))
    assert not np.array_equal(np.asarray(own.tokens), np.asarray(own.alt_tokens))
    # the rows of y are pi_theta's own samples under y's keys
    k_y, _ = jax.random.split(jax.random.key(7))
    alone = policy.sample(MODEL, THETA, prompts, jax.random.split(k_y, len(prompts)),
                          cfg("online_ipo").sampling())
    np.testing.assert_array_equal(np.asarray(own.tokens), np.asarray(alone.tokens))
