"""The `nlhf` command: dispatches to a sub-command's own entry point.

Each sub-command lives in the module that owns it and exposes `main(argv) -> int`;
this file holds no logic, so `nlhf --help` stays cheap (nothing heavy is imported
until a sub-command is chosen).
"""

import importlib
import sys

# name -> (module, one-line help)
_COMMANDS = {
    "train": ("nlhf_jax.run_train", "train a model from gin files (SFT, PM, RM, policy)"),
    "tabular": ("nlhf_jax.tabular.cli", "run the tabular NLHF solvers on a game"),
    "world": ("nlhf_jax.data.world.cli", "generate or describe the embedded world"),
    "evaluate": ("nlhf_jax.run_evaluate", "win-rate matrix of trained policies under a judge"),
    "demo": ("nlhf_jax.demo", "run the end-to-end demo on the embedded world"),
    "convert": ("nlhf_jax.run_convert", "convert T5 checkpoints between HF and T5X"),
}


def _usage() -> str:
    lines = ["usage: nlhf COMMAND [ARGS...]", "", "commands:"]
    for name, (_, help_text) in _COMMANDS.items():
        lines.append(f"  {name:<10} {help_text}")
    lines += ["", "`nlhf COMMAND --help` describes a command's options."]
    return "\n".join(lines)


def run(argv=None) -> int:
    """Console-script entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in _COMMANDS:
        print(f"nlhf: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(_COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(run())
