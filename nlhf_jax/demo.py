"""`nlhf demo` (= `make demo`): the whole NLHF pipeline on the embedded world.

Stages, each an ordinary gin run (the exact `nlhf train` command is printed), each in
its own directory under `--out` (default `runs/demo`):

  world          generate the world and its vocabulary (seeded; cached)
  sft            supervised fine-tuning -> the initial policy and the reference mu
  pm, rm         preference model P(y > y' | x) and Bradley-Terry reward model
  rlhf           REINFORCE on the RM with KL to mu (the baseline)
  self_play      Nash-MD-PG, beta = 0
  nash_md        Nash-MD-PG, beta = 0.125 (the paper's choice)
  best_response  Nash-MD-PG, beta = 1
  nash_ema       Nash-EMA-PG (and its averaged policy, nash_ema*)
  evaluate       win-rate matrices under the world's raters P* and under P_tau,
                 heatmaps, training curves, style table -> report.md

A finished stage leaves a DONE file and is skipped on rerun; a killed stage resumes
from its own checkpoints. Presets: `quick` (default; 23 minutes measured on 2 CPU cores)
and `paper` (the paper's grid of beta and two EMA decays, 300 steps each, on the quick
preset's SFT, PM and RM).
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Optional

# name -> extra gin bindings per stage. Model sizes and step counts are the only
# differences between presets; algorithms and their hyper-parameters are the gin files'.
_TINY_MODEL = [
    "t5.T5Config.emb_dim = 64", "t5.T5Config.num_heads = 4", "t5.T5Config.head_dim = 16",
    "t5.T5Config.mlp_dim = 128",
]
_QUICK_SFT = _TINY_MODEL + ["NUM_STEPS = 6000", "BATCH_SIZE = 32", "LEARNING_RATE = 3e-3",
                            "train/arrays.world_sft.input_len = 80",
                            "eval/arrays.world_sft.input_len = 80",
                            "trainer.LoopConfig.eval_every = 0"]
_QUICK_PM = ["NUM_STEPS = 1000", "train_state.ScheduleConfig.kind = 'linear_warmup'"]
_QUICK_RM = ["NUM_STEPS = 800"]
# tau is each gin file's: 0.008 for the NLHF runs and 0.05 for RLHF, the paper's values.
_POLICY = ["BATCH_SIZE = 32", "LEARNING_RATE = 3e-4", "arrays.world_prompts.input_len = 80"]
PRESETS = {
    "quick": {
        "sft": _QUICK_SFT,
        "pm": _QUICK_PM,
        "rm": _QUICK_RM,
        "policy": _POLICY + ["NUM_STEPS = 120"],
        "policies": [("rlhf", "rlhf", []), ("self_play", "self_play", []),
                     ("nash_md", "nash_md", []), ("best_response", "best_response", []),
                     ("nash_ema", "nash_ema", ["BETA = 0.9"])],
        "eval_prompts": 500,
    },
    # The paper's grid of policies on the quick preset's SFT, PM and RM (the same
    # bindings, so a finished quick demo's world/sft/pm/rm directories can be copied in).
    "paper": {
        "sft": _QUICK_SFT,
        "pm": _QUICK_PM,
        "rm": _QUICK_RM,
        "policy": _POLICY + ["NUM_STEPS = 300"],
        "policies": [("rlhf", "rlhf", [])]
        + [(f"nash_md_{b:g}", "nash_md", [f"BETA = {b}"])
           for b in (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0)]
        + [("nash_ema_0.999", "nash_ema", ["BETA = 0.999"]),
           ("nash_ema_0.9995", "nash_ema", ["BETA = 0.9995"])],
        "eval_prompts": 1000,
    },
}


def _banner(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def _done(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "DONE"))


def _mark_done(path: str, seconds: float) -> None:
    with open(os.path.join(path, "DONE"), "w") as f:
        json.dump({"seconds": round(seconds, 1)}, f)


def _train(gin_file: str, model_dir: str, bindings: list, repo: str) -> float:
    """Runs one `nlhf train` stage in this process; returns its wall time."""
    from nlhf_jax import run_train

    args = [f"--gin_file={os.path.join(repo, gin_file)}", f"--gin.MODEL_DIR='{model_dir}'"]
    args += [f"--gin_bindings={b}" for b in bindings]
    shown = " ".join([f"--gin_file={gin_file}", f"--gin.MODEL_DIR=\\\"{model_dir}\\\""]
                     + [f"--gin_bindings='{b}'" for b in bindings])
    print(f"+ nlhf train {shown}", flush=True)
    t = time.time()
    rc, result = run_train.run_cli(args)
    if rc:
        raise SystemExit(f"stage {model_dir} failed (exit {rc})")
    if result is not None and getattr(result, "preempted", False):
        # SIGTERM: the stage saved a checkpoint; it is not finished, so no DONE file.
        print(f"interrupted during {model_dir}; rerun `nlhf demo` to resume", flush=True)
        raise SystemExit(0)
    return time.time() - t


def stage_plan(preset_name: str, out: str, world_seed: int = 0) -> tuple[list, list]:
    """The training stages of a preset, in order, and the policy names to evaluate.

    Returns:
      ([(stage name, gin file relative to the repository, gin bindings)], names): the
      world stage is not included; names are "sft", each policy, and "<ema run>*" for the
      averaged policy of each Nash-EMA-PG run.
    """
    preset = PRESETS[preset_name]
    world_dir = os.path.join(out, "world")
    sft_dir = os.path.join(out, "sft")
    seed_bindings = [f"WORLD_SEED = {world_seed}"]
    plan = [("sft", "configs/experiments/world_sft.gin",
             preset["sft"] + seed_bindings + [f"arrays.world_sft.data_dir = '{world_dir}'"])]
    # PM and RM start from the SFT policy (same dimensions), as the paper's do from
    # pretrained T5: the SFT encoder already reads posts and its decoder summaries.
    pm_common = [f"pairwise.world_data.data_dir = '{world_dir}'",
                 f"INITIAL_CHECKPOINT = '{sft_dir}'"]
    plan.append(("pm", "configs/experiments/world_pm.gin", preset["pm"] + pm_common))
    plan.append(("rm", "configs/experiments/world_rm.gin", preset["rm"] + pm_common))
    policy_common = preset["policy"] + seed_bindings + [
        f"SFT_DIR = '{sft_dir}'", f"arrays.world_prompts.data_dir = '{world_dir}'",
        f"vocab.world_vocabulary.data_dir = '{world_dir}'"]
    names = ["sft"]
    for name, gin_name, extra in preset["policies"]:
        judge_dir = os.path.join(out, "rm" if gin_name == "rlhf" else "pm")
        plan.append((name, f"configs/experiments/world_{gin_name}.gin",
                     policy_common + extra + [f"JUDGE_DIR = '{judge_dir}'"]))
        names.append(name)
        if gin_name == "nash_ema":
            names.append(name + "*")
    return plan, names


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="nlhf demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="output directory")
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--world_seed", type=int, default=0)
    parser.add_argument("--stop_after", default=None, help="stop after this stage (debugging)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    from nlhf_jax import run_train

    repo = run_train.REPO_ROOT
    timings: dict[str, float] = {}
    t_start = time.time()

    def stage(name: str, fn) -> None:
        path = os.path.join(out, name)
        if _done(path):
            print(f"[skip] {name}: finished earlier ({path})", flush=True)
            with open(os.path.join(path, "DONE")) as f:
                timings[name] = json.load(f).get("seconds", 0.0)
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

    world_dir = os.path.join(out, "world")

    def make_world(path):
        generator.ensure_world(path, generator.WorldConfig(seed=args.world_seed))
        from nlhf_jax.data.world import cli as world_cli

        world_cli.main(["--describe", "--seed", str(args.world_seed)])

    stage("world", make_world)
    plan, names = stage_plan(args.preset, out, args.world_seed)
    for name, gin_file, bindings in plan:
        stage(name, lambda p, g=gin_file, b=bindings: _train(g, p, b, repo))

    def evaluate(path):
        from nlhf_jax import report

        report.write_demo_report(out, path, names, world_dir, preset["eval_prompts"],
                                 tau=0.008, timings=timings, preset=args.preset)

    stage("evaluate", evaluate)
    total = time.time() - t_start
    print(f"\nreport: {os.path.join(out, 'evaluate', 'report.md')}  (this run: {total / 60:.1f} min)")
    with open(os.path.join(out, "evaluate", "matrix_pstar", "matrix.md")) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
