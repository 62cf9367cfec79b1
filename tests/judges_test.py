"""Judges: P* against the raters and a hand formula, model judges against direct model
calls, exact antisymmetry, chunking, re-tokenisation, metrics, the shift check."""

import copy
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax import judges
from nlhf_jax import partitioning
from nlhf_jax import testing
from nlhf_jax.data import arrays
from nlhf_jax.data import jsonl
from nlhf_jax.data import pairwise
from nlhf_jax.data import templates
from nlhf_jax.data import vocab
from nlhf_jax.data.world import generator, parser, raters
from nlhf_jax.models import t5

SMALL = generator.WorldConfig(n_sft=(8, 4, 4), n_comparisons=(24, 12, 12), n_prompts_train=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("world") / "w")
    generator.generate(SMALL, out)
    return out


@pytest.fixture(scope="module")
def texts(world):
    return pairwise.read_comparison_texts(generator.split_path(world, "comparisons", "train"),
                                          world_dir=world)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(world):
    return pairwise.Tokenizer(generator.vocab_path(world))


def _model(tokenizer, seed):
    cfg = testing.tiny_t5_config(vocab_size=512, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                                 num_encoder_layers=1, num_decoder_layers=1)  # fmt: skip
    assert tokenizer.vocab_size <= cfg.vocab_size
    network = t5.EncoderDecoder(cfg)
    return network, testing.random_params(network, seed=seed)


@pytest.fixture(scope="module")
def pm(tokenizer):
    fmt = pairwise.InputFormat(pairwise.WORLD_PM_TEMPLATE, pairwise.WORLD_TARGET_TOKEN, 144, 32)
    network, params = _model(tokenizer, 0)
    encoder = pairwise.PairEncoder(fmt, tokenizer)
    return judges.PreferenceModelJudge(network, params, encoder, chunk_size=8)


@pytest.fixture(scope="module")
def pm_dec(tokenizer):
    """A PM reading y' in the decoder (`InputFormat.decoder_template`)."""
    fmt = pairwise.InputFormat(
        pairwise.WORLD_PM_ENCODER_TEMPLATE, pairwise.WORLD_TARGET_TOKEN, 112, 32,
        decoder_template=pairwise.WORLD_PM_DECODER_TEMPLATE,
        max_decoder_len=pairwise.WORLD_PM_DECODER_LEN,
    )
    network, params = _model(tokenizer, 2)
    return judges.PreferenceModelJudge(network, params, pairwise.PairEncoder(fmt, tokenizer),
                                       chunk_size=8)  # fmt: skip


@pytest.fixture(scope="module")
def rm(tokenizer):
    fmt = pairwise.InputFormat(pairwise.WORLD_RM_TEMPLATE, pairwise.WORLD_TARGET_TOKEN, 112, 32)
    network, params = _model(tokenizer, 1)
    return judges.RewardModelJudge(network, params, pairwise.PairEncoder(fmt, tokenizer), chunk_size=8)


def _direct_logits(judge, inputs):
    """The target logit from a plain (unsharded) call of the network."""
    fn = jax.jit(lambda p, x: judge.network.apply({"params": p}, x, jnp.zeros((x.shape[0], 1), jnp.int32)))
    params = jax.device_get(judge.params)
    return np.asarray(fn(params, jnp.asarray(inputs))[:, 0, judge.encoder.target_token_id], np.float64)


def _ids(tokenizer, strings):
    """Policy-style rows: ids, EOS, then padding."""
    rows = [r + [1] for r in tokenizer.encode(strings)]
    out = np.zeros((len(rows), max(map(len, rows)) + 3), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


# ------------------------------------------------------------------ the world's P*


def test_world_judge_matches_raters_and_a_hand_formula(world, texts):
    judge = judges.WorldJudge(world)
    p = judge.prob(texts.prompts, texts.ys, texts.ys_alt)
    direct = raters.RaterPanel.for_world(world).prob(texts.posts, texts.ys, texts.ys_alt)
    np.testing.assert_allclose(p, direct, atol=1e-12)
    np.testing.assert_allclose(p, texts.p_star, atol=1e-12)
    pop = generator.load_config(world).population
    for b in range(2):
        f = parser.featurize([texts.posts[b]], [texts.ys[b]])
        g = parser.featurize([texts.posts[b]], [texts.ys_alt[b]])
        want = 0.0
        for t, rt in enumerate(pop.types):
            def utility(x):
                over = max(int(x.n_words[0]) - 24, 0)
                quality = (3.0 * x.main_point[0] - 1.5 * x.unsupported[0] - 0.25 * over
                           - 0.5 * x.repeats[0] - 0.25 * x.unknown[0])  # fmt: skip
                style = pop.style_table[t, x.style[0]]
                return style + quality
            want += rt.weight / (1.0 + np.exp(-(utility(f) - utility(g)) / rt.temperature))
        np.testing.assert_allclose(p[b], want, rtol=1e-9)
    np.testing.assert_allclose(judge.prob(texts.prompts, texts.ys, texts.ys), 0.5, atol=0)
    np.testing.assert_allclose(p + judge.prob(texts.prompts, texts.ys_alt, texts.ys), 1.0, atol=1e-12)


def test_post_from_prompt_survives_a_sentencepiece_round_trip(texts, tokenizer):
    decoded = arrays.decode_tokens(tokenizer, _ids(tokenizer, texts.prompts))
    assert "\n" not in decoded[0] and decoded[0] != texts.prompts[0]
    for prompt, round_trip, post in zip(texts.prompts, decoded, texts.posts):
        assert judges.post_from_prompt(prompt) == post
        assert parser.parse_post(judges.post_from_prompt(round_trip)) == parser.parse_post(post)
    assert judges.post_from_prompt("just a post .") == "just a post ."


def test_world_judge_on_policy_token_ids(world, texts, tokenizer):
    judge = judges.WorldJudge(world)
    got = judge.prob_tokens(_ids(tokenizer, texts.prompts), _ids(tokenizer, texts.ys),
                            _ids(tokenizer, texts.ys_alt), generator.vocab_path(world))  # fmt: skip
    np.testing.assert_allclose(got, texts.p_star, atol=1e-12)


# ------------------------------------------------------------------ model judges


def test_pm_judge_matches_a_direct_model_call(pm, texts):
    enc = pm.encoder
    fwd = enc.encode_texts(texts.prompts, texts.ys, texts.ys_alt)
    bwd = enc.encode_texts(texts.prompts, texts.ys_alt, texts.ys)
    f = 1 / (1 + np.exp(-_direct_logits(pm, fwd)))
    f_swapped = 1 / (1 + np.exp(-_direct_logits(pm, bwd)))
    got_f, got_swapped = pm.scores(texts.prompts, texts.ys, texts.ys_alt)
    np.testing.assert_allclose(got_f, f, atol=1e-6)
    np.testing.assert_allclose(got_swapped, f_swapped, atol=1e-6)
    np.testing.assert_allclose(pm.prob(texts.prompts, texts.ys, texts.ys_alt), (f + 1 - f_swapped) / 2, atol=1e-6)
    one = copy.copy(pm)  # shares the compiled function
    one.both_orders = False
    np.testing.assert_allclose(one.prob(texts.prompts, texts.ys, texts.ys_alt), f, atol=1e-6)


def test_pm_judge_is_antisymmetric_and_half_on_identical_summaries(pm, texts):
    p = pm.prob(texts.prompts, texts.ys, texts.ys_alt)
    q = pm.prob(texts.prompts, texts.ys_alt, texts.ys)
    assert np.abs(p - 0.5).max() > 1e-3  # a random PM is not trivially 1/2
    np.testing.assert_allclose(p + q, 1.0, atol=1e-6)
    np.testing.assert_allclose(pm.prob(texts.prompts, texts.ys, texts.ys), 0.5, atol=1e-6)


def test_decoder_layout_writes_y_alt_into_the_decoder_part(pm_dec, texts, tokenizer):
    enc = pm_dec.encoder
    rows = enc.encode_texts(texts.prompts[:3], texts.ys[:3], texts.ys_alt[:3])
    assert rows.shape == (3, 112 + pairwise.WORLD_PM_DECODER_LEN)
    for b in range(3):
        encoder_ids = [t for t in rows[b, :112] if t > 1]
        decoder_ids = [t for t in rows[b, 112:] if t]
        assert tokenizer.decode(encoder_ids).endswith("x : " + texts.ys[b].strip())
        assert tokenizer.decode(decoder_ids) == "q : " + texts.ys_alt[b].strip() + " ?"
        assert rows[b, 112 + len(decoder_ids):].sum() == 0  # left-aligned, no EOS


def test_decoder_layout_input_format_errors():
    with pytest.raises(ValueError, match="decoder_template must hold"):
        pairwise.InputFormat("{prompt} {y} {y_alt}", "first", 144, 32,
                             decoder_template="q {y_alt}", max_decoder_len=40)  # fmt: skip
    with pytest.raises(ValueError, match="max_decoder_len=32 must exceed"):
        pairwise.InputFormat("{prompt} {y}", "first", 112, 32,
                             decoder_template="q {y_alt}", max_decoder_len=32)  # fmt: skip


def test_decoder_layout_pm_matches_a_per_row_model_call(pm_dec, texts):
    """Each row run alone with its decoder input cut to its real length ([0, d_1..d_n],
    the logit read at position n) gives what the padded, batched judge gives."""
    enc = pm_dec.encoder
    params = jax.device_get(pm_dec.params)
    apply = jax.jit(lambda p, x, d: pm_dec.network.apply({"params": p}, x, d))
    n_enc = enc.fmt.max_input_len

    def direct(rows):
        out = []
        for row in rows:
            dec = [t for t in row[n_enc:] if t]
            logits = apply(params, jnp.asarray(row[None, :n_enc]), jnp.asarray([[0] + dec], jnp.int32))
            out.append(float(logits[0, len(dec), enc.target_token_id]))
        return 1 / (1 + np.exp(-np.asarray(out)))

    fwd = enc.encode_texts(texts.prompts, texts.ys, texts.ys_alt)
    bwd = enc.encode_texts(texts.prompts, texts.ys_alt, texts.ys)
    got_f, got_swapped = pm_dec.scores(texts.prompts, texts.ys, texts.ys_alt)
    np.testing.assert_allclose(got_f, direct(fwd), atol=1e-6)
    np.testing.assert_allclose(got_swapped, direct(bwd), atol=1e-6)
    p = pm_dec.prob(texts.prompts, texts.ys, texts.ys_alt)
    q = pm_dec.prob(texts.prompts, texts.ys_alt, texts.ys)
    assert np.abs(p - 0.5).max() > 1e-3
    np.testing.assert_allclose(p + q, 1.0, atol=1e-6)
    np.testing.assert_allclose(pm_dec.prob(texts.prompts, texts.ys, texts.ys), 0.5, atol=1e-6)


def test_rm_judge_matches_a_direct_model_call(rm, texts):
    enc = rm.encoder
    r = _direct_logits(rm, enc.encode_texts(texts.prompts, texts.ys))
    r_alt = _direct_logits(rm, enc.encode_texts(texts.prompts, texts.ys_alt))
    np.testing.assert_allclose(rm.rewards(texts.prompts, texts.ys), r, atol=1e-5)
    for n in (1, 19):  # odd batches: the halves are padded
        np.testing.assert_allclose(rm.rewards(texts.prompts[:n], texts.ys[:n]), r[:n], atol=1e-5)
    p = rm.prob(texts.prompts, texts.ys, texts.ys_alt)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-(r - r_alt))), atol=1e-6)
    np.testing.assert_allclose(p + rm.prob(texts.prompts, texts.ys_alt, texts.ys), 1.0, atol=1e-6)
    np.testing.assert_allclose(rm.prob(texts.prompts, texts.ys, texts.ys), 0.5, atol=1e-6)


@pytest.mark.parametrize("kind", ["pm", "rm"])
def test_batch_larger_than_chunk_equals_one_call_per_example(kind, pm, rm, texts):
    judge = pm if kind == "pm" else rm
    assert judge.chunk_size == 8 and len(texts) == 24
    n = 19  # three chunks, the last one padded
    batch = judge.prob(texts.prompts[:n], texts.ys[:n], texts.ys_alt[:n])
    single = [judge.prob(texts.prompts[i:i + 1], texts.ys[i:i + 1], texts.ys_alt[i:i + 1])[0] for i in range(n)]
    np.testing.assert_allclose(batch, single, atol=1e-6)


def test_chunks_round_up_to_the_batch_shards(tokenizer):
    mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 1), jax.devices()[:4])
    fmt = pairwise.InputFormat(pairwise.WORLD_PM_TEMPLATE, pairwise.WORLD_TARGET_TOKEN, 144, 32)
    network, params = _model(tokenizer, 0)
    judge = judges.PreferenceModelJudge(network, params, pairwise.PairEncoder(fmt, tokenizer),
                                        mesh=mesh, chunk_size=5)  # fmt: skip
    assert judge.chunk_size == 8
    leaf = jax.tree_util.tree_leaves(judge.params)[0]
    assert leaf.sharding.mesh.shape == mesh.shape


def test_small_calls_run_smaller_chunks(pm, texts):
    # A policy batch far below chunk_size must not be padded up to it (the training
    # loop's scoring phase): the next power of two, rounded to the batch shards.
    assert pm._shards == 8 and pm.chunk_size == 8
    assert [pm._chunk_for(n) for n in (1, 3, 8, 9, 100)] == [8, 8, 8, 8, 8]
    wide = judges.PreferenceModelJudge(pm.network, pm.params, pm.encoder, chunk_size=256)
    assert [wide._chunk_for(n) for n in (1, 9, 32, 33, 200, 1000)] == [8, 16, 32, 64, 256, 256]
    n = 19  # one chunk of 32
    np.testing.assert_allclose(wide.prob(texts.prompts[:n], texts.ys[:n], texts.ys_alt[:n]),
                               pm.prob(texts.prompts[:n], texts.ys[:n], texts.ys_alt[:n]), atol=1e-6)


def test_prob_tokens_skips_or_redoes_tokenisation(pm, rm, texts, tokenizer, world, tmp_path):
    want_pm = pm.prob(texts.prompts, texts.ys, texts.ys_alt)
    want_rm = rm.prob(texts.prompts, texts.ys, texts.ys_alt)
    # the same SentencePiece model (given as a path here, as bytes in the judge): ids are reused
    same = generator.vocab_path(world)
    ids = [_ids(tokenizer, s) for s in (texts.prompts, texts.ys, texts.ys_alt)]
    assert pm.encoder.tokenizer.same_model(same)
    np.testing.assert_allclose(pm.prob_tokens(*ids, same), want_pm, atol=1e-6)
    np.testing.assert_allclose(rm.prob_tokens(*ids, same), want_rm, atol=1e-6)
    # ... also when the policy's vocabulary is a seqio one over the same file
    seqio_vocab = vocab.world_vocabulary(world)
    assert pm.encoder.tokenizer.same_model(seqio_vocab)
    np.testing.assert_allclose(pm.prob_tokens(*ids, seqio_vocab), want_pm, atol=1e-6)
    np.testing.assert_allclose(judges.WorldJudge(world).prob_tokens(*ids, seqio_vocab),
                               texts.p_star, atol=1e-12)  # fmt: skip
    # another vocabulary: its ids are decoded and re-tokenised, never fed to the model
    other_dir = str(tmp_path / "other")
    generator.generate(dataclasses.replace(SMALL, seed=3), other_dir)
    other = pairwise.Tokenizer(generator.vocab_path(other_dir))
    assert not pm.encoder.tokenizer.same_model(other)
    other_ids = [_ids(other, s) for s in (texts.prompts, texts.ys, texts.ys_alt)]
    assert any((a.shape != b.shape) or (a != b).any() for a, b in zip(ids, other_ids))
    np.testing.assert_allclose(pm.prob_tokens(*other_ids, other), want_pm, atol=1e-6)
    np.testing.assert_allclose(rm.prob_tokens(*other_ids, other), want_rm, atol=1e-6)


# ------------------------------------------------------------------- metrics


def test_preference_metrics_on_hand_made_numbers():
    p = np.array([0.9, 0.2, 0.6, 0.5])
    labels = np.array([1.0, 1.0, 0.0, 1.0])
    p_star = np.array([0.8, 0.4, 0.3, 0.5])
    m = judges.preference_metrics(p, labels=labels, p_star=p_star, f=np.array([0.9, 0.1, 0.5, 0.5]),
                                  f_swapped=np.array([0.2, 0.9, 0.5, 0.5]))  # fmt: skip
    assert m["accuracy"] == pytest.approx((1 + 0 + 0 + 0.5) / 4)
    assert m["bayes_agreement"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert m["bayes_accuracy"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    want_ce = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert m["loss"] == pytest.approx(want_ce)
    want_pll = -np.mean(p_star * np.log(p) + (1 - p_star) * np.log(1 - p))
    assert m["pstar_logloss"] == pytest.approx(want_pll)
    assert m["pstar_mae"] == pytest.approx(np.mean([0.1, 0.2, 0.3, 0.0]))
    # picks y, y', y, tie -> P*, 1 - P*, P*, 1/2
    assert m["expected_accuracy"] == pytest.approx((0.8 + 0.6 + 0.3 + 0.5) / 4)
    assert m["bayes_expected_accuracy"] == pytest.approx((0.8 + 0.6 + 0.7 + 0.5) / 4)
    assert m["position_bias"] == pytest.approx(np.mean([0.1, 0.0, 0.0, 0.0]))
    # bins of width 0.1: {0.9}, {0.2}, {0.6}, {0.5} -> each |label - p| weighted 1/4
    assert m["ece"] == pytest.approx(np.mean([0.1, 0.8, 0.6, 0.5]))
    perfect = judges.preference_metrics(p_star, p_star=p_star)
    assert perfect["pstar_logloss"] == pytest.approx(perfect["pstar_entropy"])


def test_breakdown_by_pair_kind(world, texts, pm, tmp_path):
    path = generator.split_path(world, "comparisons", "train")
    kinds = judges.world_pair_kinds(path)
    assert len(kinds) == len(texts) == 24
    row = json.loads(open(path).readline())
    (s0, q0), (s1, q1) = [x["note"].split("/") for x in row["summaries"]]
    assert kinds[0].startswith(f"both {q0}" if q0 == q1 else " vs ".join(sorted([q0, q1])))
    assert kinds[0].endswith("same style" if s0 == s1 else "different styles")
    rng = np.random.default_rng(0)
    p = rng.uniform(size=len(texts))
    rows = judges.breakdown(p, texts.labels, texts.p_star, kinds)
    probs: list = []
    m_pm = judges.evaluate_texts(pm, texts, probs)
    np.testing.assert_allclose(probs[0], pm.prob(texts.prompts, texts.ys, texts.ys_alt), atol=1e-6)
    assert m_pm["accuracy"] == pytest.approx(judges.preference_metrics(probs[0], labels=texts.labels)["accuracy"])
    assert sum(r["n"] for r in rows) == 24 and len({r["kind"] for r in rows}) == len(rows)
    m = judges.preference_metrics(p, labels=texts.labels, p_star=texts.p_star)
    gap = 100 * (m["bayes_accuracy"] - m["accuracy"])
    assert sum(r["gap_points"] for r in rows) == pytest.approx(gap, abs=1e-9)
    # the judge P* itself has no gap and agrees with itself in every kind
    for r in judges.breakdown(texts.p_star, texts.labels, texts.p_star, kinds):
        assert r["gap_points"] == pytest.approx(0.0, abs=1e-9) and r["bayes_agreement"] >= 0.5
    bad = tmp_path / "tldr.jsonl"
    bad.write_text(open(path).readline() + json.dumps({"summaries": [{"text": "a"}, {"text": "b"}]}) + "\n")
    with pytest.raises(ValueError, match="tldr.jsonl:2: no world note"):
        judges.world_pair_kinds(str(bad))


def test_shift_check_on_shifted_pairs(world):
    prompts, ys, ys_alt = judges.shifted_pairs(200, seed=5)
    assert (prompts, ys, ys_alt) == judges.shifted_pairs(200, seed=5)
    assert len(set(prompts)) == 200 and all(p.endswith(templates.TLDR_SUFFIX) for p in prompts)
    world_judge = judges.WorldJudge(world)
    # a judge that is P* itself: no error; a constant 1/2 judge: the entropy gap
    half = type("Half", (), {"prob": lambda self, x, y, z: np.full(len(y), 0.5)})()
    out = judges.shift_check(world_judge, half, world_judge, prompts, ys, ys_alt)
    # style-only pairs (both faithful): P* is decisive on a good share of them
    assert out["n_pairs"] == 200 and out["pstar_decisive"] > 0.1
    assert out["pm/pstar_mae"] == 0 and out["pm/pstar_logloss"] == pytest.approx(out["pm/pstar_entropy"])
    assert out["rm/pstar_logloss"] == pytest.approx(np.log(2)) and out["rm/pstar_mae"] > 0.05


@pytest.mark.parametrize("kind", ["pm", "rm"])
def test_policy_run_judge_reads_the_training_pairs_token_for_token(kind, world, pm, rm, tmp_path, monkeypatch):
    """The judge call of a policy step (prompt file -> `run_policy._prompts_fn` -> policy
    tokens -> `run_policy._score_fn`) gives the PM/RM exactly the ids its training pairs
    hold for the same (post, y, y'): one prompt builder (`templates.post_prompt`)."""
    from nlhf_jax import online, run_policy, trainer

    comparisons = generator.split_path(world, "comparisons", "train")
    records, _ = jsonl.read_comparisons(comparisons)
    prompt_file = tmp_path / "prompts.jsonl"
    with open(prompt_file, "w") as f:
        for r in records:  # the compared posts as a prompt file, one line per pair
            f.write(json.dumps({k: r[k] for k in ("id", "subreddit", "title", "post")}) + "\n")
    texts = pairwise.read_comparison_texts(comparisons)
    judge = pm if kind == "pm" else rm
    train = (pairwise.preference_features if kind == "pm" else pairwise.reward_features)(judge.encoder, texts)

    voc = vocab.world_vocabulary(world)
    ds = arrays.prompt_dataset(str(prompt_file), voc)
    loop = trainer.LoopConfig(num_steps=1, batch_size=len(ds), seed=3, progress=False)
    nashmd = online.NashMDConfig(algorithm="nash_md" if kind == "pm" else "rlhf", num_samples=1)
    prompt_ids, prompt_texts = run_policy._prompts_fn(ds, loop, nashmd)(0)
    idx = ds.indices(0, loop.batch_size, loop.seed)
    assert sorted(idx.tolist()) == list(range(len(records)))  # every pair, shuffled

    def policy_tokens(summaries):  # what the policy would have sampled: y's ids, then EOS
        rows = [list(voc.encode(s)) + [1] for s in summaries]
        out = np.zeros((len(rows), max(map(len, rows))), np.int32)
        for b, row in enumerate(rows):
            out[b, : len(row)] = row
        return out, np.asarray([len(r) for r in rows], np.int32)

    y, y_len = policy_tokens([texts.ys[i] for i in idx])
    alt, alt_len = policy_tokens([texts.ys_alt[i] for i in idx])
    roll = online.Rollout(prompts=prompt_ids, tokens=y, lengths=y_len, alt_tokens=alt,
                          alt_lengths=alt_len, has_eos=np.ones(len(idx), bool))
    seen = []
    encode_ids = judge.encoder.encode_ids
    monkeypatch.setattr(judge.encoder, "encode_ids", lambda *a: seen.append(encode_ids(*a)) or seen[-1])
    run_policy._score_fn(judge, voc, nashmd)(roll, prompt_texts)

    expected = ["inputs", "inputs_swapped"] if kind == "pm" else ["inputs"]
    assert len(seen) == len(expected)
    for got, key in zip(seen, expected):
        np.testing.assert_array_equal(got, train[key][idx])
    assert prompt_texts == [texts.prompts[i] for i in idx]


def test_prompt_datasets_carry_the_judge_prompts(world):
    ds = arrays.world_prompts("valid", data_dir=world)
    records, _ = jsonl.read_prompts(generator.split_path(world, "prompts", "valid"))
    assert ds.meta["prompts"] == [templates.post_prompt(r) for r in records]
    assert ds.meta["posts"] == [r["post"] for r in records]


def test_world_bt_reward_is_the_bt_projection_of_pstar():
    from nlhf_jax.data.world import describe, grammar, styles

    bt = judges.WorldBTReward(n_posts=64)
    rep = describe.describe_world(generator.WorldConfig(), n_posts=64, taus=())
    np.testing.assert_allclose(bt.style_rewards[:4], rep.reward_style)
    assert int(np.argmax(bt.style_rewards)) == rep.bt_first != rep.condorcet  # the cycle is gone
    # Same style on both sides: P* is sigmoid of the quality gap / T, which BT reproduces.
    rng = np.random.default_rng(0)
    prompts, ys, ys_alt = [], [], []
    for i in range(24):
        post = grammar.sample_post(rng, f"bt-{i}")
        style = i % 4
        prompts.append(templates.post_prompt({"subreddit": post.subreddit, "title": post.title, "post": post.text}))
        ys.append(styles.render_summary(rng, post, style, i % 3))
        ys_alt.append(styles.render_summary(rng, post, style, (i + 1) % 3))
    same = raters.RaterPanel.style(ys) == raters.RaterPanel.style(ys_alt)
    assert same.sum() >= 12
    p_star = judges.WorldJudge().prob(prompts, ys, ys_alt)
    np.testing.assert_allclose(bt.prob(prompts, ys, ys_alt)[same], p_star[same], atol=1e-9)
    np.testing.assert_allclose(bt.prob(prompts, ys, ys_alt) + bt.prob(prompts, ys_alt, ys), 1.0)
