"""Batches over encoded splits, on the host or sharded over a mesh: one fancy-index (or slice)
per array per batch, no per-row Python.

A batch is a pytree of arrays with the rows on axis 0: {"cat", "num", "label"} and, for data
with multi-valued fields, the nested dicts "bags" {field: int32 [B, L_f]} and "bag_len" {field:
int32 [B]} (the layout is in `afm_jax.data.splits`). Every function here maps over the leaves,
so the nested dicts are cut, padded, placed and sharded like the top-level arrays."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from afm_jax.data.hashing import mix64
from afm_jax.data.splits import EncodedSplit
from afm_jax.distributed import batch_sharding, data_size, padded_size
from afm_jax.errors import DataError

# Splits larger than this are shuffled with a keyed permutation computed batch by batch (memory
# O(batch)) instead of a materialized one (8 bytes per row), so memory does not grow with rows.
LARGE_SHUFFLE_ROWS = 1 << 24


def keyed_permutation(positions: np.ndarray, n: int, seed: int, rounds: int = 4) -> np.ndarray:
    """Element `positions` of a seeded pseudo-random permutation of range(n), without building
    it: a balanced Feistel network on 2h bits (4^h >= n) with cycle walking back into [0, n)."""
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    with np.errstate(over="ignore"):
        base = np.uint64(seed % (1 << 63)) * np.uint64(0x9E3779B97F4A7C15)
        keys = mix64(np.arange(1, rounds + 1, dtype=np.uint64) + base)

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for k in keys:
            left, right = right, left ^ (mix64(right ^ k) & mask)
        return (left << np.uint64(half)) | right

    with np.errstate(over="ignore"):
        y = feistel(positions.astype(np.uint64))
        out = y >= n
        while out.any():  # cycle walking: at most a few rounds, since 4^h < 4n
            y[out] = feistel(y[out])
            out = y >= n
    return y.astype(np.int64)


def pad_indices(idx: np.ndarray, rows: int) -> np.ndarray:
    """`idx` padded to `rows` entries with repeats of its first row (rows that get weight 0)."""
    if len(idx) >= rows:
        return idx
    if len(idx) == 0:
        raise DataError("cannot pad an empty batch", field="batch_size")
    return np.concatenate([idx, np.full(rows - len(idx), idx[0])])


def batch_indices(n: int, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                  drop_remainder: bool = False, start_batch: int = 0,
                  pad_to: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """(row indices, real rows) of each batch of `iterate_batches`; pad_to: pad the index list
    to that many with `pad_indices`."""
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
    order = None
    if shuffle and n <= LARGE_SHUFFLE_ROWS:
        order = np.random.default_rng(seed).permutation(n)
    stop = n - n % batch_size if drop_remainder else n
    for s in range(start_batch * batch_size, stop, batch_size):
        e = min(s + batch_size, n)
        if not shuffle:
            idx = np.arange(s, e)
        elif order is not None:
            idx = np.sort(order[s:e])
        else:
            idx = np.sort(keyed_permutation(np.arange(s, e), n, seed))
        yield (idx if pad_to is None else pad_indices(idx, pad_to)), e - s


def _host_rows(arr: Any, idx: np.ndarray) -> np.ndarray:
    """arr[idx] as a new host array. A run of consecutive indices is read as a slice, so a
    memory-mapped `arr` is not copied through a fancy index."""
    if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and bool(np.all(np.diff(idx) == 1)):
        return np.ascontiguousarray(arr[int(idx[0]):int(idx[-1]) + 1])
    return np.ascontiguousarray(arr[idx])


@dataclass(frozen=True)
class LocalRows:
    """The rows of one global batch array that this process's devices hold (a multi-process
    mesh): `blocks[(start, stop)]` is rows start:stop of the global array of `shape`."""

    shape: tuple[int, ...]
    blocks: dict[tuple[int, int], np.ndarray]


def _host_array(arr: Any, idx: np.ndarray, mesh: Mesh | None) -> np.ndarray | LocalRows:
    """arr[idx] on the host: the whole batch, or in a multi-process mesh only the row blocks
    of this process's devices (`LocalRows`). Host work only: nothing is placed on a device."""
    if mesh is None or jax.process_count() == 1:
        return _host_rows(arr, idx)
    shape = (len(idx),) + tuple(np.shape(arr)[1:])
    spans = {(s.start or 0, len(idx) if s.stop is None else s.stop)
             for s, *_ in batch_sharding(mesh, len(shape)).addressable_devices_indices_map(shape).values()}
    return LocalRows(shape, {(a, b): _host_rows(arr, idx[a:b]) for a, b in sorted(spans)})


def _place_array(value: np.ndarray | LocalRows, mesh: Mesh) -> jax.Array:
    """A host array (or `LocalRows`) as a global array sharded on axis 0 over "data". Dispatches
    to devices: call it on the thread that runs the steps, never from a background thread."""
    if isinstance(value, np.ndarray):
        return jax.device_put(value, batch_sharding(mesh, value.ndim))

    def block(index: tuple) -> np.ndarray:  # index: this device's block of the result
        span = (index[0].start or 0, value.shape[0] if index[0].stop is None else index[0].stop)
        return value.blocks[span][(slice(None),) + tuple(index[1:])]

    return jax.make_array_from_callback(value.shape, batch_sharding(mesh, len(value.shape)), block)


def _is_rows(x: Any) -> bool:
    return isinstance(x, LocalRows)


def _host_take(arrays: Mapping[str, Any], idx: np.ndarray, real: int | None,
               mesh: Mesh | None) -> dict[str, Any]:
    """One host batch {k: arrays[k][idx]} (nested dicts of arrays alike). real: add "weight"
    [len(idx)], 1 on the first `real` rows (times the arrays' own "weight", if any) and 0 on the
    padding after them; None: no weight. With a mesh, in a multi-process run, each array holds
    only this process's rows."""
    batch = {k: jax.tree_util.tree_map(lambda v: _host_array(v, idx, mesh), v)
             for k, v in arrays.items() if k != "weight"}
    if real is not None:
        weight = np.zeros(len(idx), np.float32)
        weight[:real] = 1.0
        if "weight" in arrays:
            weight *= _host_rows(np.asarray(arrays["weight"], np.float32), idx)
        batch["weight"] = _host_array(weight, np.arange(len(idx)), mesh)
    return batch


def place_batch(batch: Mapping[str, Any], mesh: Mesh | None = None) -> dict[str, Any]:
    """A host batch (from `host_batches`) ready for a step: without a mesh, its numpy arrays put
    on the default device; with one, global arrays sharded on axis 0 over "data". Arrays already
    placed are kept. This dispatches to devices: under a mesh, call it on the thread that runs
    the steps, in program order (a second dispatching thread deadlocks the step's collectives)."""
    if mesh is None:
        return to_device(batch)
    return jax.tree_util.tree_map(lambda v: v if isinstance(v, jax.Array) else _place_array(v, mesh), dict(batch),
                                  is_leaf=_is_rows)


def host_batches(split: EncodedSplit, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_remainder: bool = False, start_batch: int = 0, pad_last: bool = False,
                 mesh: Mesh | None = None) -> Iterator[dict[str, Any]]:
    """The batches of `iterate_batches` with the same arguments, as host numpy arrays (with a
    mesh: padded and weighted for it, and in a multi-process run only this process's rows, as
    `LocalRows`); `place_batch(b, mesh)` makes each the batch `iterate_batches` yields. Host work
    only, so it may run in a background thread (`prefetch`)."""
    pad = pad_last or mesh is not None
    arrays = split.arrays()
    for idx, real in batch_indices(len(split), batch_size, shuffle=shuffle, seed=seed,
                                   drop_remainder=drop_remainder, start_batch=start_batch,
                                   pad_to=padded_size(batch_size, mesh) if pad else None):
        yield _host_take(arrays, idx, real if pad else None, mesh)


def iterate_batches(split: EncodedSplit, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                    drop_remainder: bool = False, start_batch: int = 0, pad_last: bool = False,
                    mesh: Mesh | None = None) -> Iterator[dict[str, Any]]:
    """Yield {"cat": int32[B,Fc], "num": float32[B,Fn], "label": float32[B]} (plus "bags" and
    "bag_len" dicts for multi-valued fields, `afm_jax.data.splits`): the one batch path.

    shuffle: a permutation seeded by `seed` (pass a different seed per epoch); each batch's indices
    are sorted for memory locality. Without shuffle, batches are contiguous slices in order. The
    last batch is smaller unless drop_remainder. start_batch skips the first batches of this
    order (to resume an epoch mid-way with the very same batches). pad_last: every batch gets a
    "weight" array (1 for real rows) and the short last batch is padded to batch_size with
    repeats of its first row at weight 0, so a jitted step sees one shape only.

    mesh: the same rows in the same order as global arrays sharded on axis 0 over its "data"
    axis, each process reading from `split` only the rows of its own devices. Mesh batches are
    always padded and weighted as with pad_last, to batch_size rounded up to a multiple of the
    data axis. Without a mesh, host numpy arrays. (`host_batches` + `place_batch` are the two
    halves, for a consumer that cuts in a background thread: `prefetch`.)
    Memory is O(batch) for splits over LARGE_SHUFFLE_ROWS rows (read from memory-mapped arrays).
    """
    for batch in host_batches(split, batch_size, shuffle=shuffle, seed=seed,
                              drop_remainder=drop_remainder, start_batch=start_batch,
                              pad_last=pad_last, mesh=mesh):
        yield batch if mesh is None else place_batch(batch, mesh)


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """A host batch {"cat": [B, Fc], ...} (the same in every process) as global arrays sharded
    on axis 0 over "data", each process copying only its devices' rows; padded to a multiple of
    the data axis like `iterate_batches(..., mesh=mesh)`, with a "weight" (the batch's own, if
    any, and 0 on the padding). A batch that is already sharded so is returned as it is."""
    b = int(np.shape(batch["cat"])[0])
    sharded = all(isinstance(v, jax.Array) and v.sharding == batch_sharding(mesh, v.ndim)
                  for v in jax.tree_util.tree_leaves(batch))
    if sharded and b % data_size(mesh) == 0:
        out = dict(batch)
        if "weight" not in out:
            out["weight"] = _place_array(_host_array(np.ones(b, np.float32), np.arange(b), mesh), mesh)
        return out
    return place_batch(_host_take(batch, pad_indices(np.arange(b), padded_size(b, mesh)), b, mesh), mesh)


def to_device(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A batch with its host (numpy) arrays put on the default device; arrays already placed
    (a mesh batch's global arrays) are kept as they are."""
    return jax.tree_util.tree_map(lambda v: jax.device_put(v) if isinstance(v, np.ndarray) else v, dict(batch))


_ITEM, _END, _ERROR = 0, 1, 2


class Prefetcher:
    """An iterator over `batches` that a background thread runs up to `size` items ahead of the
    consumer, so that cutting the next host batches overlaps the current step; each item is
    passed through `place` (e.g. `place_batch`) on the consumer's thread as `next` returns it.
    Built by `prefetch`.

    The thread does host work only. Anything that dispatches to devices (placing arrays, jitted
    calls) stays on the consumer's thread, in program order: under a mesh, a second thread that
    places batches interleaves with the step differently on each device, and the step's
    all-reduce waits forever for a device (XLA aborts the process). So the source must yield
    host data: an item holding a `jax.Array` is refused with a DataError at its position.

    Items come in the source's order. An exception raised by the source (or by `place`) is
    raised by `next` at that item's position. `close()` (also on `with` exit, and when the
    object is garbage collected) stops the thread, waits for it and closes the source; the
    thread holds no reference to the Prefetcher, so dropping it mid-way also ends the thread.
    """

    def __init__(self, batches: Iterable[Any], size: int = 2,
                 place: Callable[[Any], Any] | None = None):
        if int(size) < 1:
            raise DataError(f"prefetch size must be >= 1, got {size}", field="size")
        self._queue: queue.Queue = queue.Queue(maxsize=int(size))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=_prefetch_worker, name="afm_jax-prefetch", daemon=True,
                                        args=(iter(batches), self._queue, self._stop))
        self._place = place
        self._thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == _ITEM:
            return value if self._place is None else self._place(value)
        self._done = True
        self._thread.join()
        if kind == _ERROR:
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the background thread and wait for it (it finishes the item it is making)."""
        self._done = True
        self._stop.set()
        while self._thread.is_alive():
            try:  # make room, so a producer blocked on a full queue sees the stop
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(0.01)
        while not self._queue.empty():  # release the prefetched batches' buffers now
            self._queue.get_nowait()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


def _device_leaf(item: Any) -> str | None:
    """The path of the first `jax.Array` in `item` (a pytree), or None when it is host data."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(item):
        if isinstance(leaf, jax.Array):
            return jax.tree_util.keystr(path) or "the item"
    return None


def _prefetch_worker(source: Iterator[Any], out: queue.Queue, stop: threading.Event) -> None:
    """The Prefetcher's thread: (kind, value) messages into `out` until the source ends, raises,
    or `stop` is set; then closes the source (a generator's cleanup runs in this thread)."""

    def put(message: tuple[int, Any]) -> bool:
        while not stop.is_set():
            try:
                out.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        for n, item in enumerate(source):
            placed = _device_leaf(item)
            if placed is not None:
                raise DataError(f"prefetch: item {n} holds a device array at {placed}; the prefetch "
                                "thread takes host batches only (`host_batches`), placed on the "
                                "consumer's thread (`place=`), so that no second thread dispatches "
                                "to the devices", field="batches")
            if stop.is_set() or not put((_ITEM, item)):
                return
        put((_END, None))
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
        put((_ERROR, e))
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def prefetch(batches: Iterable[Any], size: int = 2, *,
             place: Callable[[Any], Any] | None = None) -> Prefetcher:
    """Host `batches` made up to `size` ahead in a background thread, each passed through
    `place` on the calling thread as it is taken (None: as they come). The thread only cuts and
    copies numpy batches; placing them (`place_batch`) is an asynchronous transfer that the
    calling thread issues in program order with the steps, so it overlaps the running step
    without a second thread touching the devices. Use it as a context manager (or call
    `close()`) when the consumer may stop early::

        with prefetch(host_batches(split, 1024, shuffle=True, mesh=mesh),
                      place=partial(place_batch, mesh=mesh)) as batches:
            for batch in batches:
                params, opt_state, loss = step(params, opt_state, batch)
    """
    return Prefetcher(batches, size, place)
