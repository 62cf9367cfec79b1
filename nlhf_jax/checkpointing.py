"""Checkpoints: a thin wrapper over one orbax `CheckpointManager` per run directory.

What is saved is the train state only, as `{"step", "params", "opt_state"}`; frozen
models are not (they are inputs of the run). Restores always go into an *abstract,
sharded* target built from the current mesh, so a run saved on one mesh restores on
another, and nothing is materialised unsharded.

What a run restores is an explicit choice (`RestoreMode`), never a regex map:

* the run's own latest checkpoint always wins (this is resumption);
* otherwise `initial_checkpoint` is read with `full_state` (params + optimizer +
  step) or `params_only` (fresh optimizer, step 0), or ignored with `none`.

An initial checkpoint is either a checkpoint step directory of another run
(`<model_dir>/checkpoints/<step>`), a run's `checkpoints` directory (its latest step),
a HuggingFace T5 directory (`config.json` + safetensors; params only), or a T5X
checkpoint (a `checkpoint_<step>` directory holding a msgpack `checkpoint` file, or a
directory of them, whose highest step is read; params only, the Adafactor state is
ignored). The format is told by the layout (`is_hf_directory`, `is_t5x_directory`).
"""

import dataclasses
import enum
import logging
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from nlhf_jax import train_state as train_state_lib
from nlhf_jax import types

PyTree = types.PyTree
_ITEM = "default"  # orbax's item sub-directory for a single-item manager


class RestoreMode(enum.Enum):
    FULL_STATE = "full_state"
    PARAMS_ONLY = "params_only"
    NONE = "none"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to save and what to keep.

    Attributes:
      save_every_steps: save every N steps (and always at the end).
      keep: how many recent checkpoints to keep (None = all).
      async_save: write in a background thread while training continues.
      restore_mode: "full_state", "params_only" or "none" for `initial_checkpoint`.
      initial_checkpoint: path to start a new run from (see module docstring).
    """

    save_every_steps: int = 1000
    keep: Optional[int] = 3
    async_save: bool = True
    restore_mode: str = "params_only"
    initial_checkpoint: Optional[str] = None

    def __post_init__(self):
        valid = [m.value for m in RestoreMode]
        if self.restore_mode not in valid:
            raise ValueError(
                f"CheckpointConfig.restore_mode={self.restore_mode!r}; expected one of {valid}"
            )


class CheckpointMismatchError(ValueError):
    """A checkpoint's tree or shapes do not match what the config builds."""


def _state_dict(state: train_state_lib.TrainState) -> dict[str, Any]:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def _abstract(tree: PyTree, shardings: PyTree) -> PyTree:
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: tuple) -> str:
    """'params/decoder/stack/layers_0/mlp/wo/kernel': the same spelling whether the
    tree holds dicts, named tuples (optax states) or orbax's metadata for them."""
    return "/".join(_key_name(k) for k in path)


def _flat(tree: PyTree) -> dict[str, Any]:
    return {
        path_str(path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def check_compatible(target: PyTree, stored: PyTree, where: str) -> None:
    """Raises CheckpointMismatchError naming the first path that differs.

    Args:
      target: the tree the current config builds (arrays or ShapeDtypeStructs).
      stored: the checkpoint's metadata tree (leaves with `.shape`).
      where: the checkpoint path, for the message.
    """
    want, have = _flat(target), _flat(stored)
    for path in sorted(set(want) | set(have)):
        if path not in have:
            raise CheckpointMismatchError(
                f"{where}: the config expects {path} with shape {tuple(want[path].shape)}, "
                f"but the checkpoint has no such entry"
            )
        if path not in want:
            raise CheckpointMismatchError(
                f"{where}: the checkpoint has {path} with shape {tuple(have[path].shape)}, "
                f"which the config does not build"
            )
        if tuple(want[path].shape) != tuple(have[path].shape):
            raise CheckpointMismatchError(
                f"{where}: {path} has shape {tuple(have[path].shape)} in the checkpoint "
                f"but {tuple(want[path].shape)} in the config"
            )


class Checkpointer:
    """Saves and restores one run's train state under `<model_dir>/checkpoints`."""

    def __init__(self, model_dir: str, cfg: CheckpointConfig):
        self.cfg = cfg
        self.directory = os.path.abspath(os.path.join(model_dir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1,  # the loop decides when; see `maybe_save`
            max_to_keep=cfg.keep,
            enable_async_checkpointing=cfg.async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, item_handlers=ocp.StandardCheckpointHandler(), options=options
        )

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, state: train_state_lib.TrainState, force: bool = False) -> bool:
        """Saves `state` at its step (if not already saved). Returns whether it saved."""
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return False
        return self._manager.save(
            step, args=ocp.args.StandardSave(_state_dict(state)), force=force
        )

    def due(self, step: int) -> bool:
        """Whether the save cadence asks for a checkpoint after `step` steps."""
        return step % max(self.cfg.save_every_steps, 1) == 0

    def maybe_save(self, state: train_state_lib.TrainState, step: int) -> bool:
        return self.save(state) if self.due(step) else False

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    @property
    def damaged_directory(self) -> str:
        """Where unreadable steps are moved: beside `checkpoints`, so orbax never lists
        them again, and nothing is deleted."""
        return self.directory + "_damaged"

    def restore_latest(
        self,
        target: train_state_lib.TrainState,
        shardings: train_state_lib.TrainState,
        step: Optional[int] = None,
    ) -> Optional[train_state_lib.TrainState]:
        """The run's newest *readable* state, restored into `shardings`; None if none.

        A step whose files cannot be read (a truncated array file, a missing
        `_METADATA`: disk faults, copies cut short) is reported with the step, the file
        or tensor and the reason, moved to `damaged_directory`, and the previous step is
        tried. A readable step whose tree does not match the config is not damage: it
        raises CheckpointMismatchError (the config changed, not the disk).

        Args:
          target, shardings: the state the config builds and its shardings.
          step: restore exactly this step (a companion state saved with the train
            state), with the same damage handling; None = the newest readable one.
        """
        abstract = _abstract(_state_dict(target), _state_dict(shardings))
        candidates = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
        for s in candidates:
            if s not in self._manager.all_steps():
                raise FileNotFoundError(f"{self.directory}: no checkpoint at step {s}")
            where = os.path.join(self.directory, str(s))
            try:
                restored = self._restore_step(s, abstract, where)
            except _DamagedCheckpoint as e:
                self._move_aside(s, str(e))
                if step is not None:
                    raise FileNotFoundError(f"{where}: damaged ({e}); moved to "
                                            f"{self.damaged_directory}") from e
                continue
            logging.info("restored step %d from %s", s, where)
            return train_state_lib.TrainState(**restored)
        return None

    def _restore_step(self, step: int, abstract: PyTree, where: str) -> PyTree:
        item = os.path.join(where, _ITEM)
        for name in ("_METADATA",):
            if not os.path.isfile(os.path.join(item, name)):
                raise _DamagedCheckpoint(f"{os.path.join(item, name)} is missing")
        try:
            stored = self._manager.item_metadata(step)
        except Exception as e:  # noqa: BLE001 - any read failure of the metadata is damage
            tensor = _tensor_in_error(e)
            raise _DamagedCheckpoint(f"{item}{f' tensor {tensor}' if tensor else ''}: "
                                     f"metadata unreadable: {_first_line(e)}") from e
        if stored is None:
            raise _DamagedCheckpoint(f"{item}: metadata unreadable")
        check_compatible(abstract, _metadata_tree(stored), where)
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # noqa: BLE001 - TensorStore and orbax raise bare Exceptions
            tensor = _tensor_in_error(e)
            raise _DamagedCheckpoint(
                f"{item}{f' tensor {tensor}' if tensor else ''}: {_first_line(e)}") from e

    def _move_aside(self, step: int, reason: str) -> None:
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(self.damaged_directory, str(step))
        n = 1
        while os.path.exists(dst):
            dst, n = os.path.join(self.damaged_directory, f"{step}.{n}"), n + 1
        logging.warning("checkpoint step %d is damaged (%s); moved to %s, trying the previous step",
                        step, reason, dst)
        if jax.process_index() == 0:
            os.makedirs(self.damaged_directory, exist_ok=True)
            os.replace(src, dst)
        self._manager.reload()


class _DamagedCheckpoint(Exception):
    """A step directory that cannot be read (internal: `restore_latest` moves it aside)."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _tensor_in_error(e: BaseException) -> Optional[str]:
    """The array key in a TensorStore read error ('params.decoder...kernel'), if named:
    a spec's relative `'path'`, or the `"<key>/.zarray"` being read."""
    import re

    text = str(e)
    found = [f for f in re.findall(r"'path': '([^']+?)/?'", text) if not f.startswith("/")]
    found += re.findall(r'reading "([^"/]+)/\.z', text)
    return found[-1] if found else None


def _resolve_step_dir(path: str) -> str:
    """A run's checkpoints dir, a model dir, or a step dir -> the item directory."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    if os.path.isdir(os.path.join(path, _ITEM)):
        return os.path.join(path, _ITEM)
    steps = [int(n) for n in os.listdir(path) if n.isdigit()] if os.path.isdir(path) else []
    if steps:
        return os.path.join(path, str(max(steps)), _ITEM)
    raise FileNotFoundError(
        f"{path}: not an orbax checkpoint (no '{_ITEM}' item and no numbered steps)"
    )


def is_hf_directory(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and (
        os.path.isfile(os.path.join(path, "model.safetensors"))
        or os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
    )


def is_t5x_directory(path: str) -> bool:
    """A T5X step directory (`checkpoint` msgpack file) or a directory of
    `checkpoint_<step>` sub-directories holding one."""
    from nlhf_jax.checkpoints import t5x

    return t5x.is_t5x_directory(path)


def restore_params(path: str, abstract_params: PyTree, param_shardings: PyTree) -> PyTree:
    """Parameters only, from another run's orbax checkpoint, into the given shardings.

    Args:
      path: a step directory, a `checkpoints` directory or a model directory.
      abstract_params: the params tree the config builds (shapes).
      param_shardings: their NamedShardings on the current mesh.

    Raises:
      CheckpointMismatchError: naming the first differing path.
    """
    item_dir = _resolve_step_dir(path)
    checkpointer = ocp.PyTreeCheckpointer()
    stored = _metadata_tree(checkpointer.metadata(item_dir))
    if "params" not in stored:
        raise CheckpointMismatchError(f"{item_dir}: no 'params' entry in the checkpoint")
    target = {"params": _abstract(abstract_params, param_shardings)}
    check_compatible(target["params"], stored["params"], item_dir)
    restored = checkpointer.restore(
        item_dir,
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        ),
    )
    return restored["params"]


def restore_state(
    path: str, target: train_state_lib.TrainState, shardings: train_state_lib.TrainState
) -> train_state_lib.TrainState:
    """A full train state from another run's checkpoint (`full_state` mode)."""
    item_dir = _resolve_step_dir(path)
    checkpointer = ocp.StandardCheckpointer()
    abstract = _abstract(_state_dict(target), _state_dict(shardings))
    stored = checkpointer.metadata(item_dir)
    check_compatible(abstract, _metadata_tree(stored), item_dir)
    restored = checkpointer.restore(item_dir, abstract)
    return train_state_lib.TrainState(**restored)


def _metadata_tree(stored: Any) -> PyTree:
    for attr in ("tree", "item_metadata"):
        inner = getattr(stored, attr, None)
        if inner is not None:
            return _metadata_tree(inner)
    return stored


def host_params(params: PyTree) -> PyTree:
    """Fully-addressable numpy copy (small models: exports and tests)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), params)


def log_restore(kind: str, path: str, step: int) -> None:
    logging.info("restored %s from %s (step %d)", kind, path, step)


MODEL_CONFIG_FILE = "model_config.json"


def save_model_config(model_dir: str, config: Any) -> str:
    """Writes a run's architecture (a frozen dataclass) as JSON next to its checkpoints,
    so judges and evaluators can rebuild the network without the run's gin files."""
    import json

    path = os.path.join(model_dir, MODEL_CONFIG_FILE)
    if jax.process_index() == 0:
        os.makedirs(model_dir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(config), f, indent=2, sort_keys=True)
    return path


def load_model_config(model_dir: str, cls: Optional[type] = None) -> Any:
    """Reads `save_model_config`'s file back into `cls` (default: T5Config)."""
    import json

    if cls is None:
        from nlhf_jax.models import t5

        cls = t5.T5Config
    path = os.path.join(model_dir, MODEL_CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no model config; was {model_dir} written by `nlhf train`?")
    with open(path, encoding="utf-8") as f:
        values = json.load(f)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown {cls.__name__} fields {unknown}")
    return cls(**values)
