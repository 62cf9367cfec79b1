"""The demo's stage scheduler: dependency order, concurrency, failures, resumption."""

import dataclasses
import os
import subprocess
import sys

import pytest

from nlhf_jax import demo


def _plan(tmp_path):
    plan, _ = demo.stage_plan("quick", str(tmp_path))
    return plan


def _deps(tmp_path):
    return {stage.name: list(stage.needs) for stage in _plan(tmp_path)}


def test_dependencies_follow_the_judges(tmp_path):
    deps = _deps(tmp_path)
    assert deps["sft"] == [] and deps["pm"] == ["sft"] and deps["rm"] == ["sft"]
    assert deps["rlhf"] == ["sft", "rm"]
    for name in ("self_play", "nash_md", "best_response", "nash_ema"):
        assert deps[name] == ["sft", "pm"]


def test_paper_preset_judges_read_the_style_world_and_the_pm_starts_from_the_rm(tmp_path):
    plan, _ = demo.stage_plan("paper", str(tmp_path))
    by_name = {stage.name: stage for stage in plan}
    assert [stage.name for stage in plan[:3]] == ["sft", "rm", "pm"]  # serial order meets the deps
    assert by_name["pm"].needs == ("sft", "rm") and by_name["rm"].needs == ("sft",)
    judge_world = f"pairwise.world_data.data_dir = '{tmp_path / 'judge_world'}'"
    assert judge_world in by_name["pm"].bindings and judge_world in by_name["rm"].bindings
    assert f"INITIAL_CHECKPOINT = '{tmp_path / 'rm'}'" in by_name["pm"].bindings
    assert f"INITIAL_CHECKPOINT = '{tmp_path / 'sft'}'" in by_name["rm"].bindings
    # The policies sample prompts from the default world, not the judges'.
    assert f"arrays.world_prompts.data_dir = '{tmp_path / 'world'}'" in by_name["nash_md_0.125"].bindings
    # The PM style fine-tune starts from the finished PM, on the judge world; the NLHF
    # policies train against it, RLHF against the RM.
    style = by_name["pm_style"]
    assert style.needs == ("pm",) and style.gin_files == ("configs/experiments/world_pm_style.gin",)
    assert judge_world in style.bindings and f"INITIAL_CHECKPOINT = '{tmp_path / 'pm'}'" in style.bindings
    names = [stage.name for stage in plan]
    assert names.index("pm_style") > names.index("pm")
    for stage in plan[4:]:
        judge = "rm" if stage.name == "rlhf" else "pm_style"
        assert stage.needs == ("sft", judge), stage.name
        assert f"JUDGE_DIR = '{tmp_path / judge}'" in stage.bindings, stage.name
    # The quick preset: one world, both judges from SFT.
    quick = {stage.name: stage for stage in demo.stage_plan("quick", str(tmp_path))[0]}
    assert f"pairwise.world_data.data_dir = '{tmp_path / 'world'}'" in quick["pm"].bindings
    assert f"INITIAL_CHECKPOINT = '{tmp_path / 'sft'}'" in quick["pm"].bindings
    assert "pm_style" not in quick and f"JUDGE_DIR = '{tmp_path / 'pm'}'" in quick["nash_md"].bindings


def test_a_pm_style_stage_needs_a_style_world(tmp_path, monkeypatch):
    bad = dataclasses.replace(demo.PRESETS["paper"], judge_style_comparisons=0)
    monkeypatch.setitem(demo.PRESETS, "bad", bad)
    with pytest.raises(ValueError, match="'bad'.*judge_style_comparisons"):
        demo.stage_plan("bad", str(tmp_path))


def test_cpu_groups_are_disjoint_and_cover_an_even_split():
    assert demo.cpu_groups(2, [0, 1]) == [[0], [1]]
    assert demo.cpu_groups(2, [0, 1, 2, 3, 4]) == [[0, 1], [2, 3]]
    assert demo.cpu_groups(3, [5]) == [[5]]  # never more groups than CPUs
    assert demo.cpu_groups(2, []) == [[], []]


class _Fake:
    """A stage process that exits with `rc` after `polls` polls."""

    def __init__(self, log, name, rc=0, polls=2):
        self.log, self.name, self.rc, self.left = log, name, rc, polls
        self.terminated = False

    def poll(self):
        self.left -= 1
        if self.left > 0 and not self.terminated:
            return None
        self.log.append(("exit", self.name))
        return self.rc if not self.terminated else -15

    def terminate(self):
        self.terminated = True

    def wait(self):
        return 0


def _run(names, deps, jobs, rc=None, done=()):
    log, procs, slots = [], {}, {}

    def launch(name, slot):
        assert slot not in slots.values(), "two running stages share a slot"
        log.append(("start", name))
        slots[name] = slot
        procs[name] = _Fake(log, name, rc=(rc or {}).get(name, 0), polls=2 + len(name) % 3)
        return procs[name]

    finished = []

    def on_finish(name, seconds):
        finished.append(name)
        slots.pop(name)

    demo.run_stages(names, deps, lambda n: n in done, launch, jobs, on_finish, poll_s=0)
    return log, finished, procs


def test_stages_respect_dependencies_and_the_job_limit(tmp_path):
    plan = _plan(tmp_path)[1:]  # after SFT, as the demo runs them
    deps = _deps(tmp_path)
    names = [stage.name for stage in plan]
    log, finished, _ = _run(names, deps, jobs=2, done={"sft"})
    assert sorted(finished) == sorted(names)
    running, ended = set(), set()
    for event, name in log:
        if event == "start":
            assert all(d in ended or d == "sft" for d in deps[name]), (name, ended)
            running.add(name)
            assert len(running) <= 2
        else:
            running.discard(name)
            ended.add(name)
    # PM and RM run side by side.
    assert log[:2] == [("start", "pm"), ("start", "rm")]


def test_finished_stages_are_skipped(tmp_path):
    deps = _deps(tmp_path)
    names = ["pm", "rm", "rlhf", "nash_md"]
    log, finished, _ = _run(names, deps, jobs=2, done={"sft", "pm", "rm"})
    assert finished == ["rlhf", "nash_md"] or finished == ["nash_md", "rlhf"]
    assert ("start", "pm") not in log


def test_a_failed_stage_stops_the_others_and_names_itself(tmp_path):
    deps = _deps(tmp_path)
    with pytest.raises(demo.StageError, match="stage rm failed") as e:
        _run(["pm", "rm", "rlhf"], deps, jobs=2, rc={"rm": 1}, done={"sft"})
    assert e.value.stage == "rm"


def test_unmeetable_dependencies_are_an_error():
    with pytest.raises(SystemExit, match="cannot run"):
        demo.run_stages(["a"], {"a": ["missing"]}, lambda n: False, None, 2, poll_s=0)


def test_preempted_child_is_not_marked_finished():
    finished = []
    code = f"import sys; sys.exit({demo.PREEMPTED_EXIT})"
    with pytest.raises(demo.StageError, match="interrupted"):
        demo.run_stages(["a"], {}, lambda n: False,
                        lambda n, s: subprocess.Popen([sys.executable, "-c", code]), 1,
                        lambda n, t: finished.append(n), poll_s=0.05)
    assert finished == []


_CACHE_CHILD = """
import os, subprocess, sys
from nlhf_jax import demo
cache = sys.argv[1]
# Threshold 0: every compiled program is written, however fast this machine compiles
# (the demo's 0.2 s threshold would make the test depend on machine load).
demo._enable_compile_cache(cache, min_compile_secs=0.0)
import jax, jax.numpy as jnp
assert jax.config.jax_compilation_cache_dir == cache
assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0

def f(x):
    return jnp.sin(x) * 2.0

jax.jit(f)(jnp.ones(3)).block_until_ready()
# a stage started from here (as `run_stages` starts them) sees the same settings
out = subprocess.run([sys.executable, "-c", "import os; print(os.environ['JAX_COMPILATION_CACHE_DIR'], "
                      "os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'])"],
                     capture_output=True, text=True, check=True).stdout.split()
assert out == [cache, "0.0"], out
"""


def test_compile_cache_is_written_and_inherited_by_stages(tmp_path):
    """`--compile_cache`: the demo process writes compiled programs to the cache and the
    stage processes it starts inherit the settings (run in a child process so this test
    process's jax config stays untouched)."""
    cache = str(tmp_path / "jax_cache")
    subprocess.run([sys.executable, "-c", _CACHE_CHILD, cache], check=True, timeout=300)
    assert any(name.startswith("jit_f-") for name in os.listdir(cache)), os.listdir(cache)


@pytest.mark.parametrize("preset", sorted(demo.PRESETS))
def test_every_stage_config_parses_with_its_bindings(preset, tmp_path):
    """Each stage's gin files and the demo's bindings parse, name only things the files
    know, and leave no REQUIRED macro unset (what `nlhf train` checks before it runs)."""
    import gin

    from nlhf_jax import gin_setup

    plan, _ = demo.stage_plan(preset, str(tmp_path))
    for stage in plan:
        bindings = list(stage.bindings) + [f"MODEL_DIR = '{tmp_path / stage.name}'"]
        gin_setup.parse_gin(list(stage.gin_files), bindings, [gin_setup.REPO_ROOT])
        gin_setup.check_required()
        if stage.name not in ("sft", "pm", "rm", "pm_style"):  # the world policies log their style shares
            assert gin.query_parameter("describe.StyleMonitor.data_dir") == str(tmp_path / "world")
        gin.clear_config()


def test_printed_stage_command_pastes_into_a_shell(tmp_path, capsys):
    """The `+ nlhf train ...` line a stage prints splits, as a POSIX shell would, into the
    arguments the stage runs with (gin files relative to the repository)."""
    import shlex

    stage = {s.name: s for s in demo.stage_plan("paper", str(tmp_path / "it's here"))[0]}["pm"]
    args = demo._train_args(stage, str(tmp_path / "pm"), "REPO")
    line = capsys.readouterr().out.strip()
    assert line.startswith("+ nlhf train ")
    shown = shlex.split(line[len("+ nlhf train "):])
    assert [a.replace("--gin_file=REPO/", "--gin_file=") for a in args] == shown


def test_a_finished_world_of_another_config_is_regenerated(tmp_path, capsys):
    """An --out whose world/ was finished with another WorldConfig (e.g. before the demo
    appended style comparisons) loses its DONE mark, so the world stage runs again."""
    from nlhf_jax.data.world import generator

    tiny = generator.WorldConfig(seed=0, n_sft=(8, 4, 4), n_comparisons=(24, 12, 12), n_prompts_train=4)
    styled = dataclasses.replace(tiny, n_style_comparisons=4)
    for name in ("world", "judge_world"):
        generator.ensure_world(str(tmp_path / name), tiny)
        demo._mark_done(str(tmp_path / name), 1.0)
    assert demo._forget_stale_worlds(str(tmp_path), {"world": styled, "judge_world": tiny}) == ["world"]
    assert not demo._done(str(tmp_path / "world")) and demo._done(str(tmp_path / "judge_world"))
    assert "[redo] world" in capsys.readouterr().out
    # Regenerated, the stage is current again and nothing is redone.
    generator.ensure_world(str(tmp_path / "world"), styled)
    demo._mark_done(str(tmp_path / "world"), 1.0)
    assert demo._forget_stale_worlds(str(tmp_path), {"world": styled}) == []


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_main_reaches_the_report_with_the_policies_world(preset, tmp_path, monkeypatch, capsys):
    """`nlhf demo` on an --out whose training stages are finished goes straight to the
    evaluation and hands the report the policies' world (not the judges' one) and every
    policy name. (A missing local once crashed the demo here, after all the training.)"""
    from nlhf_jax.data.world import generator
    from nlhf_jax.evaluation import report

    out = tmp_path / "out"
    plan, names = demo.stage_plan(preset, str(out))
    for name in ["world", "judge_world"] + [st.name for st in plan]:
        os.makedirs(out / name, exist_ok=True)
        demo._mark_done(str(out / name), 1.0)
    monkeypatch.setattr(generator, "is_current", lambda path, config: True)
    seen = {}

    def fake_report(out_dir, path, policy_names, world_dir, num_prompts, **kwargs):
        seen.update(out=out_dir, names=list(policy_names), world_dir=world_dir,
                    num_prompts=num_prompts, **kwargs)
        os.makedirs(os.path.join(path, "matrix_pstar"))
        with open(os.path.join(path, "matrix_pstar", "matrix.md"), "w") as f:
            f.write("| the matrix |\n")

    monkeypatch.setattr(report, "write_demo_report", fake_report)
    assert demo.main(["--out", str(out), "--preset", preset, "--compile_cache", ""]) == 0
    assert seen["world_dir"] == str(out / "world")
    assert seen["names"] == names and seen["preset"] == preset
    assert seen["pm_name"] == {"quick": "pm", "paper": "pm_style"}[preset]
    assert seen["num_prompts"] == demo.PRESETS[preset].eval_prompts
    assert demo._done(str(out / "evaluate"))
    assert "| the matrix |" in capsys.readouterr().out
