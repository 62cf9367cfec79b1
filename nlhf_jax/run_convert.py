"""`nlhf convert`: converts T5 checkpoints between the HF and T5X formats.

    nlhf convert --from t5x gs_copy/checkpoint_1000000 --to hf runs/flan_small_hf \\
        --config flan_t5_small
    nlhf convert --from hf runs/flan_small_hf --to t5x runs/flan_small_t5x

An HF directory carries its architecture (`config.json`); a T5X checkpoint does not,
so a T5X source needs `--config`: a preset (the name of a `configs/models/*.gin`
file, e.g. `flan_t5_small`, or a path to such a file), a JSON file (our
`model_config.json`, or an HF `config.json`), or a directory holding either. Without
`--config`, a `model_config.json` beside the T5X checkpoint is used; `convert` writes
one next to every T5X checkpoint it creates.
"""

import argparse
import ast
import dataclasses
import os
import re
import sys
from typing import Optional

from nlhf_jax import checkpointing
from nlhf_jax.checkpoints import common
from nlhf_jax.checkpoints import hf
from nlhf_jax.checkpoints import t5x
from nlhf_jax.models import t5

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
_PRESET_DIR = os.path.join(_REPO, "configs", "models")
# What a model preset may contain: architecture bindings and includes of other presets.
_BINDING = re.compile(r"t5\.T5Config\.(\w+)\s*=\s*(.+)")
_INCLUDE = re.compile(r"include\s+['\"](.+)['\"]")
_PRESET_BOILERPLATE = re.compile(
    r"from __gin__ import dynamic_registration|from nlhf_jax\.models import t5|"
    r"MODEL\s*=\s*@t5\.T5Config\(\)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nlhf convert",
        description="Convert a T5 checkpoint between the HuggingFace and T5X formats.",
    )
    parser.add_argument("--from", dest="src_format", choices=("hf", "t5x"), required=True)
    parser.add_argument("src", help="HF directory, or T5X checkpoint_<step> (or its parent)")
    parser.add_argument("--to", dest="dst_format", choices=("hf", "t5x"), required=True)
    parser.add_argument("dst", help="output directory (T5X: checkpoint_<step> is made in it)")
    parser.add_argument(
        "--config",
        help="architecture of a T5X source: a configs/models preset name or .gin file, "
        "a model_config.json or HF config.json, or a directory holding one",
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="stored dtype (default: float32 for HF, the params' own for T5X)")
    parser.add_argument("--step", type=int, default=0, help="T5X output: the step number")
    parser.add_argument("--inline", action="store_true",
                        help="T5X output: arrays inside the msgpack file instead of zarr")
    return parser


def main(argv=None) -> int:
    """Entry point of `nlhf convert`; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.src_format == "hf":
            if args.config:
                parser.error("--config is for a T5X source; an HF directory has config.json")
            config, params = hf.load_t5(args.src)
        else:
            config = resolve_config(args.config, args.src)
            params = t5x.load_t5x(args.src, config)
        if args.dst_format == "hf":
            hf.save_t5(config, params, args.dst, dtype=args.dtype or "float32")
            written = args.dst
        else:
            written = t5x.save_t5x(config, params, args.dst, step=args.step, dtype=args.dtype,
                                   inline=args.inline)
            checkpointing.save_model_config(args.dst, config)
    except (FileNotFoundError, ValueError) as e:
        print(f"nlhf convert: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst_format} checkpoint {written}")
    return 0


def resolve_config(spec: Optional[str], src: str) -> t5.T5Config:
    """The T5Config a T5X source is read with (see the module docstring).

    Raises:
      FileNotFoundError: no `--config` and no `model_config.json` beside `src`, or
        `spec` names nothing that exists.
      ValueError: the file cannot be read as a model config.
    """
    if spec is None:
        for directory in (src, os.path.dirname(os.path.abspath(src))):
            if os.path.isfile(os.path.join(directory, checkpointing.MODEL_CONFIG_FILE)):
                return checkpointing.load_model_config(directory)
        raise FileNotFoundError(
            f"{src}: a T5X checkpoint records no architecture; pass --config (a preset "
            f"such as {_preset_names()[:3]}, a model_config.json or an HF config.json)"
        )
    if os.path.isdir(spec):
        for name in (checkpointing.MODEL_CONFIG_FILE, hf.CONFIG_NAME):
            if os.path.isfile(os.path.join(spec, name)):
                return _config_from_json(os.path.join(spec, name))
        raise FileNotFoundError(
            f"--config {spec}: no {checkpointing.MODEL_CONFIG_FILE} or {hf.CONFIG_NAME} in it"
        )
    if os.path.isfile(spec):
        return _config_from_preset(spec) if spec.endswith(".gin") else _config_from_json(spec)
    preset = os.path.join(_PRESET_DIR, spec + ".gin")
    if os.path.isfile(preset):
        return _config_from_preset(preset)
    raise FileNotFoundError(
        f"--config {spec!r}: no such file, directory or preset; presets: {_preset_names()}"
    )


def _preset_names() -> list[str]:
    if not os.path.isdir(_PRESET_DIR):
        return []
    return sorted(n[: -len(".gin")] for n in os.listdir(_PRESET_DIR) if n.endswith(".gin"))


def _config_from_json(path: str) -> t5.T5Config:
    """Our `model_config.json` (T5Config fields) or an HF `config.json`."""
    values = common.read_json(path)
    if isinstance(values, dict) and ("d_model" in values or "model_type" in values):
        return hf.config_from_hf(values, source=path)
    if not isinstance(values, dict):
        raise common.CheckpointError(f"{path}: expected a JSON object")
    known = {f.name for f in dataclasses.fields(t5.T5Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown T5Config fields {unknown}")
    return t5.T5Config(**values)


def _config_from_preset(path: str) -> t5.T5Config:
    """A model preset: `t5.T5Config.<field> = <literal>` lines and `include`s of others.

    Presets hold architecture only, so their bindings are Python literals; this reads
    them without gin (library code does not import gin).
    """
    return t5.T5Config(**_preset_bindings(path, depth=0))


def _preset_bindings(path: str, depth: int) -> dict:
    if depth > 8:
        raise ValueError(f"{path}: includes nest too deeply")
    values: dict = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line or _PRESET_BOILERPLATE.fullmatch(line):
            continue
        include = _INCLUDE.fullmatch(line)
        binding = _BINDING.fullmatch(line)
        if include:
            name = include.group(1)
            target = next(
                (p for p in (name, os.path.join(_REPO, name), os.path.join(os.path.dirname(path), name))
                 if os.path.isfile(p)),
                None,
            )
            if target is None:
                raise FileNotFoundError(f"{path}:{number}: included file {name!r} not found")
            values.update(_preset_bindings(target, depth + 1))
        elif binding:
            try:
                values[binding.group(1)] = ast.literal_eval(binding.group(2).strip())
            except (ValueError, SyntaxError) as e:
                raise ValueError(f"{path}:{number}: not a literal value: {raw.strip()!r}") from e
        else:
            raise ValueError(
                f"{path}:{number}: a model preset may only bind t5.T5Config fields to "
                f"literals; found {raw.strip()!r}"
            )
    return values
