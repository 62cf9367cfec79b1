"""Device mesh, logical axis rules, and sharded initialisation.

One mesh with axes `('data', 'fsdp', 'model')` serves every platform (CPU with fake
devices, one GPU, a GPU cluster, a TPU pod slice): its sizes come from a `MeshConfig`,
never from TPU coordinates. Models only name logical axes; `default_rules()` is the
single ordered list that maps them to mesh axes, and gin may replace it.

Parameters are never materialised unsharded: `sharded_init` runs `jax.eval_shape` on
the initialiser, turns the logical annotations into `NamedSharding`s, and jits the
initialiser with those as `out_shardings`.
"""

import dataclasses
import logging
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nlhf_jax import types

PyTree = types.PyTree
LogicalRules = Sequence[tuple[str, Any]]

BATCH_AXES = (types.DATA, types.FSDP)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the `(data, fsdp, model)` mesh; at most one may be -1 (the rest).

    Attributes:
      data: pure data parallelism (parameters replicated across it).
      fsdp: data parallelism with parameters and optimizer state sharded across it.
      model: tensor parallelism (heads, mlp, vocab).
    """

    data: int = 1
    fsdp: int = -1
    model: int = 1

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """The concrete sizes for `num_devices` devices.

        Raises:
          ValueError: more than one -1, or sizes that do not multiply to num_devices.
        """
        sizes = [self.data, self.fsdp, self.model]
        if sum(s == -1 for s in sizes) > 1:
            raise ValueError(f"MeshConfig{tuple(sizes)}: at most one size may be -1")
        if any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"MeshConfig{tuple(sizes)}: sizes must be positive or -1")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"MeshConfig{tuple(sizes)}: {num_devices} devices are not divisible "
                    f"by the fixed sizes (product {known})"
                )
            sizes = [num_devices // known if s == -1 else s for s in sizes]
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"MeshConfig{tuple(sizes)} needs {math.prod(sizes)} devices, "
                f"but {num_devices} are available"
            )
        return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """Builds the `(data, fsdp, model)` mesh over all (global) devices.

    Uses `mesh_utils.create_device_mesh` for a topology-aware layout where the platform
    supports it (TPU, GPU), and a plain reshape otherwise (CPU, multi-process CPU).
    Axis types are Auto so `nn.with_logical_constraint` works inside jit.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.resolve(len(devices))
    try:
        from jax.experimental import mesh_utils

        device_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - any layout failure falls back to a reshape
        device_array = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(device_array, types.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def default_rules() -> list[tuple[str, Any]]:
    """The ordered logical-axis -> mesh-axis rules (the only such mapping).

    Parameters: the embedding dimension is FSDP-sharded, the wide dimensions (vocab,
    mlp, joined heads) are model-parallel. Activations: batch over (data, fsdp),
    wide dimensions over model. The first matching rule whose mesh axis is still free
    wins (flax semantics), so order matters: it is tested in partitioning_test.py.
    """
    return [
        # activations
        (types.ACT_BATCH, BATCH_AXES),
        (types.ACT_LENGTH, None),
        (types.ACT_EMBED, None),
        (types.ACT_HEADS, types.MODEL),
        (types.ACT_KV, None),
        (types.ACT_MLP, types.MODEL),
        (types.ACT_VOCAB, types.MODEL),
        # parameters
        (types.VOCAB, types.MODEL),
        (types.EMBED, types.FSDP),
        (types.MLP, types.MODEL),
        (types.HEADS, types.MODEL),
        (types.KV, None),
        (types.JOINED_KV, types.MODEL),
        (types.RELPOS_BUCKETS, None),
        (types.LAYERS, None),
    ]


def logical_to_spec(logical_axes: Sequence[Optional[str]], rules: LogicalRules) -> PartitionSpec:
    """Resolves one tensor's logical axes to a PartitionSpec under `rules`."""
    return nn.logical_to_mesh_axes(tuple(logical_axes), rules)


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, name: str) -> PartitionSpec:
    """Drops mesh axes that do not divide their dimension (replicates it instead).

    A tiny model on a large mesh (or a vocabulary not divisible by the model axis)
    would otherwise fail at placement; we replicate that dimension and say so.
    """
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            out.append(None)
            continue
        axes_t = axes if isinstance(axes, tuple) else (axes,)
        size = math.prod(mesh.shape[a] for a in axes_t)
        if dim % size:
            logging.warning(
                "%s: dimension %d is not divisible by mesh axes %s (size %d); replicating it",
                name, dim, axes_t, size,
            )
            out.append(None)
        else:
            out.append(axes)
    return PartitionSpec(*out)


def logical_shardings(
    abstract_tree: PyTree, mesh: Mesh, rules: LogicalRules
) -> PyTree:
    """NamedShardings for a tree whose leaves are boxed `nn.LogicallyPartitioned`.

    Unboxed leaves (no logical names: step counters, scalars) are replicated, and so
    are boxes whose rank differs from their names (Adafactor's factored row/column
    statistics inherit the parameter's box; they are small vectors).

    Args:
      abstract_tree: output of `jax.eval_shape` of an initialiser (boxed leaves).
      mesh: the device mesh.
      rules: logical axis rules.

    Returns:
      A tree of NamedSharding with the *unboxed* structure of `abstract_tree`.
    """

    def one(path, leaf):
        name = jax.tree_util.keystr(path)
        if isinstance(leaf, nn.LogicallyPartitioned) and len(leaf.names) == leaf.value.ndim:
            spec = logical_to_spec(leaf.names, rules)
            return NamedSharding(mesh, _fit_spec(spec, leaf.value.shape, mesh, name))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(
        one, abstract_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )


def logical_axes_tree(abstract_tree: PyTree) -> PyTree:
    """The logical axis names of each boxed leaf (None for unboxed leaves)."""
    return jax.tree_util.tree_map(
        lambda x: tuple(x.names) if isinstance(x, nn.LogicallyPartitioned) else None,
        abstract_tree,
        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
    )


def sharded_init(
    init_fn: Callable[..., PyTree], mesh: Mesh, rules: LogicalRules, *args
) -> tuple[PyTree, PyTree]:
    """Initialises a (boxed) tree directly into its shards.

    Args:
      init_fn: returns a tree whose parameter leaves are `nn.LogicallyPartitioned`.
      mesh: the device mesh.
      rules: logical axis rules.
      *args: passed to init_fn (e.g. a PRNG key).

    Returns:
      (unboxed tree of sharded jax.Arrays, tree of their NamedShardings).
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(init_fn, *args)
        shardings = logical_shardings(abstract, mesh, rules)
        jit_init = jax.jit(lambda *a: unbox(init_fn(*a)), out_shardings=shardings)
        return jit_init(*args), shardings


def unbox(tree: PyTree) -> PyTree:
    """Removes logical boxes without adding sharding constraints.

    `nn.unbox` constrains each value to its names, which fails for optimizer
    statistics of lower rank; placement is decided by `out_shardings` instead.
    """
    return jax.tree_util.tree_map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis over `(data, fsdp)`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def host_local_batch_to_global(batch: PyTree, mesh: Mesh) -> PyTree:
    """Assembles the global batch from each host's local slice, explicitly.

    Every process passes the rows it loaded (its `process_index`-th slice of the
    global batch, all of equal size); the result is one global jax.Array per feature
    sharded over `(data, fsdp)`. On a single process this is a plain sharded put.

    Args:
      batch: dict of numpy arrays [B_local, ...].
      mesh: the global mesh.

    Returns:
      dict of global jax.Arrays [B_local * process_count, ...].
    """

    def one(x):
        x = np.asarray(x)
        sharding = batch_sharding(mesh, x.ndim)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree_util.tree_map(one, batch)


def put_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """One global jax.Array from a host array that every process holds whole.

    Every process passes the same values (a batch all hosts computed identically: the
    prompts of a step, a scored rollout); each fills only the shards its own devices
    hold, read at their global indices, so the rows land where the sharding puts them
    whatever the device order. On a single process this is a plain sharded put.
    """
    x = np.asarray(x)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def global_batch_to_device(batch: PyTree, mesh: Mesh) -> PyTree:
    """`put_global` for every feature of a global batch, sharded over `(data, fsdp)`.

    The online loop's counterpart of `host_local_batch_to_global`: there every host
    loads its own rows; here every host holds the whole (small) batch, because each
    scored all of it (`fetch_global`).

    Args:
      batch: dict of numpy arrays [B, ...], the same on every process.
      mesh: the global mesh.

    Returns:
      dict of global jax.Arrays [B, ...].
    """
    return jax.tree_util.tree_map(lambda x: put_global(x, batch_sharding(mesh, np.ndim(x))), batch)


def fetch_global(tree: PyTree) -> PyTree:
    """Host (numpy) copies of global arrays, whole on every process.

    `jax.device_get` refuses arrays with shards on other hosts; across processes this
    all-gathers them (`multihost_utils.process_allgather`, a collective: every process
    must call it, in the same order). On one process it is `jax.device_get`.
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def per_device_bytes(shardings: PyTree, abstract: PyTree) -> int:
    """Bytes held by the most-loaded device for a tree of shapes and shardings."""
    total = 0
    for sharding, leaf in zip(
        jax.tree_util.tree_leaves(shardings), jax.tree_util.tree_leaves(abstract)
    ):
        shard_shape = sharding.shard_shape(leaf.shape)
        total += math.prod(shard_shape) * jnp.dtype(leaf.dtype).itemsize
    return total
