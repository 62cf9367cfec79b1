"""`nlhf demo` (= `make demo`): the whole NLHF pipeline on the embedded world.

Stages, each an ordinary gin run (the exact `nlhf train` command is printed), each in
its own directory under `--out` (default `runs/demo`):

  world          generate the world and its vocabulary (seeded; cached)
  sft            supervised fine-tuning -> the initial policy and the reference mu
  pm, rm         preference model P(y > y' | x) and Bradley-Terry reward model
  pm_style       (paper preset) the PM trained further on distinct-style comparisons
  rlhf           REINFORCE on the RM with KL to mu (the baseline)
  self_play      Nash-MD-PG, beta = 0
  nash_md        Nash-MD-PG, beta = 0.125 (the paper's choice)
  best_response  Nash-MD-PG, beta = 1
  nash_ema       Nash-EMA-PG (and its averaged policy, nash_ema*)
  evaluate       win-rate matrices under the world's raters P* and under P_tau,
                 heatmaps, training curves, style table -> report.md

A finished stage leaves a DONE file and is skipped on rerun; a killed stage resumes
from its own checkpoints. On a CPU-only machine with two or more cores, the stages after
SFT run two at a time (`--jobs`), each pinned to half of the cores and logging to its
own `stage.log`: the PM beside the RM, then RLHF, then the other policies in pairs.

Presets: `quick` (default; under 20 minutes on 2 CPU cores, see docs/results-world.md)
and `paper` (the paper's grid of beta and two EMA decays, 300 steps each, plus the
follow-up paper's online IPO and IPO-MD at the same tau and beta 0.125, Calandriello et
al. 2024, on the quick preset's SFT but with style-aware judges: PM and RM train on a
second world, `judge_world`, that adds 30,000 comparisons of two distinct styles: the
RM as the quick preset's (the style comparisons make a Bradley-Terry RM worse), the PM
for 4,000 steps from the RM on all of them, then `pm_style`, 2,000 more steps of that
PM on the style comparisons alone, which the NLHF policies train against; about an hour
and a half on 2 CPU cores).
Their step counts and batch sizes are gin files in configs/demo/, applied on top of
each stage's configs/experiments/ file.
"""

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from typing import Optional

from nlhf_jax import gin_setup

@dataclasses.dataclass(frozen=True)
class Preset:
    """What a preset trains. Step counts, batch sizes and learning rates live in its gin
    files (configs/demo/); the algorithms and their hyper-parameters in the experiments'.

    Attributes:
      policy_gin: the overlay of every policy stage (configs/demo/<preset>_policy.gin).
      policies: (stage name, experiment `world_<algorithm>.gin`, extra bindings).
      eval_prompts: held-out prompts of the P* matrix.
      ptau_prompts: the first N of them for P_tau (None: all).
      pm_gin, rm_gin: the overlays of the judge stages.
      judge_style_comparisons: when > 0, PM and RM train on `<out>/judge_world`, the
        policies' world plus this many comparisons of two reference-quality summaries in
        distinct styles (`WorldConfig.n_style_comparisons`; every other file of it is
        byte-identical to the policies' world). In the default world such pairs are
        about 2% of the comparisons, too few for a PM to learn the style-level game.
        Whether a judge uses the style rows is its gin file's choice
        (`pairwise.world_data.style_comparisons`; the paper preset's RM does not).
      pm_init: the stage whose parameters the PM starts from, "sft" or "rm" (the RM has
        already learned to judge one summary, which the PM's encoder reads).
      pm_style_gin: when set, a `pm_style` stage trains the finished PM further with this
        experiment file on the judge world's distinct-style comparisons alone (the PM
        style fine-tune, configs/experiments/world_pm_style.gin), and the NLHF policies,
        the P_tau matrix and the judge diagnostics use that PM instead of `pm`.
    """

    policy_gin: str
    policies: tuple
    eval_prompts: int = 1000
    ptau_prompts: Optional[int] = None
    pm_gin: str = "configs/demo/pm.gin"
    rm_gin: str = "configs/demo/rm.gin"
    judge_style_comparisons: int = 0
    pm_init: str = "sft"
    pm_style_gin: Optional[str] = None

    @property
    def policy_pm(self) -> str:
        """The stage whose PM the NLHF policies train against (and the report judges with)."""
        return "pm_style" if self.pm_style_gin else "pm"


# Comparisons of two reference-quality summaries in distinct styles appended to the
# quick demo's world (`WorldConfig.n_style_comparisons`). 0: the default world. With
# 20,000 of them and the PM and RM on 20,000 regular comparisons plus those, a full
# quick demo measured worse judges and no mechanism (PM test accuracy 0.681 against
# 0.769 without them, still *exhaustive* first, 5 of 6 policies above SFT; docs/results-world.md),
# so the quick preset keeps the default world; the paper preset's judges get the style
# comparisons (judge_style_comparisons).
WORLD_STYLE_COMPARISONS = 0

PRESETS = {
    # 1,000 prompts for P* (95% intervals about +-0.03); P_tau, which runs the PM on
    # every pair of policies, on the first 250.
    "quick": Preset(
        policy_gin="configs/demo/quick_policy.gin",
        policies=(("rlhf", "rlhf", ()), ("self_play", "self_play", ()), ("nash_md", "nash_md", ()),
                  ("best_response", "best_response", ()), ("nash_ema", "nash_ema", ("BETA = 0.9",))),
        ptau_prompts=250),
    # The paper's grid of policies on the quick preset's SFT (the same gin files, so a
    # finished quick demo's world/ and sft/ directories can be copied in), against
    # style-aware judges: the quick preset's PM ranks *exhaustive* first, so every
    # policy of the grid went there and the grid measured quality only (see
    # docs/results-world.md, the paper preset).
    "paper": Preset(
        policy_gin="configs/demo/paper_policy.gin",
        pm_gin="configs/demo/paper_pm.gin",
        rm_gin="configs/demo/paper_rm.gin",
        judge_style_comparisons=30000,
        pm_init="rm",
        pm_style_gin="configs/experiments/world_pm_style.gin",
        policies=(("rlhf", "rlhf", ()),)
        + tuple((f"nash_md_{b:g}", "nash_md", (f"BETA = {b}",))
                for b in (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0))
        + (("nash_ema_0.999", "nash_ema", ("BETA = 0.999",)),
           ("nash_ema_0.9995", "nash_ema", ("BETA = 0.9995",)),
           # Beyond the paper: the same loop with the IPO loss (configs/experiments'
           # world_online_ipo.gin, world_ipo_md.gin), against the same PM.
           ("online_ipo", "online_ipo", ()), ("ipo_md", "ipo_md", ()))),
}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage: an `nlhf train` run in `<out>/<name>`.

    Attributes:
      name: the stage and its directory.
      gin_files: relative to the repository, applied in order (experiment, then overlay).
      bindings: this run's inputs (directories, world seed) and per-policy values.
      needs: the stages whose output it reads (they must finish first).
    """

    name: str
    gin_files: tuple
    bindings: tuple
    needs: tuple


def _banner(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def _done(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "DONE"))


def _mark_done(path: str, seconds: float) -> None:
    with open(os.path.join(path, "DONE"), "w") as f:
        json.dump({"seconds": round(seconds, 1)}, f)


def _read_done(path: str) -> Optional[float]:
    """The wall time a finished stage recorded in its DONE file; None if unfinished."""
    if not _done(path):
        return None
    with open(os.path.join(path, "DONE")) as f:
        return json.load(f).get("seconds", 0.0)


def _train_args(stage: Stage, model_dir: str, repo: str, extra: tuple = ()) -> list:
    """`nlhf train` arguments of one stage; prints the equivalent shell command."""
    bindings = list(stage.bindings) + list(extra)
    args = [f"--gin_file={os.path.join(repo, g)}" for g in stage.gin_files]
    args += [f"--gin.MODEL_DIR='{model_dir}'"] + [f"--gin_bindings={b}" for b in bindings]
    # Quoted for a POSIX shell, so the printed command can be pasted as it is.
    shown = " ".join(shlex.quote(a) for a in [f"--gin_file={g}" for g in stage.gin_files]
                     + [f"--gin.MODEL_DIR='{model_dir}'"] + [f"--gin_bindings={b}" for b in bindings])
    print(f"+ nlhf train {shown}", flush=True)
    return args


def _train(stage: Stage, model_dir: str, repo: str) -> float:
    """Runs one `nlhf train` stage in this process; returns its wall time."""
    from nlhf_jax import run_train

    args = _train_args(stage, model_dir, repo)
    t = time.time()
    rc, result = run_train.run_cli(args)
    if rc:
        raise SystemExit(f"stage {model_dir} failed (exit {rc})")
    if result is not None and getattr(result, "preempted", False):
        # SIGTERM: the stage saved a checkpoint; it is not finished, so no DONE file.
        print(f"interrupted during {model_dir}; rerun `nlhf demo` to resume", flush=True)
        raise SystemExit(0)
    return time.time() - t


def _enable_compile_cache(cache_dir: str, min_compile_secs: float = 0.2) -> None:
    """Shares compiled programs between the stages through a JAX persistent cache.

    The four NLHF policy stages compile the same sampling, judge, reference and update
    programs, and the evaluation the same sampler for every policy: about 12 s of a
    policy stage's 27 s start-up on one core is compilation, and a cache hit skips it.
    Child stages inherit the setting through the environment; this process sets it
    directly as well (jax may already be imported). Results do not change: a hit
    loads the same executable that compiling would produce.
    """
    # The judge's forward pass compiles in about 1 s, under jax's default threshold.
    settings = {"jax_compilation_cache_dir": cache_dir,
                "jax_persistent_cache_min_compile_time_secs": min_compile_secs}
    os.makedirs(cache_dir, exist_ok=True)
    import jax

    for name, value in settings.items():
        os.environ[name.upper()] = str(value)
        jax.config.update(name, value)


def _stage_main(argv) -> int:
    """Entry point of a stage run in a child process (`--jobs` > 1).

    Exits 0 when the stage finished, `PREEMPTED_EXIT` when it saved a checkpoint on
    SIGTERM (not finished: the parent writes no DONE file), else `nlhf train`'s code.
    """
    from nlhf_jax import run_train

    rc, result = run_train.run_cli(argv)
    if rc == 0 and result is not None and getattr(result, "preempted", False):
        return PREEMPTED_EXIT
    return rc


PREEMPTED_EXIT = 75  # EX_TEMPFAIL


class StageError(SystemExit):
    """A stage run by `run_stages` failed or was interrupted; `.stage` names it."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def cpu_groups(jobs: int, cpus: Optional[list] = None) -> list[list[int]]:
    """Splits this process's CPUs into `jobs` disjoint groups (each non-empty).

    Every stage run beside others is pinned to one group, so two XLA thread pools do not
    fight over the same cores; the split depends only on `jobs` and the CPU set, never on
    timing, so each stage runs with the same threads on every run.
    """
    if cpus is None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus:
        return [[] for _ in range(jobs)]  # no affinity control here: leave it to the OS
    jobs = min(jobs, len(cpus))
    size = len(cpus) // jobs
    return [cpus[i * size:(i + 1) * size] for i in range(jobs)]


def run_stages(
    names: list,
    deps: dict,
    is_done,
    launch,
    jobs: int,
    on_finish=None,
    poll_s: float = 0.5,
) -> None:
    """Runs stages as child processes, at most `jobs` at a time, in dependency order.

    Args:
      names: stage names in plan order (ready stages start in this order).
      deps: name -> names it needs finished first (stages not in `names` count as done
        when `is_done` says so).
      is_done: name -> bool, true for stages finished earlier (skipped).
      launch: (name, slot) -> a `subprocess.Popen`-like object (poll, wait, terminate).
        `slot` is in range(jobs) and no two running stages share one.
      jobs: concurrent stages.
      on_finish: called as on_finish(name, seconds) when a stage exits 0.
      poll_s: seconds between polls.

    Raises:
      StageError: a stage failed or was preempted (the others running are stopped).
      SystemExit: the dependencies cannot be met.
    """
    pending = [n for n in names if not is_done(n)]
    finished = {n for n in names if is_done(n)}
    running: dict = {}  # name -> (process, slot, start time)
    try:
        while pending or running:
            free = sorted(set(range(jobs)) - {slot for _, slot, _ in running.values()})
            for name in list(pending):
                if not free:
                    break
                missing = [d for d in deps.get(name, []) if d not in finished and not is_done(d)]
                if not missing:
                    pending.remove(name)
                    running[name] = (launch(name, free[0]), free.pop(0), time.time())
            if not running:
                raise SystemExit(f"demo stages {pending} wait on stages that cannot run: {deps}")
            time.sleep(poll_s)
            for name, (proc, _, t0) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[name]
                if rc == PREEMPTED_EXIT:
                    raise StageError(name, f"stage {name} was interrupted; rerun `nlhf demo` to resume")
                if rc != 0:
                    raise StageError(name, f"stage {name} failed (exit {rc})")
                finished.add(name)
                if on_finish is not None:
                    on_finish(name, time.time() - t0)
    finally:
        for proc, _, _ in running.values():  # failure or Ctrl-C: stop the others cleanly
            proc.terminate()  # SIGTERM: a training stage saves a checkpoint and exits
        for proc, _, _ in running.values():
            proc.wait()


def _auto_jobs() -> int:
    import jax

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 2 if jax.default_backend() == "cpu" and (cpus or 1) >= 2 else 1


def _run_parallel(plan: list, out: str, repo: str, jobs: int, timings: dict) -> None:
    """The stages of `plan` as child processes, `jobs` at a time (see `run_stages`)."""
    import subprocess

    by_name = {stage.name: stage for stage in plan}
    groups = cpu_groups(jobs)
    jobs = len(groups)
    logs: dict = {}

    def is_done(name):
        path = os.path.join(out, name)
        seconds = _read_done(path)
        if seconds is not None and name not in timings:
            timings[name] = seconds
            print(f"[skip] {name}: finished earlier ({path})", flush=True)
        return seconds is not None

    def launch(name, slot):
        path = os.path.join(out, name)
        os.makedirs(path, exist_ok=True)
        log = os.path.join(path, "stage.log")
        cores = groups[slot]
        print(f"[start] {name} on CPUs {cores or 'any'} (log: {log})", flush=True)
        args = _train_args(by_name[name], path, repo, ("trainer.LoopConfig.progress = False",))
        logs[name] = open(log, "a")
        code = "import sys; from nlhf_jax import demo; sys.exit(demo._stage_main(sys.argv[1:]))"
        return subprocess.Popen(
            [sys.executable, "-c", code, *args], stdout=logs[name], stderr=subprocess.STDOUT,
            cwd=repo, preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)

    def on_finish(name, seconds):
        timings[name] = seconds
        _mark_done(os.path.join(out, name), seconds)
        print(f"[done] {name} in {seconds:.0f} s", flush=True)

    try:
        run_stages([stage.name for stage in plan], {stage.name: list(stage.needs) for stage in plan},
                   is_done, launch, jobs, on_finish)
    except StageError as e:
        log = os.path.join(out, e.stage, "stage.log")
        logs[e.stage].flush()
        with open(log) as f:
            tail = f.readlines()[-30:]
        print(f"--- last lines of {log} ---\n" + "".join(tail), file=sys.stderr, flush=True)
        raise
    finally:
        for f in logs.values():
            f.close()


def stage_plan(preset_name: str, out: str, world_seed: int = 0) -> tuple[list, list]:
    """The training stages of a preset, in order, and the policy names to evaluate.

    Returns:
      ([Stage], names): the world stages (`world`, `judge_world`) are not included;
      names are "sft", each policy, and "<ema run>*" for the averaged policy of each
      Nash-EMA-PG run.
    """
    preset = PRESETS[preset_name]
    if preset.pm_init not in ("sft", "rm"):
        raise ValueError(f"preset {preset_name!r}: pm_init must be 'sft' or 'rm', got {preset.pm_init!r}")
    world_dir = os.path.join(out, "world")
    judge_world = os.path.join(out, "judge_world") if preset.judge_style_comparisons else world_dir
    sft_dir = os.path.join(out, "sft")
    seed = (f"WORLD_SEED = {world_seed}",)
    plan = [Stage("sft", ("configs/experiments/world_sft.gin", "configs/demo/sft.gin"),
                  seed + (f"arrays.world_sft.data_dir = '{world_dir}'",), ())]
    # PM and RM start from the SFT policy (same dimensions), as the paper's do from
    # pretrained T5: the SFT encoder already reads posts and its decoder summaries; or
    # the PM from the RM (`pm_init`).
    judge_data = f"pairwise.world_data.data_dir = '{judge_world}'"
    pm_init = os.path.join(out, preset.pm_init)
    judges = (Stage("pm", ("configs/experiments/world_pm.gin", preset.pm_gin),
                    (judge_data, f"INITIAL_CHECKPOINT = '{pm_init}'"), tuple(dict.fromkeys(("sft", preset.pm_init)))),
              Stage("rm", ("configs/experiments/world_rm.gin", preset.rm_gin),
                    (judge_data, f"INITIAL_CHECKPOINT = '{sft_dir}'"), ("sft",)))
    # The RM first when the PM needs it, so a sequential run meets its dependencies.
    plan += list(judges[::-1] if preset.pm_init == "rm" else judges)
    if preset.pm_style_gin:
        if not preset.judge_style_comparisons:
            raise ValueError(f"preset {preset_name!r}: pm_style_gin trains on the judge world's style "
                             "comparisons; set judge_style_comparisons > 0")
        plan.append(Stage("pm_style", (preset.pm_style_gin,),
                          (judge_data, f"INITIAL_CHECKPOINT = '{os.path.join(out, 'pm')}'"), ("pm",)))
    policy_inputs = seed + (f"SFT_DIR = '{sft_dir}'", f"arrays.world_prompts.data_dir = '{world_dir}'",
                            f"vocab.world_vocabulary.data_dir = '{world_dir}'",
                            f"describe.StyleMonitor.data_dir = '{world_dir}'")
    names = ["sft"]
    for name, algorithm, extra in preset.policies:
        judge = "rm" if algorithm == "rlhf" else preset.policy_pm
        plan.append(Stage(name, (f"configs/experiments/world_{algorithm}.gin", preset.policy_gin),
                          policy_inputs + tuple(extra) + (f"JUDGE_DIR = '{os.path.join(out, judge)}'",),
                          ("sft", judge)))
        names.append(name)
        if algorithm == "nash_ema":
            names.append(name + "*")
    return plan, names


def _forget_stale_worlds(out: str, worlds: dict) -> list:
    """Un-finishes each world stage (`<out>/<name>`) whose world is not of its config.

    An --out from an earlier version (or another world) would otherwise skip the stage
    and train on the old world; this way the stage regenerates it. The SFT data, prompts
    and vocabulary do not depend on the style comparisons, so finished SFT and policy
    stages stay valid; judges trained on the old comparisons are kept too (said).

    Returns:
      The names of the world stages that will be regenerated.
    """
    from nlhf_jax.data.world import generator

    stale = []
    for name, config in worlds.items():
        path = os.path.join(out, name)
        if _done(path) and not generator.is_current(path, config):
            print(f"[redo] {name}: {path} holds a world of another config; regenerating it. "
                  "Judges trained on the old one are kept; delete their directories to "
                  "retrain them.", flush=True)
            os.remove(os.path.join(path, "DONE"))
            stale.append(name)
    return stale


def _parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nlhf demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="output directory")
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--world_seed", type=int, default=0)
    parser.add_argument("--stop_after", default=None, help="stop after this stage (debugging)")
    parser.add_argument(
        "--jobs", type=int, default=0,
        help="training stages run at once after SFT (PM beside RM, then policies), each "
             "pinned to its share of the CPUs; 0: 2 on a CPU-only machine with 2 or more "
             "cores, else 1 (stages run in this process)")
    parser.add_argument(
        "--compile_cache", default=None,
        help="JAX persistent compilation cache shared by the stages (default: "
             "<out>/jax_cache; '' turns it off)")
    args = parser.parse_args(argv)
    if args.jobs < 0:
        parser.error(f"--jobs must be >= 0, got {args.jobs}")
    return args


def main(argv) -> int:
    args = _parse_args(argv)
    preset = PRESETS[args.preset]
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    cache_dir = os.path.join(out, "jax_cache") if args.compile_cache is None else args.compile_cache
    if cache_dir:
        _enable_compile_cache(os.path.abspath(cache_dir))
    repo = gin_setup.REPO_ROOT
    timings: dict[str, float] = {}
    t_start = time.time()

    def stage(name: str, fn) -> None:
        path = os.path.join(out, name)
        seconds = _read_done(path)
        if seconds is not None:
            print(f"[skip] {name}: finished earlier ({path})", flush=True)
            timings[name] = seconds
            return
        _banner(name)
        os.makedirs(path, exist_ok=True)
        t = time.time()
        fn(path)
        timings[name] = time.time() - t
        _mark_done(path, timings[name])
        print(f"[done] {name} in {timings[name]:.0f} s", flush=True)
        if args.stop_after == name:
            raise SystemExit(0)

    from nlhf_jax.data.world import generator

    worlds = {"world": generator.WorldConfig(seed=args.world_seed, n_style_comparisons=WORLD_STYLE_COMPARISONS)}
    if preset.judge_style_comparisons:
        worlds["judge_world"] = generator.WorldConfig(
            seed=args.world_seed, n_style_comparisons=preset.judge_style_comparisons)
    _forget_stale_worlds(out, worlds)

    def make_world(path):
        generator.ensure_world(path, worlds["world"])
        from nlhf_jax.data.world import cli as world_cli

        world_cli.main(["--describe", "--seed", str(args.world_seed)])

    stage("world", make_world)
    if "judge_world" in worlds:
        stage("judge_world", lambda path: generator.ensure_world(path, worlds["judge_world"]))
    plan, names = stage_plan(args.preset, out, args.world_seed)
    jobs = args.jobs or _auto_jobs()
    if jobs == 1 or args.stop_after:
        for st in plan:
            stage(st.name, lambda p, st=st: _train(st, p, repo))
    else:
        # SFT alone with every core (everything else reads it), then the rest side by
        # side, each pinned to its own CPU group: on 2 cores one process per core does
        # 1.4x the work of one process on both (8.9 vs 12.4 SFT steps/s measured).
        stage("sft", lambda p: _train(plan[0], p, repo))
        _run_parallel(plan[1:], out, repo, jobs, timings)

    world_dir = os.path.join(out, "world")

    def evaluate(path):
        from nlhf_jax.evaluation import report

        report.write_demo_report(out, path, names, world_dir, preset.eval_prompts,
                                 tau=0.008, timings=timings, preset=args.preset,
                                 ptau_prompts=preset.ptau_prompts, pm_name=preset.policy_pm)

    stage("evaluate", evaluate)
    total = time.time() - t_start
    print(f"\nreport: {os.path.join(out, 'evaluate', 'report.md')}  (this run: {total / 60:.1f} min)")
    with open(os.path.join(out, "evaluate", "matrix_pstar", "matrix.md")) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
