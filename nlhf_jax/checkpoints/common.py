"""Helpers shared by the checkpoint converters (`hf`, `t5x`).

Both formats are read into, and written from, the same parameter tree of
`nlhf_jax.models.EncoderDecoder`, and report unusable checkpoints the same way: a
`CheckpointError` naming the file, and one ValueError listing every missing, unexpected
or mis-shaped tensor with both shapes.
"""

import functools
import json
from typing import Any, Mapping

import jax
import numpy as np

from nlhf_jax import types
from nlhf_jax.models import t5

PyTree = types.PyTree


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file."""


def read_json(path: str) -> Any:
    """Parses a JSON file; errors name the file (and the line and column)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from e
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not valid UTF-8 ({e})") from e


def check_finite(value: np.ndarray, name: str, where: str) -> None:
    """Raises when tensor `name` (read from `where`) holds NaN or Inf."""
    if value.dtype.kind in "iub":
        return
    # A float64 sum is finite exactly when every value is (weights are far from
    # overflowing it) and needs no full-size mask; count only when it is not.
    if np.isfinite(np.sum(value, dtype=np.float64)):
        return
    n_nan, n_inf = int(np.count_nonzero(np.isnan(value))), int(np.count_nonzero(np.isinf(value)))
    if n_nan or n_inf:
        raise CheckpointError(
            f"tensor {name!r} in {where} has {n_nan + n_inf} non-finite values "
            f"({n_nan} NaN, {n_inf} Inf) of {value.size}"
        )


def checked_flat_params(config: t5.T5Config, params: PyTree) -> dict[tuple[str, ...], np.ndarray]:
    """`params` on the host as path -> array, after checking them against `config`.

    Raises:
      ValueError: naming every missing, unexpected or mis-shaped parameter.
    """
    params = jax.device_get(params)
    ours = {
        path_of(kp): np.asarray(v) for kp, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    want = {
        path_of(kp): tuple(s.shape)
        for kp, s in jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]
    }
    problems = [
        f"missing parameter {'/'.join(p)}: expected shape {s}, found none"
        for p, s in want.items()
        if p not in ours
    ] + [
        f"unexpected parameter {'/'.join(p)}: expected none, found shape {tuple(v.shape)}"
        for p, v in ours.items()
        if p not in want
    ] + [
        f"parameter {'/'.join(p)}: expected shape {want[p]}, found {tuple(v.shape)}"
        for p, v in ours.items()
        if p in want and tuple(v.shape) != want[p]
    ]
    if problems:
        raise ValueError("params do not match the config:\n  " + "\n  ".join(problems))
    return ours


@functools.lru_cache(maxsize=8)
def abstract_params(config: t5.T5Config) -> PyTree:
    """ShapeDtypeStructs of `EncoderDecoder(config)`'s parameters (nothing allocated)."""
    model = t5.EncoderDecoder(config)
    return jax.eval_shape(lambda: t5.init_params(model, jax.random.key(0), 1, 1))


def check_tensors(
    expected, found, optional, tolerated, describe, against: str = "its config.json"
) -> None:
    """Raises one ValueError listing every missing, unexpected or mis-shaped tensor.

    Args:
      expected: checkpoint name -> checkpoint shape of every tensor the model needs.
      found: checkpoint name -> shape in the checkpoint (None: listed but absent from
        its file).
      optional: expected names that may be absent.
      tolerated: names that may be present although not expected -> their required
        shape (None: any shape).
      describe: checkpoint name -> the file it is (or should be) in.
      against: what the checkpoint is compared with, for the message's first line.
    """
    problems = []
    for name, shape in expected.items():
        if found.get(name) is None:
            if name not in optional:
                problems.append(
                    f"missing tensor {name!r}: expected shape {shape}, found none "
                    f"in {describe(name)}"
                )
        elif found[name] != shape:
            problems.append(
                f"tensor {name!r} in {describe(name)}: expected shape {shape}, "
                f"found shape {found[name]}"
            )
    for name, shape in found.items():
        if name in expected:
            continue
        if name in tolerated:
            want = tolerated[name]
            if want is not None and shape is not None and shape != want:
                problems.append(
                    f"tensor {name!r} in {describe(name)}: expected shape {want}, "
                    f"found shape {shape}"
                )
            continue
        problems.append(
            f"unexpected tensor {name!r} in {describe(name)}: expected none, "
            f"found shape {shape}"
        )
    if problems:
        raise ValueError(
            f"checkpoint does not match {against}:\n  " + "\n  ".join(problems)
        )


def path_of(key_path) -> tuple[str, ...]:
    """A `tree_flatten_with_path` key path as a tuple of names."""
    return tuple(str(getattr(k, "key", k)) for k in key_path)


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    """path -> value back into nested dicts."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def place(flat: dict, entry, shape, value: np.ndarray, config: t5.T5Config, dtype) -> None:
    """Stores one checkpoint array at `entry.path` in `flat`, transposed if
    `entry.transpose`, cast to `dtype`; a layer of a scanned stack (`entry.layer` not
    None) goes into its slot of the stacked [layers, *shape] array."""
    value = np.ascontiguousarray(value.T if entry.transpose else value, dtype)
    if entry.layer is None:
        flat[entry.path] = value
        return
    stacked = flat.get(entry.path)
    if stacked is None:
        side_layers = config.num_encoder_layers if entry.path[0] == "encoder" else (
            config.num_decoder_layers
        )
        stacked = flat[entry.path] = np.empty((side_layers,) + tuple(shape), dtype)
    stacked[entry.layer] = value
