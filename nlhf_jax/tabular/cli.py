"""`nlhf tabular`: run every tabular solver on one game and compare them.

This is the command-line face of the tabular toolkit: it builds a game (the
paper's examples or a random one), computes the exact pi*_tau and the LP
equilibrium, runs Nash-MD and the baselines of §5-§7, and prints a table (or
JSON) of how close each last iterate is to pi*_tau, with an optional log-log
plot against Theorem 1's bound. Example:

  nlhf tabular --game dice --tau 0.1 --steps 1000 --plot /tmp/tabular_dice.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from nlhf_jax.tabular import equilibrium as eq_lib
from nlhf_jax.tabular import games as games_lib
from nlhf_jax.tabular import plots as plots_lib
from nlhf_jax.tabular import solvers as solvers_lib

GAMES = ("dice", "three-types", "bt-constrained", "random")


class UsageError(ValueError):
    """A bad command-line value; reported as `nlhf tabular: error: ...`, exit 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nlhf tabular",
        description="Run the tabular NLHF solvers (Nash-MD, OMD, self-play, fictitious play, "
        "Nash-EMA, best response to mu, RLHF, online IPO, IPO-MD) on a preference game and "
        "compare their last iterates with the exact regularised equilibrium pi*_tau.",
    )
    p.add_argument("--game", choices=GAMES, default="dice", help="which game (default: dice)")
    p.add_argument("--tau", type=float, default=0.1, help="KL regularisation tau > 0 (default 0.1)")
    p.add_argument("--steps", type=int, default=1000, help="iterations T (default 1000)")
    p.add_argument(
        "--eta",
        type=float,
        default=None,
        help="constant step for nash-md-const, omd, nash-ema, self-play (default min(1, 1/tau))",
    )
    p.add_argument("--ema-decay", type=float, default=0.9, help="Nash-EMA decay in [0, 1)")
    p.add_argument(
        "--ipo-eta", type=float, default=0.5, help="gradient step of online-ipo and ipo-md (0.5)"
    )
    p.add_argument(
        "--ipo-beta", type=float, default=0.25, help="IPO-MD mixture weight in [0, 1] (0.25)"
    )
    p.add_argument(
        "--contexts",
        type=int,
        default=1,
        help="contexts C: independent random games, or copies of a fixed game with "
        "independent random reference policies",
    )
    p.add_argument("--actions", type=int, default=10, help="responses n (random game only)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random game and random mu")
    p.add_argument("--epsilon", type=float, default=0.1, help="population shift of three-types")
    p.add_argument(
        "--mu",
        default="random",
        help="reference policy: 'random' (Dirichlet(1), seeded), 'uniform', or comma-separated "
        "probabilities (default random: with a uniform mu the dice's pi*_tau is uniform too and "
        "every solver starts at the answer)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="write convergence curves")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if not args.tau > 0:
        raise UsageError(f"--tau must be > 0, got {args.tau}")
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.contexts < 1:
        raise UsageError(f"--contexts must be >= 1, got {args.contexts}")
    if args.game == "random" and args.actions < 2:
        raise UsageError(f"--actions must be >= 2, got {args.actions}")
    if args.eta is not None and not 0 < args.eta * args.tau <= 1:
        product = args.eta * args.tau
        raise UsageError(
            f"--eta must satisfy 0 < eta * tau <= 1 (eq. 3), got eta * tau = {product:g}"
        )
    if not 0 <= args.ema_decay < 1:
        raise UsageError(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if not args.ipo_eta > 0:
        raise UsageError(f"--ipo-eta must be > 0, got {args.ipo_eta}")
    if not 0 <= args.ipo_beta <= 1:
        raise UsageError(f"--ipo-beta must be in [0, 1], got {args.ipo_beta}")
    if args.plot is not None and not args.plot.lower().endswith((".png", ".pdf", ".svg")):
        raise UsageError(f"--plot must name a .png, .pdf or .svg file, got {args.plot!r}")


def _ref(spec: str, contexts: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if spec == "uniform":
        return np.full((contexts, n), 1.0 / n)
    if spec == "random":
        return np.maximum(rng.dirichlet(np.ones(n), size=contexts), 1e-6)
    try:
        mu = np.array([float(v) for v in spec.split(",")])
    except ValueError:
        raise UsageError(
            f"--mu must be 'random', 'uniform' or comma-separated numbers, got {spec!r}"
        ) from None
    if mu.shape != (n,):
        raise UsageError(f"--mu has {mu.size} entries but the game has {n} responses")
    return np.broadcast_to(mu, (contexts, n))


def build_game(args: argparse.Namespace) -> games_lib.Game:
    """Builds the game named by the parsed arguments (see `_parser`)."""
    rng = np.random.default_rng(args.seed)
    if args.game == "random":
        base = games_lib.random_game(args.contexts, args.actions, seed=args.seed)
        if args.mu == "random":
            return base  # random_game already draws its own Dirichlet mu
        return base.with_ref(_ref(args.mu, args.contexts, args.actions, rng))
    if args.game == "dice":
        base = games_lib.dice()
    elif args.game == "three-types":
        base = games_lib.three_types(args.epsilon)
    else:
        base = games_lib.bt_constrained()
    n = base.num_actions
    ref = _ref(args.mu, args.contexts, n, rng)
    ref = ref / ref.sum(-1, keepdims=True) if args.mu == "random" else ref
    pref = np.broadcast_to(base.pref, (args.contexts, n, n))
    return games_lib.Game(pref, ref, name=base.name, labels=base.labels)


def _solvers(args, eta: float) -> dict[str, Callable[[games_lib.Game], object]]:
    tau, steps = args.tau, args.steps
    return {
        "nash-md": lambda g: solvers_lib.nash_md(g, tau, steps),
        "nash-md-const": lambda g: solvers_lib.nash_md(g, tau, steps, eta=eta),
        "omd": lambda g: solvers_lib.online_mirror_descent(g, tau, steps, eta=eta),
        "nash-ema": lambda g: solvers_lib.nash_ema(
            g, tau, steps, eta=eta, ema_decay=args.ema_decay
        ),
        "fictitious-play": lambda g: solvers_lib.fictitious_play(g, tau, steps),
        # Self-play ignores tau (§5): it is the unregularised baseline that cycles.
        "self-play": lambda g: solvers_lib.self_play(g, steps, eta=eta),
        "br-to-mu": lambda g: solvers_lib.best_response_to_ref(g, tau),
        "rlhf": lambda g: solvers_lib.rlhf(g, tau).log_policy,
        # Gradient dynamics on the IPO loss (Calandriello et al. 2024), with their own step.
        "online-ipo": lambda g: solvers_lib.online_ipo(g, tau, steps, eta=args.ipo_eta),
        "ipo-md": lambda g: solvers_lib.ipo_md(g, tau, args.ipo_beta, steps, eta=args.ipo_eta),
    }


def _num(x) -> float | None:
    # JSON has no inf/nan; an infinite KL (a pure policy) is reported as null.
    x = float(x)
    return x if np.isfinite(x) else None


def _timed(fn, game):
    # The first call compiles; time a second, compiled call so the table
    # compares algorithms rather than XLA compile times.
    start = time.perf_counter()
    fn(game)
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = fn(game)
    return out, first, time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    """Runs every solver; returns the JSON-able report (and writes the plot)."""
    game = build_game(args)
    tau = args.tau
    eta = args.eta if args.eta is not None else min(1.0, 1.0 / tau)
    star = eq_lib.regularized_equilibrium(game, tau)
    lp = eq_lib.nash_lp(game)
    report = {
        "game": game.name,
        "contexts": game.num_contexts,
        "actions": game.num_actions,
        "tau": tau,
        "steps": args.steps,
        "eta": eta,
        "theorem1_bound": float(plots_lib.theorem1_bound(tau, args.steps)),
        "mu": game.ref[0].tolist(),
        "equilibrium": {
            "policy": star.policy[0].tolist(),
            "residual": float(star.residual.max()),
            "exploitability_tau": float(star.exploitability.max()),
            "newton_steps": star.newton_steps,
        },
        "lp_equilibrium": {
            "policy": lp.policy[0].tolist(),
            "exploitability": float(lp.exploitability.max()),
        },
        "solvers": {},
    }
    kl_curves, expl_curves, constants = {}, {}, {}
    for name, fn in _solvers(args, eta).items():
        out, first, wall = _timed(fn, game)
        if isinstance(out, solvers_lib.Trajectory):
            log_last, log_avg = out.log_policies[-1], out.log_averages[-1]
            if args.plot:
                curves = eq_lib.policy_metrics(game, out.log_policies, tau, star.log_policy)
                kl_curves[name] = (out.steps, curves["kl"].mean(-1))
                expl_curves[name] = (out.steps, curves["exploitability_tau"].mean(-1))
        else:
            log_last, log_avg = np.asarray(out), None
        last = eq_lib.policy_metrics(game, log_last, tau, star.log_policy)
        row = {
            "kl_last": _num(last["kl"].mean()),
            "kl_avg": None
            if log_avg is None
            else _num(eq_lib.policy_metrics(game, log_avg, tau, star.log_policy)["kl"].mean()),
            "exploitability_tau": _num(last["exploitability_tau"].mean()),
            "exploitability": _num(last["exploitability"].mean()),
            "pref_vs_mu": _num(last["pref_vs_mu"].mean()),
            "time_s": wall,
            "first_call_s": first,
            "final_policy": np.exp(log_last[0]).tolist(),
        }
        if log_avg is None and row["kl_last"] is not None:
            constants[name] = row["kl_last"]
        report["solvers"][name] = row
    if args.plot:
        title = (
            f"{game.name}: C={game.num_contexts}, n={game.num_actions}, tau={tau:g}, eta={eta:g}"
        )
        plots_lib.plot_convergence(
            args.plot,
            kl_curves,
            tau=tau,
            exploit_curves=expl_curves,
            constants=constants,
            title=title,
        )
        report["plot"] = args.plot
    return report


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3e}"


def format_table(report: dict) -> str:
    """Renders a report from `run` as a plain-text table."""
    eqm, lp = report["equilibrium"], report["lp_equilibrium"]
    star_pi, lp_pi = np.round(eqm["policy"], 4).tolist(), np.round(lp["policy"], 4).tolist()
    lines = [
        f"game {report['game']}  C={report['contexts']} n={report['actions']}  "
        f"tau={report['tau']:g}  T={report['steps']}  eta={report['eta']:g}",
        f"pi*_tau: residual {eqm['residual']:.1e}, exploitability {eqm['exploitability_tau']:.1e}, "
        f"{eqm['newton_steps']} Newton steps; context 0: {star_pi}",
        f"LP Nash (tau=0): exploitability {lp['exploitability']:.1e}; context 0: {lp_pi}",
        f"Theorem 1 bound at T: 8/(tau^2 (T+1)) = {report['theorem1_bound']:.3e}",
        "",
        f"{'solver':<16}{'KL(pi*,last)':>14}{'KL(pi*,avg)':>14}{'expl_tau':>12}{'expl_0':>12}"
        f"{'P(last>mu)':>12}{'time_s':>10}",
    ]
    for name, r in report["solvers"].items():
        lines.append(
            f"{name:<16}{_fmt(r['kl_last']):>14}{_fmt(r['kl_avg']):>14}{_fmt(r['exploitability_tau']):>12}"
            f"{_fmt(r['exploitability']):>12}{r['pref_vs_mu']:>12.4f}{r['time_s']:>10.4f}"
        )
    lines.append("(KL and exploitabilities are means over contexts; time_s is a compiled call)")
    if "plot" in report:
        lines.append(f"plot written to {report['plot']}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Entry point of `nlhf tabular`; returns the process exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:  # argparse already printed usage or the error
        return int(e.code or 0)
    try:
        _check_args(args)
        report = run(args)
    except (UsageError, ValueError) as e:
        print(f"nlhf tabular: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
