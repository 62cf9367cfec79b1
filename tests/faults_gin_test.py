"""`nlhf train`'s configuration faults: each one stops the run before it starts, with
a message that names the bad file, macro or binding (and the nearest known name).

The checks are called directly (`parse_gin`, `check_required`) or through `run_cli`
with a config that fails before training, so nothing here trains.
"""

import logging
import os

import gin
import pytest

from nlhf_jax import gin_setup
from nlhf_jax import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPY_SFT = os.path.join(REPO, "configs", "experiments", "copy_sft.gin")


@pytest.fixture(autouse=True)
def _clean_gin_and_logging():
    """Each test starts from an empty gin config; the root logger is put back after
    `run_cli` (which configures it for the process) so other tests are unaffected."""
    root, absl_logger = logging.getLogger(), logging.getLogger("absl")
    handlers, level, absl_level = list(root.handlers), root.level, absl_logger.level
    gin.clear_config()
    yield
    gin.clear_config()
    root.handlers[:] = handlers
    root.setLevel(level)
    absl_logger.setLevel(absl_level)


def test_typo_of_a_macro_is_an_error_suggesting_the_known_one(capsys):
    # gin alone takes `NUM_STEP = 1` as a new macro nothing uses: the run would train
    # copy_sft.gin's 300 steps.
    with pytest.raises(ValueError, match=r"NUM_STEP\b.*did you mean NUM_STEPS"):
        gin_setup.parse_gin([COPY_SFT], ["MODEL_DIR = '/tmp/x'", "NUM_STEP = 1"])
    with pytest.raises(ValueError, match=r"NOT_A_BINDING"):
        gin_setup.parse_gin([COPY_SFT], ["NOT_A_BINDING = 1"])
    # A macro a command-line binding references must be defined somewhere, too.
    with pytest.raises(ValueError, match=r"SEEDD.*did you mean SEED\b"):
        gin_setup.parse_gin([COPY_SFT], ["trainer.LoopConfig.seed = %SEEDD"])
    # Through the command line: exit 2 before anything runs (no MODEL_DIR either, so
    # the old code fails fast rather than training).
    assert main.run(["train", f"--gin_file={COPY_SFT}", "--gin.NUM_STEP=1"]) == 2
    err = capsys.readouterr().err
    assert "NUM_STEP" in err and "did you mean NUM_STEPS" in err and "Traceback" not in err


def test_macros_that_files_define_or_use_can_be_overridden():
    gin_setup.parse_gin(
        [COPY_SFT],
        # Defined by a file; defined and used only on the command line.
        ["NUM_STEPS = 7", "MY_SEED = 3", "trainer.LoopConfig.seed = %MY_SEED",
         "trainer.LoopConfig.eval_every = 5"],
    )
    assert gin.query_parameter("%NUM_STEPS") == 7
    assert gin.query_parameter("%MY_SEED") == 3


@pytest.mark.parametrize("binding, needle, suggestion", [
    ("trainer.LoopConfig.num_stepz = 3", "num_stepz", "trainer.LoopConfig.num_steps"),
    ("trainer.LoopConfg.num_steps = 3", "trainer.LoopConfg", "trainer.LoopConfig"),
    ("train/input_pipeline.copy_task.num_exampels = 3", "num_exampels", "train/input_pipeline.copy_task.num_examples"),
])  # fmt: skip
def test_unknown_binding_names_it_and_suggests_the_nearest(binding, needle, suggestion):
    with pytest.raises(ValueError) as e:
        gin_setup.parse_gin([COPY_SFT], [binding])
    msg = str(e.value)
    assert needle in msg and f"did you mean {suggestion}" in msg, msg


def test_missing_gin_file_names_it_and_the_search_paths(tmp_path, capsys):
    missing = "configs/experiments/no_such_experiment.gin"
    assert main.run(["train", f"--gin_file={missing}", f"--gin_search_path={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert missing in err and REPO in err and str(tmp_path) in err and "Traceback" not in err
    # A missing include names the including file and line as well.
    parent = tmp_path / "parent.gin"
    parent.write_text("X = 1\ninclude 'configs/runs/no_such_run.gin'\n")
    with pytest.raises(ValueError) as e:
        gin_setup.parse_gin([str(parent)], [])
    msg = str(e.value)
    assert "configs/runs/no_such_run.gin" in msg and "parent.gin" in msg and "line 2" in msg, msg
    assert REPO in msg, msg


def test_unset_required_macro_is_named_before_the_run(tmp_path, capsys):
    # copy_sft.gin sets everything but MODEL_DIR.
    assert main.run(["train", f"--gin_file={COPY_SFT}"]) == 2
    err = capsys.readouterr().err
    assert "MODEL_DIR" in err and "REQUIRED" in err and "Traceback" not in err
    # All of them at once, and a parameter bound to %gin.REQUIRED, too.
    run = tmp_path / "run.gin"
    run.write_text(
        "from __gin__ import dynamic_registration\n"
        "from nlhf_jax import trainer\n"
        "include 'configs/runs/sft.gin'\n"
        "trainer.LoopConfig.log_every = %gin.REQUIRED\n"
    )
    gin_setup.parse_gin([str(run)], ["NUM_STEPS = 3"])
    with pytest.raises(ValueError) as e:
        gin_setup.check_required()
    msg = str(e.value)
    for name in ("MODEL_DIR", "TRAIN_DATA", "BATCH_SIZE", "trainer.LoopConfig.log_every"):
        assert name in msg, msg
    assert "NUM_STEPS" not in msg, msg


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_flags_runs_and_their_required_macros(flag, capsys):
    assert main.run(["train", flag]) == 0
    out = capsys.readouterr().out
    assert "--gin_file" in out and "--log_level" in out
    for kind, fn in [("sft", "run_train.train"), ("pm", "run_pm.train_preference_model"),
                     ("rm", "run_pm.train_reward_model"), ("policy", "run_policy.train_policy")]:
        assert f"configs/runs/{kind}.gin" in out and fn in out, (kind, out)
    for macro in ("MODEL_DIR", "TRAIN_DATA", "SFT_DIR", "JUDGE", "VOCABULARY"):
        assert macro in out, (macro, out)
    # Experiments with what is left to set: copy_sft.gin needs only MODEL_DIR.
    line = next(l for l in out.splitlines() if "copy_sft" in l)
    assert "MODEL_DIR" in line and "NUM_STEPS" not in line, line


def test_log_level_takes_effect_and_bad_names_are_errors(capsys):
    # A REQUIRED macro is left unset so the command stops right after setting up logging.
    assert main.run(["train", "--log_level=debug", f"--gin_file={COPY_SFT}"]) == 2
    capsys.readouterr()
    logging.getLogger("nlhf_jax.trainer").debug("debug line shows")
    logging.info("resumed from step 3")
    err = capsys.readouterr().err
    assert "debug line shows" in err and "resumed from step 3" in err, err
    assert logging.getLogger("absl").isEnabledFor(logging.DEBUG)
    assert main.run(["train", "--log_level=INFO", f"--gin_file={COPY_SFT}"]) == 2
    capsys.readouterr()
    logging.debug("hidden")
    logging.info("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err and "shown" in err, err
    # orbax's per-save INFO chatter (through absl's logger) stays hidden at INFO.
    assert not logging.getLogger("absl").isEnabledFor(logging.INFO)
    assert main.run(["train", "--log_level=LOUD", f"--gin_file={COPY_SFT}"]) == 2
    assert "log_level" in capsys.readouterr().err
