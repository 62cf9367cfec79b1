"""Convergence plots for the tabular solvers.

Theorem 1 is a statement about a curve: KL(pi*_tau, pi_T) stays under
8 / (tau^2 (T + 1)) for every T. This module draws that curve for each solver
on log-log axes next to the bound, so a run of `nlhf tabular --plot` shows at a
glance which methods converge in the last iterate, how fast, and how loose the
bound is. It only draws; the numbers come from the caller. Figures are rendered
with matplotlib's Agg canvas, without pyplot, so no display is needed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib import figure as figure_lib

# Type aliases.
Curve = tuple[np.ndarray, np.ndarray]  # (steps [R], values [R])

# Values at or below float64 resolution (exact convergence, round-off) are
# drawn at this floor, since zero cannot go on a log axis.
_FLOOR = 1e-16


def theorem1_bound(tau: float, steps: np.ndarray) -> np.ndarray:
    """8 / (tau^2 (T + 1)) (Theorem 1), for an array of T."""
    return 8.0 / (tau**2 * (np.asarray(steps, dtype=np.float64) + 1.0))


def plot_convergence(
    path: str,
    kl_curves: Mapping[str, Curve],
    *,
    tau: float,
    exploit_curves: Mapping[str, Curve] | None = None,
    constants: Mapping[str, float] | None = None,
    title: str = "",
) -> str:
    """Draws KL(pi*_tau, pi_t) (and optionally exploitability) against t, log-log.

    Args:
      path: output image file (PNG recommended).
      kl_curves: solver name -> (t [R], mean KL(pi*_tau, pi_t) [R]); t = 0 is skipped.
      tau: regularisation, for Theorem 1's bound.
      exploit_curves: optional solver name -> (t, regularised exploitability),
        drawn in a second panel.
      constants: optional name -> value for one-shot methods (best response to
        mu, RLHF), drawn as horizontal lines in the KL panel.
      title: figure title.

    Returns:
      path.
    """
    panels = 2 if exploit_curves else 1
    # A bare Figure renders with the Agg canvas on savefig and never touches
    # pyplot's global state or needs a display.
    fig = figure_lib.Figure(figsize=(6.5 * panels, 4.8))
    axes = fig.subplots(1, panels, squeeze=False)
    ax = axes[0, 0]
    t_max = 1
    for name, (steps, values) in kl_curves.items():
        keep = np.asarray(steps) > 0
        ax.plot(steps[keep], np.maximum(values[keep], _FLOOR), label=name, lw=1.4)
        t_max = max(t_max, int(np.max(steps)))
    t = np.arange(1, t_max + 1)
    ax.plot(t, theorem1_bound(tau, t), "k--", lw=1.2, label=r"Thm. 1: $8/(\tau^2(T+1))$")
    for i, (name, value) in enumerate((constants or {}).items()):
        ax.axhline(max(value, _FLOOR), color=f"C{len(kl_curves) + i}", ls=":", lw=1.2, label=name)
    ax.set(xscale="log", yscale="log", xlabel="iteration T", ylabel=r"KL$(\pi^*_\tau, \pi_T)$")
    ax.set_title(rf"last iterate vs $\pi^*_\tau$ ($\tau$={tau:g})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    if exploit_curves:
        ax = axes[0, 1]
        for name, (steps, values) in exploit_curves.items():
            keep = np.asarray(steps) > 0
            ax.plot(steps[keep], np.maximum(values[keep], _FLOOR), label=name, lw=1.4)
        ax.set(xscale="log", yscale="log", xlabel="iteration T")
        ax.set_ylabel(r"$\max_{\pi'} P_\tau(\pi' \succ \pi_T) - 1/2$")
        ax.set_title("regularised exploitability (eq. 2)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
