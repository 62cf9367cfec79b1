"""Every gin file in configs/ parses; typos are reported with the binding's location."""

import glob
import os

import gin
import pytest

from nlhf_jax import gin_setup
from nlhf_jax import run_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.gin"), recursive=True))


def test_there_are_configs():
    assert len(ALL) >= 20


@pytest.mark.parametrize("path", ALL, ids=[os.path.relpath(p, REPO) for p in ALL])
def test_every_gin_file_parses(path):
    gin_setup.parse_gin([path], [])
    gin.clear_config()


def test_model_gins_build_their_config():
    for path in glob.glob(os.path.join(REPO, "configs", "models", "*.gin")):
        gin_setup.parse_gin([path], [])
        cfg = gin.query_parameter("%MODEL").scoped_configurable_fn()
        # T5 checkpoints' vocabulary, or the embedded world's (configs/models/world_tiny.gin)
        want = 320 if os.path.basename(path).startswith("world_") else 32128
        assert cfg.emb_dim > 0 and cfg.vocab_size == want, path
        gin.clear_config()


def test_experiment_binds_train_and_cli_overrides():
    gin_setup.parse_gin(
        [os.path.join(REPO, "configs", "experiments", "copy_sft.gin")],
        ["MODEL_DIR = '/tmp/x'", "NUM_STEPS = 7"],
    )
    assert gin.query_parameter("%NUM_STEPS") == 7
    assert gin.query_parameter("%MODEL_DIR") == "/tmp/x"
    gin.clear_config()


def test_gin_typo_names_the_bad_binding(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text(
        "from __gin__ import dynamic_registration\n"
        "from nlhf_jax.models import t5\n"
        "t5.T5Config.emb_dimm = 3\n"
    )
    with pytest.raises(Exception) as e:
        gin_setup.parse_gin([str(bad)], [])
    msg = str(e.value)
    assert "emb_dimm" in msg and "bad.gin" in msg and "line 3" in msg
    gin.clear_config()
    with pytest.raises(Exception, match="NUM_STEPZ|nlhf_jax.trainer.LoopConfig.num_stepz|num_stepz"):
        gin_setup.parse_gin(
            [os.path.join(REPO, "configs", "experiments", "copy_sft.gin")],
            ["trainer.LoopConfig.num_stepz = 3"],
        )
    gin.clear_config()


def test_rewrite_gin_args():
    assert run_train.rewrite_gin_args(["--gin.A=1", "--gin_file=x", "--gin.B.c='s'"]) == [
        "--gin_bindings=A = 1", "--gin_file=x", "--gin_bindings=B.c = 's'"]


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_demo_stages_parse_with_their_bindings(preset, tmp_path):
    from nlhf_jax import demo

    plan, names = demo.stage_plan(preset, str(tmp_path))
    assert plan[0].name == "sft" and {stage.name for stage in plan[1:3]} == {"pm", "rm"} and names[0] == "sft"
    assert len(plan) == 3 + (preset == "paper") + len(demo.PRESETS[preset].policies)
    for stage in plan:
        gin_setup.parse_gin([os.path.join(REPO, g) for g in stage.gin_files],
                            list(stage.bindings) + [f"MODEL_DIR = '{tmp_path / stage.name}'"])
        assert gin.query_parameter("%MODEL_DIR") == str(tmp_path / stage.name), stage.name
        gin_setup.check_required()
        gin.clear_config()


def _dry_run(script, *args):
    """The commands a launcher prints under DRY_RUN=1, split as the shell would."""
    import shlex
    import subprocess

    out = subprocess.run(["bash", script, *args], cwd=REPO, env={**os.environ, "DRY_RUN": "1"},
                         capture_output=True, text=True, check=True)  # fmt: skip
    return [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("+ ")]


def _parse_train_command(cmd):
    """Parses one printed `nlhf train` command's gin files and bindings; leaves them bound."""
    files = [a.split("=", 1)[1] for a in cmd if a.startswith("--gin_file=")]
    bindings = [a.split("=", 1)[1] for a in cmd if a.startswith("--gin_bindings=")]
    bindings += [a[len("--gin."):].replace("=", " = ", 1) for a in cmd if a.startswith("--gin.")]
    gin_setup.parse_gin(files, bindings, [REPO])
    gin_setup.check_required()


def test_world_oracle_launcher_commands_parse(tmp_path):
    """launch/world_oracle.sh (dry run): every `nlhf train` command it prints parses,
    binds only what its files know and leaves no REQUIRED macro unset."""
    commands = _dry_run("launch/world_oracle.sh", str(tmp_path / "demo"), str(tmp_path / "oracle"))
    assert [c[1] for c in commands] == ["train", "train", "train", "evaluate"]
    for cmd in commands[:3]:
        _parse_train_command(cmd)
        assert gin.query_parameter("%TAU") in (0.02, 0.05)
        gin.clear_config()


def test_world_learned_launcher_commands_parse(tmp_path):
    """launch/world_learned.sh (dry run): the world it generates has the style
    comparisons, the judges train on that world, the policies (Nash-MD-PG, online IPO,
    IPO-MD against the PM; RLHF against the RM) read the demo's prompts and those judges, and `nlhf world` / `nlhf evaluate` accept their flags."""
    from nlhf_jax import run_evaluate
    from nlhf_jax.data.world import cli as world_cli

    demo, out = str(tmp_path / "demo"), str(tmp_path / "learned")
    commands = _dry_run("launch/world_learned.sh", demo, out)
    assert [c[1] for c in commands] == ["world"] + ["train"] * 9 + ["evaluate"]
    assert commands[0][-2:] == ["--n-style-comparisons", "30000"]
    world_cli._parser().parse_args(commands[0][2:])
    # The paper preset's judges: the RM without the style rows (1,000 steps from SFT),
    # the PM from the RM on every row (4,000 steps).
    for cmd, steps, init, cap in ((commands[1], 1000, f"{demo}/sft", 32000),
                                  (commands[2], 4000, f"{out}/rm", None)):
        _parse_train_command(cmd)
        assert gin.query_parameter("pairwise.world_data.data_dir") == f"{out}/world_style"
        assert gin.query_parameter("%NUM_STEPS") == steps
        assert gin.query_parameter("%INITIAL_CHECKPOINT") == init
        assert gin.query_parameter("pairwise.world_data.max_train_examples") == cap
        if cap is not None:
            assert gin.query_parameter("pairwise.world_data.style_comparisons") is False
        gin.clear_config()
    # then the PM's fine-tune on the style comparisons alone, which the NLHF policies use
    _parse_train_command(commands[3])
    assert gin.query_parameter("%INITIAL_CHECKPOINT") == f"{out}/pm"
    assert gin.query_parameter("pairwise.world_data.data_dir") == f"{out}/world_style"
    assert gin.query_parameter("pairwise.world_data.max_train_examples") == 0
    assert gin.query_parameter("%NUM_STEPS") == 2000
    gin.clear_config()
    taus = []
    for cmd in commands[4:10]:
        _parse_train_command(cmd)
        assert gin.query_parameter("arrays.world_prompts.data_dir") == f"{demo}/world"
        taus.append(gin.query_parameter("%TAU"))
        judge = gin.query_parameter("%JUDGE_DIR")
        assert judge == (f"{out}/rm" if "world_rlhf" in cmd[2] else f"{out}/pm_style")
        gin.clear_config()
    assert taus == [0.02, 0.02, 0.02, 0.05, 0.1, 0.2]
    assert "--judge_diagnostics" in commands[10]
    assert f"{out}/pm_style,{out}/rm" in commands[10]
    run_evaluate._parser().parse_args(commands[10][2:])


def test_world_mixture_launcher_commands_parse(tmp_path):
    """launch/world_mixture.sh (dry run): four Nash-MD-PG runs against the learned PM,
    token- and sequence-level mixture at seeds 0 and 1, and the P* evaluation."""
    from nlhf_jax import run_evaluate

    demo, learned, out = str(tmp_path / "demo"), str(tmp_path / "learned"), str(tmp_path / "mix")
    commands = _dry_run("launch/world_mixture.sh", demo, learned, out)
    assert [c[1] for c in commands] == ["train"] * 4 + ["evaluate"]
    got = []
    for cmd in commands[:4]:
        _parse_train_command(cmd)
        assert gin.query_parameter("%JUDGE_DIR") == f"{learned}/pm" and gin.query_parameter("%TAU") == 0.02
        try:
            mixture = gin.query_parameter("online.NashMDConfig.mixture")
        except ValueError:  # not bound: the config's default, the token-level mixture
            mixture = "token"
        got.append((gin.query_parameter("%SEED"), mixture))
        gin.clear_config()
    assert got == [(0, "token"), (0, "sequence"), (1, "token"), (1, "sequence")]
    run_evaluate._parser().parse_args(commands[4][2:])
