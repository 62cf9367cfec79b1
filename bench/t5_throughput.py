"""Throughput of our T5 against HuggingFace's PyTorch T5 on the same weights and batch.

    python bench/t5_throughput.py                      # t5_1_1-small dims, ~3-5 min on 2 cores
    python bench/t5_throughput.py --num_layers 2 --num_decoder_layers 2 --iters 2   # quick

Two workloads, both on one random-weight model saved by `transformers` and loaded with
`nlhf_jax.checkpoints.load_t5` (so both sides hold identical parameters):

* training step: cross-entropy forward + backward + SGD update over a batch of
  `batch` x (`input_len` encoder + `target_len` decoder) tokens; throughput counts
  all those tokens. JAX: one jitted `value_and_grad` + update with donated params.
  PyTorch: `model(..., labels=...)`, `loss.backward()`, `optimizer.step()`.
* sampling: `decode_len` new tokens per row with temperature 1 (no top-k), KV cache
  on, EOS disabled on both sides so every row generates exactly `decode_len` tokens;
  throughput counts generated tokens (the encoder pass is included in the time).

Prints the machine, the versions and a markdown table with both throughputs and the
ratio (ours / PyTorch). Times are medians over `iters` runs after `warmup` runs; the
two sides alternate run by run, so a load spike from another process hits both.
"""

import argparse
import functools
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers

from nlhf_jax import decoding
from nlhf_jax import models
from nlhf_jax import testing
from nlhf_jax.checkpoints import hf

import benchlib  # bench/benchlib.py


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Defaults: google/t5-v1_1-small.
    benchlib.add_t5_small_args(p)
    p.add_argument("--num_decoder_layers", type=int, default=8)
    p.add_argument("--vocab_size", type=int, default=32128)
    p.add_argument("--feed_forward_proj", default="gated-gelu", choices=["gated-gelu", "relu"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input_len", type=int, default=64)
    p.add_argument("--target_len", type=int, default=32)
    p.add_argument("--decode_len", type=int, default=32, help="new tokens per row when sampling")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--scan_layers", action="store_true", help="our stacks as nn.scan")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    return p.parse_args(argv)


def _median_seconds(fns, warmup: int, iters: int) -> list[float]:
    """Median wall time of each callable; runs alternate so load spikes hit both sides."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(iters):
        for fn, fn_times in zip(fns, times):
            start = time.perf_counter()
            fn()
            fn_times.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _build_models(args, directory):
    """Random HF model (PyTorch) and the same weights as our (config, params)."""
    torch.manual_seed(0)
    hf_config = transformers.T5Config(
        vocab_size=args.vocab_size, d_model=args.d_model, d_kv=args.d_kv, d_ff=args.d_ff,
        num_layers=args.num_layers, num_decoder_layers=args.num_decoder_layers,
        num_heads=args.num_heads, feed_forward_proj=args.feed_forward_proj,
        # Untied and unscaled, as T5 v1.1; no dropout so both sides do the same work.
        tie_word_embeddings=args.feed_forward_proj == "relu", dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    hf_model = transformers.T5ForConditionalGeneration(hf_config)
    if args.feed_forward_proj != "relu":
        # transformers >= 5 ties lm_head to the embedding at construction; v1.1 has its own.
        vocab, d_model = hf_model.lm_head.weight.shape
        hf_model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, d_model) * d_model**-0.5)
    hf_model.save_pretrained(directory)
    config, params = hf.load_t5(directory, scan_layers=args.scan_layers)
    return hf_model, config, jax.device_put(params)


def _batch(args, vocab_size):
    encoder_tokens = testing.random_tokens(0, args.batch, args.input_len, vocab_size)
    targets = testing.random_tokens(1, args.batch, args.target_len, vocab_size, append_eos=True)
    return encoder_tokens, targets


def _jax_train_step(config, lr):
    model = models.EncoderDecoder(config)

    def loss_fn(params, encoder_tokens, targets):
        logits = model.apply({"params": params}, encoder_tokens, decoding.shift_right(targets))
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        weights = (targets != 0).astype(jnp.float32)
        return jnp.sum(losses * weights) / jnp.sum(weights)

    def train_step(params, encoder_tokens, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, encoder_tokens, targets)
        params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
        return params, loss

    return jax.jit(train_step, donate_argnums=0)


def bench_training(args, hf_model, config, params, encoder_tokens, targets):
    """(ours, torch) seconds per training step; also checks the losses agree."""
    step_fn = _jax_train_step(config, args.lr)
    enc, tgt = jnp.asarray(encoder_tokens), jnp.asarray(targets)
    state = {"params": jax.tree_util.tree_map(jnp.copy, params)}

    def jax_step():
        state["params"], loss = step_fn(state["params"], enc, tgt)
        state["loss"] = jax.block_until_ready(loss)

    hf_model.train()
    optimizer = torch.optim.SGD(hf_model.parameters(), lr=args.lr)
    t_enc = torch.tensor(encoder_tokens, dtype=torch.long)
    # HF ignores label -100 in the loss; padding targets become -100, as ours weights 0.
    t_labels = torch.tensor(np.where(targets == 0, -100, targets), dtype=torch.long)
    t_mask = (t_enc != 0).long()
    torch_state = {}

    def torch_step():
        optimizer.zero_grad(set_to_none=True)
        loss = hf_model(input_ids=t_enc, attention_mask=t_mask, labels=t_labels).loss
        loss.backward()
        optimizer.step()
        torch_state["loss"] = loss.detach().item()

    # Same weights, same batch: the first losses must agree before anything is updated.
    jax_step()
    torch_step()
    first = (float(state["loss"]), torch_state["loss"])
    jax_s, torch_s = _median_seconds([jax_step, torch_step], args.warmup, args.iters)
    return jax_s, torch_s, first


def bench_sampling(args, hf_model, config, params, encoder_tokens):
    """(ours, torch) seconds per batch of `decode_len` sampled tokens per row."""
    # eos_id -1 never matches a token, so every row runs the full length.
    cfg = decoding.SamplingConfig(
        temperature=1.0, max_decode_len=args.decode_len, eos_id=-1, forbid_pad=False
    )
    generate = jax.jit(functools.partial(decoding.generate, models.EncoderDecoder(config), cfg=cfg))
    enc = jnp.asarray(encoder_tokens)
    rngs = jax.random.split(jax.random.key(0), args.batch)
    shapes = {}

    def jax_sample():
        out = jax.block_until_ready(generate(params, enc, rngs))
        shapes["jax"] = out.tokens.shape

    hf_model.eval()
    t_enc = torch.tensor(encoder_tokens, dtype=torch.long)
    t_mask = (t_enc != 0).long()

    def torch_sample():
        out = benchlib.hf_generate(hf_model, t_enc, t_mask, args.decode_len)
        shapes["torch"] = tuple(out.shape)

    jax_s, torch_s = _median_seconds([jax_sample, torch_sample], args.warmup, args.iters)
    # HF prepends the decoder start token.
    assert shapes["jax"] == (args.batch, args.decode_len), shapes
    assert shapes["torch"] == (args.batch, args.decode_len + 1), shapes
    return jax_s, torch_s


def main(argv=None) -> None:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    print("## T5 throughput: nlhf_jax (JAX) vs transformers (PyTorch)\n")
    print(f"- CPU: {benchlib.cpu_model()}; cores: {os.cpu_count()}; load average at start: "
          f"{benchlib.load()}")
    print(f"- jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} device(s)); "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"transformers {transformers.__version__}; python {platform.python_version()}")
    print(f"- model: d_model {args.d_model}, d_ff {args.d_ff}, {args.num_heads} heads x "
          f"d_kv {args.d_kv}, {args.num_layers}+{args.num_decoder_layers} layers, vocab "
          f"{args.vocab_size}, {args.feed_forward_proj}, float32"
          f"{', scanned layers' if args.scan_layers else ''}")
    print(f"- batch {args.batch}, input length {args.input_len}, target length "
          f"{args.target_len}, sampled length {args.decode_len}; median of {args.iters} "
          f"timed runs after {args.warmup} warm-up runs (compilation excluded)\n")

    with tempfile.TemporaryDirectory() as directory:
        hf_model, config, params = _build_models(args, directory)
    encoder_tokens, targets = _batch(args, config.vocab_size)

    train_jax, train_torch, (loss_jax, loss_torch) = bench_training(
        args, hf_model, config, params, encoder_tokens, targets
    )
    sample_jax, sample_torch = bench_sampling(args, hf_model, config, params, encoder_tokens)

    train_tokens = args.batch * (args.input_len + args.target_len)
    sample_tokens = args.batch * args.decode_len
    rows = [
        ("training step (fwd+bwd+SGD), tokens/s", train_tokens / train_jax,
         train_tokens / train_torch),
        ("sampling with KV cache, generated tokens/s", sample_tokens / sample_jax,
         sample_tokens / sample_torch),
    ]
    print("| workload | nlhf_jax | PyTorch (transformers) | ratio (ours / torch) |")
    print("|---|---:|---:|---:|")
    for name, ours, theirs in rows:
        print(f"| {name} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x |")
    print(f"\nseconds per call: training {train_jax:.3f} (ours) vs {train_torch:.3f} (torch); "
          f"sampling {sample_jax:.3f} vs {sample_torch:.3f}")
    print(f"first-step loss on identical weights: {loss_jax:.6f} (ours) vs "
          f"{loss_torch:.6f} (torch)")
    print(f"load average at end: {benchlib.load()}")


if __name__ == "__main__":
    main()
