"""`nlhf evaluate`: the paper's win-rate matrix for a set of trained policies.

    nlhf evaluate --policy sft=runs/demo/sft --policy nashmd=runs/demo/nash_md \
        --judge world --num_prompts 1000 --out runs/demo/eval

For every pair of policies, the same N held-out prompts, one response per policy per
prompt (decoding settings recorded), and every cell P(column > row) with a 95%
Clopper-Pearson interval (Table 1 of the paper). Judges: the world's raters P*
(`world`), a preference model (`pm:DIR`, scored in both orders), a reward model
(`rm:DIR`), and P_tau (`ptau:DIR`, Table 2: the preference model plus the KL terms
tau * [log pi_r(y_r)/mu(y_r) - log pi_c(y_c)/mu(y_c)] with mu the SFT policy).
Outputs: matrix.md, matrix.csv, matrix.json (everything needed to recompute),
heatmap.png and, on the world, the style distribution of each policy next to the
regularised Nash equilibrium over styles. `--judge_diagnostics PM_DIR[,RM_DIR]` adds
judge_diagnostics.md/.json: the learned judges' style matrices against P*'s and the
policies they predict at --tau_nash and --tau_rlhf (`evaluation.diagnostics`).

Sampling every policy is most of the run, so every argument is checked first
(`check_args`): the judge spec and its directory, each policy directory, the world and
its prompt splits, the numbers, and that each policy's embedding table fits the world's
vocabulary. A policy trained on another vocabulary otherwise samples garbage that every
judge scores 0.5, with no error anywhere. Problems end the command with exit code 2
before anything is sampled.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Any, Optional, Sequence

from nlhf_jax import decoding
from nlhf_jax.evaluation import sampling
from nlhf_jax.evaluation import stats
from nlhf_jax.evaluation import tables


JUDGE_SPECS = "world, pm:DIR, rm:DIR or ptau:DIR"
# How far a model's vocab_size may exceed its SentencePiece pieces: T5 pads 32,100 ids to
# 32,128 and the world configs pad its <300 pieces to 320, both for even sharding. A
# table past the pieces rounded up to a multiple of this belongs to another vocabulary
# (e.g. T5's 32,128 on the world), whose samples decode to noise.
VOCAB_PADDING = 128


@dataclasses.dataclass
class Plan:
    """`nlhf evaluate`'s arguments once checked: what sampling and judging need.

    Attributes:
      policies: (name, run directory), in the order given.
      judge_kind: world, pm, rm or ptau; judge_dir its run directory (None: world).
      reference_dir: mu of P_tau (ptau only).
      world_dir: the world whose prompts are sampled and whose raters are P*.
      prompt_files: the prompt JSONL file of each split.
      cfg: decoding settings.
      diagnostics: (PM directory, RM directory or None) of --judge_diagnostics, or None.
    """

    policies: list
    judge_kind: str
    judge_dir: Optional[str]
    reference_dir: Optional[str]
    world_dir: str
    prompt_files: list
    cfg: decoding.SamplingConfig
    diagnostics: Optional[tuple[str, Optional[str]]] = None


def parse_judge(spec: str) -> tuple[str, Optional[str]]:
    """`--judge` -> (kind, directory or None for the world).

    Raises:
      ValueError: naming the spec and what is wrong with it.
    """
    kind, sep, judge_dir = spec.partition(":")
    if kind not in ("world", "pm", "rm", "ptau"):
        raise ValueError(f"--judge {spec!r}: unknown kind {kind!r}; expected {JUDGE_SPECS}")
    if kind == "world" and sep:
        raise ValueError(f"--judge {spec!r}: the world judge takes no directory; expected {JUDGE_SPECS}")
    if kind != "world" and not judge_dir:
        raise ValueError(f"--judge {spec!r}: {kind} needs a directory ({kind}:DIR); expected {JUDGE_SPECS}")
    return kind, judge_dir or None


def _has_checkpoint(model_dir: str) -> bool:
    from nlhf_jax import checkpointing

    # The resolution `checkpointing.restore_params` applies when the run is loaded.
    try:
        return os.path.isdir(checkpointing._resolve_step_dir(model_dir))
    except FileNotFoundError:
        return False


def run_dir_problems(what: str, model_dir: str) -> tuple[Any, list[str]]:
    """Whether `model_dir` is a finished run `trainer.load_frozen` can load.

    Args:
      what: the argument that named it (starts every message), e.g. "--policy sft=runs/sft".
      model_dir: the directory.

    Returns:
      (its model config, or None if unreadable; problems, all of them at once).
    """
    from nlhf_jax import checkpointing

    if not os.path.isdir(model_dir):
        return None, [f"{what}: no directory {model_dir}"]
    config, problems = None, []
    path = os.path.join(model_dir, checkpointing.MODEL_CONFIG_FILE)
    if not os.path.isfile(path):
        problems.append(f"{what}: no {path} (not a run written by `nlhf train`)")
    else:
        try:
            config = checkpointing.load_model_config(model_dir)
        except (ValueError, TypeError, AttributeError) as e:  # bad JSON, wrong or unknown fields
            problems.append(f"{what}: {path} is not a model config ({e})")
    if not _has_checkpoint(model_dir):
        problems.append(f"{what}: no checkpoint under {model_dir} (no checkpoints/<step>/default)")
    return config, problems


def policy_vocab_problem(what: str, model_dir: str, vocab_size: int, pieces: int, vocab_file: str,
                         requested: int = 0) -> Optional[str]:
    """Whether a policy's embedding table fits the vocabulary its prompts are tokenised with.

    The prompts' ids must all have a row (JAX clamps an out-of-range id silently), and a
    table larger than the pieces plus padding (`VOCAB_PADDING`, or the size the world
    asked SentencePiece for, `requested`) was trained on another vocabulary.

    Returns:
      None, or a message naming the policy, its model config and both sizes.
    """
    from nlhf_jax import checkpointing

    head = (f"{what}: vocab_size {vocab_size} ({os.path.join(model_dir, checkpointing.MODEL_CONFIG_FILE)}) "
            f"but the world's vocabulary has {pieces} pieces ({vocab_file})")
    if vocab_size < pieces:
        return head + ": the prompts' token ids would index past its embedding table"
    bound = max(-(-pieces // VOCAB_PADDING) * VOCAB_PADDING, requested)
    if vocab_size > bound:
        return head + f" (at most {bound} rows with padding): it was trained on another vocabulary"
    return None


def judge_problems(spec: str, kind: str, judge_dir: str, what: Optional[str] = None) -> list[str]:
    """Whether a pm/rm/ptau directory holds a learned judge that `judges.load_judge` loads.

    A learned judge re-tokenises the decoded texts with its own vocabulary copy (named by
    judge.json), so it need not share the world's vocabulary; what must agree is that
    copy and the judge's own embedding table.

    Args:
      spec: the --judge value; what: the argument that starts every message (default
        "--judge SPEC"; another argument gets no "use --judge ..." hint).
    """
    from nlhf_jax import checkpointing
    from nlhf_jax.data import pairwise

    hint = what is None
    what = what or f"--judge {spec}"
    if not os.path.isdir(judge_dir):
        return [f"{what}: no directory {judge_dir}"]
    problems, encoder = [], None
    judge_file = os.path.join(judge_dir, pairwise.JUDGE_FILE)
    if not os.path.isfile(judge_file):
        problems.append(f"{what}: no {judge_file} (not a preference or reward model run)")
    else:
        try:
            judge_spec, encoder = pairwise.load_judge_spec(judge_dir)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:  # json, fields, spiece
            problems.append(f"{what}: {judge_file} is unreadable ({e!r})")
        else:
            wanted = {"pm": pairwise.PREFERENCE, "rm": pairwise.REWARD}.get(kind)
            got = judge_spec.get("kind")
            if wanted and got != wanted:  # ptau takes either
                other = "rm" if got == pairwise.REWARD else "pm"
                problems.append(f"{what}: a {got} model (judge.json kind {got!r}), not a {wanted} model"
                                + (f"; use --judge {other}:{judge_dir}" if hint else ""))
    config, run_problems = run_dir_problems(what, judge_dir)
    problems += run_problems
    if config is not None and encoder is not None and encoder.tokenizer.vocab_size > config.vocab_size:
        vocab_file = os.path.join(judge_dir, judge_spec["vocab_file"])
        config_file = os.path.join(judge_dir, checkpointing.MODEL_CONFIG_FILE)
        problems.append(f"{what}: vocab_size {config.vocab_size} ({config_file}) but its "
                        f"vocabulary {vocab_file} has {encoder.tokenizer.vocab_size} pieces: its token ids "
                        f"would index past its embedding table")
    return problems


def world_problems(world_dir: str, splits: Sequence[str]) -> list[str]:
    """Whether `world_dir` holds a generated world with these prompt splits."""
    from nlhf_jax.data.world import generator

    if not os.path.isdir(world_dir):
        return [f"--world_dir {world_dir}: no directory {world_dir} (write one with `nlhf world --generate`)"]
    meta = os.path.join(world_dir, "world.json")
    if not os.path.isfile(meta):
        return [f"--world_dir {world_dir}: no {meta} (not a world written by `nlhf world --generate`)"]
    problems = []
    if not os.path.isfile(generator.vocab_path(world_dir)):
        problems.append(f"--world_dir {world_dir}: no vocabulary {generator.vocab_path(world_dir)}")
    for split in splits:
        path = generator.split_path(world_dir, "prompts", split)
        if not os.path.isfile(path):
            problems.append(f"--split {split!r}: no {path} (the world's splits: {', '.join(generator.SPLITS)})")
    return problems


def check_args(a: argparse.Namespace) -> tuple[Optional[Plan], list[str]]:
    """Every check `nlhf evaluate` can make before it samples, all problems at once.

    Reads only small files (configs, judge.json, the world's vocabulary); loads no model.
    Without --world_dir the default world is generated first if needed (as sampling
    would), unless another argument is already wrong.

    Returns:
      (the plan, []) or (None, the problems: one message each, naming the argument).
    """
    from nlhf_jax.data.world import generator

    problems = _number_problems(a)
    policies, configs, policy_problems = _policy_problems(a.policy)
    problems += policy_problems
    kind, judge_dir, ref_dir, judge_arg_problems = _judge_arg_problems(a, policies, configs)
    problems += judge_arg_problems
    diag, diag_problems = _diagnostics_problems(a.judge_diagnostics)
    problems += diag_problems
    splits = a.split.split("+")
    world_dir, requested, world_refusal = _checked_world(a.world_dir, splits, problems)
    if world_refusal:
        return None, world_refusal
    # The prompts are tokenised with the world's vocabulary and the samples decoded with
    # it: every policy (and mu, which scores the same tokens) must have been trained on it.
    named = [(f"--policy {n}={d}", d) for n, d in policies]
    if a.reference and kind == "ptau":
        named.append((f"--reference {ref_dir}", ref_dir))
    problems += _vocab_problems(named, configs, world_dir, requested)
    if problems:
        return None, problems
    cfg = decoding.SamplingConfig(temperature=a.temperature, max_decode_len=a.max_decode_len)
    files = [generator.split_path(world_dir, "prompts", s) for s in splits]
    return Plan(policies, kind, judge_dir, ref_dir, world_dir, files, cfg, diag), []


def _diagnostics_problems(spec: Optional[str]) -> tuple[Optional[tuple[str, Optional[str]]], list[str]]:
    """--judge_diagnostics PM_DIR[,RM_DIR]: ((PM directory, RM directory or None), problems);
    (None, []) when not given."""
    if spec is None:
        return None, []
    what = f"--judge_diagnostics {spec}"
    parts = spec.split(",")
    if len(parts) > 2 or not all(parts):
        return None, [f"{what}: expected PM_DIR or PM_DIR,RM_DIR"]
    pm_dir, rm_dir = parts[0], (parts[1] if len(parts) == 2 else "")
    problems = judge_problems(spec, "pm", pm_dir, what=f"{what} (PM_DIR)")
    if rm_dir:
        problems += judge_problems(spec, "rm", rm_dir, what=f"{what} (RM_DIR)")
    return (pm_dir, rm_dir or None), problems


def _number_problems(a: argparse.Namespace) -> list[str]:
    """--num_prompts, --max_decode_len, --temperature, --tau, --tau_nash, --tau_rlhf, and
    --out not a file."""
    problems = []
    for flag, value in (("--num_prompts", a.num_prompts), ("--max_decode_len", a.max_decode_len)):
        if value < 1:
            problems.append(f"{flag} {value}: must be at least 1")
    # argparse's float() accepts nan and inf, which no comparison below would refuse.
    if not (math.isfinite(a.temperature) and a.temperature > 0):
        problems.append(f"--temperature {a.temperature}: must be > 0 and finite")
    if not (math.isfinite(a.tau) and a.tau >= 0):
        problems.append(f"--tau {a.tau}: must be >= 0 and finite")
    # The Nash and RLHF solutions divide by them (judge diagnostics).
    for flag, value in (("--tau_nash", a.tau_nash), ("--tau_rlhf", a.tau_rlhf)):
        if not (math.isfinite(value) and value > 0):
            problems.append(f"{flag} {value}: must be > 0 and finite")
    if a.out and os.path.exists(a.out) and not os.path.isdir(a.out):
        problems.append(f"--out {a.out}: a file, not a directory")
    return problems


def _policy_problems(specs: Sequence[str]) -> tuple[list, dict, list[str]]:
    """The --policy NAME=DIR arguments: (name, directory) in order, each directory's
    model config (None if unreadable), and the problems."""
    policies, configs, problems = [], {}, []
    for spec in specs:
        name, sep, model_dir = spec.partition("=")
        if not (sep and name and model_dir):
            problems.append(f"--policy {spec!r}: expected NAME=DIR")
            continue
        if name in dict(policies):
            problems.append(f"--policy {name}: named twice ({dict(policies)[name]} and {model_dir})")
            continue
        policies.append((name, model_dir))
        configs[model_dir], run_problems = run_dir_problems(f"--policy {name}={model_dir}", model_dir)
        problems += run_problems
    return policies, configs, problems


def _judge_arg_problems(a: argparse.Namespace, policies: list, configs: dict):
    """--judge and, for ptau, mu (--reference or the policy named sft); adds the
    reference's model config to `configs`.

    Returns:
      (judge kind, judge directory, reference directory, problems); None where unknown.
    """
    problems = []
    kind = judge_dir = ref_dir = None
    try:
        kind, judge_dir = parse_judge(a.judge)
    except ValueError as e:
        problems.append(str(e))
    if judge_dir:
        problems += judge_problems(a.judge, kind, judge_dir)
    if kind == "ptau":
        ref_dir = a.reference or dict(policies).get("sft")
        if not ref_dir:
            problems.append("--judge ptau needs --reference or a policy named 'sft'")
        elif a.reference:
            configs[ref_dir], run_problems = run_dir_problems(f"--reference {ref_dir}", ref_dir)
            problems += run_problems
    return kind, judge_dir, ref_dir, problems


def _checked_world(world_arg: Optional[str], splits: Sequence[str], problems: list[str]):
    """The world of --world_dir, or the default one (generated if needed, unless
    `problems` already refuse the command), with its prompt splits checked.

    Returns:
      (world directory, the vocabulary size it asked SentencePiece for, []) or
      (None, None, every problem: `problems` and the world's) to refuse the command.
    """
    from nlhf_jax.data.world import generator

    if world_arg:
        # Used as it is: `generator.ensure_world` would regenerate a world of another
        # config (another seed, a smaller test world) as the default one.
        world_dir = os.path.abspath(world_arg)
    elif problems:
        return None, None, problems  # do not generate the default world for a failing command
    else:
        try:
            world_dir = generator.ensure_world(generator.default_data_dir(0))
        except FileExistsError as e:  # $NLHF_DATA_DIR names a directory that holds no world
            return None, None, [f"the default world: {e} (give --world_dir, or fix $NLHF_DATA_DIR)"]
    bad_world = world_problems(world_dir, splits)
    if bad_world:
        return None, None, problems + bad_world
    try:
        requested = generator.load_config(world_dir).vocab_size
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, None, problems + [f"--world_dir {world_dir}: {os.path.join(world_dir, 'world.json')} "
                                       f"is unreadable ({e!r})"]
    return world_dir, requested, []


def _vocab_problems(named: Sequence[tuple[str, str]], configs: dict, world_dir: str, requested: int) -> list[str]:
    """`policy_vocab_problem` of each (argument, run directory) whose config was read."""
    from nlhf_jax.data import pairwise
    from nlhf_jax.data.world import generator

    vocab_file = generator.vocab_path(world_dir)
    pieces = pairwise.Tokenizer(vocab_file).vocab_size
    problems = []
    for what, model_dir in named:
        if configs[model_dir] is None:
            continue  # already reported
        problem = policy_vocab_problem(what, model_dir, configs[model_dir].vocab_size, pieces, vocab_file, requested)
        if problem:
            problems.append(problem)
    return problems


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nlhf evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", action="append", required=True, metavar="NAME=DIR",
                   help="a policy run directory (repeat); SFT included")
    p.add_argument("--judge", default="world", help="world | pm:DIR | rm:DIR | ptau:DIR")
    p.add_argument("--reference", default=None, help="mu for ptau (default: the policy named 'sft')")
    p.add_argument("--tau", type=float, default=0.008, help="KL coefficient of P_tau")
    p.add_argument("--world_dir", default=None, help="the embedded world (default: seed 0's)")
    p.add_argument("--split", default="valid+test", help="prompt split(s) of the world")
    p.add_argument("--num_prompts", type=int, default=1000)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max_decode_len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge_diagnostics", default=None, metavar="PM_DIR[,RM_DIR]",
                   help="also compare a PM (and an RM) with P* at the style level and the policies they "
                        "predict: judge_diagnostics.md/.json in --out")
    p.add_argument("--tau_nash", type=float, default=0.008,
                   help="judge diagnostics: the tau Nash-MD-PG trained with")
    p.add_argument("--tau_rlhf", type=float, default=0.05,
                   help="judge diagnostics: the tau RLHF trained with")
    p.add_argument("--out", required=True)
    return p


def main(argv) -> int:
    p = _parser()
    a = p.parse_args(argv)
    plan, problems = check_args(a)
    if problems:
        p.error(problems[0] if len(problems) == 1 else
                f"{len(problems)} problems, nothing sampled:\n  " + "\n  ".join(problems))
    from nlhf_jax.data import arrays, vocab

    policies, kind, world_dir = plan.policies, plan.judge_kind, plan.world_dir
    voc = vocab.world_vocabulary(world_dir)
    files = plan.prompt_files
    ds = arrays.prompt_dataset(files if len(files) > 1 else files[0], voc, max_examples=a.num_prompts)
    # Every judge is given the prompt texts (`templates.post_prompt`), as the PM and RM
    # were trained; the world's parser in the quality table reads the post bodies.
    prompts, posts = ds.meta["prompts"], ds.meta["posts"]
    if not prompts:
        p.error(f"--split {a.split}: no prompts in {', '.join(files)}")
    # The judges' models are loaded before sampling, so that their failures come first too.
    judge, title = _load_judge(plan, a.tau)
    diag_judges = _load_diagnostics_judges(plan)
    samples = sampling.sample_policies(policies, ds.features["prompts"], voc, plan.cfg, a.seed,
                                       plan.reference_dir)
    names = [s.name for s in samples]
    if kind == "ptau":
        cells = stats.ptau_cells(samples, prompts, judge.prob, a.tau,
                                 antisymmetric=getattr(judge, "both_orders", False))
    else:
        responses = {s.name: s.texts for s in samples}
        cells = stats.win_rate_matrix(names, responses, prompts, lambda x, y, z: stats.judge_texts(judge, x, y, z))
    extra = {"decoding": dataclasses.asdict(plan.cfg), "num_prompts": len(prompts), "split": a.split,
             "policies": dict(policies), "judge": a.judge}
    md = tables.write_outputs(a.out, names, cells, title, extra)
    st_md, st = tables.style_table(samples, world_dir, (0.01, 0.02, 0.05, 0.1))
    q_md, q = tables.quality_table(samples, world_dir, posts)
    qs_md, qs = tables.quality_by_style_table(samples, world_dir, posts)
    with open(os.path.join(a.out, "styles.md"), "w") as f:
        f.write(st_md + "\n\n" + q_md + "\n\nBy style:\n\n" + qs_md + "\n")
    with open(os.path.join(a.out, "styles.json"), "w") as f:
        json.dump({**st, "quality": q, "quality_by_style": qs}, f, indent=1)
    print(md, st_md, q_md, qs_md, sep="\n\n")
    # Style shares by training step, for the runs that logged them (world policy runs).
    if tables.style_curves(os.path.join(a.out, "style_curves.png"), dict(policies)):
        print(f"\nstyle shares by training step: {os.path.join(a.out, 'style_curves.png')}")
    if diag_judges is not None:
        print()
        print(write_judge_diagnostics(a.out, world_dir, *diag_judges, tau_nash=a.tau_nash,
                                      tau_rlhf=a.tau_rlhf))
    return 0


def _load_judge(plan: Plan, tau: float) -> tuple[Any, str]:
    """The --judge judge and the matrix's title."""
    from nlhf_jax import judges

    if plan.judge_kind == "world":
        return judges.WorldJudge(plan.world_dir), "world raters P*"
    title = {"pm": "preference model", "rm": "reward model", "ptau": f"P_tau (tau={tau})"}[plan.judge_kind]
    return judges.load_judge(plan.judge_dir), title


def _load_diagnostics_judges(plan: Plan) -> Optional[tuple[Any, Any]]:
    """(PM judge, RM judge or None) of --judge_diagnostics, or None when not asked for."""
    from nlhf_jax import judges

    if plan.diagnostics is None:
        return None
    pm_dir, rm_dir = plan.diagnostics
    return judges.load_judge(pm_dir), (judges.load_judge(rm_dir) if rm_dir else None)


def write_judge_diagnostics(out: str, world_dir: str, pm, rm, *, tau_nash: float, tau_rlhf: float) -> str:
    """`diagnostics.world_judge_diagnostics` into <out>/judge_diagnostics.md and .json;
    returns the markdown."""
    from nlhf_jax.evaluation import diagnostics

    md, numbers = diagnostics.world_judge_diagnostics(world_dir, pm, rm, tau_nash=tau_nash, tau_rlhf=tau_rlhf)
    md = diagnostics.HEADING + "\n\n" + md
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "judge_diagnostics.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(out, "judge_diagnostics.json"), "w") as f:
        json.dump(numbers, f, indent=1)
    return md


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
