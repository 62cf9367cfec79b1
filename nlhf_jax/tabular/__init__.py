"""Tabular NLHF: preference games, Nash-MD and baselines, exact equilibria.

The tabular setting is where the paper's theory (§3-§6) can be checked exactly:
every policy is a vector, every preference a matrix. This package re-exports the
public API of its modules:

* `games`: the `Game` container, validation and constructors (App. A, C.1, C.2, §3.2);
* `solvers`: Nash-MD, OMD, self-play, Nash-EMA, fictitious play, best response
  to mu, the RLHF pipeline, online IPO and IPO-MD, as jitted `lax.scan` loops
  over contexts;
* `equilibrium`: pi*_tau with a certificate, the LP equilibrium, and metrics;
* `plots`: convergence curves against Theorem 1's bound.
"""

from nlhf_jax.tabular.equilibrium import (
    NashLP,
    RegularizedEquilibrium,
    exploitability,
    kl,
    nash_lp,
    preference,
    regularized_equilibrium,
    regularized_exploitability,
)
from nlhf_jax.tabular.games import (
    Game,
    bradley_terry,
    bt_constrained,
    bt_constrained_optima,
    dice,
    from_rankings,
    from_utilities,
    mixture,
    random_game,
    stack,
    three_types,
    three_types_equilibrium,
    validate,
)
from nlhf_jax.tabular.plots import plot_convergence, theorem1_bound
from nlhf_jax.tabular.solvers import (
    RLHFResult,
    Trajectory,
    best_response_to_ref,
    fictitious_play,
    fit_bradley_terry,
    ipo_gradient,
    ipo_md,
    nash_ema,
    nash_md,
    nash_md_schedule,
    online_ipo,
    online_mirror_descent,
    rlhf,
    self_play,
)

__all__ = [
    "Game",
    "NashLP",
    "RLHFResult",
    "RegularizedEquilibrium",
    "Trajectory",
    "best_response_to_ref",
    "bradley_terry",
    "bt_constrained",
    "bt_constrained_optima",
    "dice",
    "exploitability",
    "fictitious_play",
    "fit_bradley_terry",
    "from_rankings",
    "from_utilities",
    "ipo_gradient",
    "ipo_md",
    "kl",
    "mixture",
    "nash_ema",
    "nash_lp",
    "nash_md",
    "nash_md_schedule",
    "online_ipo",
    "online_mirror_descent",
    "plot_convergence",
    "preference",
    "random_game",
    "regularized_equilibrium",
    "regularized_exploitability",
    "rlhf",
    "self_play",
    "stack",
    "theorem1_bound",
    "three_types",
    "three_types_equilibrium",
    "validate",
]
