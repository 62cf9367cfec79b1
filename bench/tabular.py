"""Benchmark: jitted JAX Nash-MD against a plain NumPy loop, in one run.

Tabular Nash-MD (§6, eq. 5) is one batched mat-vec per step, P (C x n x n)
times the mixture policy pi_t^mu (C x n), plus O(C n) element-wise work. At
C = 128, n = 1,024 in float32, P alone is 512 MiB, so a step is bound by memory
bandwidth, not arithmetic; this script reports both wall times, their ratio and
the achieved bandwidth.

Byte count per step (a lower bound on traffic): P is read once, C n^2 * 4 bytes;
the vector work reads log pi_t and log mu and writes the mixture, the mat-vec
result and log pi_{t+1}: about 6 C n * 4 bytes more (3 MiB here, 0.6% of P).
The JAX loop also keeps the running average of iterates (2 more [C, n] arrays
per step), which is not counted and is well under 1% of the traffic.

The roof: the same run measures this machine's read bandwidth on P, the faster of two
jitted kernels that read it once and write almost nothing (a sum over the last axis,
and one float32 mat-vec P x, the solver's own dominant operation), and reports each
loop's bandwidth as a fraction of it. A loop at ~100% of the roof cannot go faster
without reading fewer bytes. It also
tries the one way to halve them, P stored in bfloat16 with float32 accumulation: the
mat-vec's time and its error against float32 (on XLA:CPU, which has no native bfloat16
dot, it is far slower; on GPU/TPU it would halve the traffic).

Usage:
  python bench/tabular.py [--contexts 128] [--actions 1024] [--steps 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from nlhf_jax.tabular import games as games_lib
from nlhf_jax.tabular import solvers as solvers_lib


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def numpy_nash_md(pref: np.ndarray, log_mu: np.ndarray, tau: float, etas: np.ndarray) -> np.ndarray:
    """The same Nash-MD arithmetic as `solvers.nash_md`, as a plain NumPy loop.

    Args:
      pref: [C, n, n] float32.
      log_mu: [C, n] float32, also the start log pi_0.
      tau: regularisation.
      etas: [T] step sizes.

    Returns:
      [C, n] log pi_T.
    """
    log_pi = log_mu.copy()
    for eta in etas.astype(pref.dtype):
        alpha = eta * np.float32(tau)
        log_mix = _log_softmax((1 - alpha) * log_pi + alpha * log_mu)  # eq. 3
        g = np.matmul(pref, np.exp(log_mix)[:, :, None])[:, :, 0]  # P(y > pi_t^mu)
        log_pi = _log_softmax(log_mix + eta * g)  # eq. 5
    return log_pi


def _seconds(fn, *args, reps: int = 10) -> float:
    """Mean wall time of a jitted call after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) / reps


def roofline(pref32: np.ndarray, x32: np.ndarray) -> dict:
    """Read bandwidth of this machine on P (GiB/s: the faster of a last-axis sum and one
    float32 mat-vec), the mat-vec's own, and the bfloat16-stored mat-vec's time and max
    abs error against float32."""
    p, x = jnp.asarray(pref32), jnp.asarray(x32)
    p16 = jnp.asarray(pref32, jnp.bfloat16)
    read = jax.jit(lambda a: jnp.sum(a, axis=-1))
    mv32 = jax.jit(lambda a, v: jnp.einsum("cij,cj->ci", a, v))
    mv16 = jax.jit(lambda a, v: jnp.einsum("cij,cj->ci", a, v.astype(jnp.bfloat16),
                                           preferred_element_type=jnp.float32))
    gib = 2.0**30
    t_read, t32, t16 = _seconds(read, p), _seconds(mv32, p, x), _seconds(mv16, p16, x, reps=3)
    err = float(jnp.max(jnp.abs(mv16(p16, x) - mv32(p, x))))
    return {"read_gib_s": pref32.nbytes / min(t_read, t32) / gib, "matvec32_gib_s": pref32.nbytes / t32 / gib,
            "matvec32_ms": t32 * 1e3, "matvec_bf16_ms": t16 * 1e3, "bf16_max_abs_err": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contexts", type=int, default=128)
    parser.add_argument("--actions", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--tau", type=float, default=0.1)
    args = parser.parse_args()
    c, n, steps, tau = args.contexts, args.actions, args.steps, args.tau

    game = games_lib.random_game(c, n, seed=0)
    pref32 = game.pref.astype(np.float32)
    log_mu32 = np.log(game.ref).astype(np.float32)
    etas = solvers_lib.nash_md_schedule(tau, steps)

    def run_jax():
        return solvers_lib.nash_md(game, tau, steps, record="last", dtype=np.float32).log_policies[
            -1
        ]

    start = time.perf_counter()
    run_jax()  # compiles (and runs once)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    jax_out = run_jax()
    jax_s = time.perf_counter() - start

    start = time.perf_counter()
    np_out = numpy_nash_md(pref32, log_mu32, tau, etas)
    np_s = time.perf_counter() - start

    bytes_per_step = 4 * (c * n * n + 6 * c * n)
    gib = 2.0**30
    machine = platform.processor() or platform.machine()
    devices = f"{jax.device_count()} JAX device(s) ({jax.devices()[0].platform})"
    print(f"machine: {machine}, {os.cpu_count()} CPU cores, {devices}")
    print(f"jax {jax.__version__}, numpy {np.__version__}")
    print(f"Nash-MD, C={c} contexts x n={n} actions, T={steps} steps, float32, tau={tau}")
    print(f"bytes touched per step: {bytes_per_step / 2**20:.1f} MiB (P once + 6 [C, n] vectors)")
    print(
        f"JAX (jit, lax.scan): {jax_s:8.2f} s  {jax_s / steps * 1e3:7.2f} ms/step  "
        f"{bytes_per_step * steps / jax_s / gib:6.2f} GiB/s"
    )
    print(f"  (JAX first call, compile included: {first_s:.2f} s)")
    print(
        f"NumPy loop:          {np_s:8.2f} s  {np_s / steps * 1e3:7.2f} ms/step  "
        f"{bytes_per_step * steps / np_s / gib:6.2f} GiB/s"
    )
    print(f"speed-up NumPy / JAX: {np_s / jax_s:.2f}x")
    roof = roofline(pref32, np.exp(log_mu32))
    print(f"roof: jitted read of P {roof['read_gib_s']:.2f} GiB/s (best of a sum and a mat-vec); one mat-vec "
          f"{roof['matvec32_ms']:.2f} ms = {roof['matvec32_gib_s']:.2f} GiB/s")
    for name, sec in (("JAX", jax_s), ("NumPy", np_s)):
        print(f"  {name} loop at {bytes_per_step * steps / sec / gib / roof['read_gib_s']:.0%} of the read roof")
    print(f"P in bfloat16, float32 accumulation: mat-vec {roof['matvec_bf16_ms']:.2f} ms "
          f"({roof['matvec_bf16_ms'] / roof['matvec32_ms']:.1f}x the float32 one), "
          f"max abs error {roof['bf16_max_abs_err']:.1e}")
    diff = np.abs(np.exp(jax_out) - np.exp(np_out)).sum(-1).max()
    print(f"max_c ||pi_T(JAX) - pi_T(NumPy)||_1 = {diff:.2e} (float32 round-off)")


if __name__ == "__main__":
    main()
