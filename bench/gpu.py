"""One prepared benchmark for one GPU: train step MFU, cached sampling, Nash-MD-PG.

    PYTHONPATH=. python bench/gpu.py --out gpu.json   # T5 v1.1 Large + Base, one H100/H200, < 8 min
    python bench/gpu.py --tiny --out tiny.json        # toy sizes on a CPU, about a minute

Run it from the repository root (`PYTHONPATH=.` where `nlhf_jax` is not installed).

Prints progress lines (seconds since start) while it runs, then one markdown table,
and writes the same rows as JSON to `--out` (rewritten after every row, so a run cut
short still leaves the rows it finished). Weights are random (the project's own
initialisers); nothing is downloaded. Rows, in this order (every workload for every
size in `--sizes` before the next workload):

* train: one SFT (teacher-forced cross-entropy) step, `steps.sft_train_step`, with the
  project's default optimizer (Adafactor, as T5X); the state is built as the runs build
  it (`trainer.init_train_state`: eval_shape, shardings from `partitioning.default_rules`,
  jit(init, out_shardings)) on a one-device mesh and jitted by `trainer.jit_step`
  (state donated). Compute dtype `--dtype` (bfloat16), parameters float32. Tokens/s
  counts batch x (input_len + target_len); MFU = model FLOPs per step / step time /
  the device's peak dense bf16 FLOP/s (`PEAK_BF16_TFLOPS`; n/a where the device is
  not in that table, e.g. any CPU). The FLOP count is `train_flops` below.
* sample (ours): `decoding.generate`, KV cache, temperature 1, EOS disabled so every
  row makes exactly `--decode_len` tokens; tokens/s counts generated tokens (the
  encoder pass is inside the timed call).
* sample (HF): the same weights written by `checkpoints.hf.save_t5` and read by
  `transformers.T5ForConditionalGeneration.from_pretrained`, cast to `--dtype`, on the
  device JAX uses (CUDA for a GPU; the CPU for a CPU run); `generate` with the same
  settings. Skipped, with the reason, where torch / transformers / torch's CUDA is
  missing.
* nash_md: one Nash-MD-PG iteration of the training loop (`online.step_fn`: sample y
  and the beta-mixture y', judge, reference log-probs, AdamW update), built by
  `bench/nash_md_step.py`'s `_encdec_iteration` with its tiny token-level judge;
  samples/s counts the y rows (prompts per iteration).

Every figure is a median over `--iters` timed calls after `--warmup` calls (the first
compiles; compilation is reported, never timed), each ended by `block_until_ready`
or a host transfer. `--budget_s` guards the device budget: once it has elapsed, the
rows not started are marked "skipped: budget", and a row already running stops timing
after its current call (keeping at least one).
"""

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback

import numpy as np

import benchlib  # bench/benchlib.py
import nash_md_step  # bench/nash_md_step.py: the Nash-MD-PG iteration

WORKLOADS = ("train", "sample_ours", "sample_hf", "nash_md")

# T5 v1.1 dims, as configs/models/t5_1_1_{base,large}.gin (checked by the test).
SIZES = {
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048,
                 num_encoder_layers=12, num_decoder_layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816,
                  num_encoder_layers=24, num_decoder_layers=24),
}

# Peak dense bf16 FLOP/s (no sparsity), in TFLOP/s, matched in order as a substring of
# `jax.devices()[0].device_kind` (e.g. "NVIDIA H100 80GB HBM3"). SXM parts; the PCIe H100
# is listed before the catch-all "H100".
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
)

FLOP_FORMULA = (
    "MaxText's count (maxtext_utils.calculate_tflops_training_per_device; T5X has none) "
    "per stack: train FLOPs = 3 x forward (backward = 2 x forward), forward = 2 x "
    "multiply-adds of (a) every weight matmul at the tokens it sees -- encoder layers "
    "(q,k,v,o + gated MLP) on B*L_in tokens, decoder layers (self q,k,v,o, cross q,o, "
    "MLP) on B*L_t tokens, cross k,v on B*L_in tokens per decoder layer, the untied "
    "logits matmul D*V on B*L_t -- and (b) attention scores and values, 2*Lq*Lk*H*d_kv "
    "per layer and example: encoder self full (L_in^2), decoder self causal (L_t^2 / 2), "
    "cross full (L_t*L_in). Not counted: the embedding gather, relative position "
    "bias, norms, softmax, activations, the optimizer."
)

# Batch and length defaults: the GPU run, and --tiny (a CPU, well under a minute).
GPU_DEFAULTS = dict(sizes="large,base", train_batch=16, input_len=512, target_len=128,
                    sample_batch=32, prompt_len=256, decode_len=128, nash_batch=16,
                    new_tokens=64, warmup=1, iters=5)
TINY_DEFAULTS = dict(sizes="tiny", train_batch=2, input_len=8, target_len=8, sample_batch=2,
                     prompt_len=8, decode_len=8, nash_batch=2, new_tokens=4, warmup=1, iters=3)


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--tiny", action="store_true", help="toy sizes and batches (CPU check)")
    p.add_argument("--sizes", default=None, help="comma-separated subset of tiny,base,large")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--budget_s", type=float, default=360.0,
                   help="after this many seconds, rows not started are skipped (a row started "
                        "before then still finishes: leave about 2 minutes for it)")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype (parameters: float32)")
    p.add_argument("--scan_layers", action=argparse.BooleanOptionalAction, default=True,
                   help="nn.scan over layers: one compiled layer per stack (keeps compiles short)")
    p.add_argument("--remat_policy", default="none", choices=["none", "full", "dots"])
    p.add_argument("--dropout_rate", type=float, default=0.0)
    for name in ("train_batch", "input_len", "target_len", "sample_batch", "prompt_len",
                 "decode_len", "nash_batch", "new_tokens", "warmup", "iters"):
        p.add_argument(f"--{name}", type=int, default=None,
                       help=f"default {GPU_DEFAULTS[name]} ({TINY_DEFAULTS[name]} with --tiny)")
    p.add_argument("--mixture_coef", type=float, default=0.125, help="Nash-MD beta")
    p.add_argument("--tau", type=float, default=0.008, help="Nash-MD KL coefficient")
    p.add_argument("--lr", type=float, default=1e-5, help="Nash-MD AdamW learning rate")
    args = p.parse_args(argv)
    for name, value in (TINY_DEFAULTS if args.tiny else GPU_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = set(args.sizes) - {"tiny", *SIZES} | set(args.workloads) - set(WORKLOADS)
    if bad:
        raise SystemExit(f"unknown sizes or workloads: {sorted(bad)}")
    return args


# ----------------------------------------------------------------------- accounting


def peak_bf16_tflops(device_kind: str):
    """The device's peak dense bf16 TFLOP/s, or None where it is not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_kind:
            return tflops
    return None


def train_flops(config, batch: int, input_len: int, target_len: int) -> float:
    """FLOPs of one training step of `EncoderDecoder(config)`; see FLOP_FORMULA."""
    d, f, v = config.emb_dim, config.mlp_dim, config.vocab_size
    hd = config.num_heads * config.head_dim
    mlp = len(config.mlp_activations) * d * f + f * d  # wi (one per activation) + wo
    enc_tokens, dec_tokens = batch * input_len, batch * target_len
    macs = config.num_encoder_layers * enc_tokens * (4 * d * hd + mlp)
    macs += config.num_decoder_layers * (dec_tokens * (6 * d * hd + mlp) + enc_tokens * 2 * d * hd)
    macs += dec_tokens * d * v
    attn = config.num_encoder_layers * 2 * input_len**2 * hd
    attn += config.num_decoder_layers * (2 * target_len**2 * hd / 2 + 2 * target_len * input_len * hd)
    return 3.0 * 2.0 * (macs + batch * attn)


class Clock:
    """Seconds since start, and whether `budget_s` has run out."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def out(self) -> bool:
        return self.elapsed() >= self.budget_s

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {message}", flush=True)


def _timed(fn, warmup: int, iters: int, clock: Clock) -> tuple[float, list[float]]:
    """(seconds of the warm-up calls, the timed calls' seconds); fn blocks until done."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(iters):
        if times and clock.out():
            break  # the budget is spent: keep what was measured
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return warmup_s, times


# -------------------------------------------------------------------------- workloads


def _t5_config(args, size: str):
    from nlhf_jax import testing
    from nlhf_jax.models import t5

    common = dict(dtype=args.dtype, param_dtype="float32", scan_layers=args.scan_layers,
                  remat_policy=args.remat_policy, dropout_rate=args.dropout_rate)
    if size == "tiny":
        return testing.tiny_t5_config(**common)
    return t5.T5Config(vocab_size=32128, mlp_activations=("gelu", "linear"),
                       logits_via_embedding=False, **SIZES[size], **common)


def _one_device_mesh():
    import jax

    from nlhf_jax import partitioning

    return partitioning.make_mesh(partitioning.MeshConfig(), devices=jax.devices()[:1])


def _init_params(config, mesh, rules):
    """Parameters initialised in place, as `trainer.init_train_state` does."""
    import jax

    from nlhf_jax import partitioning
    from nlhf_jax.models import t5

    network = t5.EncoderDecoder(config)
    init = lambda rng: t5.init_variables(network, rng)["params"]  # noqa: E731
    params, _ = partitioning.sharded_init(init, mesh, rules, jax.random.key(0))
    return network, params


def bench_train(args, config, clock: Clock) -> dict:
    import flax.linen as nn
    import jax

    from nlhf_jax import partitioning
    from nlhf_jax import steps
    from nlhf_jax import testing
    from nlhf_jax import train_state as train_state_lib
    from nlhf_jax import trainer
    from nlhf_jax.models import t5

    mesh, rules = _one_device_mesh(), partitioning.default_rules()
    network = t5.EncoderDecoder(config)
    optimizer = train_state_lib.OptimizerConfig()  # the project default: Adafactor
    tx = optimizer.build()
    init = lambda rng: t5.init_variables(network, rng)["params"]  # noqa: E731
    state, shardings, _ = trainer.init_train_state(init, tx, mesh, rules, jax.random.key(0))
    n_params = train_state_lib.param_count(state.params)
    step_fn = functools.partial(steps.sft_train_step, model=network, tx=tx,
                                learning_rate_fn=optimizer.schedule.build())
    b, k, n = args.train_batch, args.input_len, args.target_len
    targets = testing.random_tokens(1, b, n, config.vocab_size, min_length=n, append_eos=True)
    host_batch = {
        "encoder_input_tokens": testing.random_tokens(0, b, k, config.vocab_size, min_length=k),
        "decoder_input_tokens": np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], 1),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones((b, n), np.float32),
    }
    jitted = trainer.jit_step(step_fn, shardings, host_batch, mesh)
    batch = partitioning.host_local_batch_to_global(host_batch, mesh)
    rng = jax.random.key(0)
    holder = {"state": state}
    losses = []
    del state

    def call():
        holder["state"], metrics = jitted(holder["state"], batch, rng)
        losses.append(float(jax.block_until_ready(metrics["sft/loss"])))

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        warmup_s, times = _timed(call, args.warmup, args.iters, clock)
    del holder
    if not all(np.isfinite(losses)):
        raise FloatingPointError(f"non-finite SFT loss: {losses}")
    step_s = statistics.median(times)
    flops = train_flops(config, b, k, n)
    peak = peak_bf16_tflops(jax.devices()[0].device_kind) if jax.default_backend() == "gpu" else None
    return dict(value=b * (k + n) / step_s, unit="tokens/s", s_per_call=step_s, times=times,
                warmup_s=warmup_s, mfu=flops / step_s / (peak * 1e12) if peak else "n/a",
                tflop_per_step=flops / 1e12, achieved_tflops=flops / step_s / 1e12,
                params=n_params, loss_first_last=[losses[0], losses[-1]],
                notes=f"B {b} x ({k} + {n}) tokens, Adafactor, {n_params:,} params, "
                      f"{flops / 1e12:.3g} TFLOP/step")


def _sampling_config(args):
    from nlhf_jax import decoding

    # eos_id -1 never matches: every row makes decode_len tokens; padding allowed, as HF.
    return decoding.SamplingConfig(temperature=1.0, max_decode_len=args.decode_len, eos_id=-1,
                                   forbid_pad=False)


def _prompts(seed: int, batch: int, length: int, vocab_size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(nash_md_step.FIRST_WORD, vocab_size, size=(batch, length), dtype=np.int32)


def bench_sample_ours(args, config, clock: Clock, shared: dict) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from nlhf_jax import decoding
    from nlhf_jax import partitioning

    mesh, rules = _one_device_mesh(), partitioning.default_rules()
    network, params = _init_params(config, mesh, rules)
    shared["params"] = params  # the HF row converts these
    prompts = _prompts(2, args.sample_batch, args.prompt_len, config.vocab_size)
    generate = jax.jit(functools.partial(decoding.generate, network, cfg=_sampling_config(args)))
    enc = jnp.asarray(prompts)
    rngs = jax.random.split(jax.random.key(0), args.sample_batch)
    shapes = []

    def call():
        out = jax.block_until_ready(generate(params, enc, rngs))
        shapes.append(out.tokens.shape)

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        warmup_s, times = _timed(call, args.warmup, args.iters, clock)
    assert set(shapes) == {(args.sample_batch, args.decode_len)}, shapes
    s = statistics.median(times)
    return dict(value=args.sample_batch * args.decode_len / s, unit="generated tokens/s",
                s_per_call=s, times=times, warmup_s=warmup_s,
                notes=f"B {args.sample_batch}, prompt {args.prompt_len}, {args.decode_len} new "
                      f"tokens, {config.dtype} compute, float32 params")


def bench_sample_hf(args, config, clock: Clock, shared: dict) -> dict:
    """HF generate on the same weights; returns {"status": "skipped: ..."} where it cannot."""
    import jax

    try:
        import torch
        import transformers
    except ImportError as e:
        return {"status": f"skipped: torch/transformers not importable ({e})"}
    backend = jax.default_backend()
    if backend == "gpu":
        if not torch.cuda.is_available():
            return {"status": f"skipped: torch {torch.__version__} has no CUDA device"}
        device = "cuda"
    elif backend == "cpu":
        device = "cpu"
    else:
        return {"status": f"skipped: no torch device for the JAX backend {backend!r}"}
    if "params" not in shared:
        return {"status": "skipped: needs the sample_ours row's weights (run that workload too)"}

    from nlhf_jax.checkpoints import hf

    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32,
                   "float16": torch.float16}[config.dtype]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_t5(config, shared.pop("params"), directory)
        model = transformers.T5ForConditionalGeneration.from_pretrained(directory)
    model = model.to(device=device, dtype=torch_dtype).eval()
    convert_s = time.perf_counter() - start
    prompts = _prompts(2, args.sample_batch, args.prompt_len, config.vocab_size)
    t_enc = torch.tensor(prompts, dtype=torch.long, device=device)
    t_mask = torch.ones_like(t_enc)
    shapes = []

    def call():
        out = benchlib.hf_generate(model, t_enc, t_mask, args.decode_len)
        shapes.append(tuple(out.cpu().shape))  # the copy waits for the device

    warmup_s, times = _timed(call, args.warmup, args.iters, clock)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    # HF prepends the decoder start token.
    assert set(shapes) == {(args.sample_batch, args.decode_len + 1)}, shapes
    s = statistics.median(times)
    return dict(value=args.sample_batch * args.decode_len / s, unit="generated tokens/s",
                s_per_call=s, times=times, warmup_s=warmup_s,
                notes=f"torch {torch.__version__} on {device}, transformers "
                      f"{transformers.__version__}, {config.dtype} weights; conversion "
                      f"{convert_s:.0f} s")


def bench_nash_md(args, config, clock: Clock) -> dict:
    prompts = _prompts(3, args.nash_batch, args.prompt_len, config.vocab_size)
    nash_args = argparse.Namespace(mixture_coef=args.mixture_coef, tau=args.tau,
                                   new_tokens=args.new_tokens, lr=args.lr)
    iteration = nash_md_step._encdec_iteration(nash_args, config, prompts)
    runs = []
    warmup_s, times = _timed(lambda: runs.append(iteration()), args.warmup, args.iters, clock)
    timed_runs = runs[args.warmup:]
    s = statistics.median(r["total"] for r in timed_runs)
    total = sum(r["total"] for r in timed_runs)
    shares = ", ".join(f"{p} {100 * sum(r[p] for r in timed_runs) / total:.0f}%"
                       for p in nash_md_step.PHASES)
    return dict(value=args.nash_batch / s, unit="samples/s", s_per_call=s, times=times,
                warmup_s=warmup_s,
                notes=f"B {args.nash_batch} prompts of {args.prompt_len}, {args.new_tokens} new "
                      f"tokens for y and y' (beta {args.mixture_coef}), AdamW; {shares}")


# ------------------------------------------------------------------------------- main


def _environment(args, clock: Clock) -> dict:
    import flax
    import jax
    import jaxlib

    device = jax.devices()[0]
    peak = peak_bf16_tflops(device.device_kind) if jax.default_backend() == "gpu" else None
    return dict(
        backend=jax.default_backend(), device_kind=device.device_kind,
        device_count=jax.device_count(), peak_bf16_tflops=peak,
        cpu=benchlib.cpu_model(), cores=os.cpu_count(), load_start=benchlib.load(),
        versions=dict(python=platform.python_version(), jax=jax.__version__,
                      jaxlib=jaxlib.__version__,
                      flax=flax.__version__),
        flop_formula=FLOP_FORMULA, args={k: v for k, v in vars(args).items()},
        budget_s=clock.budget_s,
    )


def _table(rows: list[dict]) -> str:
    lines = ["| workload | size | throughput | unit | s/call | MFU | warm-up s | notes |",
             "|---|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['workload']} | {r['size']} | - | - | - | - | - | {r['status']} |")
            continue
        mfu = r.get("mfu", "-")
        mfu = f"{100 * mfu:.1f}%" if isinstance(mfu, float) else mfu
        lines.append(f"| {r['workload']} | {r['size']} | {r['value']:,.1f} | {r['unit']} | "
                     f"{r['s_per_call']:.4f} | {mfu} | {r['warmup_s']:.1f} | {r['notes']} |")
    return "\n".join(lines)


def _write(path, env: dict, rows: list[dict], clock: Clock) -> None:
    if not path:
        return
    tmp = f"{path}.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({**env, "rows": rows, "wall_s": clock.elapsed(), "load_now": benchlib.load()},
                  f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = _parse_args(argv)
    clock = Clock(args.budget_s)
    clock.log(f"importing jax (sizes {args.sizes}, workloads {args.workloads}, "
              f"budget {args.budget_s:.0f} s)")
    if args.tiny and "jax" not in sys.modules:
        # Toy models: compilation dominates, and LLVM's optimisation level (CPU only)
        # barely changes their run time (the test suite does the same). Before jax loads.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_backend_optimization_level=0").strip()
    import jax

    env = _environment(args, clock)
    clock.log(f"{env['backend']}: {jax.device_count()} x {env['device_kind']}; peak bf16 "
              f"{env['peak_bf16_tflops'] or 'n/a'} TFLOP/s; load {env['load_start']}")
    rows: list[dict] = []
    shared: dict = {}
    for workload in args.workloads:
        for size in args.sizes:
            row = {"workload": workload, "size": size}
            if clock.out():
                row["status"] = "skipped: budget"
                clock.log(f"{workload} {size}: skipped (budget of {args.budget_s:.0f} s spent)")
            else:
                clock.log(f"{workload} {size}: start")
                config = _t5_config(args, size)
                try:
                    if workload == "train":
                        result = bench_train(args, config, clock)
                    elif workload == "sample_ours":
                        result = bench_sample_ours(args, config, clock, shared.setdefault(size, {}))
                    elif workload == "sample_hf":
                        result = bench_sample_hf(args, config, clock, shared.setdefault(size, {}))
                    else:
                        result = bench_nash_md(args, config, clock)
                    row.update({"status": "ok", **result})
                except Exception as e:  # noqa: BLE001 - one failed row must not lose the others
                    traceback.print_exc()
                    row["status"] = f"failed: {type(e).__name__}: {str(e)[:300]}"
                if row["status"] == "ok":
                    clock.log(f"{workload} {size}: {row['value']:,.1f} {row['unit']} "
                              f"(warm-up {row['warmup_s']:.1f} s incl. compile, {len(row['times'])} timed)")
                else:
                    clock.log(f"{workload} {size}: {row['status']}")
            if workload == "sample_hf" or (workload == "sample_ours" and "sample_hf" not in args.workloads):
                shared.pop(size, None)  # free the weights kept for the conversion
            rows.append(row)
            _write(args.out, env, rows, clock)

    print(f"\n## GPU benchmark: {env['device_kind']} ({env['backend']}), jax {jax.__version__}\n")
    print(f"- load average at start {env['load_start']}, at end {benchlib.load()}; wall "
          f"{clock.elapsed():.0f} s of a {args.budget_s:.0f} s budget")
    print(f"- compute {args.dtype}, params float32, scan_layers {args.scan_layers}, remat "
          f"{args.remat_policy}, dropout {args.dropout_rate}; median of up to {args.iters} timed "
          f"calls after {args.warmup} warm-up call(s) (compilation excluded)")
    print(f"- MFU peak: {env['peak_bf16_tflops'] or 'n/a'} TFLOP/s dense bf16 for "
          f"{env['device_kind']!r}; FLOPs: {FLOP_FORMULA}\n")
    print(_table(rows))
    ours = {r["size"]: r for r in rows if r["workload"] == "sample_ours" and r["status"] == "ok"}
    for r in rows:
        if r["workload"] == "sample_hf" and r["status"] == "ok" and r["size"] in ours:
            print(f"\nsampling {r['size']}: ours / HF generate = "
                  f"{ours[r['size']]['value'] / r['value']:.2f}x")
    _write(args.out, env, rows, clock)
    return 1 if any(r["status"].startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
