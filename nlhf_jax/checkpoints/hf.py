"""Reads and writes HuggingFace-format T5 checkpoints without torch.

Pretrained T5 v1.0, v1.1 and Flan-T5 weights are published as a `config.json` plus
safetensors files (one `model.safetensors`, or shards listed by
`model.safetensors.index.json`). This module maps them onto the parameter tree of
`nlhf_jax.models.EncoderDecoder` and back, so a policy can start from a public
checkpoint and a trained one can be opened with `transformers`.

HF stores `torch.nn.Linear` weights as [out, in]; our kernels are [in, out], so every
projection is transposed on the way in and out. Embedding tables and the
relative-position tables are [rows, features] on both sides.

Output-layer conventions differ across `transformers` versions. Up to 4.x,
`tie_word_embeddings` meant both "the output layer is the embedding" and "scale the
decoder output by d_model**-0.5" (T5 v1.0); v1.1 set it to false and stored a separate
`lm_head.weight`. From 5.0 on, HF always writes `tie_word_embeddings: true` and
records the scaling in `scale_decoder_outputs`; a model whose head differs from the
embedding still saves `lm_head.weight`. We read both, and write both keys so either
generation of `transformers` loads what `save_t5` writes.

A checkpoint that cannot be used fails with a `CheckpointError` naming the file and,
where there is one, the place: a corrupt or truncated safetensors file (with
safetensors' own reason), a `config.json` that is not JSON (line and column) or whose
field has the wrong JSON type (e.g. ``"d_model": "512"``), a tensor holding NaN or Inf
(its name and how many). Catching these here saves a TypeError deep in the model or
a run that trains on NaNs.
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import re
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors)
import numpy as np
import safetensors
import safetensors.numpy

from nlhf_jax import types
from nlhf_jax.checkpoints import common
from nlhf_jax.models import t5

PyTree = types.PyTree

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")

# HF `feed_forward_proj` -> our `mlp_activations`. HF's "gated-gelu" is the tanh
# approximation ("gelu_new"), which is what our "gelu" computes.
_FEED_FORWARD = {"relu": ("relu",), "gated-gelu": ("gelu", "linear")}
_MODEL_TYPES = ("t5", "mt5")

# T5Config fields that leave parameter names and per-layer shapes alone, so a caller may
# choose them when loading (e.g. stack the layers for `scan_layers`).
_LOAD_OVERRIDES = frozenset({"dtype", "param_dtype", "remat_policy", "scan_layers", "dropout_rate"})

_EMBEDDING = "shared.weight"
_LM_HEAD = "lm_head.weight"
# Copies of the embedding that some writers keep; accepted when equal to it.
_EMBED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Old checkpoints carry an unused cross-attention bias table; HF skips it as well.
_IGNORED = frozenset({"decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"})

CheckpointError = common.CheckpointError


# config.json fields we read -> their JSON type (and the name used in messages).
_INT = (int, "an integer")
_NUMBER = ((int, float), "a number")
_STRING = (str, "a string")
_BOOL = (bool, "a boolean")
_CONFIG_TYPES = {
    "model_type": _STRING,
    "feed_forward_proj": _STRING,
    "vocab_size": _INT,
    "d_model": _INT,
    "num_heads": _INT,
    "num_layers": _INT,
    "num_decoder_layers": _INT,  # may also be null: as many as the encoder
    "d_kv": _INT,
    "d_ff": _INT,
    "dropout_rate": _NUMBER,
    "relative_attention_num_buckets": _INT,
    "relative_attention_max_distance": _INT,
    "layer_norm_epsilon": _NUMBER,
    "tie_word_embeddings": _BOOL,
    "scale_decoder_outputs": _BOOL,
}
_JSON_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                    list: "a list", dict: "an object", type(None): "null"}  # fmt: skip


def _config_field(hf_config: Mapping[str, Any], name: str, default: Any, source: str) -> Any:
    """`hf_config[name]` (or `default` when absent), checked against its JSON type.

    Raises:
      CheckpointError: naming `source`, the field, the expected and the found type.
    """
    if name not in hf_config:
        return default
    value = hf_config[name]
    types_, expected = _CONFIG_TYPES[name]
    # bool is an int subclass in Python, but `true` is no layer count.
    ok = isinstance(value, types_) and (types_ is bool or not isinstance(value, bool))
    if name == "num_decoder_layers" and value is None:
        ok = True
    if not ok:
        try:
            shown = json.dumps(value)
        except (TypeError, ValueError):
            shown = repr(value)
        found = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
        raise CheckpointError(
            f"{source}: field '{name}' must be {expected}, got {shown} ({found})"
        )
    return value


@contextlib.contextmanager
def _open_safetensors(path: str):
    """`safetensors.safe_open` (numpy) whose failures name the file.

    safetensors' own errors (truncated file, corrupt header) say what is wrong but
    not with which file, which matters for a sharded checkpoint.
    """
    try:
        with safetensors.safe_open(path, framework="np") as f:
            yield f
    except safetensors.SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One HF tensor and where it lives in our tree.

    Attributes:
      hf_name: safetensors key.
      path: our parameter path; for a layer of a scanned stack, the stacked leaf.
      layer: index along the stacked `layers` axis, or None when not stacked.
      transpose: HF holds the transpose of our array (torch Linear [out, in]).
    """

    hf_name: str
    path: tuple[str, ...]
    layer: Optional[int] = None
    transpose: bool = False


def config_from_hf(
    hf_config: Mapping[str, Any], *, source: str = CONFIG_NAME, **overrides
) -> t5.T5Config:
    """Builds our `T5Config` from the contents of an HF T5 `config.json`.

    Args:
      hf_config: the parsed JSON.
      source: the file it came from, for error messages.
      **overrides: T5Config fields that do not change parameter shapes (`dtype`,
        `param_dtype`, `remat_policy`, `scan_layers`, `dropout_rate`).

    Returns:
      The architecture. `logits_via_embedding` follows the output scaling recorded in
      the config; `load_t5` also checks it against the tensors present.

    Raises:
      CheckpointError: the config is not a JSON object, or a field we read has the
        wrong JSON type (names `source`, the field and the expected type).
      ValueError: unsupported model type or feed-forward projection, or an override of
        an architecture field.
    """
    unknown = set(overrides) - _LOAD_OVERRIDES
    if unknown:
        raise ValueError(
            f"cannot override {sorted(unknown)} when loading a checkpoint; allowed: "
            f"{sorted(_LOAD_OVERRIDES)}"
        )
    if not isinstance(hf_config, Mapping):
        found = _JSON_TYPE_NAMES.get(type(hf_config), type(hf_config).__name__)
        raise CheckpointError(f"{source}: expected a JSON object, got {found}")
    # Every field is type-checked as it is read: a string "512" would otherwise reach
    # T5Config and fail there (or, for booleans, silently mean true).
    get = functools.partial(_config_field, hf_config, source=source)
    model_type = get("model_type", "t5")
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not a T5 model; supported: {_MODEL_TYPES}")
    proj = get("feed_forward_proj", "relu")
    if proj not in _FEED_FORWARD:
        raise ValueError(
            f"unsupported feed_forward_proj {proj!r}; supported: {sorted(_FEED_FORWARD)}"
        )
    num_layers = get("num_layers", 6)
    num_decoder_layers = get("num_decoder_layers", None)
    fields = dict(
        vocab_size=get("vocab_size", 32128),
        emb_dim=get("d_model", 512),
        num_heads=get("num_heads", 8),
        num_encoder_layers=num_layers,
        num_decoder_layers=num_layers if num_decoder_layers is None else num_decoder_layers,
        head_dim=get("d_kv", 64),
        mlp_dim=get("d_ff", 2048),
        mlp_activations=_FEED_FORWARD[proj],
        dropout_rate=get("dropout_rate", 0.1),
        logits_via_embedding=_scales_decoder_outputs(hf_config, source),
        relative_attention_num_buckets=get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=get("relative_attention_max_distance", 128),
        layer_norm_epsilon=get("layer_norm_epsilon", 1e-6),
    )
    fields.update(overrides)
    return t5.T5Config(**fields)


def config_to_hf(config: t5.T5Config) -> dict[str, Any]:
    """The HF `config.json` contents describing `config`.

    Raises:
      ValueError: `config.mlp_activations` has no HF `feed_forward_proj`.
    """
    proj = {acts: name for name, acts in _FEED_FORWARD.items()}.get(config.mlp_activations)
    if proj is None:
        raise ValueError(
            f"mlp_activations {config.mlp_activations} have no HF feed_forward_proj; "
            f"supported: {sorted(_FEED_FORWARD.values())}"
        )
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.emb_dim,
        "d_kv": config.head_dim,
        "d_ff": config.mlp_dim,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "feed_forward_proj": proj,
        # transformers < 5 reads the head tying and the output scaling from the first
        # key, >= 5 reads the scaling from the second (see the module docstring).
        "tie_word_embeddings": config.logits_via_embedding,
        "scale_decoder_outputs": config.logits_via_embedding,
        "is_encoder_decoder": True,
        "pad_token_id": types.PAD_ID,
        "eos_token_id": types.EOS_ID,
        "decoder_start_token_id": types.PAD_ID,
        "initializer_factor": 1.0,
        "dtype": "float32",
    }


def load_t5(directory: Union[str, os.PathLike], **overrides) -> tuple[t5.T5Config, PyTree]:
    """Loads an HF-format T5 checkpoint (single file or sharded) as our parameters.

    Tensors are read one at a time with the numpy safetensors backend (bfloat16 files
    included), converted to `param_dtype` and, for `scan_layers=True`, written straight
    into the stacked arrays, so peak host memory is about one copy of the model.

    Args:
      directory: holds `config.json` and `model.safetensors` or
        `model.safetensors.index.json` with its shards.
      **overrides: T5Config fields that do not change the tensors (`scan_layers`,
        `dtype`, `param_dtype`, `remat_policy`, `dropout_rate`).

    Returns:
      (config, params): params is a nested dict of host numpy arrays in the layout of
      `EncoderDecoder(config)`; place them with `jax.device_put(params, shardings)`.

    Raises:
      FileNotFoundError: no config or weights in `directory`.
      CheckpointError: (a ValueError) a safetensors file is truncated or corrupt, the
        config or index is not valid JSON or a config field has the wrong type, or a
        tensor holds NaN or Inf; the message names the file (and the line and column,
        the field or the tensor).
      ValueError: a tensor is missing, unexpected or mis-shaped (the message names the
        tensor, the expected and found shapes and the file), a copy of the embedding
        differs from it, or the config is not supported.
    """
    directory = os.fspath(directory)
    config_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
    config = config_from_hf(common.read_json(config_path), source=config_path, **overrides)
    locations, describe = _tensor_locations(directory)
    found = _found_shapes(locations)
    # Shapes are per layer; `_entries(config)` lists the same tensors in the same order
    # with the stacked paths when `scan_layers` is set.
    flat_entries = _with_shapes(dataclasses.replace(config, scan_layers=False))
    tolerated = _check_checkpoint_tensors(config, flat_entries, found, describe)
    targets: dict[str, list] = {}
    for entry, (_, shape) in zip(_entries(config), flat_entries):
        source = entry.hf_name
        if source == _LM_HEAD and found.get(_LM_HEAD) is None:
            source = _EMBEDDING  # see `_check_checkpoint_tensors`
        targets.setdefault(source, []).append((entry, shape))
    dtype = np.dtype(config.storage_dtype)
    flat_params, copies = _read_tensors(locations, targets, tolerated, describe, config, dtype)
    _check_embedding_copies(flat_params[("token_embedder", "embedding")], copies, dtype, describe)
    return config, common.unflatten(flat_params)


def _check_checkpoint_tensors(config: t5.T5Config, flat_entries, found, describe) -> dict:
    """Checks the checkpoint's tensor names and shapes against `config` (`_check_tensors`).

    Returns:
      The tolerated extra tensors, name -> shape (None: any): the copies of the
      embedding (an untied checkpoint's shared and encoder/decoder tables, the head of a
      tied one), which must equal it, and the ignored ones.
    """
    vd = (config.vocab_size, config.emb_dim)
    tolerated = {name: vd for name in _EMBED_COPIES} | {name: None for name in _IGNORED}
    if config.logits_via_embedding:
        tolerated[_LM_HEAD] = vd
    common.check_tensors(
        {e.hf_name: _hf_shape(shape, e.transpose) for e, shape in flat_entries},
        found,
        # A head equal to the embedding is not stored by transformers >= 5, even for
        # unscaled (v1.1) models; the embedding then serves as the head.
        optional={_LM_HEAD},
        tolerated=tolerated,
        describe=describe,
    )
    return tolerated


def _read_tensors(locations, targets, tolerated, describe, config, dtype):
    """Reads the checkpoint's files one tensor at a time.

    Returns:
      (our flat parameters, path -> array; the tolerated copies of the embedding, HF
      name -> array), every tensor checked to be finite.
    """
    flat_params: dict[tuple[str, ...], np.ndarray] = {}
    copies: dict[str, np.ndarray] = {}
    for file_path, names in _group_by_file(locations).items():
        with _open_safetensors(file_path) as f:
            for name in names:
                if name in targets:
                    value = f.get_tensor(name)
                    common.check_finite(value, name, describe(name))
                    for entry, shape in targets[name]:
                        common.place(flat_params, entry, shape, value, config, dtype)
                elif name in tolerated and name not in _IGNORED:
                    copies[name] = f.get_tensor(name)
                    common.check_finite(copies[name], name, describe(name))
    return flat_params, copies


def _check_embedding_copies(embedding: np.ndarray, copies, dtype, describe) -> None:
    """Raises unless every stored copy of the embedding (HF name -> array) equals it."""
    for name, value in copies.items():
        if not np.array_equal(np.asarray(value, dtype), embedding):
            if name == _LM_HEAD:
                raise ValueError(
                    f"{_LM_HEAD} in {describe(name)} differs from {_EMBEDDING}, but the config "
                    "scales decoder outputs by d_model**-0.5 (T5 v1.0: tie_word_embeddings "
                    "true, scale_decoder_outputs absent or true); a separate head with that "
                    "scaling is not supported"
                )
            raise ValueError(
                f"{name} in {describe(name)} differs from {_EMBEDDING}; separate input "
                "embeddings for the encoder and decoder are not supported"
            )


def save_t5(
    config: t5.T5Config,
    params: PyTree,
    directory: Union[str, os.PathLike],
    max_shard_size: Optional[Union[int, str]] = None,
    dtype: str = "float32",
) -> None:
    """Writes `params` as an HF checkpoint that `transformers` and `load_t5` read.

    Any safetensors checkpoint already in `directory` is replaced, so that a stale
    single file or index cannot shadow the new one.

    Args:
      config: the architecture of `params`; scanned (stacked) layers are unstacked.
      params: parameters of `EncoderDecoder(config)` (host or device arrays).
      directory: created if needed.
      max_shard_size: bytes (int) or a size such as "10MB" / "2GiB"; when given and
        exceeded, tensors are split over `model-0000i-of-0000n.safetensors` files with
        a `model.safetensors.index.json`, as HF does. A tensor larger than the limit
        gets a shard of its own.
      dtype: dtype of the stored tensors ("float32" or e.g. "bfloat16").

    Raises:
      ValueError: `params` does not match `config` (names the tensor and both shapes).
    """
    directory = os.fspath(directory)
    ours = common.checked_flat_params(config, params)
    out_dtype = jnp.dtype(dtype)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name in (WEIGHTS_NAME, INDEX_NAME) or _SHARD_PATTERN.fullmatch(name):
            os.remove(os.path.join(directory, name))
    hf_config = config_to_hf(config)
    hf_config["dtype"] = str(out_dtype)
    with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
        f.write("\n")
    _write_tensors(directory, _entries(config), ours, out_dtype, _parse_size(max_shard_size))


def _write_tensors(directory: str, entries: list[_Entry], ours, out_dtype, max_bytes: Optional[int]) -> None:
    """Writes the HF tensors of `entries` as one safetensors file, or as shards of at
    most `max_bytes` with an index when they exceed it."""

    def hf_tensor(e: _Entry) -> np.ndarray:
        value = ours[e.path] if e.layer is None else ours[e.path][e.layer]
        return np.ascontiguousarray(value.T if e.transpose else value, out_dtype)

    # Shards are planned from sizes and converted one at a time, so the extra host
    # memory is one shard, not a second copy of the model.
    sizes = [
        math.prod(ours[e.path].shape[e.layer is not None:]) * out_dtype.itemsize for e in entries
    ]
    shards = _plan_shards(sizes, max_bytes)
    # HF refuses safetensors files whose metadata does not name a framework.
    metadata = {"format": "pt"}
    if len(shards) == 1:
        tensors = {e.hf_name: hf_tensor(e) for e in entries}
        safetensors.numpy.save_file(tensors, os.path.join(directory, WEIGHTS_NAME), metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        file_name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {entries[j].hf_name: hf_tensor(entries[j]) for j in shard}
        safetensors.numpy.save_file(tensors, os.path.join(directory, file_name), metadata)
        weight_map.update({name: file_name for name in tensors})
        del tensors
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(directory, INDEX_NAME), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


def _scales_decoder_outputs(hf_config: Mapping[str, Any], source: str = CONFIG_NAME) -> bool:
    """Whether HF multiplies the decoder output by d_model**-0.5 (T5 v1.0)."""
    if "scale_decoder_outputs" in hf_config:
        return _config_field(hf_config, "scale_decoder_outputs", None, source)
    # Both transformers 4.x and 5.x default to tied-and-scaled when the key is absent.
    return _config_field(hf_config, "tie_word_embeddings", True, source)


def _entries(config: t5.T5Config) -> list[_Entry]:
    """Every HF tensor of `config`, in HF's order, with its place in our tree."""
    entries = [_Entry(_EMBEDDING, ("token_embedder", "embedding"))]
    for side, num_layers in (
        ("encoder", config.num_encoder_layers),
        ("decoder", config.num_decoder_layers),
    ):
        entries.append(_Entry(
            f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            (side, "relpos_bias", "rel_embedding"),
        ))
        for i in range(num_layers):
            entries += _layer_entries(config, side, i)
        final_norm = "encoder_norm" if side == "encoder" else "decoder_norm"
        entries.append(_Entry(f"{side}.final_layer_norm.weight", (side, final_norm, "scale")))
    if not config.logits_via_embedding:
        entries.append(_Entry(_LM_HEAD, ("head", "logits_dense", "kernel"), transpose=True))
    return entries


def _layer_entries(config: t5.T5Config, side: str, i: int) -> list[_Entry]:
    """The tensors of layer `i` of the encoder or decoder.

    HF numbers the sub-layers of a block: 0 self-attention, (decoder) 1 cross-attention,
    then the feed-forward; each holds its own pre-norm `layer_norm`.
    """
    if config.scan_layers:
        base, layer = (side, "stack", "layers"), i
    else:
        base, layer = (side, "stack", f"layers_{i}"), None
    sublayers = [("SelfAttention", "pre_self_attention_layer_norm", "self_attention")]
    if side == "decoder":
        sublayers.append(
            ("EncDecAttention", "pre_cross_attention_layer_norm", "encoder_decoder_attention")
        )
    mlp_names = ["wi"] if len(config.mlp_activations) == 1 else [
        f"wi_{k}" for k in range(len(config.mlp_activations))
    ]
    entries = []

    def add(hf_suffix: str, our_suffix: tuple[str, ...], transpose: bool) -> None:
        entries.append(_Entry(f"{side}.block.{i}.{hf_suffix}", base + our_suffix, layer, transpose))

    for j, (hf_attention, norm, attention) in enumerate(sublayers):
        add(f"layer.{j}.layer_norm.weight", (norm, "scale"), False)
        for hf_proj, proj in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out")):
            add(f"layer.{j}.{hf_attention}.{hf_proj}.weight", (attention, proj, "kernel"), True)
    j = len(sublayers)
    add(f"layer.{j}.layer_norm.weight", ("pre_mlp_layer_norm", "scale"), False)
    for name in mlp_names + ["wo"]:
        add(f"layer.{j}.DenseReluDense.{name}.weight", ("mlp", name, "kernel"), True)
    return entries


def _with_shapes(config: t5.T5Config) -> list[tuple[_Entry, tuple[int, ...]]]:
    """Pairs each entry of `config` with our shape, checking the map covers the model.

    The shapes come from the model itself (eval_shape), so a change of the network
    that the name map misses fails here instead of loading wrong tensors.
    """
    shapes = {
        common.path_of(kp): tuple(s.shape)
        for kp, s in jax.tree_util.tree_flatten_with_path(common.abstract_params(config))[0]
    }
    entries = _entries(config)
    mapped = {e.path for e in entries}
    if mapped != set(shapes):
        raise RuntimeError(
            "the HF name map and EncoderDecoder disagree: unmapped "
            f"{sorted(set(shapes) - mapped)}, unknown {sorted(mapped - set(shapes))}"
        )
    return [(e, shapes[e.path]) for e in entries]


def _hf_shape(shape: tuple[int, ...], transpose: bool) -> tuple[int, ...]:
    return tuple(reversed(shape)) if transpose else shape


def _tensor_locations(directory: str):
    """Maps each tensor name to its file; also returns a `describe(name)` for errors."""
    index_path = os.path.join(directory, INDEX_NAME)
    single_path = os.path.join(directory, WEIGHTS_NAME)
    if os.path.exists(index_path):
        weight_map = common.read_json(index_path)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: expected an object with a 'weight_map' object")
        locations = {name: os.path.join(directory, file) for name, file in weight_map.items()}

        def describe(name):
            file = locations.get(name)
            return f"{file} (via {index_path})" if file else index_path

        return locations, describe
    if os.path.exists(single_path):
        with _open_safetensors(single_path) as f:
            locations = {name: single_path for name in f.keys()}
        return locations, lambda name: single_path
    raise FileNotFoundError(f"neither {WEIGHTS_NAME} nor {INDEX_NAME} in {directory}")


def _group_by_file(locations: Mapping[str, str]) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for name, file in locations.items():
        files.setdefault(file, []).append(name)
    return files


def _found_shapes(locations: Mapping[str, str]) -> dict[str, Optional[tuple[int, ...]]]:
    """Shapes from the file headers (no tensor data is read); None if not in its file."""
    found: dict[str, Optional[tuple[int, ...]]] = {}
    for file, names in _group_by_file(locations).items():
        if not os.path.exists(file):
            raise FileNotFoundError(f"shard {file} listed in the index does not exist")
        with _open_safetensors(file) as f:
            present = set(f.keys())
            for name in names:
                found[name] = tuple(f.get_slice(name).get_shape()) if name in present else None
    return found


_SIZE_UNITS = {
    "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
}


def _parse_size(size: Optional[Union[int, str]]) -> Optional[int]:
    """None, an int number of bytes, or a string such as "5GB" / "100KiB" -> bytes."""
    if size is None or isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", size)
    unit = match and (match.group(2).upper() or "B")
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or e.g. '10MB', '2GiB'")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def _plan_shards(sizes: list[int], max_bytes: Optional[int]) -> list[list[int]]:
    """Greedy in-order grouping of tensor indices into shards of at most `max_bytes`.

    HF's rule: a tensor larger than the limit gets a shard of its own.
    """
    shards: list[list[int]] = [[]]
    total = 0
    for i, size in enumerate(sizes):
        if max_bytes is not None and shards[-1] and total + size > max_bytes:
            shards.append([])
            total = 0
        shards[-1].append(i)
        total += size
    return shards
