"""Reads and writes T5X checkpoints without t5x.

Public T5 v1.1 and Flan-T5 weights, and the paper's models, are T5X checkpoints, and
t5x itself is not installable next to our stack. The format is small enough to read
directly:

* a directory `checkpoint_<step>/` holding a msgpack file `checkpoint` with
  `{"version": 3, "optimizer": {"target": params, "state": {...}}}` (`state` is T5X's
  Adafactor state and step; we ignore it on load and write a minimal one on save);
* each leaf of `target` is either an inline numpy array or, for partitioned arrays, a
  TensorStore spec (`{"driver": "zarr", "kvstore": {"driver": "file", "path":
  "target.encoder.layers_0.attention.query.kernel"}, ...}`) naming a zarr v2 array
  directory (a `.zarray` JSON plus chunk files `0.0`, ...) under `checkpoint_<step>/`
  (or, in newer layouts, under `checkpoint_<step>/state/`).

Zarr arrays are read with tensorstore (an orbax dependency), which handles the gzip
chunks of published checkpoints and the zstd chunks current JAX writes, on local files
with no network. We write zarr ourselves: gzip level 1 chunks, as in published
checkpoints.

T5X names (the `minimal` T5 of t5x/examples, which flaxformer checkpoints share) map
onto our tree one to one, with three differences: our layers sit under `stack`, our
encoder's attention is named like the decoder's self-attention
(`self_attention`, `pre_self_attention_layer_norm` for T5X's `attention`,
`pre_attention_layer_norm`), and the untied output layer is ours `head/logits_dense`,
T5X's `decoder/logits_dense`. Relative-position tables are [heads, buckets] in T5X and
[buckets, heads] here, so they are transposed. Attention kernels are 2-D on both sides
([embed, heads * head_dim] for query/key/value, [heads * head_dim, embed] for out),
and neither side scales queries at run time (T5X folds 1/sqrt(head_dim) into the query
initialisation, like HF), so kernels are copied unchanged.

A T5X checkpoint holds no architecture: `load_t5x` takes the `T5Config`.
"""

import dataclasses
import gzip
import json
import math
import os
import re
import shutil
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
import numpy as np
from flax import serialization

from nlhf_jax import types
from nlhf_jax.checkpoints import common
from nlhf_jax.models import t5

PyTree = types.PyTree
CheckpointError = common.CheckpointError

CHECKPOINT_FILE = "checkpoint"
_STEP_DIR = re.compile(r"checkpoint_(\d+)")
_VERSION = 3
# Published checkpoints use gzip level 1.
_COMPRESSOR = {"id": "gzip", "level": 1}
# Rows of an array per zarr chunk are chosen so a chunk holds at most this many bytes.
_CHUNK_BYTES = 64 * 2**20
# T5X's names for our encoder's sub-modules (the decoder's are the same as ours).
_ENCODER_RENAMES = {
    "self_attention": "attention",
    "pre_self_attention_layer_norm": "pre_attention_layer_norm",
}
_LAYER = re.compile(r"layers_(\d+)")


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One T5X parameter and where it lives in our tree.

    Attributes:
      name: T5X key in `target`, '/'-joined (e.g. "encoder/layers_0/mlp/wo/kernel").
      path: our parameter path; for a layer of a scanned stack, the stacked leaf.
      layer: index along the stacked `layers` axis, or None when not stacked.
      transpose: T5X holds the transpose of our array (relative-position tables).
      shape: our per-layer shape.
    """

    name: str
    path: tuple[str, ...]
    layer: Optional[int]
    transpose: bool
    shape: tuple[int, ...]

    @property
    def t5x_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape)) if self.transpose else self.shape


def _t5x_name(path: tuple[str, ...]) -> tuple[str, bool]:
    """Our (unscanned) parameter path -> (T5X name, whether T5X holds the transpose)."""
    if path == ("head", "logits_dense", "kernel"):
        return "decoder/logits_dense/kernel", False
    if path[1:] == ("relpos_bias", "rel_embedding"):
        return "/".join(path), True
    if len(path) > 3 and path[1] == "stack" and _LAYER.fullmatch(path[2]):
        side, rest = path[0], list(path[3:])
        if side == "encoder":
            rest[0] = _ENCODER_RENAMES.get(rest[0], rest[0])
        return "/".join([side, path[2]] + rest), False
    return "/".join(path), False


def _entries(config: t5.T5Config) -> list[_Entry]:
    """Every T5X parameter of `config` with its place and per-layer shape in our tree.

    Shapes come from the model itself (eval_shape of the unscanned network), so the
    map cannot drift from `EncoderDecoder`.
    """
    flat = common.abstract_params(dataclasses.replace(config, scan_layers=False))
    entries = []
    for key_path, leaf in _flat_with_path(flat):
        name, transpose = _t5x_name(key_path)
        path, layer = key_path, None
        if config.scan_layers and len(key_path) > 2 and key_path[1] == "stack":
            layer = int(_LAYER.fullmatch(key_path[2]).group(1))
            path = key_path[:2] + ("layers",) + key_path[3:]
        entries.append(_Entry(name, path, layer, transpose, tuple(leaf.shape)))
    return entries


def _flat_with_path(tree: PyTree) -> list[tuple[tuple[str, ...], Any]]:
    return [(common.path_of(kp), v) for kp, v in jax.tree_util.tree_flatten_with_path(tree)[0]]


# ------------------------------------------------------------------ layout


def is_t5x_directory(path: Union[str, os.PathLike]) -> bool:
    """Whether `path` is a T5X step directory or a directory of `checkpoint_<step>`s."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, CHECKPOINT_FILE)):
        return True
    return bool(_step_dirs(path))


def _step_dirs(path: str) -> dict[int, str]:
    """step -> `checkpoint_<step>` sub-directory of `path` holding a `checkpoint` file."""
    if not os.path.isdir(path):
        return {}
    steps = {}
    for name in os.listdir(path):
        match = _STEP_DIR.fullmatch(name)
        if match and os.path.isfile(os.path.join(path, name, CHECKPOINT_FILE)):
            steps[int(match.group(1))] = os.path.join(path, name)
    return steps


def step_directory(directory: Union[str, os.PathLike]) -> str:
    """The step directory to read: `directory` itself, or its highest `checkpoint_<step>`.

    Raises:
      FileNotFoundError: neither layout is present.
    """
    directory = os.fspath(directory)
    if os.path.isfile(os.path.join(directory, CHECKPOINT_FILE)):
        return directory
    steps = _step_dirs(directory)
    if not steps:
        raise FileNotFoundError(
            f"{directory}: not a T5X checkpoint (no '{CHECKPOINT_FILE}' file and no "
            f"checkpoint_<step>/{CHECKPOINT_FILE})"
        )
    return steps[max(steps)]


# ------------------------------------------------------------------ load


def load_t5x(directory: Union[str, os.PathLike], config: t5.T5Config) -> PyTree:
    """Loads the parameters of a T5X checkpoint as our parameter tree.

    Args:
      directory: a `checkpoint_<step>` directory, or a directory holding several (the
        highest step is read).
      config: the architecture (a T5X checkpoint records none); `scan_layers` stacks
        the layers, `param_dtype` sets the dtype of the returned arrays.

    Returns:
      Nested dict of host numpy arrays in the layout of `EncoderDecoder(config)`, e.g.
      `token_embedder/embedding` [vocab, D], `encoder/stack/layers_0/self_attention/
      query/kernel` [D, heads * head_dim], `encoder/relpos_bias/rel_embedding`
      [buckets, heads]; place them with `jax.device_put(params, shardings)`.

    Raises:
      FileNotFoundError: `directory` is not a T5X checkpoint.
      CheckpointError: (a ValueError) the msgpack file or a zarr array cannot be read,
        or a parameter holds NaN or Inf; the message names the file or parameter.
      ValueError: a parameter is missing, unexpected or mis-shaped (the message names
        it with the expected and found T5X shapes).
    """
    step_dir = step_directory(directory)
    checkpoint_path = os.path.join(step_dir, CHECKPOINT_FILE)
    target = _read_target(checkpoint_path)
    leaves = dict(_target_leaves(target, ()))
    arrays = {name: _Array(step_dir, name, leaf) for name, leaf in leaves.items()}
    entries = _entries(config)
    common.check_tensors(
        {e.name: e.t5x_shape for e in entries},
        {name: array.shape for name, array in arrays.items()},
        optional=set(),
        tolerated={},
        describe=lambda name: arrays[name].where if name in arrays else checkpoint_path,
        against=f"the config ({_describe_config(config)})",
    )
    dtype = np.dtype(config.storage_dtype)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for entry in entries:
        array = arrays[entry.name]
        value = array.read()
        common.check_finite(value, entry.name, array.where)
        common.place(flat, entry, entry.shape, value, config, dtype)
    return common.unflatten(flat)


def _describe_config(config: t5.T5Config) -> str:
    return (
        f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, "
        f"emb_dim {config.emb_dim}, mlp_activations {config.mlp_activations}, "
        f"logits_via_embedding {config.logits_via_embedding}"
    )


def _read_target(checkpoint_path: str) -> Mapping[str, Any]:
    """`optimizer/target` of a T5X msgpack file."""
    try:
        with open(checkpoint_path, "rb") as f:
            contents = serialization.msgpack_restore(f.read())
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{checkpoint_path}: not a readable T5X msgpack file ({e})") from e
    optimizer = contents.get("optimizer") if isinstance(contents, dict) else None
    target = optimizer.get("target") if isinstance(optimizer, dict) else None
    if not isinstance(target, dict):
        raise CheckpointError(
            f"{checkpoint_path}: expected {{'optimizer': {{'target': <params>}}}} (a T5X "
            "checkpoint), found no optimizer/target"
        )
    return target


def _is_spec(node: Any) -> bool:
    return isinstance(node, dict) and "driver" in node


def _target_leaves(node: Any, prefix: tuple[str, ...]):
    """Yields ('/'-joined name, leaf) for every array or TensorStore spec under `node`."""
    if isinstance(node, dict) and not _is_spec(node):
        for key, child in node.items():
            yield from _target_leaves(child, prefix + (str(key),))
    else:
        yield "/".join(prefix), node


class _Array:
    """One leaf of `target`: an inline array, or a zarr array opened lazily by spec."""

    def __init__(self, step_dir: str, name: str, leaf: Any):
        self.name = name
        self._inline = None if _is_spec(leaf) else np.asarray(leaf)
        self._store = None
        if self._inline is not None:
            self.where = os.path.join(step_dir, CHECKPOINT_FILE)
            self.shape = tuple(self._inline.shape)
        else:
            self.where = _zarr_directory(step_dir, name, leaf)
            self._store = _open_zarr(self.where, name)
            self.shape = tuple(self._store.shape)

    def read(self) -> np.ndarray:
        if self._inline is not None:
            return self._inline
        try:
            return np.asarray(self._store.read().result())
        except ValueError as e:
            raise CheckpointError(f"{self.where}: cannot read array {self.name!r} ({e})") from e


def _zarr_directory(step_dir: str, name: str, spec: Mapping[str, Any]) -> str:
    """The zarr directory a spec names, relative to the step directory (or `state/`).

    T5X stores the path relative to the checkpoint directory; a checkpoint copied from
    elsewhere may still carry an absolute or `gs://` path, so its last component is
    tried as well.
    """
    kvstore = spec.get("kvstore")
    if isinstance(kvstore, dict):
        relative = kvstore.get("path") or spec.get("path")
    else:
        relative = kvstore if isinstance(kvstore, str) else spec.get("path")
    if not isinstance(relative, str) or not relative:
        raise CheckpointError(
            f"{os.path.join(step_dir, CHECKPOINT_FILE)}: parameter {name!r} has a "
            f"TensorStore spec without a path: {spec}"
        )
    relative = relative.rstrip("/")
    base = relative.rsplit("/", 1)[-1]
    tried = []
    for candidate in (relative, os.path.join("state", relative), base, os.path.join("state", base)):
        if os.path.isabs(candidate) or "://" in candidate:
            continue
        full = os.path.join(step_dir, candidate)
        if os.path.isfile(os.path.join(full, ".zarray")):
            return full
        tried.append(full)
    raise CheckpointError(
        f"parameter {name!r}: no zarr array (a directory with .zarray) for path "
        f"{relative!r}; tried {tried}"
    )


def _open_zarr(path: str, name: str):
    """Opens a local zarr v2 array with tensorstore (metadata only; data on `read`)."""
    import tensorstore as ts  # noqa: PLC0415  (heavy; only T5X loading needs it)

    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": os.path.abspath(path)}}
    try:
        return ts.open(spec, open=True, read=True).result()
    except ValueError as e:
        raise CheckpointError(f"{path}: cannot open zarr array {name!r} ({e})") from e


# ------------------------------------------------------------------ save


def save_t5x(
    config: t5.T5Config,
    params: PyTree,
    directory: Union[str, os.PathLike],
    *,
    step: int = 0,
    dtype: Optional[str] = None,
    inline: bool = False,
) -> str:
    """Writes `params` as a T5X checkpoint `directory/checkpoint_<step>/`.

    The `checkpoint` file and `target.*` arrays of an existing `checkpoint_<step>` are
    replaced; nothing else in `directory` is touched.

    Args:
      config: the architecture of `params`; scanned (stacked) layers are unstacked.
      params: parameters of `EncoderDecoder(config)` (host or device arrays).
      directory: the model directory; created if needed.
      step: the step number in the directory name and in the optimizer state.
      dtype: dtype of the stored arrays ("float32", "bfloat16"); None keeps each
        parameter's own dtype.
      inline: store every array inside the msgpack file instead of as zarr arrays
        (T5X does so for arrays it does not partition).

    Returns:
      The step directory written.

    Raises:
      ValueError: `params` does not match `config` (names the parameter and both
        shapes).
    """
    ours = common.checked_flat_params(config, params)
    step_dir = os.path.join(os.fspath(directory), f"checkpoint_{int(step)}")
    os.makedirs(step_dir, exist_ok=True)
    for name in os.listdir(step_dir):
        if name.startswith("target."):
            shutil.rmtree(os.path.join(step_dir, name))
    target: dict = {}
    for entry in _entries(config):
        value = ours[entry.path] if entry.layer is None else ours[entry.path][entry.layer]
        value = value.T if entry.transpose else value
        value = np.ascontiguousarray(value, None if dtype is None else jnp.dtype(dtype))
        if inline:
            leaf = value
        else:
            relative = "target." + entry.name.replace("/", ".")
            leaf = _write_zarr(os.path.join(step_dir, relative), value)
            leaf["kvstore"]["path"] = relative
        node = target
        keys = entry.name.split("/")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = leaf
    contents = {
        "version": _VERSION,
        "optimizer": {
            "target": target,
            # T5X's Adafactor state: the step and per-parameter factored moments, which
            # a fresh optimizer rebuilds; `param_states` left empty, as t5x accepts.
            "state": {"step": np.int32(step), "param_states": {}},
        },
    }
    tmp_path = os.path.join(step_dir, CHECKPOINT_FILE + ".tmp")
    with open(tmp_path, "wb") as f:
        f.write(serialization.msgpack_serialize(contents))
    os.replace(tmp_path, os.path.join(step_dir, CHECKPOINT_FILE))
    return step_dir


def _zarr_dtype(dtype: np.dtype) -> str:
    """The `.zarray` dtype string: "bfloat16" (as tensorstore writes it) or e.g. "<f4"."""
    if dtype == jnp.bfloat16:
        return "bfloat16"
    return dtype.newbyteorder("<").str


def _write_zarr(path: str, value: np.ndarray) -> dict:
    """Writes `value` as a zarr v2 array (gzip chunks along the first axis).

    Returns:
      The TensorStore spec T5X stores for it (the caller fills in the relative path).
    """
    os.makedirs(path, exist_ok=True)
    shape = list(value.shape)
    row_bytes = value.itemsize * math.prod(shape[1:])
    rows = max(1, min(shape[0], _CHUNK_BYTES // max(row_bytes, 1))) if shape else 1
    chunks = [rows] + shape[1:] if shape else []
    metadata = {
        "zarr_format": 2,
        "shape": shape,
        "chunks": chunks,
        "dtype": _zarr_dtype(value.dtype),
        "compressor": dict(_COMPRESSOR),
        "fill_value": None,
        "order": "C",
        "filters": None,
    }
    with open(os.path.join(path, ".zarray"), "w", encoding="utf-8") as f:
        json.dump(metadata, f)
    little = value.astype(value.dtype.newbyteorder("<"), copy=False)
    if not shape:
        _write_chunk(os.path.join(path, "0"), little.reshape(()))
    else:
        rest = ".0" * (len(shape) - 1)
        for i, start in enumerate(range(0, shape[0], rows)):
            chunk = little[start:start + rows]
            if chunk.shape[0] < rows:  # zarr chunks are full-size; the edge is padded
                padding = np.zeros((rows - chunk.shape[0],) + chunk.shape[1:], chunk.dtype)
                chunk = np.concatenate([chunk, padding])
            _write_chunk(os.path.join(path, f"{i}{rest}"), chunk)
    return {
        "driver": "zarr",
        "kvstore": {"driver": "file", "path": ""},
        "metadata": {k: metadata[k] for k in ("chunks", "compressor", "dtype", "shape")},
    }


def _write_chunk(path: str, chunk: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(gzip.compress(np.ascontiguousarray(chunk).tobytes(), compresslevel=1))
