"""Online policy optimisation: Nash-MD-PG, self-play, best response, Nash-EMA-PG, RLHF.

    nlhf train --gin_file=configs/experiments/world_nashmd.gin --gin.MODEL_DIR=\"runs/nashmd\"

One loop serves every algorithm (paper §7); they differ only in the alternative
response y' and in the signal:

| algorithm   | y' sampled from                                   | reward of y            |
|-------------|---------------------------------------------------|------------------------|
| nash_md     | token-level mixture (1-b) log pi_theta + b log mu | P(y > y' | x), base 1/2 |
| (self-play) | nash_md with b = 0: pi_theta itself               | same                   |
| (best resp.)| nash_md with b = 1: mu (the SFT policy)           | same                   |
| nash_ema    | pi_theta_bar, theta_bar <- b theta_bar + (1-b) theta | same                |
| rlhf        | (none)                                            | r(y), batch-mean base  |

Each step is four phases, each jitted separately with explicit shardings (tunix GRPO
structure): sample (y and y'), score (the judge, on host texts, so judges with their
own vocabulary re-tokenise), reference log-probs, update. Frozen models (mu, and the
judge's network) live outside the TrainState and are never updated.
"""

import dataclasses
import functools
import logging
import os
import time
from typing import Any, Optional, Sequence

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np

from nlhf_jax import checkpointing
from nlhf_jax import decoding
from nlhf_jax import input_pipeline
from nlhf_jax import metrics as metrics_lib
from nlhf_jax import partitioning
from nlhf_jax import policy
from nlhf_jax import steps
from nlhf_jax import train_state as train_state_lib
from nlhf_jax import trainer
from nlhf_jax.models import t5

ALGORITHMS = ("nash_md", "nash_ema", "rlhf")


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
    """start -> end linearly over `steps` optimizer steps, then constant (end=None: constant)."""

    start: float
    end: Optional[float] = None
    steps: int = 0

    def __call__(self, step):
        if self.end is None or self.steps <= 0:
            return jnp.float32(self.start)
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / self.steps, 0.0, 1.0)
        return jnp.float32(self.start) + frac * (self.end - self.start)


@dataclasses.dataclass(frozen=True)
class NashMDConfig:
    """Hyper-parameters of the online loop (paper defaults: tau 0.008, beta 0.125).

    Attributes:
      algorithm: "nash_md" (beta = 0: self-play, beta = 1: best response to mu),
        "nash_ema" or "rlhf".
      beta: mixture weight on mu (nash_md) or EMA decay (nash_ema); a float or a
        LinearSchedule indexed by step.
      tau: KL(pi || mu) coefficient; float or LinearSchedule.
      num_samples: responses per prompt (the batch holds batch_size prompts x this).
      temperature: sampling temperature; log-probs are those of the tempered policy.
      max_decode_len: response length cap.
      missing_eos_penalty: subtracted from the reward of a response without EOS.
      log_samples_every: write example completions every N steps (0 = never).
    """

    algorithm: str = "nash_md"
    beta: Any = 0.125
    tau: Any = 0.008
    num_samples: int = 1
    temperature: float = 1.0
    max_decode_len: int = 32
    missing_eos_penalty: float = 0.0
    log_samples_every: int = 50

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"NashMDConfig.algorithm={self.algorithm!r}; expected one of {ALGORITHMS}")
        if self.num_samples < 1:
            raise ValueError(f"NashMDConfig.num_samples must be >= 1, got {self.num_samples}")

    def schedule(self, value) -> LinearSchedule:
        return value if isinstance(value, LinearSchedule) else LinearSchedule(float(value))

    def sampling(self) -> decoding.SamplingConfig:
        return decoding.SamplingConfig(temperature=self.temperature, max_decode_len=self.max_decode_len)


@flax.struct.dataclass
class Rollout:
    """What the phases pass along for one step (B = prompts x samples per prompt).

    Attributes:
      prompts: int32 [B, K].
      tokens, lengths: y, int32 [B, L] / [B]; 0-padded after EOS.
      alt_tokens, alt_lengths: y' (same shapes); zeros for rlhf.
      has_eos: bool [B], whether y ended with EOS before the length cap.
    """

    prompts: jax.Array
    tokens: jax.Array
    lengths: jax.Array
    alt_tokens: jax.Array
    alt_lengths: jax.Array
    has_eos: jax.Array


def sample_phase(params, frozen, prompts, rng, beta, *, model, cfg: NashMDConfig) -> Rollout:
    """Phase 1: y ~ pi_theta and y' ~ the alternative (no gradient)."""
    scfg = cfg.sampling()
    b = prompts.shape[0]
    k_y, k_alt = jax.random.split(rng)
    y = policy.sample(model, params, prompts, jax.random.split(k_y, b), scfg)
    alt_keys = jax.random.split(k_alt, b)
    if cfg.algorithm == "nash_md":
        alt = policy.sample_mixture(model, params, frozen["reference"], prompts, alt_keys, beta, scfg)
    elif cfg.algorithm == "nash_ema":
        alt = policy.sample(model, frozen["ema"], prompts, alt_keys, scfg)
    else:
        alt = decoding.DecodeOutput(jnp.zeros_like(y.tokens), jnp.zeros_like(y.logprobs),
                                    jnp.zeros_like(y.lengths))
    last = jnp.take_along_axis(y.tokens, jnp.maximum(y.lengths - 1, 0)[:, None], axis=1)[:, 0]
    return Rollout(prompts, y.tokens, y.lengths, alt.tokens, alt.lengths, last == scfg.eos_id)


def reference_phase(reference_params, prompts, tokens, lengths, *, model, cfg: NashMDConfig):
    """Phase 3: log mu(y_n | x, y_<n) under the same temperature as pi. [B, L]"""
    return policy.token_logprobs(model, reference_params, prompts, tokens, lengths, cfg.sampling())


def _text(vocabulary, tokens, lengths) -> list[str]:
    from nlhf_jax.data import arrays

    return arrays.decode_tokens(vocabulary, np.asarray(tokens), np.asarray(lengths))


def train_policy(
    *,
    model_dir: str,
    sft_dir: str,
    prompts: input_pipeline.ArrayDataset,
    judge: Any,
    vocabulary: Any,
    loop: trainer.LoopConfig,
    nashmd: NashMDConfig = NashMDConfig(),
    optimizer: train_state_lib.OptimizerConfig = train_state_lib.OptimizerConfig(),
    mesh: partitioning.MeshConfig = partitioning.MeshConfig(),
    rules: Optional[Sequence] = None,
    checkpoint: checkpointing.CheckpointConfig = checkpointing.CheckpointConfig(),
    eval_fn: Any = None,
) -> trainer.LoopResult:
    """Trains a policy from the SFT run in `sft_dir` (also the frozen reference mu).

    Args:
      model_dir: this run's directory (checkpoints, metrics.jsonl, tb/, samples).
      sft_dir: a finished `nlhf train` SFT run: initial policy and reference.
      prompts: `arrays.prompt_dataset` (feature `prompts`; meta `posts`).
      judge: for nash_md / nash_ema an object with `prob(posts, ys, ys_alt)` or
        `preference(...)` (the world's raters); for rlhf one with
        `rewards(posts, ys)`.
      vocabulary: the policy's vocabulary (decodes samples for the judge).
      loop: steps, prompts per batch, seed, logging cadence.
      nashmd: the algorithm and its hyper-parameters.
      optimizer, mesh, rules, checkpoint: as for `nlhf train`.
      eval_fn: optional (params) -> dict of metrics, run every `loop.eval_every`.

    Returns:
      The final state and metrics (EMA runs also write `<model_dir>/ema`).
    """
    os.makedirs(model_dir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(model_dir, "config.gin"), "w", encoding="utf-8") as f:
            f.write(gin.config_str())
    rules = list(rules) if rules is not None else partitioning.default_rules()
    mesh_ = partitioning.make_mesh(mesh)
    config, network, ref_params = trainer.load_frozen(sft_dir, mesh_, rules)
    checkpointing.save_model_config(model_dir, config)
    tx = optimizer.build()
    init = lambda rng: t5.init_variables(network, rng)["params"]  # noqa: E731
    state, shardings, _ = trainer.init_train_state(init, tx, mesh_, rules, jax.random.key(loop.seed))
    ckpt_cfg = dataclasses.replace(checkpoint, initial_checkpoint=checkpoint.initial_checkpoint or sft_dir,
                                   restore_mode="params_only")
    ckpt = checkpointing.Checkpointer(model_dir, ckpt_cfg)
    state, how = trainer.restore_or_init(checkpointer=ckpt, state=state, shardings=shardings, tx=tx)
    logging.info("policy: %s", how)
    if state.params is ref_params:  # never alias the frozen reference
        raise AssertionError("policy and reference share buffers")

    beta_fn, tau_fn = nashmd.schedule(nashmd.beta), nashmd.schedule(nashmd.tau)
    frozen = {"reference": ref_params}
    ema_ckpt = None
    if nashmd.algorithm == "nash_ema":
        ema_ckpt = checkpointing.Checkpointer(os.path.join(model_dir, "ema"),
                                              dataclasses.replace(ckpt_cfg, initial_checkpoint=None))
        checkpointing.save_model_config(os.path.join(model_dir, "ema"), config)
        ema_state = train_state_lib.TrainState(step=state.step, params=state.params, opt_state={})
        ema_shard = train_state_lib.TrainState(step=shardings.step, params=shardings.params, opt_state={})
        restored = (ema_ckpt.restore_latest(ema_state, ema_shard, step=int(state.step))
                    if int(state.step) > 0 else None)
        # theta_bar_0 = theta_0 (the SFT parameters), App. F.3; copy, not alias.
        frozen["ema"] = (restored.params if restored is not None
                         else jax.jit(lambda p: jax.tree_util.tree_map(jnp.copy, p),
                                      out_shardings=shardings.params)(state.params))

    scfg = nashmd.sampling()
    step_cfg = steps.PolicyStepConfig(temperature=scfg.temperature, forbid_pad=scfg.forbid_pad,
                                      baseline="batch_mean" if nashmd.algorithm == "rlhf" else 0.5)
    rep = partitioning.replicated(mesh_)
    bsh = lambda nd: partitioning.batch_sharding(mesh_, nd)  # noqa: E731
    frozen_sh = {"reference": shardings.params}
    if "ema" in frozen:
        frozen_sh["ema"] = shardings.params
    rollout_sh = Rollout(bsh(2), bsh(2), bsh(1), bsh(2), bsh(1), bsh(1))
    jit_sample = jax.jit(functools.partial(sample_phase, model=network, cfg=nashmd),
                         in_shardings=(shardings.params, frozen_sh, bsh(2), rep, rep),
                         out_shardings=rollout_sh)
    jit_ref = jax.jit(functools.partial(reference_phase, model=network, cfg=nashmd),
                      in_shardings=(shardings.params, bsh(2), bsh(2), bsh(1)), out_shardings=bsh(2))
    update = functools.partial(steps.policy_update_step, model=network, tx=tx, cfg=step_cfg,
                               learning_rate_fn=optimizer.schedule.build())
    batch_example = {"prompts": np.zeros((1, 1), np.int32), "tokens": np.zeros((1, 1), np.int32),
                     "lengths": np.zeros((1,), np.int32), "reward": np.zeros((1,), np.float32),
                     "reference_logps": np.zeros((1, 1), np.float32), "tau": np.zeros((1,), np.float32),
                     "example_weights": np.zeros((1,), np.float32)}
    jit_update = trainer.jit_step(update, shardings, batch_example, mesh_)
    jit_ema = jax.jit(steps.ema_update, in_shardings=(shardings.params, shardings.params, rep),
                      out_shardings=shardings.params, donate_argnums=0)

    base_rng = jax.random.key(loop.seed)
    n_rows = loop.batch_size * nashmd.num_samples

    def step_fn(state, step):
        """One online step: sample, score, reference, update (and the EMA)."""
        t0 = time.perf_counter()
        rng = jax.random.fold_in(base_rng, step)
        idx = prompts.indices(step, loop.batch_size, loop.seed)
        idx = np.repeat(idx, nashmd.num_samples)
        posts = [prompts.meta["posts"][i] for i in idx]
        prompt_ids = partitioning.host_local_batch_to_global(
            {"p": prompts.features["prompts"][idx]}, mesh_)["p"]
        beta = beta_fn(step)
        roll = jax.device_get(jit_sample(state.params, frozen, prompt_ids, jax.random.fold_in(rng, 0), beta))
        t1 = time.perf_counter()
        ys = _text(vocabulary, roll.tokens, roll.lengths)
        ys_alt = None
        if nashmd.algorithm == "rlhf":
            reward = np.asarray(judge.rewards(posts, ys), np.float32)
            pref = None
        else:
            ys_alt = _text(vocabulary, roll.alt_tokens, roll.alt_lengths)
            fn = getattr(judge, "prob", None) or judge.preference
            pref = np.asarray(fn(posts, ys, ys_alt), np.float32)
            reward = pref.copy()
        reward = reward - nashmd.missing_eos_penalty * (~np.asarray(roll.has_eos)).astype(np.float32)
        t2 = time.perf_counter()
        ref_lp = jit_ref(frozen["reference"], roll.prompts, roll.tokens, roll.lengths)
        batch = partitioning.host_local_batch_to_global({
            "prompts": np.asarray(roll.prompts), "tokens": np.asarray(roll.tokens),
            "lengths": np.asarray(roll.lengths), "reward": reward,
            "reference_logps": np.asarray(jax.device_get(ref_lp)),
            "tau": np.full((n_rows,), float(tau_fn(step)), np.float32),
            "example_weights": np.ones((n_rows,), np.float32),
        }, mesh_)
        t3 = time.perf_counter()
        state, metrics = jit_update(state, batch, rng)
        if "ema" in frozen:
            frozen["ema"] = jit_ema(frozen["ema"], state.params, beta)
        metrics = jax.device_get(metrics)
        t4 = time.perf_counter()
        metrics.update({
            "nashmd/beta": float(beta), "nashmd/tau": float(tau_fn(step)),
            "rollout/eos_rate": float(np.mean(roll.has_eos)),
            "rollout/length": float(np.mean(roll.lengths)),
            "time/sample_s": t1 - t0, "time/score_s": t2 - t1,
            "time/reference_s": t3 - t2, "time/update_s": t4 - t3,
            "perf/samples_per_s": n_rows / max(t4 - t0, 1e-9),
        })
        if pref is not None:
            metrics["nashmd/pref_vs_alt"] = float(pref.mean())
            metrics["rollout/alt_length"] = float(np.mean(roll.alt_lengths))
        texts = None
        if nashmd.log_samples_every and (step + 1) % nashmd.log_samples_every == 0:
            texts = {"samples/post": posts[0][:300], "samples/y": ys[0]}
            if ys_alt is not None:
                texts["samples/y_alt"] = ys_alt[0]
        return state, metrics, texts

    current = {"state": state}
    companions = []
    if ema_ckpt is not None:
        companions.append(trainer.Companion(ema_ckpt, lambda: train_state_lib.TrainState(
            step=current["state"].step, params=frozen["ema"], opt_state={})))

    def tracked_step_fn(state, step):  # the EMA companion is saved at the state's step
        state, metrics, texts = step_fn(state, step)
        current["state"] = state
        return state, metrics, texts

    writer = metrics_lib.MetricWriter(model_dir)
    try:
        return trainer.run_loop(
            state=state, step_fn=tracked_step_fn, loop=loop, mesh=mesh_, rules=rules,
            checkpointer=ckpt, writer=writer, eval_fn=eval_fn, desc=nashmd.algorithm,
            companions=companions, progress_keys=("policy/reward", "policy/kl_ref"),
        )
    finally:
        writer.close()
        ckpt.close()
        if ema_ckpt is not None:
            ema_ckpt.close()
