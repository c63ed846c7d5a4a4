"""Batches over encoded splits: one fancy-index per array per batch, no per-row Python."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from afm_jax.data.dataset import EncodedSplit
from afm_jax.errors import DataError


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
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
    n = len(split)
    order = np.random.default_rng(seed).permutation(n) if shuffle else None
    stop = n - n % batch_size if drop_remainder else n
    for s in range(start_batch * batch_size, stop, batch_size):
        e = min(s + batch_size, n)
        idx = np.arange(s, e) if order is None else np.sort(order[s:e])
        weight = None
        if pad_last:
            weight = np.ones(batch_size, np.float32)
            if e - s < batch_size:
                weight[e - s:] = 0.0
                idx = np.concatenate([idx, np.full(batch_size - (e - s), idx[0])])
        batch = {"cat": np.ascontiguousarray(split.cat[idx]), "num": np.ascontiguousarray(split.num[idx]),
                 "label": np.ascontiguousarray(split.label[idx])}
        if weight is not None:
            batch["weight"] = weight
        yield batch
