"""PM and RM: losses vs NumPy, input encoding, steps sharded == single device."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax import partitioning
from nlhf_jax import preference_math
from nlhf_jax import preference_steps as ps
from nlhf_jax import testing
from nlhf_jax import train_state as ts
from nlhf_jax import trainer
from nlhf_jax.data import input_pipeline
from nlhf_jax.data import pairwise
from nlhf_jax.data.world import generator
from nlhf_jax.models import preference
from nlhf_jax.models import t5

CFG = testing.tiny_t5_config(emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, dropout_rate=0.1,
                              num_encoder_layers=1, num_decoder_layers=1)
TARGET = 5
TX = ts.OptimizerConfig(name="adafactor", schedule=ts.ScheduleConfig("constant", 1e-2)).build()


def _pairs(n=32, k=12, seed=0, p_star=True):
    """Synthetic PM and RM features (random tokens, soft labels)."""
    rng = np.random.default_rng(seed)
    feats = {
        "inputs": testing.random_tokens(seed, n, k, CFG.vocab_size, min_length=3, append_eos=True),
        "inputs_swapped": testing.random_tokens(seed + 1, n, k, CFG.vocab_size, min_length=3, append_eos=True),
        "labels": rng.choice([0.0, 1.0, 0.3], size=n).astype(np.float32),
    }
    if p_star:
        feats["p_star"] = rng.random(n).astype(np.float32)
    return feats


PM_DATA = input_pipeline.ArrayDataset(_pairs())
RM_DATA = input_pipeline.ArrayDataset(
    {("inputs_alt" if k == "inputs_swapped" else k): v for k, v in _pairs(seed=5).items()}
)


# --------------------------------------------------------------------------- losses


def test_logistic_loss_and_agreement_match_numpy():
    z = np.array([-2.0, 0.0, 0.5, 30.0, -30.0], np.float32)
    labels = np.array([1.0, 0.5, 0.0, 1.0, 0.3], np.float32)
    sig = 1 / (1 + np.exp(-z.astype(np.float64)))
    want = -(labels * np.log(sig) + (1 - labels) * np.log1p(-sig + 1e-300))
    want[3] = np.log1p(np.exp(-30.0))  # sigmoid(30) rounds to 1 in float64 too
    want[4] = 0.3 * 30.0 + np.log1p(np.exp(-30.0))
    np.testing.assert_allclose(np.asarray(preference_math.logistic_loss(jnp.asarray(z), jnp.asarray(labels))), want, rtol=1e-5)
    agree = np.asarray(preference_math.decision_agreement(jnp.asarray(z), jnp.asarray(labels), 0.0, xp=jnp))
    np.testing.assert_allclose(agree, [0.0, 0.5, 0.0, 1.0, 0.7], atol=1e-7)


def test_bradley_terry_loss_is_logistic_loss_of_the_reward_difference():
    r, r_alt, label = 1.3, -0.4, 0.8
    d = r - r_alt
    want = -(label * np.log(1 / (1 + np.exp(-d))) + (1 - label) * np.log(1 / (1 + np.exp(d))))
    got = float(preference_math.logistic_loss(jnp.asarray([d]), jnp.asarray([label]))[0])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(preference_math.bradley_terry(np.array([r]), np.array([r_alt])), [1 / (1 + np.exp(-d))])


def test_both_orders_loss_is_the_cross_entropy_of_the_both_orders_judge():
    z = np.array([-3.0, 0.0, 1.5, 40.0], np.float32)
    z_swapped = np.array([2.0, 0.0, -0.5, -40.0], np.float32)
    labels = np.array([1.0, 0.5, 0.0, 1.0], np.float32)
    g = preference_math.both_orders(preference_math.sigmoid(z), preference_math.sigmoid(z_swapped))
    want = -(labels * np.log(g) + (1 - labels) * np.log1p(-g + 1e-300))
    want[3] = -np.log(g[3])  # g = 1 - 4e-18: log1p of the complement would be -inf
    loss, logit = preference_math.both_orders_loss(jnp.asarray(z), jnp.asarray(z_swapped), jnp.asarray(labels))
    np.testing.assert_allclose(np.asarray(loss), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(logit, np.float64)))[:3], g[:3], rtol=1e-5)
    assert np.isfinite(np.asarray(loss)).all() and float(logit[1]) == 0.0


def test_both_orders_formula_is_antisymmetric_and_half_on_ties():
    f = np.random.default_rng(0).random(100)
    g = np.random.default_rng(1).random(100)
    np.testing.assert_allclose(preference_math.both_orders(f, g), (f + 1 - g) / 2, atol=1e-15)
    np.testing.assert_allclose(preference_math.both_orders(f, g) + preference_math.both_orders(g, f), 1.0, atol=1e-15)
    assert np.all(preference_math.both_orders(f, f) == 0.5)
    assert preference_math.sigmoid(np.zeros(3)).tolist() == [0.5] * 3


# ------------------------------------------------------------------------ encoding


TINY_WORLD = generator.WorldConfig(n_sft=(4, 2, 2), n_comparisons=(8, 2, 2), n_prompts_train=2)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The vocabulary of a tiny generated world (every world word is one piece)."""
    out = str(tmp_path_factory.mktemp("world") / "w")
    generator.generate(TINY_WORLD, out)
    return pairwise.Tokenizer(generator.vocab_path(out))


def test_pair_encoder_layout_truncation_and_ids_equal_texts(tokenizer):
    fmt = pairwise.InputFormat("{prompt} first : {y} then : {y_alt} ?", "first", max_input_len=48,
                               max_summary_len=6)
    enc = pairwise.PairEncoder(fmt, tokenizer)
    assert enc.kind == pairwise.PREFERENCE and enc.target_token_id == tokenizer.piece_id("first")
    sp = tokenizer.sp
    out = enc.encode_texts(["my dad sold the house ."], ["my sister lost"], ["my dad"])
    want = (sp.encode("my dad sold the house .") + sp.encode(" first : ") + sp.encode("my sister lost")
            + sp.encode(" then : ") + sp.encode("my dad") + sp.encode(" ?") + [1])
    assert out.shape == (1, 48) and out[0, : len(want)].tolist() == want and not out[0, len(want):].any()
    # the same ids from ids (EOS and padding in the rows are ignored)
    ids = enc.encode_ids([sp.encode("my dad sold the house .") + [1, 0]], [sp.encode("my sister lost") + [1]],
                         [sp.encode("my dad")])
    np.testing.assert_array_equal(ids, out)
    # a long summary keeps its first 6 tokens; the prompt then gives up its tail
    long_y = "my sister lost the job last week and my dad sold the house ."
    enc = pairwise.PairEncoder(dataclasses.replace(fmt, max_input_len=24), tokenizer)
    cut = enc.encode_texts(["my sister lost the job last week . " * 3], [long_y], [long_y])
    assert enc.truncated["y"] == 1 and enc.truncated["y_alt"] == 1 and enc.truncated["prompt"] == 1
    assert cut[0, -1] == 1 and (cut[0] == 1).sum() == 1  # still EOS-terminated, full length
    y_part = sp.encode(long_y)[:6] + sp.encode(" then : ")
    assert y_part == cut[0].tolist()[-len(y_part) - 6 - 2:-8]  # y keeps its first 6 tokens
    with pytest.raises(ValueError, match="not one known piece"):
        pairwise.PairEncoder(pairwise.InputFormat(fmt.template, "zebra", 24, 4), tokenizer)
    with pytest.raises(ValueError, match="y_alt"):
        pairwise.InputFormat("{prompt} {y} {y}", "first")


def test_tokenizer_identity_is_the_model_bytes(tokenizer, tmp_path):
    again = pairwise.Tokenizer(tokenizer.model_bytes)
    assert again.same_model(tokenizer) and tokenizer.same_model(tokenizer.model_bytes)
    other = str(tmp_path / "other")
    generator.generate(dataclasses.replace(TINY_WORLD, seed=1), other)
    assert not tokenizer.same_model(generator.vocab_path(other))
    assert not tokenizer.same_model(object())


# ------------------------------------------------------------------ steps on meshes


def _state(model, mesh, rules):
    """A train state in its shards without compiling an initialiser: numpy parameters,
    an eagerly built optimizer state, and the rule-derived shardings (eval_shape)."""
    init = lambda rng: t5.init_variables(model, rng)["params"]  # noqa: E731
    _, shardings = trainer.abstract_train_state(init, TX, mesh, partitioning.default_rules())
    state = ts.TrainState.create(testing.random_params(model), TX)
    return jax.device_put(state, shardings), shardings


def _run(kind, mesh_cfg, devices=None, n_steps=2, num_microbatches=1, swap_prob=0.5, cfg=CFG):
    mesh = partitioning.make_mesh(mesh_cfg, devices)
    rules = partitioning.default_rules()
    model = t5.EncoderDecoder(cfg)
    state, shardings = _state(model, mesh, rules)
    step_cfg = ps.PreferenceStepConfig(swap_prob=swap_prob, num_microbatches=num_microbatches)
    fn = ps.pm_train_step if kind == "pm" else ps.rm_train_step
    data = PM_DATA if kind == "pm" else RM_DATA
    step_fn = functools.partial(fn, model=model, tx=TX, target_token=TARGET, cfg=step_cfg)
    jitted = trainer.jit_step(step_fn, shardings, data.batch(0, 16), mesh)
    losses = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        for i in range(n_steps):
            batch = partitioning.host_local_batch_to_global(data.batch(i, 16), mesh)
            state, metrics = jitted(state, batch, jax.random.key(3))
            losses.append(float(metrics[f"{kind}/loss"]))
    return state, shardings, losses, jax.device_get(metrics)


@pytest.fixture(scope="module", params=["pm", "rm"])
def single_device(request):
    kind = request.param
    return kind, _run(kind, partitioning.MeshConfig(1, 1, 1), devices=jax.devices()[:1])


@pytest.mark.parametrize("mesh_cfg", [partitioning.MeshConfig(1, 8, 1),
                                      partitioning.MeshConfig(2, 2, 2),
                                      partitioning.MeshConfig(8, 1, 1)], ids=["1x8x1", "2x2x2", "8x1x1"])
def test_sharded_step_matches_single_device(mesh_cfg, single_device):
    kind, (ref_state, _, ref_losses, ref_metrics) = single_device
    state, shardings, losses, metrics = _run(kind, mesh_cfg)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
    for key in ref_metrics:
        np.testing.assert_allclose(metrics[key], ref_metrics[key], atol=1e-5, rtol=1e-5, err_msg=key)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    for arr, want in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(shardings.params)):
        assert arr.sharding.spec == want.spec
    assert {f"{kind}/{m}" for m in ("accuracy", "bayes_agreement", "pstar_logloss")} <= set(metrics)


def test_microbatching_matches_full_batch():
    """PM (the RM shares `steps.normalised_step`); no dropout and no order swapping,
    whose keys differ per microbatch."""
    cfg = dataclasses.replace(CFG, dropout_rate=0.0)
    one = jax.devices()[:1]
    _, _, full, _ = _run("pm", partitioning.MeshConfig(1, 1, 1), one, swap_prob=0.0, cfg=cfg)
    _, _, micro, _ = _run("pm", partitioning.MeshConfig(1, 1, 1), one, swap_prob=0.0, cfg=cfg,
                          num_microbatches=4)
    np.testing.assert_allclose(micro, full, atol=1e-5)


def test_pm_loss_and_order_swap_against_a_direct_model_call():
    """swap_prob=1 trains on (x, y', y) with label 1 - label; the loss is the CE of
    sigmoid(target logit) computed by hand from the network's logits."""
    model = t5.EncoderDecoder(dataclasses.replace(CFG, dropout_rate=0.0))
    params = testing.random_params(model)
    batch = {k: jnp.asarray(v) for k, v in _pairs(n=8, p_star=False).items()}
    labels = np.asarray(batch["labels"], np.float64)

    def by_hand(inputs, labels):
        logits = model.apply({"params": params}, inputs, jnp.zeros((8, 1), jnp.int32))
        z = np.asarray(logits[:, 0, TARGET], np.float64)
        p = 1 / (1 + np.exp(-z))
        return -np.sum(labels * np.log(p) + (1 - labels) * np.log(1 - p))

    for swap_prob, inputs, lab in ((0.0, batch["inputs"], labels),
                                   (1.0, batch["inputs_swapped"], 1 - labels)):  # fmt: skip
        loss, aux = ps.pm_loss_fn(params, batch, jax.random.key(0), model=model, target_token=TARGET,
                                  cfg=ps.PreferenceStepConfig(swap_prob=swap_prob))
        np.testing.assert_allclose(float(loss), by_hand(inputs, lab), rtol=1e-5)
        assert float(aux["weight"]) == 8.0
    # both orders: the mean of both orders' cross-entropies, plus that of the judge
    # (f(x, y, y') + 1 - f(x, y', y)) / 2 with weight 0.5
    loss, aux = ps.pm_loss_fn(params, batch, jax.random.key(0), model=model, target_token=TARGET,
                              cfg=ps.PreferenceStepConfig(both_orders=True, judge_loss_weight=0.5))
    f, f_swapped = [1 / (1 + np.exp(-np.asarray(preference.target_logits(model, params, batch[k], TARGET),
                                                np.float64))) for k in ("inputs", "inputs_swapped")]  # fmt: skip
    g = (f + 1 - f_swapped) / 2
    ce = lambda p, t: -(t * np.log(p) + (1 - t) * np.log(1 - p))  # noqa: E731
    want = np.sum(0.5 * (ce(f, labels) + ce(f_swapped, 1 - labels)) + 0.5 * ce(g, labels))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(aux["position_bias"]), np.sum(np.abs(f + f_swapped - 1)), rtol=1e-5)
    # the RM loss: Bradley-Terry on the two rewards
    rm_batch = {"inputs": batch["inputs"], "inputs_alt": batch["inputs_swapped"], "labels": batch["labels"]}
    loss, _ = ps.rm_loss_fn(params, rm_batch, jax.random.key(0), model=model, target_token=TARGET)
    r = np.asarray(preference.target_logits(model, params, batch["inputs"], TARGET), np.float64)
    r_alt = np.asarray(preference.target_logits(model, params, batch["inputs_swapped"], TARGET), np.float64)
    p = 1 / (1 + np.exp(-(r - r_alt)))
    np.testing.assert_allclose(float(loss), -np.sum(labels * np.log(p) + (1 - labels) * np.log(1 - p)), rtol=1e-5)
