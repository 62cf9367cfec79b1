"""The train state and the optimizers that update it.

`TrainState` holds only what the optimizer updates: (step, params, opt_state). Frozen
models (the reference policy, the preference model) live outside it, so they can never
receive an update and are not saved with the run (style guide B2).

The optimizer is an optax transformation built from an `OptimizerConfig`; it is bound
to the step functions with `functools.partial`, not stored in the state, so the state
is a plain pytree that orbax saves and restores.
"""

import dataclasses
from typing import Optional

import flax
import jax
import jax.numpy as jnp
import optax

from nlhf_jax import types

PyTree = types.PyTree


@flax.struct.dataclass
class TrainState:
    """What the optimizer owns.

    Attributes:
      step: int32 scalar, the number of updates applied.
      params: the trained parameters.
      opt_state: the optax state for `params`.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree

    @classmethod
    def create(cls, params: PyTree, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    def apply_gradients(self, grads: PyTree, tx: optax.GradientTransformation) -> "TrainState":
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule, indexed by the optimizer step.

    Attributes:
      kind: "constant", "linear_warmup" (linear from 0 to `base` over `warmup_steps`,
        then constant), "warmup_cosine" (the same warm-up, then a cosine decay to
        `end_fraction * base` at step `decay_steps`, constant after) or "rsqrt" (T5X
        default: base / sqrt(max(step, warmup_steps)), so `base` = 1.0 gives 0.01 for
        the first 10k steps).
      base: peak (or rsqrt numerator) learning rate.
      warmup_steps: length of the warm-up / constant rsqrt plateau.
      decay_steps: "warmup_cosine" only: the step at which the decay ends (usually the
        run's number of steps); must exceed `warmup_steps`.
      end_fraction: "warmup_cosine" only: final learning rate as a fraction of `base`.
    """

    kind: str = "constant"
    base: float = 1e-3
    warmup_steps: int = 0
    decay_steps: int = 0
    end_fraction: float = 0.0

    def build(self) -> optax.Schedule:
        if self.kind == "constant":
            return optax.constant_schedule(self.base)
        if self.kind == "linear_warmup":
            warm = max(self.warmup_steps, 1)
            return lambda step: self.base * jnp.minimum(1.0, (step + 1) / warm)
        if self.kind == "warmup_cosine":
            if self.decay_steps <= self.warmup_steps:
                raise ValueError(
                    f"ScheduleConfig(kind='warmup_cosine'): decay_steps={self.decay_steps} must "
                    f"exceed warmup_steps={self.warmup_steps} (set it to the run's num_steps)"
                )
            warm = max(self.warmup_steps, 1)
            span = self.decay_steps - self.warmup_steps

            def cosine(step):
                ramp = jnp.minimum(1.0, (step + 1) / warm)
                frac = jnp.clip((step - self.warmup_steps) / span, 0.0, 1.0)
                decay = self.end_fraction + (1 - self.end_fraction) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
                return self.base * ramp * decay

            return cosine
        if self.kind == "rsqrt":
            plateau = max(self.warmup_steps, 1)
            return lambda step: self.base / jnp.sqrt(jnp.maximum(step, plateau).astype(jnp.float32))
        raise ValueError(
            f"ScheduleConfig.kind={self.kind!r}; expected constant, linear_warmup, "
            "warmup_cosine or rsqrt"
        )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Which optax optimizer, and its settings.

    Attributes:
      name: "adafactor" (T5X default, factored second moments) or "adamw".
      schedule: the learning-rate schedule.
      weight_decay: decoupled weight decay (adamw) or adafactor's weight_decay_rate.
      b1: first-moment decay (adamw; adafactor uses momentum only if > 0).
      b2: second-moment decay (adamw).
      eps: adamw epsilon.
      grad_clip_norm: global-norm clipping (0 = off).
    """

    name: str = "adafactor"
    schedule: ScheduleConfig = ScheduleConfig()
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip_norm: float = 0.0

    def build(self) -> optax.GradientTransformation:
        lr = self.schedule.build()
        if self.name == "adafactor":
            core = optax.adafactor(
                learning_rate=lr,
                weight_decay_rate=self.weight_decay or None,
                momentum=None,
                multiply_by_parameter_scale=True,
            )
        elif self.name == "adamw":
            core = optax.adamw(lr, b1=self.b1, b2=self.b2, eps=self.eps,
                               weight_decay=self.weight_decay)
        elif self.name == "sgd":
            core = optax.sgd(lr)
        else:
            raise ValueError(
                f"OptimizerConfig.name={self.name!r}; expected adafactor, adamw or sgd"
            )
        if self.grad_clip_norm:
            return optax.chain(optax.clip_by_global_norm(self.grad_clip_norm), core)
        return core

    def learning_rate(self, step) -> jax.Array:
        return jnp.asarray(self.schedule.build()(step), jnp.float32)


def param_count(params: PyTree) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def global_norm(tree: Optional[PyTree]) -> jax.Array:
    return optax.global_norm(tree)
