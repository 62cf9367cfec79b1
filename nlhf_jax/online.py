"""Online policy optimisation (paper §7): Nash-MD-PG, self-play, best response,
Nash-EMA-PG and RLHF, as four jitted phases and one step callback for the loop; and,
beyond the paper, online IPO and IPO-MD (Calandriello et al. 2024).

One step serves every algorithm; they differ only in where y and y' are sampled from
and in the signal:

| algorithm   | y' sampled from                                   | reward of y            |
|-------------|---------------------------------------------------|------------------------|
| nash_md     | token-level mixture (1-b) log pi_theta + b log mu | P(y > y' | x), base 1/2 |
| (self-play) | nash_md with b = 0: pi_theta itself               | same                   |
| (best resp.)| nash_md with b = 1: mu (the SFT policy)           | same                   |
| nash_ema    | pi_theta_bar, theta_bar <- b theta_bar + (1-b) theta | same                |
| rlhf        | (none)                                            | r(y), batch-mean base  |
| online_ipo  | y and y' both from pi_theta                       | IPO loss on (y, y', p) |
| ipo_md      | y and y' both from the nash_md mixture            | IPO loss on (y, y', p) |

The IPO rows replace the policy-gradient surrogate by the squared loss
(log pi/mu(y) - log pi/mu(y') - (p - 1/2) / tau)^2 (`losses.ipo_loss`), with the
reference log-probs of both responses; their tabular counterparts
(`tabular.solvers.online_ipo`, `ipo_md`) show online IPO's fixed point is the
regularised Nash equilibrium pi*_tau and IPO-MD's that of constant-step Nash-MD with
eta tau = beta.

Phases (tunix GRPO structure), each jitted with explicit shardings (`Phases`):
sample (y and y'), score (host side: the judge may re-tokenise text), reference
log-probs, update (and the EMA). `step_fn` strings them into the loop's
`(state, step) -> (state, metrics, texts)` callback; `runs` and the benchmark both use
it, so what is benchmarked is what trains. Frozen models (mu, the EMA parameters) live
outside the TrainState and are never updated by the optimizer.

Many hosts: the sample, reference and update phases are global computations over the
mesh (each host's devices decode their rows of the global batch). Every host holds the
step's whole prompt batch (`PromptsFn`, cheap and deterministic), all-gathers the
rollout (`partitioning.fetch_global`: token ids, a few KB per row) and scores all of
it, so host-side judges and sample metrics see exactly what one host would, and a
model judge's jitted forward pass is again one global computation; the scored batch
goes back to the devices by global index (`partitioning.global_batch_to_device`). P
processes x D devices therefore train exactly like one process x P*D devices (tested
in tests/multiprocess_policy_test.py). The cost of this choice is host-side work
repeated on every host (decoding and, for model judges, re-tokenising the batch).
"""

import dataclasses
import functools
import time
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nlhf_jax import decoding
from nlhf_jax import partitioning
from nlhf_jax import policy
from nlhf_jax import steps
from nlhf_jax import train_state as train_state_lib
from nlhf_jax import trainer

ALGORITHMS = ("nash_md", "nash_ema", "rlhf", "online_ipo", "ipo_md")
# Both responses from one distribution rho, the IPO loss on the pair (y, y').
IPO_ALGORITHMS = ("online_ipo", "ipo_md")


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
        "nash_ema", "rlhf", "online_ipo" or "ipo_md" (ipo_md with beta = 0 samples
        like online_ipo).
      beta: mixture weight on mu (nash_md, ipo_md) or EMA decay (nash_ema); a float
        or a LinearSchedule indexed by step. Unused by rlhf and online_ipo.
      tau: KL(pi || mu) coefficient; float or LinearSchedule.
      num_samples: responses per prompt (the batch holds batch_size prompts x this).
      temperature: sampling temperature; log-probs are those of the tempered policy.
      max_decode_len: response length cap.
      missing_eos_penalty: subtracted from the reward of a response without EOS.
      log_samples_every: write example completions every N steps (0 = never).
      mixture: nash_md's alternative: "token" (the paper's token-level mixture, App.
        F.1) or "sequence" (the sequence-level mixture pi^(1-beta) mu^beta / Z that
        Nash-MD's theory uses, §6 eq. 3, approximated by sampling-importance-resampling
        from `mixture_candidates` token-level draws: `_sequence_mixture`). Needs
        temperature 1.
      mixture_candidates: token-level draws per y' for mixture="sequence".
    """

    algorithm: str = "nash_md"
    beta: Any = 0.125
    tau: Any = 0.008
    num_samples: int = 1
    temperature: float = 1.0
    max_decode_len: int = 32
    missing_eos_penalty: float = 0.0
    log_samples_every: int = 50
    mixture: str = "token"
    mixture_candidates: int = 4

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"NashMDConfig.algorithm={self.algorithm!r}; expected one of {ALGORITHMS}")
        if self.num_samples < 1:
            raise ValueError(f"NashMDConfig.num_samples must be >= 1, got {self.num_samples}")
        if self.mixture not in ("token", "sequence"):
            raise ValueError(f"NashMDConfig.mixture={self.mixture!r}; expected 'token' or 'sequence'")
        if self.mixture == "sequence":
            if self.algorithm != "nash_md":
                raise ValueError(f"NashMDConfig.mixture='sequence' is for nash_md, not {self.algorithm!r}")
            if self.temperature != 1.0:
                raise ValueError("NashMDConfig.mixture='sequence' needs temperature 1.0 (the importance "
                                 f"weights are those of the untempered mixture), got {self.temperature}")
            if self.mixture_candidates < 1:
                raise ValueError(f"NashMDConfig.mixture_candidates must be >= 1, got {self.mixture_candidates}")

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
      alt_tokens, alt_lengths: y' (same shapes); zeros for rlhf. For online_ipo and
        ipo_md, y and y' are two independent draws from the same distribution.
      has_eos: bool [B], whether y ended with EOS before the length cap.
      alt_ess: float32 [B], mixture="sequence" only: the effective sample size of the
        importance weights over y''s candidates, as a fraction of them (1: the token-
        and sequence-level mixtures agree on them); None otherwise.
    """

    prompts: jax.Array
    tokens: jax.Array
    lengths: jax.Array
    alt_tokens: jax.Array
    alt_lengths: jax.Array
    has_eos: jax.Array
    alt_ess: Optional[jax.Array] = None


def sample_phase(params, frozen, prompts, rng, beta, *, model, cfg: NashMDConfig) -> Rollout:
    """Phase 1: y ~ pi_theta and y' ~ the alternative (no gradient); for online_ipo and
    ipo_md, y and y' ~ rho independently (`_sample_pair`)."""
    scfg = cfg.sampling()
    b = prompts.shape[0]
    k_y, k_alt = jax.random.split(rng)
    if cfg.algorithm in IPO_ALGORITHMS:
        y, alt = _sample_pair(params, frozen, prompts, (k_y, k_alt), beta, model=model, cfg=cfg)
        return Rollout(prompts, y.tokens, y.lengths, alt.tokens, alt.lengths,
                       _ends_with_eos(y.tokens, y.lengths, scfg.eos_id))
    y = policy.sample(model, params, prompts, jax.random.split(k_y, b), scfg)
    alt_keys = jax.random.split(k_alt, b)
    if cfg.algorithm == "nash_md" and cfg.mixture == "sequence":
        alt, ess = _sequence_mixture(params, frozen["reference"], prompts, k_alt, beta, model=model, cfg=cfg)
        return Rollout(prompts, y.tokens, y.lengths, alt.tokens, alt.lengths,
                       _ends_with_eos(y.tokens, y.lengths, scfg.eos_id), ess)
    if cfg.algorithm == "nash_md":
        alt = policy.sample_mixture(model, params, frozen["reference"], prompts, alt_keys, beta, scfg)
    elif cfg.algorithm == "nash_ema":
        alt = policy.sample(model, frozen["ema"], prompts, alt_keys, scfg)
    else:
        alt = decoding.DecodeOutput(jnp.zeros_like(y.tokens), jnp.zeros_like(y.logprobs),
                                    jnp.zeros_like(y.lengths))
    return Rollout(prompts, y.tokens, y.lengths, alt.tokens, alt.lengths,
                   _ends_with_eos(y.tokens, y.lengths, scfg.eos_id))


def _sample_pair(params, frozen, prompts, keys, beta, *, model, cfg: NashMDConfig):
    """y, y' ~ rho independently: rho = pi_theta (online IPO) or the token-level
    mixture (1 - beta) log pi_theta + beta log mu that Nash-MD-PG plays against
    (IPO-MD, Calandriello et al. 2024; `tabular.solvers._ipo_log_rho`). One decode of
    2B rows (y's keys, then y''s) rather than two of B. No gradient flows through
    rho: the samples are data to the update (sg(rho) in `losses.ipo_loss`)."""
    scfg = cfg.sampling()
    b = prompts.shape[0]
    both = jnp.concatenate([prompts, prompts])
    rngs = jnp.concatenate([jax.random.split(k, b) for k in keys])
    if cfg.algorithm == "ipo_md":
        out = policy.sample_mixture(model, params, frozen["reference"], both, rngs, beta, scfg)
    else:
        out = policy.sample(model, params, both, rngs, scfg)
    half = lambda lo: decoding.DecodeOutput(out.tokens[lo:lo + b], out.logprobs[lo:lo + b],  # noqa: E731
                                            out.lengths[lo:lo + b])
    return half(0), half(b)


def _sequence_mixture(params, reference_params, prompts, rng, beta, *, model, cfg: NashMDConfig):
    """y' ~ the sequence-level mixture pi^(1-beta) mu^beta / Z, approximately, by
    sampling-importance-resampling (SIR) from the token-level mixture q.

    K = `mixture_candidates` draws y_1..y_K ~ q per row; each carries the importance
    weight w(y) = pi(y)^(1-beta) mu(y)^beta / q(y) (Z cancels when self-normalised),
    which is exactly prod_n C_n(y_<n), the product of q's per-token normalisers
    (`evaluation.mixture_study`). One candidate is drawn with probability
    w_k / sum_j w_j. As K grows the pick's law tends to the sequence-level mixture; at
    K = 1, or at beta in {0, 1} where all weights are 1, it is q itself.

    The sequence log-probs are teacher forced (`mixture_log_weights`, temperature 1),
    log q is the sampler's own per-token log-probs summed.

    Returns:
      (DecodeOutput of the picks [B, L], the weights' effective sample size
      (sum w)^2 / sum w^2 / K, float32 [B]).
    """
    scfg = cfg.sampling()
    b, k = prompts.shape[0], cfg.mixture_candidates
    rows = jnp.repeat(prompts, k, axis=0)  # candidate j of row i is row i * k + j
    k_draw, k_pick = jax.random.split(rng)
    cand = policy.sample_mixture(model, params, reference_params, rows, jax.random.split(k_draw, b * k),
                                 beta, scfg)
    log_w = mixture_log_weights(model, params, reference_params, rows, cand, beta, scfg).reshape(b, k)
    pick = jax.random.categorical(k_pick, log_w, axis=-1)  # [B]
    chosen = jnp.arange(b) * k + pick
    w = jax.nn.softmax(log_w, axis=-1)
    ess = 1.0 / jnp.sum(w * w, axis=-1) / k
    out = decoding.DecodeOutput(cand.tokens[chosen], cand.logprobs[chosen], cand.lengths[chosen])
    return out, ess.astype(jnp.float32)


def mixture_log_weights(model, params, reference_params, prompts, draws: decoding.DecodeOutput, beta,
                        scfg: decoding.SamplingConfig):
    """log w(y) = (1 - beta) log pi(y) + beta log mu(y) - log q(y) of token-level mixture
    draws y ~ q (`policy.sample_mixture`): the importance weight towards the
    sequence-level mixture, up to its constant log Z. Equal to sum_n log C_n(y_<n), the
    per-token normalisers of q (tested against them). Temperature 1.

    Args:
      prompts: int [N, K]; draws: the sampler's output for them ([N, L]).

    Returns:
      float32 [N].
    """
    beta = jnp.asarray(beta, jnp.float32)
    lp_pi = policy.token_logprobs(model, params, prompts, draws.tokens, draws.lengths, scfg).sum(-1)
    lp_mu = policy.token_logprobs(model, reference_params, prompts, draws.tokens, draws.lengths, scfg).sum(-1)
    return (1.0 - beta) * lp_pi + beta * lp_mu - draws.logprobs.sum(-1)


def _ends_with_eos(tokens, lengths, eos_id):
    """bool [B]: the last generated token is EOS (not cut at the length cap)."""
    last = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
    return last == eos_id


def reference_phase(reference_params, prompts, tokens, lengths, *, model, cfg: NashMDConfig):
    """Phase 3: log mu(y_n | x, y_<n) under the same temperature as pi. [B, L]"""
    return policy.token_logprobs(model, reference_params, prompts, tokens, lengths, cfg.sampling())


@dataclasses.dataclass(frozen=True)
class Phases:
    """The jitted phases of one online step, with the shardings of their inputs.

    Attributes:
      sample: (params, frozen, prompts [B, K], rng, beta) -> Rollout.
      reference: (reference params, prompts, tokens [B, L], lengths [B]) -> log mu [B, L].
      update: (state, batch, rng) -> (state, metrics); the state is donated. The
        policy-gradient step, or for online_ipo / ipo_md `steps.ipo_update_step`.
      ema: (ema params, params, beta) -> ema params (donated); Nash-EMA only.
    """

    sample: Callable
    reference: Callable
    update: Callable
    ema: Optional[Callable]
    mesh: jax.sharding.Mesh


def make_phases(
    network: Any,
    tx: optax.GradientTransformation,
    learning_rate_fn: Callable,
    nashmd: NashMDConfig,
    shardings: train_state_lib.TrainState,
    mesh: jax.sharding.Mesh,
) -> Phases:
    """Jits the phases for `network` with the train state's `shardings`."""
    scfg = nashmd.sampling()
    step_cfg = steps.PolicyStepConfig(temperature=scfg.temperature, forbid_pad=scfg.forbid_pad,
                                      baseline="batch_mean" if nashmd.algorithm == "rlhf" else 0.5)
    rep = partitioning.replicated(mesh)
    bsh = lambda nd: partitioning.batch_sharding(mesh, nd)  # noqa: E731
    frozen_sh = {"reference": shardings.params}
    if nashmd.algorithm == "nash_ema":
        frozen_sh["ema"] = shardings.params
    rollout_sh = Rollout(bsh(2), bsh(2), bsh(1), bsh(2), bsh(1), bsh(1),
                         bsh(1) if nashmd.mixture == "sequence" else None)
    sample = jax.jit(functools.partial(sample_phase, model=network, cfg=nashmd),
                     in_shardings=(shardings.params, frozen_sh, bsh(2), rep, rep),
                     out_shardings=rollout_sh)
    reference = jax.jit(functools.partial(reference_phase, model=network, cfg=nashmd),
                        in_shardings=(shardings.params, bsh(2), bsh(2), bsh(1)), out_shardings=bsh(2))
    update = functools.partial(steps.policy_update_step, model=network, tx=tx, cfg=step_cfg,
                               learning_rate_fn=learning_rate_fn)
    batch_example = {"prompts": np.zeros((1, 1), np.int32), "tokens": np.zeros((1, 1), np.int32),
                     "lengths": np.zeros((1,), np.int32), "reward": np.zeros((1,), np.float32),
                     "reference_logps": np.zeros((1, 1), np.float32), "tau": np.zeros((1,), np.float32),
                     "example_weights": np.zeros((1,), np.float32)}
    if nashmd.algorithm in IPO_ALGORITHMS:
        update = functools.partial(steps.ipo_update_step, model=network, tx=tx, cfg=step_cfg,
                                   on_policy=nashmd.algorithm == "online_ipo",
                                   learning_rate_fn=learning_rate_fn)
        del batch_example["reward"]
        batch_example.update({"alt_tokens": np.zeros((1, 1), np.int32), "alt_lengths": np.zeros((1,), np.int32),
                              "alt_reference_logps": np.zeros((1, 1), np.float32),
                              "pref": np.zeros((1,), np.float32)})
    ema = None
    if nashmd.algorithm == "nash_ema":
        ema = jax.jit(steps.ema_update, in_shardings=(shardings.params, shardings.params, rep),
                      out_shardings=shardings.params, donate_argnums=0)
    return Phases(sample, reference, trainer.jit_step(update, shardings, batch_example, mesh), ema, mesh)


# (step) -> (the step's whole global batch on every host: prompt ids int32 [B, K], the
#  prompts' texts or None)
PromptsFn = Callable[[int], tuple[np.ndarray, Optional[list]]]
# (the whole rollout on the host, prompt texts) -> (reward float32 [B], P(y > y') [B] or None,
#  metrics of the samples {name: float} (logged every step; {} for none), example texts
#  {"samples/...": str} or None (logged every `log_samples_every` steps))
ScoreFn = Callable[[Rollout, Optional[list]],
                   tuple[np.ndarray, Optional[np.ndarray], dict, Optional[dict]]]


def step_fn(
    phases: Phases,
    frozen: dict,
    nashmd: NashMDConfig,
    *,
    prompts_fn: PromptsFn,
    score_fn: ScoreFn,
    seed: int,
) -> trainer.StepFn:
    """The loop's step callback: sample, score, reference, update (and the EMA).

    Args:
      phases: from `make_phases`.
      frozen: {"reference": mu's params, and "ema": theta_bar for Nash-EMA}; the EMA
        entry is replaced after every update (App. F.3).
      nashmd: beta and tau schedules, the EOS penalty.
      prompts_fn: this step's prompts (B rows, already repeated per sample).
      score_fn: the judge on this step's rollout (see `ScoreFn`).
      seed: the run's seed; step s uses fold_in(key(seed), s).

    Metrics: the update's, plus beta, tau, rollout lengths and EOS rate, the preference
    against y' (not for RLHF), the score callback's sample metrics, and seconds per
    phase (`time/*`).

    For online_ipo / ipo_md the judge's P(y > y') is the IPO target and the reference
    log-probs are taken for both responses (`_ipo_batch`).
    """
    base_rng = jax.random.key(seed)
    beta_fn, tau_fn = nashmd.schedule(nashmd.beta), nashmd.schedule(nashmd.tau)

    def fn(state, step):
        t0 = time.perf_counter()
        rng = jax.random.fold_in(base_rng, step)
        prompt_ids, prompt_texts = prompts_fn(step)
        n_rows = prompt_ids.shape[0]
        prompt_ids = partitioning.put_global(prompt_ids, partitioning.batch_sharding(phases.mesh, 2))
        beta = beta_fn(step)
        roll_dev = phases.sample(state.params, frozen, prompt_ids, jax.random.fold_in(rng, 0), beta)
        roll = partitioning.fetch_global(roll_dev)  # the whole rollout, on every host
        t1 = time.perf_counter()
        reward, pref, sample_metrics, texts = score_fn(roll, prompt_texts)
        if nashmd.algorithm in IPO_ALGORITHMS:
            t2 = time.perf_counter()
            host, alt_eos = _ipo_batch(phases, frozen, roll_dev, roll, pref, nashmd)
        else:
            reward = reward - nashmd.missing_eos_penalty * (~np.asarray(roll.has_eos)).astype(np.float32)
            t2 = time.perf_counter()
            ref_lp = phases.reference(frozen["reference"], roll_dev.prompts, roll_dev.tokens, roll_dev.lengths)
            host = {
                "prompts": np.asarray(roll.prompts), "tokens": np.asarray(roll.tokens),
                "lengths": np.asarray(roll.lengths), "reward": np.asarray(reward, np.float32),
                "reference_logps": np.asarray(partitioning.fetch_global(ref_lp)),
            }
        host["tau"] = np.full((n_rows,), float(tau_fn(step)), np.float32)
        host["example_weights"] = np.ones((n_rows,), np.float32)
        batch = partitioning.global_batch_to_device(host, phases.mesh)
        t3 = time.perf_counter()
        state, metrics = phases.update(state, batch, rng)
        if phases.ema is not None:
            frozen["ema"] = phases.ema(frozen["ema"], state.params, beta)
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
        metrics.update(sample_metrics)
        if pref is not None:
            metrics["nashmd/pref_vs_alt"] = float(np.mean(pref))
            metrics["rollout/alt_length"] = float(np.mean(roll.alt_lengths))
        if nashmd.algorithm in IPO_ALGORITHMS:
            metrics["rollout/alt_eos_rate"] = float(np.mean(alt_eos))
        if roll.alt_ess is not None:
            metrics["nashmd/mixture_ess"] = float(np.mean(roll.alt_ess))
        if not (nashmd.log_samples_every and (step + 1) % nashmd.log_samples_every == 0):
            texts = None
        return state, metrics, texts

    return fn


def _ipo_batch(phases: Phases, frozen: dict, roll_dev: Rollout, roll: Rollout, pref: np.ndarray,
               nashmd: NashMDConfig) -> tuple[dict, np.ndarray]:
    """The host batch of an IPO update (`steps.ipo_loss_fn`), without tau and weights.

    `roll_dev` is the sample phase's (global) output, `roll` its host copy.

    The reference phase runs once for y and once for y' (the same jitted function,
    same shapes). The EOS penalty enters antisymmetrically, p - c [y has no EOS] +
    c [y' has no EOS], so the target stays antisymmetric under swapping y and y'.

    Returns:
      (batch dict, whether y' ended with EOS: bool [B]).
    """
    if pref is None:
        raise ValueError(f"{nashmd.algorithm}: the judge returned no preference P(y > y')")
    eos_id = nashmd.sampling().eos_id
    alt_tokens, alt_lengths = np.asarray(roll.alt_tokens), np.asarray(roll.alt_lengths)
    alt_eos = np.take_along_axis(alt_tokens, np.maximum(alt_lengths - 1, 0)[:, None], axis=1)[:, 0] == eos_id
    c = nashmd.missing_eos_penalty
    pref = (np.asarray(pref, np.float32) - c * (~np.asarray(roll.has_eos)).astype(np.float32)
            + c * (~alt_eos).astype(np.float32))
    ref_lp = phases.reference(frozen["reference"], roll_dev.prompts, roll_dev.tokens, roll_dev.lengths)
    alt_ref_lp = phases.reference(frozen["reference"], roll_dev.prompts, roll_dev.alt_tokens,
                                  roll_dev.alt_lengths)
    batch = {
        "prompts": np.asarray(roll.prompts), "tokens": np.asarray(roll.tokens),
        "lengths": np.asarray(roll.lengths), "alt_tokens": alt_tokens, "alt_lengths": alt_lengths,
        "pref": pref.astype(np.float32),
        "reference_logps": np.asarray(partitioning.fetch_global(ref_lp)),
        "alt_reference_logps": np.asarray(partitioning.fetch_global(alt_ref_lp)),
    }
    return batch, alt_eos
