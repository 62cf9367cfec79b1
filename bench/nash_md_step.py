"""Throughput of one full Nash-MD-PG iteration, ours (JAX) against TRL 1.13's NashMDTrainer.

    python bench/nash_md_step.py          # needs trl==1.13.0 importable by this python
    python bench/nash_md_step.py --trl_python VENV/bin/python   # TRL from another venv
    python bench/nash_md_step.py --rows tiny,small,decoder      # ours only (~4 min)

The TRL side takes most of the time: each of its iterations is minutes on 2 cores (a
whole run was ~15 min at load average 5 on a 2-core machine). TRL 1.13.0 is the last
release with NashMDTrainer; `pip install trl==1.13.0` (it pulls accelerate, datasets
and pandas, and works with the torch and transformers of this project's venv).

One iteration = sample y ~ pi and y' ~ the token-level mixture
(1 - beta) log pi + beta log mu (beta = `--mixture_coef`, 0.125), score P(y > y' | x)
with a judge, reference log-probs log mu(y | x), one policy-gradient update (AdamW).
Every row generates exactly `--new_tokens` tokens per response (EOS disabled on our
side; `min_new_tokens = max_new_tokens` on TRL's), so both sides do the same work.
Samples/s counts the policy's samples y (= prompts per batch; one y' each).

Rows:

* tiny / t5_1_1-small enc-dec (ours): one step of the training loop itself,
  `online.step_fn` (the callback `run_policy` gives `trainer.run_loop`): its four
  jitted phases and their shardings, timed at its host boundaries (`time/*_s`).
* decoder-only (ours): `models.t5.DecoderOnly` with the small model's decoder dims.
  The prompt is prefilled in one cached forward pass over all its tokens
  (`--stepwise_prefill`: one cached single-token step per prompt token, the older
  path), then one jitted loop carries the policy cache for the y and
  y' rows (2B rows) and the reference cache for the y' rows; reference log-probs are
  one teacher-forced pass; the update reuses `losses.policy_gradient_advantages` /
  `policy_gradient_loss` and `steps.normalised_step`.
* decoder-only (TRL): `trl.experimental.nash_md.NashMDTrainer.training_step` followed
  by what `Trainer` does after it (optimizer step, scheduler step, zero_grad), on a
  `transformers` Mistral (Llama-style; no sliding window) of the same dims (d_model,
  layers, heads x d_kv, gated MLP of d_ff with tanh-GELU, vocabulary, untied head;
  RoPE where we use relative position buckets). TRL samples the mixture through
  `GeometricMixtureWrapper` with `use_cache=False`, re-running both models on the
  whole prefix (all positions' logits) for every token. Its warm-up iterations make 2
  new tokens instead of `--new_tokens` (same code paths; a full one takes minutes).

Judge (the same on both sides): a tiny random Bradley-Terry reward model,
P(y > y' | x) = sigmoid(r(x, y) - r(x, y')), r = a 1-layer causal transformer (width
64, 2 heads of 32, gated MLP 128, the policy's vocabulary) read at the last token.
Ours scores token ids with a jitted Flax copy and pulls the probabilities to the host;
TRL requires a sequence-classification model and runs `MistralForSequenceClassification`
of those dims through its `get_reward`. No text is decoded on either side (random
token ids).

TRL runs in a subprocess (`--trl_python`, default this interpreter), so it can live in
its own virtual environment; the two processes take turns (never both busy) and the
decoder-only iterations alternate side by side, so a load spike hits both. Phase times:
ours at the loop's host boundaries; TRL's by wrapping the trainer's
`_generate_completions` (sample), `_process_completions` + `_compute_rewards` (score)
and the reference model's forward inside `_compute_logprobs` (reference); the rest of
the iteration (policy forward and backward, loss, statistics, optimizer) is "update".
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import benchlib

PHASES = ("sample", "score", "reference", "update")
JUDGE_DIMS = dict(d_model=64, num_heads=2, d_kv=32, d_ff=128, num_layers=1)
# Token ids: 0 padding, 1 EOS (as in T5); prompts use ids >= 3 (2 is TRL's <unk>).
PAD_ID, EOS_ID, FIRST_WORD = 0, 1, 3


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # The "small" model: google/t5-v1_1-small dims (decoder-only uses its decoder stack).
    benchlib.add_t5_small_args(p)
    p.add_argument("--vocab_size", type=int, default=32128)
    p.add_argument("--batch", type=int, default=8, help="prompts per iteration")
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--mixture_coef", type=float, default=0.125, help="beta of the mixture")
    p.add_argument("--tau", type=float, default=0.008, help="KL coefficient (TRL's beta)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--stepwise_prefill", action="store_true",
                   help="decoder-only row: prefill the prompt one cached step per token")
    p.add_argument("--rows", default="tiny,small,decoder,trl",
                   help="comma-separated subset of tiny,small,decoder,trl")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--trl_python", default=sys.executable,
                   help="python with trl==1.13.0, torch and transformers (runs the TRL side)")
    p.add_argument("--trl_worker", default=None, help=argparse.SUPPRESS)  # internal
    return p.parse_args(argv)


def _prompts(args) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(FIRST_WORD, args.vocab_size, size=(args.batch, args.prompt_len), dtype=np.int32)


# ------------------------------------------------------------------ TRL (subprocess)


def _trl_worker(spec: dict) -> None:
    """Builds a NashMDTrainer and runs one iteration per 'step' line on stdin.

    Writes one JSON object per line on stdout: first the versions, then each
    iteration's phase times in seconds.
    """
    import copy

    import tokenizers
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from trl.experimental.nash_md import NashMDConfig, NashMDTrainer
    from trl.experimental.nash_md import nash_md_trainer

    out = sys.stdout
    sys.stdout = sys.stderr  # keep the protocol channel clean of library prints
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    vocab_size, k, n = spec["vocab_size"], spec["prompt_len"], spec["new_tokens"]

    vocab = {"<pad>": PAD_ID, "</s>": EOS_ID, "<unk>": 2}
    vocab.update({f"w{i}": i for i in range(FIRST_WORD, vocab_size)})
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")

    def mistral(d_model, d_ff, heads, d_kv, layers, cls, **extra):
        # Mistral = Llama with an optional sliding window (off here); Llama's config
        # refuses d_model 512 with 6 heads even when head_dim is given.
        config = transformers.MistralConfig(
            vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_ff,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
            head_dim=d_kv, hidden_act="gelu_pytorch_tanh", max_position_embeddings=k + n + 8,
            rms_norm_eps=1e-6, tie_word_embeddings=False, attention_dropout=0.0,
            sliding_window=None, pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=None,
            dtype="float32", **extra)
        return cls(config).float()

    model = mistral(spec["d_model"], spec["d_ff"], spec["num_heads"], spec["d_kv"],
                  spec["num_layers"], transformers.MistralForCausalLM)
    ref_model = copy.deepcopy(model)
    j = JUDGE_DIMS
    reward = mistral(j["d_model"], j["d_ff"], j["num_heads"], j["d_kv"], j["num_layers"],
                   transformers.MistralForSequenceClassification, num_labels=1)
    prompts = [" ".join(f"w{t}" for t in row) for row in spec["prompts"]]
    assert all(len(tokenizer(p, add_special_tokens=False)["input_ids"]) == k for p in prompts)

    tmp = tempfile.mkdtemp(prefix="nash_md_step_trl_")
    config = NashMDConfig(
        output_dir=tmp, per_device_train_batch_size=len(prompts), max_new_tokens=n,
        max_length=k + n, temperature=1.0, top_k=0, top_p=1.0,
        generation_kwargs={"min_new_tokens": n},  # no early EOS: every row makes n tokens
        mixture_coef=spec["mixture_coef"], beta=spec["tau"], learning_rate=spec["lr"],
        max_grad_norm=0.0, use_cpu=True, bf16=False, fp16=False, report_to="none",
        save_strategy="no", logging_strategy="no", seed=0, disable_dropout=True,
        missing_eos_penalty=None, dataloader_num_workers=0,
    )
    trainer = NashMDTrainer(
        model=model, ref_model=ref_model, reward_funcs=reward, args=config,
        train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)

    times = {}
    in_logprobs = [False]

    def timed(name, fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                times[name] = times.get(name, 0.0) + time.perf_counter() - start
        return wrapper

    def logprobs(fn):
        def wrapper(*a, **kw):
            in_logprobs[0] = True
            try:
                return fn(*a, **kw)
            finally:
                in_logprobs[0] = False
        return wrapper

    ref_start = [0.0]

    def ref_pre(module, inputs):
        ref_start[0] = time.perf_counter()

    def ref_post(module, inputs, output):
        if in_logprobs[0]:
            times["reference"] = times.get("reference", 0.0) + time.perf_counter() - ref_start[0]

    trainer._generate_completions = timed("sample", trainer._generate_completions)
    mixture_cls = nash_md_trainer.GeometricMixtureWrapper  # y' only, inside "sample"
    mixture_cls.generate = timed("mixture", mixture_cls.generate)
    trainer._process_completions = timed("score", trainer._process_completions)
    trainer._compute_rewards = timed("score", trainer._compute_rewards)
    trainer._compute_logprobs = logprobs(trainer._compute_logprobs)
    trainer.ref_model.register_forward_pre_hook(ref_pre)
    trainer.ref_model.register_forward_hook(ref_post)

    shapes = {}
    generate = trainer._generate_completions

    def record_shapes(*a, **kw):
        model_output, mixture_output = generate(*a, **kw)
        shapes["y"], shapes["alt"] = tuple(model_output.shape), tuple(mixture_output.shape)
        return model_output, mixture_output

    trainer._generate_completions = record_shapes

    def set_new_tokens(count):
        trainer.generation_kwargs["max_new_tokens"] = trainer.generation_kwargs["min_new_tokens"] = count
        trainer.generation_config.max_new_tokens = count
        trainer.generation_config.min_new_tokens = count

    def iteration(new_tokens):
        # One step of Trainer's inner loop (no gradient accumulation, no clipping).
        set_new_tokens(new_tokens)
        times.clear()
        cpu_start, start = time.process_time(), time.perf_counter()
        loss = trainer.training_step(trainer.model, {"prompt": list(prompts)})
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.model.zero_grad(set_to_none=True)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        assert shapes["y"] == shapes["alt"] == (len(prompts), k + new_tokens), shapes
        result = {p: times.get(p, 0.0) for p in PHASES[:3]}
        result["update"] = total - sum(result.values())
        result["total"] = total
        result["cpu"] = cpu
        result["mixture"] = times.get("mixture", 0.0)
        result["loss"] = float(loss)
        return result

    def send(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    send({"ready": True, "trl": trl.__version__, "torch": torch.__version__,
          "transformers": transformers.__version__, "threads": torch.get_num_threads(),
          "optimizer": type(trainer.optimizer).__name__,
          "policy_params": sum(p.numel() for p in model.parameters()),
          "attn": getattr(model.config, "_attn_implementation", None)})
    for line in sys.stdin:  # until "quit" or the parent closes the pipe
        command = line.strip()
        if command == "step":
            send(iteration(n))
        elif command == "warmup":
            # Every code path (both generations, judge, log-probs, backward, the first
            # AdamW step that allocates its moments) with 2 new tokens instead of n: an
            # eager iteration has nothing to compile, and a full one takes minutes here.
            send(iteration(2))
        else:
            break
    shutil.rmtree(tmp, ignore_errors=True)


class _TRLSide:
    """The parent's handle on the TRL worker process."""

    def __init__(self, args, prompts):
        spec = {k: getattr(args, k) for k in (
            "d_model", "d_ff", "num_heads", "d_kv", "num_layers", "vocab_size", "prompt_len",
            "new_tokens", "mixture_coef", "tau", "lr", "threads")}
        spec["prompts"] = prompts.tolist()
        self.stderr = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
                   TRL_EXPERIMENTAL_SILENCE="1")
        self.proc = subprocess.Popen(
            [args.trl_python, os.path.abspath(__file__), "--trl_worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)
        self.info = None

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            tail = self.stderr.read()[-3000:]
            raise RuntimeError(f"TRL worker exited with {self.proc.returncode}:\n{tail}")
        return json.loads(line)

    def ready(self) -> dict:
        if self.info is None:
            self.info = self._read()
        return self.info

    def send(self, command: str) -> None:
        """Queues a command; the worker answers each with one line, read by `result`."""
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        self.ready()
        return self._read()

    def __call__(self) -> dict:
        self.send("step")
        return self.result()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.stderr.close()


# ------------------------------------------------------------------------ ours (JAX)


def _judge(vocab_size):
    """(params, apply) of the tiny reward model; apply(params, x, y, y') -> P(y > y') [B]."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from nlhf_jax.models import layers, t5

    j = JUDGE_DIMS
    config = t5.T5Config(
        vocab_size=vocab_size, emb_dim=j["d_model"], num_heads=j["num_heads"],
        head_dim=j["d_kv"], mlp_dim=j["d_ff"], num_encoder_layers=j["num_layers"],
        num_decoder_layers=j["num_layers"])

    class TinyReward(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            x = layers.Embed(vocab_size, config.emb_dim, name="token_embedder")(tokens)
            h = t5.Decoder(config, has_cross=False, name="decoder")(x, None, None, deterministic=True)
            return nn.Dense(1, name="score")(h[:, -1])[:, 0]

    model = TinyReward()
    params = nn.unbox(model.init(jax.random.key(7), jnp.ones((1, 4), jnp.int32))["params"])

    @jax.jit
    def prob(params, prompts, y, alt):
        seqs = jnp.concatenate([jnp.concatenate([prompts, y], 1), jnp.concatenate([prompts, alt], 1)], 0)
        r = model.apply({"params": params}, seqs)
        b = prompts.shape[0]
        return jax.nn.sigmoid(r[:b] - r[b:])

    return jax.device_put(params), prob


def _optimizer(args):
    from nlhf_jax import train_state as train_state_lib

    return train_state_lib.OptimizerConfig(
        name="adamw", schedule=train_state_lib.ScheduleConfig(kind="constant", base=args.lr),
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)


def _encdec_iteration(args, config, prompts):
    """One Nash-MD-PG step of the training loop (`online.step_fn`, the callback
    `run_policy` hands to `trainer.run_loop`) as a callable returning phase seconds."""
    import dataclasses

    import flax.linen as nn
    import jax

    from nlhf_jax import decoding
    from nlhf_jax import online
    from nlhf_jax import partitioning
    from nlhf_jax import trainer
    from nlhf_jax.models import t5

    @dataclasses.dataclass(frozen=True)
    class FixedLength(online.NashMDConfig):
        """eos_id -1 never matches: every row generates exactly max_decode_len tokens."""

        def sampling(self) -> decoding.SamplingConfig:
            return dataclasses.replace(super().sampling(), eos_id=-1)

    nashmd = FixedLength(algorithm="nash_md", beta=args.mixture_coef, tau=args.tau,
                         max_decode_len=args.new_tokens, log_samples_every=0)
    network = t5.EncoderDecoder(config)
    mesh_ = partitioning.make_mesh(partitioning.MeshConfig())
    rules = partitioning.default_rules()
    opt = _optimizer(args)
    tx = opt.build()
    init = lambda rng: t5.init_variables(network, rng)["params"]  # noqa: E731
    state, shardings, _ = trainer.init_train_state(init, tx, mesh_, rules, jax.random.key(0))
    ref_params = jax.jit(lambda p: jax.tree_util.tree_map(lambda x: x * 1.0, p),
                         out_shardings=shardings.params)(state.params)
    judge_params, judge = _judge(config.vocab_size)
    n_rows = prompts.shape[0]

    def score(roll, _texts):  # the same token-level judge as TRL's side: no text decoded
        assert roll.tokens.shape == roll.alt_tokens.shape == (n_rows, args.new_tokens)
        assert np.all(roll.lengths == args.new_tokens) and np.all(roll.alt_lengths == args.new_tokens)
        pref = np.asarray(jax.device_get(judge(judge_params, roll.prompts, roll.tokens, roll.alt_tokens)),
                          np.float32)
        return pref.copy(), pref, {}, None

    phases = online.make_phases(network, tx, opt.schedule.build(), nashmd, shardings, mesh_)
    step_fn = online.step_fn(phases, {"reference": ref_params}, nashmd, seed=0,
                             prompts_fn=lambda step: (prompts, None), score_fn=score)
    holder = {"state": state, "step": 0}

    def iteration():
        with jax.set_mesh(mesh_), nn.logical_axis_rules(rules):
            c0 = time.process_time()
            holder["state"], metrics, _ = step_fn(holder["state"], holder["step"])
            c4 = time.process_time()
        holder["step"] += 1
        assert np.isfinite(metrics["policy/loss"])
        phases_s = {k: metrics[f"time/{k}_s"] for k in ("sample", "score", "reference", "update")}
        return {**phases_s, "total": sum(phases_s.values()), "cpu": c4 - c0}

    return iteration


def _decoder_only_iteration(args, config, prompts):
    """The same iteration with our DecoderOnly model, as a callable returning phase seconds."""
    import functools

    import flax
    import jax
    import jax.numpy as jnp

    from nlhf_jax import losses
    from nlhf_jax import policy
    from nlhf_jax import steps
    from nlhf_jax import testing
    from nlhf_jax import train_state as train_state_lib
    from nlhf_jax.models import t5

    model = t5.DecoderOnly(config)
    k, n = args.prompt_len, args.new_tokens
    total_len = k + n
    opt = _optimizer(args)
    tx = opt.build()
    params = jax.device_put(testing.random_params(model, seed=0))
    ref_params = jax.device_put(testing.random_params(model, seed=0))
    state = train_state_lib.TrainState.create(params, tx)
    judge_params, judge = _judge(config.vocab_size)

    def step(p, cache, tok):
        """tok int [R] -> (normalised log-probs [R, V], cache)."""
        logits, variables = model.apply({"params": p, "cache": cache}, tok[:, None], decode=True,
                                        mutable=["cache"])
        return policy.normalise(logits[:, 0]), variables["cache"]

    def prefill(p, prompt):
        """Runs the prompt through the cache: (cache, log-probs of the first response token)."""
        if not args.stepwise_prefill:  # one pass over the whole prompt
            logits, variables = model.apply({"params": p}, prompt, decode=True, max_decode_len=total_len,
                                            mutable=["cache"], logits_from=prompt.shape[1] - 1)
            return flax.core.unfreeze(variables["cache"]), policy.normalise(logits[:, -1])
        _, variables = model.apply({"params": p}, prompt[:, :1], decode=True, max_decode_len=total_len,
                                   mutable=["cache"])
        cache = flax.core.unfreeze(variables["cache"])
        cache["decoder"]["index"] = jnp.zeros((), jnp.int32)
        init = (cache, jnp.zeros((prompt.shape[0], config.vocab_size), jnp.float32))
        (cache, lp), _ = jax.lax.scan(lambda c, tok: (step(p, c[0], tok)[::-1], None), init, prompt.T)
        return cache, lp

    def sample_phase(p, ref, prompt, rng, beta):
        """y ~ pi (rows :B) and y' ~ the token-level mixture (rows B:), one decode loop."""
        b = prompt.shape[0]
        p_cache, p_lp = prefill(p, prompt)
        r_cache, r_lp = prefill(ref, prompt)
        # The y and y' rows share the policy's prompt cache: one prefill, 2B decode rows.
        p_cache = jax.tree_util.tree_map(lambda x: jnp.concatenate([x, x]) if x.ndim else x, p_cache)
        p_lp = jnp.concatenate([p_lp, p_lp])
        keys = jax.random.split(rng, 2 * b)

        def draw(p_lp, r_lp, t):
            mix = (1.0 - beta) * p_lp[b:] + beta * r_lp
            logps = jax.nn.log_softmax(jnp.concatenate([p_lp[:b], mix]), axis=-1)  # temperature 1
            tok = jax.vmap(jax.random.categorical)(jax.vmap(jax.random.fold_in, (0, None))(keys, t), logps)
            return tok.astype(jnp.int32)

        def body(carry, t):
            p_cache, r_cache, p_lp, r_lp = carry
            tok = draw(p_lp, r_lp, t)
            p_lp, p_cache = step(p, p_cache, tok)
            r_lp, r_cache = step(ref, r_cache, tok[b:])
            return (p_cache, r_cache, p_lp, r_lp), tok

        (_, _, p_lp, r_lp), toks = jax.lax.scan(body, (p_cache, r_cache, p_lp, r_lp), jnp.arange(n - 1))
        toks = jnp.concatenate([toks.T, draw(p_lp, r_lp, n - 1)[:, None]], axis=1)
        return toks[:b], toks[b:]

    def logprobs(p, prompt, y):
        """log pi(y_n | x, y_<n), teacher forced: [B, N]."""
        seq = jnp.concatenate([prompt, y], axis=1)[:, :-1]
        lp = policy.normalise(model.apply({"params": p}, seq, logits_from=k - 1))
        return jnp.take_along_axis(lp, y[..., None], axis=-1)[..., 0]

    def loss_fn(p, batch, rng):
        del rng
        logps = logprobs(p, batch["prompts"], batch["tokens"])
        mask = jnp.ones_like(logps)
        adv = losses.policy_gradient_advantages(batch["reward"], logps, batch["reference_logps"], mask,
                                                batch["tau"][:, None], jnp.float32(0.5))
        loss, weight = losses.policy_gradient_loss(logps, adv, mask, batch["example_weights"])
        kl = jnp.sum(jax.lax.stop_gradient(logps - batch["reference_logps"]))
        return loss, {"weight": weight, "kl_ref": kl, "reward": jnp.sum(batch["reward"])}

    jit_sample = jax.jit(sample_phase)
    jit_ref = jax.jit(logprobs)
    jit_update = jax.jit(functools.partial(steps.normalised_step, loss_fn=loss_fn, tx=tx, prefix="policy"),
                         donate_argnums=0)
    b = prompts.shape[0]
    holder = {"state": state, "step": 0}
    base_rng = jax.random.key(0)
    prompt_ids = jnp.asarray(prompts)

    def iteration():
        step_i = holder["step"]
        c0, t0 = time.process_time(), time.perf_counter()
        rng = jax.random.fold_in(base_rng, step_i)
        y, alt = jax.device_get(jit_sample(holder["state"].params, ref_params, prompt_ids,
                                           jax.random.fold_in(rng, 0), jnp.float32(args.mixture_coef)))
        t1 = time.perf_counter()
        reward = np.asarray(jax.device_get(judge(judge_params, prompts, y, alt)), np.float32)
        t2 = time.perf_counter()
        ref_lp = jax.device_get(jit_ref(ref_params, prompt_ids, y))
        batch = {"prompts": prompts, "tokens": y, "reward": reward, "reference_logps": np.asarray(ref_lp),
                 "tau": np.full((b,), args.tau, np.float32), "example_weights": np.ones((b,), np.float32)}
        t3 = time.perf_counter()
        holder["state"], metrics = jit_update(holder["state"], batch, rng)
        metrics = jax.device_get(metrics)
        t4, c4 = time.perf_counter(), time.process_time()
        holder["step"] = step_i + 1
        assert y.shape == alt.shape == (b, n) and np.all(y > PAD_ID), (y.shape, alt.shape)
        assert np.isfinite(metrics["policy/loss"])
        return {"sample": t1 - t0, "score": t2 - t1, "reference": t3 - t2, "update": t4 - t3,
                "total": t4 - t0, "cpu": c4 - c0}

    return iteration


# ------------------------------------------------------------------------------ main


def _summary(runs: list[dict]) -> dict:
    total = sum(r["total"] for r in runs)
    out = {"s_per_it": statistics.median(r["total"] for r in runs),
           "cpu_per_it": statistics.median(r["cpu"] for r in runs)}
    for p in PHASES:
        out[p] = sum(r[p] for r in runs) / total
    return out


def main(argv=None) -> None:
    args = _parse_args(argv)
    if args.trl_worker is not None:
        _trl_worker(json.loads(args.trl_worker))
        return
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - {"tiny", "small", "decoder", "trl"}
    if unknown:
        raise SystemExit(f"--rows: unknown {sorted(unknown)}")
    load_start, wall_start = benchlib.load(), time.perf_counter()
    prompts = _prompts(args)

    trl_side = None
    if "trl" in rows:  # it builds its models and warms up while we compile
        trl_side = _TRLSide(args, prompts)
        try:
            for _ in range(args.warmup):
                trl_side.send("warmup")
        except OSError:
            pass  # it died at start; `ready` reports why

    import jax
    import torch
    import transformers

    from nlhf_jax import testing
    from nlhf_jax.models import t5

    small = t5.T5Config(
        vocab_size=args.vocab_size, emb_dim=args.d_model, num_heads=args.num_heads, head_dim=args.d_kv,
        num_encoder_layers=args.num_layers, num_decoder_layers=args.num_layers, mlp_dim=args.d_ff,
        mlp_activations=("gelu", "linear"), logits_via_embedding=False)
    tiny = testing.tiny_t5_config()
    tiny_prompts = np.random.default_rng(1).integers(
        FIRST_WORD, tiny.vocab_size, size=prompts.shape, dtype=np.int32)

    labels = {
        "tiny": (f"tiny enc-dec, ours ({tiny.num_encoder_layers}+{tiny.num_decoder_layers} layers, "
                 f"d {tiny.emb_dim}, vocab {tiny.vocab_size})"),
        "small": f"t5_1_1-small enc-dec, ours ({args.num_layers}+{args.num_layers} layers)",
        "decoder": f"decoder-only, ours ({args.num_layers} layers)",
        "trl": f"decoder-only, TRL NashMDTrainer ({args.num_layers} layers)",
    }
    iterations = {}
    compile_s = {}
    for name, builder in (("tiny", lambda: _encdec_iteration(args, tiny, tiny_prompts)),
                          ("small", lambda: _encdec_iteration(args, small, prompts)),
                          ("decoder", lambda: _decoder_only_iteration(args, small, prompts))):
        if name in rows:
            start = time.perf_counter()
            fn = builder()
            for _ in range(args.warmup):  # the first one compiles
                fn()
            compile_s[name] = time.perf_counter() - start
            iterations[name] = fn

    trl_info, trl_error, trl_wait = None, None, 0.0
    if trl_side is not None:
        try:
            start = time.perf_counter()
            trl_info = trl_side.ready()
            for _ in range(args.warmup):
                trl_side.result()
            trl_wait = time.perf_counter() - start
            iterations["trl"] = trl_side
        except (RuntimeError, ValueError, OSError) as e:
            trl_error = str(e)
            trl_side.close()
            trl_side = None

    runs = {name: [] for name in iterations}
    try:
        for name in ("tiny", "small"):
            if name in iterations:  # the tiny iteration takes milliseconds: time more of them
                count = max(args.iters, 20) if name == "tiny" else args.iters
                runs[name] = [iterations[name]() for _ in range(count)]
        side_by_side = [name for name in ("decoder", "trl") if name in iterations]
        for _ in range(args.iters):  # alternate, so load spikes hit both sides
            for name in side_by_side:
                runs[name].append(iterations[name]())
    finally:
        if trl_side is not None:
            trl_side.close()
    load_end = benchlib.load()

    print("## Nash-MD-PG iteration throughput: nlhf_jax (JAX) vs TRL (PyTorch)\n")
    print(f"- CPU: {benchlib.cpu_model()}; cores: {os.cpu_count()}; load average at start: {load_start}; "
          f"at end: {load_end}")
    print(f"- jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} device(s)); "
          f"python {platform.python_version()}; this process: torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    if trl_info is not None:
        print(f"- TRL side ({args.trl_python}): trl {trl_info['trl']}, torch {trl_info['torch']} "
              f"({trl_info['threads']} threads), transformers {trl_info['transformers']}, "
              f"optimizer {trl_info['optimizer']}, attention {trl_info['attn']}, "
              f"policy parameters {trl_info['policy_params']:,}")
    elif trl_error is not None:
        print(f"- TRL side failed ({args.trl_python}); install trl==1.13.0 there or pass --trl_python:\n"
              f"```\n{trl_error}\n```")
    print(f"- small model: d_model {args.d_model}, d_ff {args.d_ff} (gated GELU), {args.num_heads} heads x "
          f"d_kv {args.d_kv}, {args.num_layers} layers per stack, vocab {args.vocab_size}, float32; "
          f"decoder-only rows: one stack of {args.num_layers} layers")
    print(f"- batch {args.batch} prompts x (prompt {args.prompt_len} + {args.new_tokens} new tokens, fixed "
          f"length), one y and one y' per prompt; mixture coefficient {args.mixture_coef}; AdamW lr "
          f"{args.lr}; judge: tiny Bradley-Terry reward model (1 layer, width 64) on both sides")
    print(f"- warm-up: {args.warmup} full iteration(s) per row of ours, compilation included ("
          f"{', '.join(f'{k} {v:.0f} s' for k, v in compile_s.items())}); TRL: {args.warmup} iteration(s) "
          f"with 2 new tokens (every code path), built and run in its process while ours compiled "
          f"({trl_wait:.0f} s more waited for it)")
    print(f"- timed: median of {args.iters} iterations ({max(args.iters, 20)} for tiny); the two "
          f"decoder-only rows alternate iteration by iteration; CPU s = the process's CPU time "
          f"summed over its threads (spin-waits included); "
          f"phase columns are shares of the iteration's wall time; whole benchmark {time.perf_counter() - wall_start:.0f} s\n")
    print("| model | samples/s | s/iteration | CPU s/iteration | sample | score | reference | update |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    summaries = {}
    for name in ("tiny", "small", "decoder", "trl"):
        if name not in runs or not runs[name]:
            continue
        s = summaries[name] = _summary(runs[name])
        shares = " | ".join(f"{100 * s[p]:.0f}%" for p in PHASES)
        print(f"| {labels[name]} | {args.batch / s['s_per_it']:.2f} | {s['s_per_it']:.2f} | "
              f"{s['cpu_per_it']:.2f} | {shares} |")
    if "decoder" in summaries and "trl" in summaries:
        ratio = summaries["trl"]["s_per_it"] / summaries["decoder"]["s_per_it"]
        cpu_ratio = summaries["trl"]["cpu_per_it"] / summaries["decoder"]["cpu_per_it"]
        print(f"\ndecoder-only Nash-MD-PG iteration, ours / TRL (samples/s): {ratio:.2f}x "
              f"(by CPU time: {cpu_ratio:.2f}x)")
        med = lambda name, key: statistics.median(r[key] for r in runs[name])  # noqa: E731
        print(f"sample phase alone: ours {med('decoder', 'sample'):.2f} s, TRL {med('trl', 'sample'):.2f} s, "
              f"of which {med('trl', 'mixture'):.2f} s is y' (GeometricMixtureWrapper.generate, "
              f"use_cache=False)")
    print("\nmedian seconds per phase (sample / score / reference / update), then every iteration's total:")
    for name, name_runs in runs.items():
        phases = " / ".join(f"{statistics.median(r[p] for r in name_runs):.3f}" for p in PHASES)
        totals = ", ".join(f"{r['total']:.3f}" for r in name_runs)
        print(f"- {name}: {phases}; totals {totals}")


if __name__ == "__main__":
    main()
