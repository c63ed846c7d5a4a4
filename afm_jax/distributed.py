"""Running over a `jax.sharding.Mesh`: one process with many devices, or many processes.

Every entry point (train, collect_stats, finetune, the scorer, the CLI) takes a mesh with axes
("data", "model"). Batches are global arrays sharded on their first axis over "data"; params are
replicated, or with `shard_embeddings` their embedding tables are row-sharded over "model". The
jitted functions stay the same: XLA's SPMD partitioner inserts the cross-device reductions of
statistics and gradients (and the masked gather + all-reduce of a row-sharded table).

Multi-host: `initialize_from_env()` calls `jax.distributed.initialize`; a mesh then spans every
process's devices, and each process reads only the rows of a batch that land on its own devices
(`global_batches`, `make_array_from_callback`) or its own block of a split (`process_rows`,
`local_batches`, `make_array_from_process_local_data`).

    mesh = make_mesh()                               # every device, all on "data"
    params = shard_params(params, mesh)              # replicated
    for batch in global_batches(ds.train, 4096, mesh):
        ...                                          # sharded on "data"
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from afm_jax.errors import AfmError

DATA, MODEL = "data", "model"

# ------------------------------------------------------------------------------ multi-host set-up

_ENV_COORDINATOR, _ENV_PROCESSES, _ENV_PROCESS_ID = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_from_env(coordinator: str | None = None, num_processes: int | None = None,
                        process_id: int | None = None, *, cpu_collectives: str = "gloo") -> bool:
    """`jax.distributed.initialize` from arguments or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID; returns True when this is a multi-process run, False for a single process.

    Call before any other JAX work. On CPU, cross-process collectives go through `cpu_collectives`
    (gloo), set with the `jax_cpu_collectives_implementation` option.
    """
    coordinator = coordinator or os.environ.get(_ENV_COORDINATOR) or None
    if num_processes is None and os.environ.get(_ENV_PROCESSES):
        num_processes = int(os.environ[_ENV_PROCESSES])
    if process_id is None and os.environ.get(_ENV_PROCESS_ID):
        process_id = int(os.environ[_ENV_PROCESS_ID])
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if all(v is None for v in given.values()) or (num_processes == 1 and coordinator is None):
        return False
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise AfmError(f"multi-process run needs {', '.join(missing)} as well (flags --coordinator "
                       f"HOST:PORT --num-processes N --process-id I, or {_ENV_COORDINATOR}, "
                       f"{_ENV_PROCESSES}, {_ENV_PROCESS_ID})")
    if not 0 <= process_id < num_processes:
        raise AfmError(f"process id {process_id} is outside [0, {num_processes})")
    if jax.distributed.is_initialized():
        return True
    if cpu_collectives and os.environ.get("JAX_PLATFORMS", "cpu").split(",")[0] in ("cpu", ""):
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


def is_primary() -> bool:
    """True in the process that writes reports and non-orbax files (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across processes (no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------------------ mesh

def make_mesh(devices: int | Sequence[jax.Device] | None = None, model_axis: int = 1) -> Mesh:
    """A ("data", "model") mesh of `devices` (None: every device of every process; an int N:
    the first N local devices of each process), with `model_axis` devices per model group."""
    if devices is None:
        devs = list(jax.devices())
    elif isinstance(devices, int):
        local = len(jax.local_devices())
        if not 1 <= devices <= local:
            raise AfmError(f"--devices {devices}: this process has {local} local device(s) "
                           f"({jax.default_backend()}); on CPU set XLA_FLAGS="
                           f"--xla_force_host_platform_device_count=N before starting Python")
        by_process: dict[int, list] = {}
        for d in jax.devices():
            by_process.setdefault(d.process_index, []).append(d)
        devs = [d for p in sorted(by_process) for d in sorted(by_process[p], key=lambda d: d.id)[:devices]]
    else:
        devs = list(devices)
    if model_axis < 1 or len(devs) % model_axis:
        raise AfmError(f"model axis {model_axis} does not divide the {len(devs)} devices")
    devs.sort(key=lambda d: (d.process_index, d.id))
    grid = np.array(devs, dtype=object).reshape(len(devs) // model_axis, model_axis)
    return Mesh(grid, (DATA, MODEL))


def data_size(mesh: Mesh | None) -> int:
    """Devices on the batch axis (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.shape[DATA])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharded on axis 0 over "data", the other axes whole (and replicated over "model")."""
    return NamedSharding(mesh, P(DATA, *([None] * (ndim - 1))))


def from_host(x: Any, sharding: NamedSharding) -> jax.Array:
    """Place a host array (the same in every process) with `sharding`; each process copies only
    the pieces its own devices hold."""
    if jax.process_count() == 1:
        if isinstance(x, jax.Array):  # device_put may alias x's buffer into the result, and the
            x = jnp.array(x, copy=True)  # jitted steps donate their inputs: keep x alive
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


# --------------------------------------------------------------------------------------- batches

def padded_size(rows: int, mesh: Mesh | None) -> int:
    """`rows` rounded up to a multiple of the data-axis size."""
    n = data_size(mesh)
    return -(-rows // n) * n


def pad_batch(batch: Mapping[str, Any], rows: int) -> dict[str, np.ndarray]:
    """Pad a host batch to `rows` rows with repeats of its first row at weight 0 (a "weight"
    key, 1 for real rows, is added), so the padding changes no loss and no statistic."""
    b = int(np.shape(batch["cat"])[0])
    out = {k: np.asarray(v) for k, v in batch.items()}
    if "weight" not in out:
        out["weight"] = np.ones(b, np.float32)
    if rows == b:
        return out
    if b == 0:
        raise AfmError("cannot pad an empty batch")
    take = np.concatenate([np.arange(b), np.zeros(rows - b, np.int64)])
    out = {k: v[take] for k, v in out.items()}
    out["weight"][b:] = 0.0
    return out


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """A global host batch {"cat": [B, Fc], ...} as arrays sharded on axis 0 over "data".

    A batch size that the data axis does not divide is padded with weight-0 rows (see
    `pad_batch`); training and statistics read "weight". Every process passes the same batch
    and copies only its own devices' rows.
    """
    b = int(np.shape(batch["cat"])[0])
    rows = padded_size(b, mesh)
    if rows != b:
        batch = pad_batch(batch, rows)
    out = {}
    for k, v in batch.items():
        if isinstance(v, jax.Array) and v.sharding == batch_sharding(mesh, v.ndim):
            out[k] = v
        else:
            out[k] = from_host(v, batch_sharding(mesh, np.ndim(v)))
    return out


def shard_local_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a global batch -> global arrays (`make_array_from_process_local_data`).

    Every process must pass the same number of rows, a multiple of its devices on "data".
    """
    local_data = data_size(mesh) // jax.process_count()
    b = int(np.shape(batch["cat"])[0])
    if b % max(local_data, 1):
        raise AfmError(f"a process-local batch of {b} rows does not split over this process's "
                       f"{local_data} data devices; use a multiple of {local_data}")
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in batch.items()}


def _rows_array(arr: np.ndarray, idx: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global array arr[idx] with `sharding`, each process reading only its devices' rows.

    arr may be a read-only memmap: a contiguous `idx` is read as a slice (no fancy-index copy
    of the whole batch)."""
    contiguous = len(idx) > 0 and idx[-1] - idx[0] == len(idx) - 1 and bool(np.all(np.diff(idx) == 1))

    def rows(index: tuple) -> np.ndarray:
        r = index[0]
        sel = idx[r]
        if contiguous:
            part = arr[int(sel[0]):int(sel[-1]) + 1] if len(sel) else arr[:0]
        else:
            part = arr[sel]
        return np.ascontiguousarray(part[(slice(None),) + tuple(index[1:])])

    shape = (len(idx),) + tuple(arr.shape[1:])
    if jax.process_count() == 1 and len(sharding.device_set) == 1:
        return jax.device_put(rows((slice(None),)), sharding)
    return jax.make_array_from_callback(shape, sharding, rows)


def global_batches(split, batch_size: int, mesh: Mesh, *, shuffle: bool = False, seed: int = 0,
                   start_batch: int = 0, with_sizes: bool = False) -> Iterator:
    """The batches of `iterate_batches(split, batch_size, shuffle=..., seed=..., pad_last=True)`
    as global arrays sharded over "data" (the same rows in the same order for any mesh).

    Each process reads from `split` (memory-mapped arrays) only the rows of its own devices. A
    batch size the data axis does not divide is padded with weight-0 rows. with_sizes: yield
    (batch, real rows) pairs.
    """
    from afm_jax.data.batching import batch_indices

    rows = padded_size(batch_size, mesh)
    for idx, real in batch_indices(len(split), batch_size, shuffle=shuffle, seed=seed,
                                   start_batch=start_batch, pad_to=rows):
        weight = np.zeros(rows, np.float32)
        weight[:real] = 1.0
        batch = {k: _rows_array(getattr(split, k), idx, batch_sharding(mesh, getattr(split, k).ndim))
                 for k in ("cat", "num", "label")}
        batch["weight"] = from_host(weight, batch_sharding(mesh, 1))
        yield (batch, real) if with_sizes else batch


def process_rows(n: int, process_index: int | None = None, process_count: int | None = None) -> slice:
    """This process's contiguous block of `n` rows (blocks differ in size by at most one row)."""
    i = jax.process_index() if process_index is None else process_index
    p = jax.process_count() if process_count is None else process_count
    return slice(i * n // p, (i + 1) * n // p)


def local_split(split, process_index: int | None = None, process_count: int | None = None):
    """This process's block of an EncodedSplit (views of the memory-mapped arrays, no copy)."""
    r = process_rows(len(split), process_index, process_count)
    return type(split)(cat=split.cat[r], num=split.num[r], label=split.label[r])


def local_batches(local, local_batch_size: int, mesh: Mesh, num_batches: int | None = None
                  ) -> Iterator[dict[str, jax.Array]]:
    """Global batches made of every process's own rows: this process contributes batches of
    `local_batch_size` rows of `local` (its block, e.g. `local_split(ds.train)`), in order.

    All processes must yield the same number of batches: `num_batches` (default: from the
    largest block, agreed without communication when blocks come from `process_rows`) pads
    with all-weight-0 batches.
    """
    from afm_jax.data.batching import iterate_batches

    if num_batches is None:
        num_batches = math.ceil(len(local) / local_batch_size) if jax.process_count() == 1 else None
    if num_batches is None:
        raise AfmError("local_batches over several processes needs num_batches (the same in "
                       "every process), e.g. ceil(largest block / local batch size)")
    done = 0
    for batch in iterate_batches(local, local_batch_size, pad_last=True):
        if done == num_batches:
            break
        yield shard_local_batch(batch, mesh)
        done += 1
    while done < num_batches:
        empty = {"cat": np.zeros((local_batch_size, local.cat.shape[1]), local.cat.dtype),
                 "num": np.zeros((local_batch_size, local.num.shape[1]), local.num.dtype),
                 "label": np.zeros(local_batch_size, np.float32),
                 "weight": np.zeros(local_batch_size, np.float32)}
        yield shard_local_batch(empty, mesh)
        done += 1


def fetch(x: jax.Array) -> np.ndarray:
    """A global array as one host array in every process (all-gathered across processes)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ---------------------------------------------------------------------------------------- params

def _keys(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]


def is_table(keys: Sequence[str], leaf: Any) -> bool:
    """Embedding tables whose rows are ids: "embed/<field>/embedding" (full or compressed) and
    the first-order weights "linear/weights"."""
    nd = np.ndim(leaf)
    return (keys[-1:] == ["embedding"] and nd == 2) or (keys[-2:] == ["linear", "weights"] and nd == 1)


def shard_params(params: Any, mesh: Mesh, shard_embeddings: bool = False) -> Any:
    """Params placed on `mesh`: replicated, or with `shard_embeddings` every embedding table's
    rows sharded over "model" (tables padded with zero rows to a multiple of the model axis; ids
    never reach the padding, and `host_params` trims it). Works on original and compressed
    pytrees alike."""
    m = int(mesh.shape[MODEL])

    def place(path, x):
        keys = _keys(path)
        if shard_embeddings and m > 1 and is_table(keys, x):
            x = np.asarray(fetch(x) if isinstance(x, jax.Array) else x)
            pad = -x.shape[0] % m
            if pad:
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            return from_host(x, NamedSharding(mesh, P(MODEL, *([None] * (x.ndim - 1)))))
        sharding = replicated(mesh)
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        return from_host(x, sharding)

    return jax.tree_util.tree_map_with_path(place, params)


def host_params(params: Any, info: Any = None) -> Any:
    """Params as host numpy arrays (gathered across processes), embedding tables trimmed back to
    the model's vocabulary sizes (undoes the padding of `shard_params`); for saving, compressing."""
    vocab = {}
    if info is not None:
        vocab = {n: int(v) for n, v in zip(info.cat_names, info.vocab_sizes)}

    def get(path, x):
        keys = _keys(path)
        x = fetch(x) if isinstance(x, jax.Array) else np.asarray(x)
        if info is not None and is_table(keys, x):
            if keys[-1] == "embedding" and len(keys) >= 2 and keys[-2] in vocab:
                x = x[:vocab[keys[-2]]]
            elif keys[-2:] == ["linear", "weights"]:
                x = x[:sum(vocab.values())]
        return x

    return jax.tree_util.tree_map_with_path(get, params)


def place_like(tree: Any, params: Any) -> Any:
    """Place `tree` (e.g. an optax state) on the mesh of `params`: every subtree with the
    structure of `params` (Adam's mu, nu) takes the params' shardings, other leaves are
    replicated."""
    leaves = jax.tree.leaves(params)
    if not leaves or not isinstance(leaves[0], jax.Array):
        return tree
    mesh = leaves[0].sharding.mesh
    pdef = jax.tree.structure(params)
    shardings = jax.tree.map(lambda x: x.sharding, params)

    def like_params(x) -> bool:
        return not isinstance(x, (jax.Array, np.ndarray)) and jax.tree.structure(x) == pdef

    def place(x):
        if like_params(x):
            return jax.tree.map(lambda a, s: jax.device_put(a, s), x, shardings)
        return jax.device_put(x, replicated(mesh)) if isinstance(x, (jax.Array, np.ndarray)) else x

    return jax.tree.map(place, tree, is_leaf=like_params)
