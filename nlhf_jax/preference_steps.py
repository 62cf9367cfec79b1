"""Pure, jittable training steps of the preference model (PM) and reward model (RM).

Both reuse `steps.normalised_step` (compute grads, then apply them); this module only
supplies their losses. Statics (the network, the optax transformation, the target
token id, a frozen config) are keyword-only and bound with `functools.partial` before
`jax.jit`, as in `steps.py`.

Batches (built by `data/pairwise.py`):
  PM: inputs int [B, K] = (x, y, y'); inputs_swapped int [B, K] = (x, y', y);
      labels float [B] = P(y preferred) in [0, 1] (hard 0/1 or soft); optional
      p_star float [B] (the embedded world's ground truth P*).
  RM: inputs int [B, K] = (x, y); inputs_alt int [B, K] = (x, y'); labels, p_star.
"""

import dataclasses
import functools
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from nlhf_jax import preference_math
from nlhf_jax import steps
from nlhf_jax import train_state as train_state_lib
from nlhf_jax import types
from nlhf_jax.models import preference

Array = types.Array
PyTree = types.PyTree
Batch = steps.Batch
Metrics = steps.Metrics


@dataclasses.dataclass(frozen=True)
class PreferenceStepConfig:
    """Settings of a PM or RM step (bound as a static).

    Attributes:
      swap_prob: PM only, one order per pair (`both_orders=False`): each row is
        shown as (x, y', y) with label 1 - label with this probability (drawn from
        the step's key, so resumption is exact); data augmentation that makes f
        itself less position-biased. 0 = never.
      both_orders: PM only. Show every pair in both orders in the same batch and
        average the cross-entropies of f(x, y, y') against the label and of
        f(x, y', y) against 1 - label (twice the compute per pair). The part of f
        that ignores the order then receives the deterministic gradient
        f(x, y, y') + f(x, y', y) - 1 (pulling the position bias to 0) instead of
        label noise, which is what lets a small T5 trained from scratch start
        comparing the summaries at all (see `pm_loss_fn`).
      judge_loss_weight: PM only, with `both_orders`: weight of an extra
        cross-entropy of the both-orders judge g = (f(x, y, y') + 1 - f(x, y', y)) / 2,
        which only sees the order-dependent part of f.
      num_microbatches: gradient accumulation (see `steps.StepConfig`).
    """

    swap_prob: float = 0.5
    both_orders: bool = False
    judge_loss_weight: float = 0.0
    num_microbatches: int = 1

    def __post_init__(self):
        if not 0.0 <= self.swap_prob <= 1.0:
            raise ValueError(f"PreferenceStepConfig.swap_prob={self.swap_prob} not in [0, 1]")


# --------------------------------------------------------------------------- losses
# The per-row losses and the decision metrics are `preference_math`'s, shared with
# the judges and the tabular code.


def _aux(z: Array, labels: Array, batch: Batch) -> dict[str, Array]:
    """Sums of the per-row metrics (normalised by `weight` in `normalised_step`)."""
    aux = {
        "weight": jnp.asarray(z.shape[0], jnp.float32),
        "accuracy": jnp.sum(_logit_agreement(z, labels)),
        "prob_mean": jnp.sum(jax.nn.sigmoid(z)),
    }
    if "p_star" in batch:
        p_star = batch["p_star"].astype(jnp.float32)
        bayes = preference_math.bayes_decision(p_star, xp=jnp)
        aux["bayes_agreement"] = jnp.sum(_logit_agreement(z, bayes))
        aux["pstar_logloss"] = jnp.sum(preference_math.logistic_loss(z, p_star))
    return aux


def _logit_agreement(z: Array, target: Array) -> Array:
    """`preference_math.decision_agreement` of the decision z > 0 (z a logit), per row."""
    return preference_math.decision_agreement(z, target.astype(jnp.float32), 0.0, xp=jnp)


# ------------------------------------------------------------------ preference model


def pm_loss_fn(
    params: PyTree,
    batch: Batch,
    rng: Array,
    *,
    model: nn.Module,
    target_token: int,
    cfg: PreferenceStepConfig,
    decoder_len: int = 0,
) -> tuple[Array, dict[str, Array]]:
    """Summed PM cross-entropy (App. G.1), one or both orders per pair.

    `decoder_len`: the inputs' decoder columns (`InputFormat.decoder_template`).

    Why both orders: a one-input PM can tell y from y' only by their positions, which
    a small T5 trained from scratch learns slowly (a pretrained T5 already can). Until
    it does, f is a function of the prompt and of the bag of both summaries, the same
    for both orders; with one random order per pair the loss pushes that part after
    the label noise, and the comparison signal is buried (measured on the embedded
    world: no progress in 750 steps). Scoring both orders of each pair in the same
    batch gives that part the deterministic gradient f(x, y, y') + f(x, y', y) - 1.

    Returns:
      (loss sum, aux sums incl. "weight" = B; accuracy etc. of f(x, y, y')).
    """
    swap_rng, dropout_rng = jax.random.split(rng)
    labels = batch["labels"].astype(jnp.float32)
    if cfg.both_orders:
        both = jnp.concatenate([batch["inputs"], batch["inputs_swapped"]], axis=0)
        z_both = preference.target_logits(
            model, params, both, target_token, enable_dropout=True, rng=dropout_rng,
            decoder_len=decoder_len,
        )
        n = labels.shape[0]
        z, z_swapped = z_both[:n], z_both[n:]
        pm = preference_math
        loss = 0.5 * (pm.logistic_loss(z, labels) + pm.logistic_loss(z_swapped, 1.0 - labels))
        if cfg.judge_loss_weight:
            loss = loss + cfg.judge_loss_weight * pm.both_orders_loss(z, z_swapped, labels)[0]
        aux = _aux(z, labels, batch)
        aux["position_bias"] = jnp.sum(jnp.abs(jax.nn.sigmoid(z) + jax.nn.sigmoid(z_swapped) - 1.0))
        return jnp.sum(loss), aux
    inputs = batch["inputs"]
    if cfg.swap_prob > 0:
        swap = jax.random.bernoulli(swap_rng, cfg.swap_prob, labels.shape)
        inputs = jnp.where(swap[:, None], batch["inputs_swapped"], inputs)
        labels = jnp.where(swap, 1.0 - labels, labels)
        batch = dict(batch)
        if "p_star" in batch:
            batch["p_star"] = jnp.where(swap, 1.0 - batch["p_star"], batch["p_star"])
    z = preference.target_logits(
        model, params, inputs, target_token, enable_dropout=True, rng=dropout_rng,
        decoder_len=decoder_len,
    )
    return jnp.sum(preference_math.logistic_loss(z, labels)), _aux(z, labels, batch)


def pm_train_step(
    state: train_state_lib.TrainState,
    batch: Batch,
    rng: Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    target_token: int,
    cfg: PreferenceStepConfig = PreferenceStepConfig(),
    learning_rate_fn: Optional[Callable[[Array], Array]] = None,
    decoder_len: int = 0,
) -> tuple[train_state_lib.TrainState, Metrics]:
    """One PM update. Metrics: pm/loss, pm/accuracy, pm/prob_mean, with both orders
    pm/position_bias, on the world pm/bayes_agreement and pm/pstar_logloss; opt/*."""
    loss_fn = functools.partial(pm_loss_fn, model=model, target_token=target_token, cfg=cfg,
                                decoder_len=decoder_len)
    return steps.normalised_step(
        state, batch, rng, loss_fn=loss_fn, tx=tx, num_microbatches=cfg.num_microbatches,
        prefix="pm", learning_rate_fn=learning_rate_fn,
    )  # fmt: skip


def pm_eval_step(
    params: PyTree, batch: Batch, *, model: nn.Module, target_token: int, decoder_len: int = 0
) -> Metrics:
    """Both orders' logits of every row, for the host-side metrics.

    Returns:
      logits float32 [B] (of (x, y, y')), logits_swapped float32 [B] (of (x, y', y)).
    """
    z, z_swapped = preference.pair_logits(
        model, params, batch["inputs"], batch["inputs_swapped"], target_token, decoder_len
    )
    return {"logits": z, "logits_swapped": z_swapped}


# ---------------------------------------------------------------------- reward model


def rm_loss_fn(
    params: PyTree,
    batch: Batch,
    rng: Array,
    *,
    model: nn.Module,
    target_token: int,
) -> tuple[Array, dict[str, Array]]:
    """Summed Bradley-Terry loss of r(x, y) - r(x, y') against the labels.

    Both summaries go through the network in one batch [2B, K], so dropout masks are
    drawn independently for y and y'.
    """
    labels = batch["labels"].astype(jnp.float32)
    both = jnp.concatenate([batch["inputs"], batch["inputs_alt"]], axis=0)
    r = preference.target_logits(model, params, both, target_token, enable_dropout=True, rng=rng)
    n = labels.shape[0]
    d = r[:n] - r[n:]
    aux = _aux(d, labels, batch)
    # Rewards are defined up to a constant; their mean scale is worth watching.
    aux["reward_mean"] = jnp.sum(r[:n] + r[n:]) / 2.0
    return jnp.sum(preference_math.logistic_loss(d, labels)), aux


def rm_train_step(
    state: train_state_lib.TrainState,
    batch: Batch,
    rng: Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    target_token: int,
    cfg: PreferenceStepConfig = PreferenceStepConfig(),
    learning_rate_fn: Optional[Callable[[Array], Array]] = None,
) -> tuple[train_state_lib.TrainState, Metrics]:
    """One RM update (cfg.swap_prob is unused: the loss is symmetric). Metrics:
    rm/loss, rm/accuracy, rm/prob_mean, rm/reward_mean, on the world
    rm/bayes_agreement and rm/pstar_logloss; opt/*."""
    loss_fn = functools.partial(rm_loss_fn, model=model, target_token=target_token)
    return steps.normalised_step(
        state, batch, rng, loss_fn=loss_fn, tx=tx, num_microbatches=cfg.num_microbatches,
        prefix="rm", learning_rate_fn=learning_rate_fn,
    )  # fmt: skip


def rm_eval_step(params: PyTree, batch: Batch, *, model: nn.Module, target_token: int) -> Metrics:
    """Rewards of both summaries: rewards float32 [B] (y), rewards_alt float32 [B] (y')."""
    r, r_alt = preference.pair_logits(
        model, params, batch["inputs"], batch["inputs_alt"], target_token
    )
    return {"rewards": r, "rewards_alt": r_alt}
