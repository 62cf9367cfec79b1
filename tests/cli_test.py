"""The `nlhf` console entry point and the launch scripts' dry-run mode."""

import os
import subprocess
import sys

from nlhf_jax import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_help_lists_commands(capsys):
    assert main.run(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "tabular", "world", "demo"):
        assert name in out


def test_unknown_command(capsys):
    assert main.run(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_train_needs_a_gin_file(capsys):
    assert main.run(["train"]) == 2
    assert "--gin_file" in capsys.readouterr().err


def test_launch_scripts_dry_run():
    env = dict(os.environ, DRY_RUN="1", TPU_NAME="t", ZONE="z")
    for script, needle in [("local.sh", "nlhf train"), ("multiprocess_cpu.sh", "--process_id=1"),
                           ("tpu_vm_pod.sh", "--worker=all"), ("slurm_gpu.sh", "srun")]:
        out = subprocess.run(["bash", os.path.join(REPO, "launch", script), "configs/x.gin", "runs/x"],
                             env=env, capture_output=True, text=True, check=True).stdout
        assert out.startswith("+ ") and needle in out, (script, out)
    bad = subprocess.run(["bash", os.path.join(REPO, "launch", "local.sh")], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "nlhf_jax.main", "--help"], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert "usage: nlhf" in out
