"""Batches over encoded splits, on the host or sharded over a mesh: one fancy-index (or slice)
per array per batch, no per-row Python."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from afm_jax.data.dataset import EncodedSplit
from afm_jax.distributed import batch_sharding, data_size, padded_size
from afm_jax.errors import DataError

# Splits larger than this are shuffled with a keyed permutation computed batch by batch (memory
# O(batch)) instead of a materialized one (8 bytes per row), so memory does not grow with rows.
LARGE_SHUFFLE_ROWS = 1 << 24


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def keyed_permutation(positions: np.ndarray, n: int, seed: int, rounds: int = 4) -> np.ndarray:
    """Element `positions` of a seeded pseudo-random permutation of range(n), without building
    it: a balanced Feistel network on 2h bits (4^h >= n) with cycle walking back into [0, n)."""
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    with np.errstate(over="ignore"):
        base = np.uint64(seed % (1 << 63)) * np.uint64(0x9E3779B97F4A7C15)
        keys = _mix64(np.arange(1, rounds + 1, dtype=np.uint64) + base)

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for k in keys:
            left, right = right, left ^ (_mix64(right ^ k) & mask)
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


def _rows(arr: Any, idx: np.ndarray, mesh: Mesh | None) -> np.ndarray | jax.Array:
    """arr[idx]: a host array without a mesh; with one, a global array sharded on axis 0 over
    "data", for which each process reads only the rows of its own devices."""
    if mesh is None:
        return _host_rows(arr, idx)
    sharding = batch_sharding(mesh, np.ndim(arr))
    if jax.process_count() == 1 and len(sharding.device_set) == 1:
        return jax.device_put(_host_rows(arr, idx), sharding)

    def device_rows(index: tuple) -> np.ndarray:  # index: this device's block of the result
        return np.ascontiguousarray(_host_rows(arr, idx[index[0]])[(slice(None),) + tuple(index[1:])])

    return jax.make_array_from_callback((len(idx),) + tuple(np.shape(arr)[1:]), sharding, device_rows)


def _take(arrays: Mapping[str, Any], idx: np.ndarray, real: int | None,
          mesh: Mesh | None) -> dict[str, Any]:
    """One batch {k: arrays[k][idx]}. real: add "weight" [len(idx)], 1 on the first `real` rows
    (times the arrays' own "weight", if any) and 0 on the padding after them; None: no weight."""
    batch = {k: _rows(v, idx, mesh) for k, v in arrays.items() if k != "weight"}
    if real is not None:
        weight = np.zeros(len(idx), np.float32)
        weight[:real] = 1.0
        if "weight" in arrays:
            weight *= _host_rows(np.asarray(arrays["weight"], np.float32), idx)
        batch["weight"] = _rows(weight, np.arange(len(idx)), mesh)
    return batch


def iterate_batches(split: EncodedSplit, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                    drop_remainder: bool = False, start_batch: int = 0, pad_last: bool = False,
                    mesh: Mesh | None = None) -> Iterator[dict[str, Any]]:
    """Yield {"cat": int32[B,Fc], "num": float32[B,Fn], "label": float32[B]}: the one batch path.

    shuffle: a permutation seeded by `seed` (pass a different seed per epoch); each batch's indices
    are sorted for memory locality. Without shuffle, batches are contiguous slices in order. The
    last batch is smaller unless drop_remainder. start_batch skips the first batches of this
    order (to resume an epoch mid-way with the very same batches). pad_last: every batch gets a
    "weight" array (1 for real rows) and the short last batch is padded to batch_size with
    repeats of its first row at weight 0, so a jitted step sees one shape only.

    mesh: the same rows in the same order as global arrays sharded on axis 0 over its "data"
    axis, each process reading from `split` only the rows of its own devices. Mesh batches are
    always padded and weighted as with pad_last, to batch_size rounded up to a multiple of the
    data axis. Without a mesh, host numpy arrays.
    Memory is O(batch) for splits over LARGE_SHUFFLE_ROWS rows (read from memory-mapped arrays).
    """
    pad = pad_last or mesh is not None
    arrays = {k: getattr(split, k) for k in ("cat", "num", "label")}
    for idx, real in batch_indices(len(split), batch_size, shuffle=shuffle, seed=seed,
                                   drop_remainder=drop_remainder, start_batch=start_batch,
                                   pad_to=padded_size(batch_size, mesh) if pad else None):
        yield _take(arrays, idx, real if pad else None, mesh)


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """A host batch {"cat": [B, Fc], ...} (the same in every process) as global arrays sharded
    on axis 0 over "data", each process copying only its devices' rows; padded to a multiple of
    the data axis like `iterate_batches(..., mesh=mesh)`, with a "weight" (the batch's own, if
    any, and 0 on the padding). A batch that is already sharded so is returned as it is."""
    b = int(np.shape(batch["cat"])[0])
    sharded = all(isinstance(v, jax.Array) and v.sharding == batch_sharding(mesh, v.ndim)
                  for v in batch.values())
    if sharded and b % data_size(mesh) == 0:
        out = dict(batch)
        if "weight" not in out:
            out["weight"] = _rows(np.ones(b, np.float32), np.arange(b), mesh)
        return out
    return _take(batch, pad_indices(np.arange(b), padded_size(b, mesh)), b, mesh)


def to_device(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A batch with its host (numpy) arrays put on the default device; arrays already placed
    (a mesh batch's global arrays) are kept as they are."""
    return {k: jax.device_put(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


_ITEM, _END, _ERROR = 0, 1, 2


class Prefetcher:
    """An iterator over `batches` that a background thread runs up to `size` items ahead of the
    consumer, each item passed through `place` there (e.g. `to_device`), so that cutting and
    transferring the next batches overlaps the current step. Built by `prefetch`.

    Items come in the source's order. An exception raised by the source (or by `place`) is
    raised by `next` at that item's position. `close()` (also on `with` exit, and when the
    object is garbage collected) stops the thread, waits for it and closes the source; the
    thread holds no reference to the Prefetcher, so dropping it mid-way also ends the thread.
    """

    def __init__(self, batches: Iterable[Any], size: int = 2,
                 place: Callable[[Any], Any] | None = to_device):
        if int(size) < 1:
            raise DataError(f"prefetch size must be >= 1, got {size}", field="size")
        self._queue: queue.Queue = queue.Queue(maxsize=int(size))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=_prefetch_worker, name="afm_jax-prefetch", daemon=True,
                                        args=(iter(batches), place, self._queue, self._stop))
        self._thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == _ITEM:
            return value
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


def _prefetch_worker(source: Iterator[Any], place: Callable[[Any], Any] | None, out: queue.Queue,
                     stop: threading.Event) -> None:
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
        for item in source:
            if stop.is_set() or not put((_ITEM, item if place is None else place(item))):
                return
        put((_END, None))
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
        put((_ERROR, e))
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def prefetch(batches: Iterable[Any], size: int = 2, *,
             place: Callable[[Any], Any] | None = to_device) -> Prefetcher:
    """`batches` made up to `size` ahead in a background thread and placed with `place`
    (default `to_device`: host arrays to the default device; None: as they come), so the next
    batches are cut and transferred while the current step runs. Use it as a context manager
    (or call `close()`) when the consumer may stop early::

        with prefetch(iterate_batches(split, 1024, shuffle=True)) as batches:
            for batch in batches:
                params, opt_state, loss = step(params, opt_state, batch)
    """
    return Prefetcher(batches, size, place)
