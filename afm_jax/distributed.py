"""Running over a `jax.sharding.Mesh`: one process with many devices, or many processes.

Every entry point (train, collect_stats, finetune, the scorer, the CLI) takes a mesh with axes
("data", "model"). Batches are global arrays sharded on their first axis over "data"; params are
replicated, or with `shard_embeddings` their embedding tables are row-sharded over "model". The
jitted functions stay the same: XLA's SPMD partitioner inserts the cross-device reductions of
gradients (and the masked gather + all-reduce of a row-sharded table). Statistics are the
exception: each device keeps its own moments through the pass (`shard_map` in
compress/stats.py), merged once at its end.

Multi-host: `initialize_from_env()` calls `jax.distributed.initialize`; a mesh then spans every
process's devices, and each process reads only the rows of a batch that land on its own devices
(`afm_jax.data.iterate_batches(..., mesh=mesh)`, through `make_array_from_callback`).

    mesh = make_mesh()                               # every device, all on "data"
    params = shard_params(params, mesh)              # replicated
    for batch in iterate_batches(ds.train, 4096, mesh=mesh):
        ...                                          # sharded on "data"
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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


def lockstep(mesh: Mesh | None) -> bool:
    """Whether a loop over `mesh` must wait for each program with collectives (a train step)
    before it dispatches the next: True for a multi-device mesh on the CPU backend.

    XLA's CPU runtime can deadlock when such programs run back to back on several host devices
    of one process: some devices wait in one step's all-reduce while another never arrives, and
    XLA aborts the process after 40 s. It needs no thread of ours: a plain loop of jitted
    all-reduce steps on 4 forced host devices aborted in 8 of 8 processes run 4 at a time on 2
    cores, and in none of 8 when each step was waited for (`experiments/mesh_lockstep.py`).
    GPUs and TPUs keep asynchronous dispatch; on a CPU the wait costs only the overlap of
    Python with the step."""
    return mesh is not None and mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"


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
    """Embedding tables whose rows are ids: "embed/<field>/embedding" (full or compressed), the
    packed "embed/table_<w>" and the first-order weights "linear/weights" (see `forms`)."""
    from afm_jax.forms import is_table_leaf
    return is_table_leaf(list(keys), leaf)


def shard_params(params: Any, mesh: Mesh | None, shard_embeddings: bool = False) -> Any:
    """Params placed on `mesh`: replicated, or with `shard_embeddings` every embedding table's
    rows sharded over "model" (tables padded with zero rows to a multiple of the model axis; ids
    never reach the padding, and `host_params` trims it). Works on original and compressed
    pytrees alike. Without a mesh, `params` as they are."""
    if mesh is None:
        return params
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
    from afm_jax.forms import is_packed

    vocab, packed_rows, first_order = {}, {}, 0
    if info is not None:
        vocab = {n: int(v) for n, v in zip(info.cat_names, info.vocab_sizes)}
        # bags with their own vocabulary have their own tables and first-order weights
        vocab |= {b.name: int(b.vocab_size) for b in getattr(info, "bags", ()) if b.shares is None}
        first_order = sum(vocab.values())
    embed = params.get("embed") if isinstance(params, Mapping) else None
    if is_packed(embed):
        layout = embed["layout"]
        packed_rows = {f"table_{w}": sum(f.rows for f in layout.own_tables()
                                         if f.kind == "table" and f.width == w)
                       for w in layout.widths()}

    def get(path, x):
        keys = _keys(path)
        x = fetch(x) if isinstance(x, jax.Array) else np.asarray(x)
        if is_table(keys, x):
            if keys[-1] in packed_rows:
                x = x[:packed_rows[keys[-1]]]
            elif info is None:
                pass
            elif keys[-1] == "embedding" and len(keys) >= 2 and keys[-2] in vocab:
                x = x[:vocab[keys[-2]]]
            elif keys[-2:] == ["linear", "weights"]:
                x = x[:first_order]
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
