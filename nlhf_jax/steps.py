"""Pure, jittable training steps: `(state, batch, rng) -> (state, metrics)`.

Statics (the model, the optax transformation, a frozen config) are keyword-only and
bound with `functools.partial` before `jax.jit`; the run files jit each step once with
explicit in/out shardings and donate the state.

A step is "compute grads" (`accumulate_grads`, optionally over microbatches) then
"apply grads" (`apply_grads`), as in T5X's trainer, so a new loss only supplies a
`loss_fn(params, batch, rng) -> (loss_sum, aux)` whose `aux["weight"]` is the
normaliser. Dividing summed numerators by summed weights once, at the end, makes
microbatched gradients equal full-batch ones.
"""

import dataclasses
import functools
from typing import Callable, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from nlhf_jax import decoding
from nlhf_jax import losses
from nlhf_jax import policy as policy_lib
from nlhf_jax import train_state as train_state_lib
from nlhf_jax import types

Array = types.Array
PyTree = types.PyTree
Batch = Mapping[str, Array]
Metrics = dict[str, Array]
LossFn = Callable[[PyTree, Batch, Array], tuple[Array, dict[str, Array]]]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Settings of a supervised step.

    Attributes:
      num_microbatches: split the batch into this many sequential microbatches (the
        batch size must be divisible by it); 1 = no accumulation.
      z_loss: coefficient of the log(Z)^2 auxiliary loss (SFT).
    """

    num_microbatches: int = 1
    z_loss: float = 0.0


def _split_microbatches(batch: Batch, num: int) -> Batch:
    """[B, ...] -> [num, B / num, ...], microbatch m taking rows m, m + num, ...

    Taking strided rows keeps every device's rows on that device when the batch is
    sharded along its leading axis.
    """

    def one(x):
        if x.shape[0] % num:
            raise ValueError(
                f"batch size {x.shape[0]} is not divisible by num_microbatches={num}"
            )
        x = x.reshape((x.shape[0] // num, num) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree_util.tree_map(one, batch)


def accumulate_grads(
    loss_fn: LossFn, params: PyTree, batch: Batch, rng: Array, num_microbatches: int = 1
) -> tuple[Array, PyTree, dict[str, Array]]:
    """Summed loss, gradients and aux over (micro)batches.

    Args:
      loss_fn: (params, batch, rng) -> (loss_sum, aux); aux values are summed.
      params: the parameters to differentiate.
      batch: dict of arrays [B, ...].
      rng: PRNG key (folded with the microbatch index).
      num_microbatches: see StepConfig.

    Returns:
      (loss_sum, grads of loss_sum, aux sums).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_microbatches <= 1:
        (loss, aux), grads = grad_fn(params, batch, rng)
        return loss, grads, aux

    micro = _split_microbatches(batch, num_microbatches)

    def body(carry, xs):
        loss_acc, grads_acc, aux_acc = carry
        index, mb = xs
        (loss, aux), grads = grad_fn(params, mb, jax.random.fold_in(rng, index))
        add = lambda a, b: jax.tree_util.tree_map(jnp.add, a, b)  # noqa: E731
        return (loss_acc + loss, add(grads_acc, grads), add(aux_acc, aux)), None

    first = jax.tree_util.tree_map(lambda x: x[0], micro)
    (_, aux_shape), _ = jax.eval_shape(grad_fn, params, first, rng)
    init = (
        jnp.zeros((), jnp.float32),
        jax.tree_util.tree_map(jnp.zeros_like, params),
        jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape),
    )
    (loss, grads, aux), _ = jax.lax.scan(
        body, init, (jnp.arange(num_microbatches), micro)
    )
    return loss, grads, aux


def apply_grads(
    state: train_state_lib.TrainState,
    grads: PyTree,
    tx: optax.GradientTransformation,
) -> tuple[train_state_lib.TrainState, Metrics]:
    """One optimizer update, with the norms every run logs."""
    new_state = state.apply_gradients(grads, tx)
    metrics = {
        "opt/grad_norm": optax.global_norm(grads),
        "opt/param_norm": optax.global_norm(new_state.params),
        "opt/update_norm": optax.global_norm(
            jax.tree_util.tree_map(jnp.subtract, new_state.params, state.params)
        ),
    }
    return new_state, metrics


def normalised_step(
    state: train_state_lib.TrainState,
    batch: Batch,
    rng: Array,
    *,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    num_microbatches: int = 1,
    prefix: str,
    learning_rate_fn: Optional[Callable[[Array], Array]] = None,
) -> tuple[train_state_lib.TrainState, Metrics]:
    """The generic training step: grads of loss_sum / weight, then one update.

    (Not `policy.log_prob_step`, which wraps a sampling step.)

    Args:
      state: the train state (donated by the caller's jit).
      batch: dict of arrays [B, ...].
      rng: the run's base key; the step key is fold_in(rng, state.step).
      loss_fn: see `accumulate_grads`; aux must contain "weight".
      tx: the optax transformation.
      num_microbatches: gradient accumulation.
      prefix: metrics namespace, e.g. "sft".
      learning_rate_fn: the schedule, to log `opt/learning_rate` of this step.

    Returns:
      (new state, metrics): `{prefix}/loss` and every other aux sum divided by weight.
    """
    step_rng = jax.random.fold_in(rng, state.step)
    loss_sum, grads, aux = accumulate_grads(loss_fn, state.params, batch, step_rng, num_microbatches)
    weight = jnp.maximum(aux["weight"], 1e-8)
    grads = jax.tree_util.tree_map(lambda g: g / weight, grads)
    new_state, metrics = apply_grads(state, grads, tx)
    if learning_rate_fn is not None:
        metrics["opt/learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    metrics[f"{prefix}/loss"] = loss_sum / weight
    for name, value in aux.items():
        if name == "weight":
            metrics[f"{prefix}/weight"] = value
        else:
            metrics[f"{prefix}/{name}"] = value / weight
    return new_state, metrics


# ----------------------------------------------------------------------------- SFT


def sft_loss_fn(
    params: PyTree, batch: Batch, rng: Array, *, model: nn.Module, z_loss: float = 0.0
) -> tuple[Array, dict[str, Array]]:
    """Teacher-forced cross-entropy of an encoder-decoder.

    Batch features (seqio EncDecFeatureConverter names): encoder_input_tokens [B, K],
    decoder_input_tokens [B, L], decoder_target_tokens [B, L], decoder_loss_weights
    [B, L].
    """
    logits = model.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        enable_dropout=True,
        rngs={"dropout": rng},
    )
    loss, weight, zl = losses.token_cross_entropy(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"], z_loss
    )
    correct = losses.token_accuracy(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    )
    return loss, {"weight": weight, "z_loss": zl, "accuracy": correct}


def sft_train_step(
    state: train_state_lib.TrainState,
    batch: Batch,
    rng: Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    cfg: StepConfig = StepConfig(),
    learning_rate_fn: Optional[Callable[[Array], Array]] = None,
) -> tuple[train_state_lib.TrainState, Metrics]:
    """One SFT update. Metrics: sft/loss, sft/accuracy, sft/z_loss, opt/*."""
    loss_fn = lambda p, b, r: sft_loss_fn(p, b, r, model=model, z_loss=cfg.z_loss)  # noqa: E731
    return normalised_step(
        state, batch, rng, loss_fn=loss_fn, tx=tx, num_microbatches=cfg.num_microbatches,
        prefix="sft", learning_rate_fn=learning_rate_fn,
    )


def sft_eval_step(params: PyTree, batch: Batch, *, model: nn.Module) -> Metrics:
    """Loss sums on a batch without dropout (divide by `eval/weight` after summing)."""
    logits = model.apply(
        {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"]
    )
    loss, weight, _ = losses.token_cross_entropy(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    )
    correct = losses.token_accuracy(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    )
    return {"eval/loss_sum": loss, "eval/accuracy_sum": correct, "eval/weight": weight}


# ------------------------------------------------------------- policy optimisation


@dataclasses.dataclass(frozen=True)
class PolicyStepConfig:
    """What the policy-gradient update needs to know (bound as a static).

    Attributes:
      temperature: the sampling temperature; log-probs of pi and mu are those of the
        tempered distributions, the ones y was sampled from.
      forbid_pad: padding excluded from the policy's support (as in sampling).
      baseline: subtracted from the reward: 0.5 for preferences (= P(y > y | x)), or
        "batch_mean" for rewards (RLHF).
      num_microbatches: gradient accumulation.
    """

    temperature: float = 1.0
    forbid_pad: bool = True
    baseline: Union[float, str] = 0.5
    num_microbatches: int = 1


def _tempered_logps(logits: Array, cfg: PolicyStepConfig) -> Array:
    """The same arithmetic as `policy.token_logprobs` (and so as the sampler)."""
    lp = policy_lib.normalise(logits, cfg.forbid_pad)
    return jax.nn.log_softmax(lp / cfg.temperature, axis=-1)


def policy_loss_fn(
    params: PyTree,
    batch: Batch,
    rng: Array,
    *,
    model: nn.Module,
    cfg: PolicyStepConfig,
) -> tuple[Array, dict[str, Array]]:
    """Regularised policy-gradient surrogate (Nash-MD-PG, Nash-EMA-PG, RLHF).

    Batch (all computed before the update, without gradient):
      prompts int [B, K]; tokens int [B, L] (y, sampled from pi_theta);
      lengths int [B]; reward float [B] (P(y > y' | x), or a reward);
      reference_logps float [B, L] (log mu(y_n | .), tempered like pi);
      tau float [B] (the KL coefficient of this step, broadcast per row);
      example_weights float [B] (1 for samples).

    Returns:
      (loss sum, aux sums incl. "weight" = sum of example weights).
    """
    del rng  # the update is deterministic given the samples
    tokens, lengths = batch["tokens"], batch["lengths"]
    mask = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)
    logits = model.apply({"params": params}, batch["prompts"], decoding.shift_right(tokens))
    lp_all = _tempered_logps(logits, cfg)
    logps = jnp.take_along_axis(lp_all, tokens[..., None], axis=-1)[..., 0] * mask
    weights = batch["example_weights"].astype(jnp.float32)
    reward = batch["reward"].astype(jnp.float32)
    if cfg.baseline == "batch_mean":
        baseline = jnp.sum(weights * reward) / jnp.maximum(jnp.sum(weights), 1e-8)
    else:
        baseline = jnp.float32(cfg.baseline)
    adv = losses.policy_gradient_advantages(
        reward, logps, batch["reference_logps"], mask, batch["tau"][:, None], baseline
    )
    loss, weight = losses.policy_gradient_loss(logps, adv, mask, weights)
    seq_kl = jnp.sum(jax.lax.stop_gradient(logps - batch["reference_logps"]) * mask, axis=-1)
    entropy = -jnp.sum(jnp.exp(lp_all) * lp_all, axis=-1)
    n_tok = jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    aux = {
        "weight": weight,
        "kl_ref": jnp.sum(weights * seq_kl),
        "entropy": jnp.sum(weights * jnp.sum(jax.lax.stop_gradient(entropy) * mask, -1) / n_tok),
        "reward": jnp.sum(weights * reward),
        "advantage_mean": jnp.sum(weights * jnp.sum(adv, -1) / n_tok),
        "advantage_abs": jnp.sum(weights * jnp.sum(jnp.abs(adv), -1) / n_tok),
        "length": jnp.sum(weights * lengths.astype(jnp.float32)),
    }
    return loss, aux


def policy_update_step(
    state: train_state_lib.TrainState,
    batch: Batch,
    rng: Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    cfg: PolicyStepConfig = PolicyStepConfig(),
    learning_rate_fn: Optional[Callable[[Array], Array]] = None,
) -> tuple[train_state_lib.TrainState, Metrics]:
    """One policy update from pre-computed samples. Metrics: policy/*, opt/*."""
    loss_fn = functools.partial(policy_loss_fn, model=model, cfg=cfg)
    return normalised_step(
        state, batch, rng, loss_fn=loss_fn, tx=tx, num_microbatches=cfg.num_microbatches,
        prefix="policy", learning_rate_fn=learning_rate_fn,
    )


def ipo_loss_fn(
    params: PyTree,
    batch: Batch,
    rng: Array,
    *,
    model: nn.Module,
    cfg: PolicyStepConfig,
    on_policy: bool,
) -> tuple[Array, dict[str, Array]]:
    """The IPO loss on sampled pairs (online IPO, IPO-MD; `losses.ipo_loss`).

    Both responses go through the policy in one forward pass of 2B rows; the gradient
    flows through log pi_theta of y and of y', never through the samples or the judge.

    Batch (all computed before the update, without gradient):
      prompts int [B, K]; tokens, alt_tokens int [B, L] (y and y', both sampled from
      rho); lengths, alt_lengths int [B]; pref float [B] (P(y > y' | x));
      reference_logps, alt_reference_logps float [B, L] (log mu of y and y', tempered
      like pi); tau float [B]; example_weights float [B] (1 for samples).

    Args:
      on_policy: rho = pi_theta (online IPO). Then the mean of g = log pi - log mu over
        the 2B samples is an unbiased estimate of KL(pi || mu) and is logged as
        `kl_ref`; under IPO-MD (rho the mixture) it is not, and only `log_ratio`
        (E_rho[g]) is logged.

    Returns:
      (loss sum, aux sums incl. "weight" = sum of example weights).
    """
    del rng  # the update is deterministic given the samples
    b = batch["tokens"].shape[0]
    tokens = jnp.concatenate([batch["tokens"], batch["alt_tokens"]])
    lengths = jnp.concatenate([batch["lengths"], batch["alt_lengths"]])
    prompts = jnp.concatenate([batch["prompts"], batch["prompts"]])
    ref = jnp.concatenate([batch["reference_logps"], batch["alt_reference_logps"]])
    mask = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)
    logits = model.apply({"params": params}, prompts, decoding.shift_right(tokens))
    lp_all = _tempered_logps(logits, cfg)
    logps = jnp.take_along_axis(lp_all, tokens[..., None], axis=-1)[..., 0] * mask
    weights = batch["example_weights"].astype(jnp.float32)
    loss, weight, h = losses.ipo_loss(
        logps[:b], logps[b:], ref[:b], ref[b:], mask[:b], mask[b:],
        batch["pref"], batch["tau"], weights,
    )
    target = (batch["pref"].astype(jnp.float32) - 0.5) / batch["tau"].astype(jnp.float32)
    seq_g = jnp.sum(jax.lax.stop_gradient(logps - ref) * mask, axis=-1)
    pair_mean = lambda v: jnp.sum(weights * (v[:b] + v[b:])) / 2.0  # noqa: E731
    entropy = -jnp.sum(jnp.exp(lp_all) * lp_all, axis=-1)
    n_tok = jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    aux = {
        "weight": weight,
        "log_ratio": pair_mean(seq_g),
        "entropy": pair_mean(jnp.sum(jax.lax.stop_gradient(entropy) * mask, -1) / n_tok),
        "reward": jnp.sum(weights * batch["pref"].astype(jnp.float32)),
        "margin_abs": jnp.sum(weights * jnp.abs(h)),
        "target_abs": jnp.sum(weights * jnp.abs(target)),
        "length": pair_mean(lengths.astype(jnp.float32)),
    }
    if on_policy:
        aux["kl_ref"] = aux["log_ratio"]
    return loss, aux


def ipo_update_step(
    state: train_state_lib.TrainState,
    batch: Batch,
    rng: Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    cfg: PolicyStepConfig = PolicyStepConfig(),
    on_policy: bool = True,
    learning_rate_fn: Optional[Callable[[Array], Array]] = None,
) -> tuple[train_state_lib.TrainState, Metrics]:
    """One online-IPO / IPO-MD update from pre-computed pairs (see `ipo_loss_fn`).

    Metrics: policy/loss (the IPO loss), policy/{reward (mean P(y > y')), margin_abs
    (|h|), target_abs (|p - 1/2| / tau), log_ratio, kl_ref (online IPO only), entropy,
    length}, opt/*.
    """
    loss_fn = functools.partial(ipo_loss_fn, model=model, cfg=cfg, on_policy=on_policy)
    return normalised_step(
        state, batch, rng, loss_fn=loss_fn, tx=tx, num_microbatches=cfg.num_microbatches,
        prefix="policy", learning_rate_fn=learning_rate_fn,
    )


def ema_update(ema_params: PyTree, params: PyTree, decay: Array) -> PyTree:
    """theta_bar <- decay * theta_bar + (1 - decay) * theta (recursive EMA, App. F.3)."""
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
