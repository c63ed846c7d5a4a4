"""Multi-valued columns: delimited strings or lists -> list<string> columns, and lists -> padded ids.

A bag column is a pyarrow list<string> array: one list per row, a null or empty value = an empty
bag. `pad_ids` cuts each row's items to the field's `max_len` (keeping the most recent ones, per
the field's truncation) into int32 [N, L] with the lengths int32 [N] beside them; padding
positions hold 0 (see the `splits` module docstring) and every cut is counted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from afm_jax.data.schema import BagSpec


def is_list_type(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def as_list_column(col: Any, separator: str) -> pa.Array:
    """A bag column as list<string>: a string column split on `separator` (null or "" -> empty
    list), or a list column with its items cast to strings (a null list -> empty list)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not isinstance(col, pa.Array):
        col = pa.array(col)
    if is_list_type(col.type):
        lens = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = col.flatten()
        if not pa.types.is_string(flat.type):
            flat = pc.cast(flat, pa.string())
        return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)), flat)
    if not pa.types.is_string(col.type):
        col = pc.cast(col, pa.string())
    empty = pc.fill_null(pc.equal(col, ""), True)
    split = pc.split_pattern(pc.if_else(empty, pa.scalar(None, pa.string()), col), separator)
    return as_list_column(split, separator)  # nulls -> empty lists, offsets from 0


def item_rows_ok(col: pa.Array) -> np.ndarray:
    """bool [N]: rows of a list<string> column (from `as_list_column`) without a null or empty item."""
    bad_items = pc.fill_null(pc.equal(col.flatten(), ""), True).to_numpy(zero_copy_only=False)
    lens = list_lengths(col)
    if not bad_items.any():
        return np.ones(len(col), dtype=bool)
    row_of_item = np.repeat(np.arange(len(col)), lens)
    return np.bincount(row_of_item[bad_items], minlength=len(col)) == 0


def list_lengths(col: pa.Array) -> np.ndarray:
    """int64 [N]: the number of items of each row (a null list: 0)."""
    return pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)


class Padded(NamedTuple):
    """Padded ids int32 [N, L], lengths int32 [N], rows cut and items dropped by the cut."""

    ids: np.ndarray
    lengths: np.ndarray
    truncated_rows: int
    dropped_items: int


def pad_ids(flat_ids: np.ndarray, lengths: np.ndarray, spec: BagSpec) -> Padded:
    """Cut rows of items (row i: the next lengths[i] entries of flat_ids) to spec.max_len items,
    keeping the most recent (spec.truncation), in their input order, padded with 0."""
    lengths = np.asarray(lengths, dtype=np.int64)
    max_len = spec.max_len
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    keep = np.minimum(lengths, max_len)
    first = starts + (lengths - keep if spec.truncation == "keep_last" else 0)
    pos = np.arange(max_len, dtype=np.int64)
    mask = pos[None, :] < keep[:, None]
    src = np.where(mask, first[:, None] + pos[None, :], 0)
    flat_ids = np.asarray(flat_ids, dtype=np.int32)
    ids = np.where(mask, flat_ids[src] if len(flat_ids) else 0, 0).astype(np.int32)
    over = lengths - keep
    return Padded(ids, keep.astype(np.int32), int((over > 0).sum()), int(over.sum()))
