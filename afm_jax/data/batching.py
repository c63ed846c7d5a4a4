"""Batches over encoded splits: one fancy-index per array per batch, no per-row Python."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from afm_jax.data.dataset import EncodedSplit
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


def batch_indices(n: int, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                  drop_remainder: bool = False, start_batch: int = 0,
                  pad_to: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """(row indices, real rows) of each batch of `iterate_batches`; pad_to: pad the index list
    to that many with repeats of its first row (those rows get weight 0)."""
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
        real = e - s
        if pad_to is not None and real < pad_to:
            idx = np.concatenate([idx, np.full(pad_to - real, idx[0])])
        yield idx, real


def iterate_batches(split: EncodedSplit, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                    drop_remainder: bool = False, start_batch: int = 0,
                    pad_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Yield {"cat": int32[B,Fc], "num": float32[B,Fn], "label": float32[B]}.

    shuffle: a permutation seeded by `seed` (pass a different seed per epoch); each batch's indices
    are sorted for memory locality. Without shuffle, batches are contiguous slices in order. The
    last batch is smaller unless drop_remainder. start_batch skips the first batches of this
    order (to resume an epoch mid-way with the very same batches). pad_last: every batch gets a
    "weight" array (1 for real rows) and the short last batch is padded to batch_size with
    repeats of its first row at weight 0, so a jitted step sees one shape only.
    Memory is O(batch) for splits over LARGE_SHUFFLE_ROWS rows (read from memory-mapped arrays).
    """
    for idx, real in batch_indices(len(split), batch_size, shuffle=shuffle, seed=seed,
                                   drop_remainder=drop_remainder, start_batch=start_batch,
                                   pad_to=batch_size if pad_last else None):
        if not shuffle and real == len(idx):  # a contiguous slice: no index array over the rows
            s = int(idx[0])
            batch = {k: np.ascontiguousarray(getattr(split, k)[s:s + real]) for k in ("cat", "num", "label")}
        else:
            batch = {k: np.ascontiguousarray(getattr(split, k)[idx]) for k in ("cat", "num", "label")}
        if pad_last:
            weight = np.ones(len(idx), np.float32)
            weight[real:] = 0.0
            batch["weight"] = weight
        yield batch
