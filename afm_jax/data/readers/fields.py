"""Field validation shared by every reader: label values, numbers, UTF-8 -> a RawChunk and BadLines.

A label outside the format's label values (null/empty included) is a bad line. In numeric and
bucketized fields an empty value (text), an empty string or a null (Parquet) is *missing*; anything
else must be a finite decimal number: text that is not a number, NaN, inf and values overflowing
float64 are bad lines. A bucketized value below -2**63 is a bad line (its integer bucket would
overflow int64). Binary (Parquet) values that are not UTF-8 are bad lines. A multi-valued field is
a string split on its separator (empty or null: an empty bag) or a list column (null: an empty
bag); an empty or null item inside a bag (e.g. "a||b", "a|") is a bad line."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from afm_jax.data.bags import as_list_column, is_list_type, item_rows_ok
from afm_jax.data.readers.base import BadLine, RawChunk
from afm_jax.data.schema import Schema
from afm_jax.errors import DataError

_NUMBER_RE = r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)


def _utf8_column(col: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Binary column -> (string column with non-UTF-8 values as null, mask of values that were UTF-8)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    try:
        return pc.cast(col, pa.string()), np.ones(len(col), dtype=bool)
    except pa.ArrowInvalid:
        pass
    values, ok = [], np.ones(len(col), dtype=bool)
    for i, v in enumerate(col.to_pylist()):
        if v is not None:
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                v, ok[i] = None, False
        values.append(v)
    return pa.array(values, pa.string()), ok


def _numbers(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A numeric column -> (float64 values, NaN where missing or invalid; is-a-number mask; present mask).

    Missing: null, or "" in a string column. Present values that are not a number fail the first
    mask; present values that parse to NaN/inf (or overflow float64) come back non-finite."""
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type) \
            or pa.types.is_decimal(col.type):
        present = pc.is_valid(col).to_numpy(zero_copy_only=False)
        x = pc.cast(col, pa.float64(), safe=False)  # safe=True rejects integers beyond 2**53
        x = pc.fill_null(x, np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
        return x, np.ones(len(col), dtype=bool), present
    col = pc.cast(col, pa.string())
    present = pc.fill_null(pc.not_equal(col, ""), False).to_numpy(zero_copy_only=False)
    ok = pc.fill_null(pc.match_substring_regex(col, _NUMBER_RE), False).to_numpy(zero_copy_only=False)
    ok |= ~present
    col = pc.if_else(pa.array(ok & present), pc.utf8_trim_whitespace(col), pa.scalar(None, pa.string()))
    x = pc.fill_null(pc.cast(col, pa.float64()), np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    return x, ok, present


def bucketize(x: np.ndarray) -> pa.Array:
    """Numeric -> category strings: "b<floor(log(x)^2)>" for x > 2, else str(floor(x)); NaN -> null."""
    missing = np.isnan(x)
    xf = np.where(missing, 0.0, x)
    big = xf > 2
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(big, np.floor(np.log(np.where(big, xf, 3.0)) ** 2), np.floor(xf)).astype(np.int64)
    s = pc.cast(pa.array(k), pa.string())
    s = pc.if_else(pa.array(big), pc.binary_join_element_wise("b", s, ""), s)
    return pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), s)


def convert_table(table: pa.Table, lines: np.ndarray, path: str, schema: Schema,
                  labels: tuple[Sequence[str], Sequence[str]] | None,
                  checks: Sequence[tuple[str, np.ndarray, str]] = (),
                  cut: dict[str, np.ndarray] | None = None) -> tuple[RawChunk | None, list[BadLine]]:
    """Validate label, numeric and multi-valued columns, drop bad rows, build the RawChunk.

    labels: the (positive, negative) label values; None: the table has no label column (a file
    read for scoring), and the chunk's labels are NaN. checks: extra (field, ok_mask, reason)
    from the format. cut: bag field -> items per row the reader left out (`RawChunk.cut`).
    Fields follow the table's column order.
    """
    n = table.num_rows
    names = table.column_names
    label_cols = (schema.label,) if labels is not None else ()
    for col in label_cols + schema.columns[1:]:
        if col not in names:
            raise DataError(f"schema column {col!r} is not in the data (columns: {', '.join(names)})",
                            path=path, field=col)
    utf8_checks = []
    raw_table = table  # bad-line messages quote the values as read
    for c in names:
        if (c in label_cols or c in schema.features) and _is_binary(table[c].type):
            col, ok = _utf8_column(table[c])
            table = table.set_column(names.index(c), c, col)
            utf8_checks.append((c, ok, "invalid UTF-8 bytes"))
    first_bad = np.full(n, -1, dtype=np.int32)
    reasons: list[tuple[str, str]] = []

    def mark(name: str, ok: np.ndarray, reason: str) -> None:
        new = ~ok & (first_bad < 0)
        if new.any():
            first_bad[new] = len(reasons)
        reasons.append((name, reason))

    for name, ok, reason in list(checks) + utf8_checks:
        mark(name, ok, reason)
    if labels is None:
        label = np.full(n, np.nan, dtype=np.float32)
    else:
        pos, neg = labels
        label_col = table[schema.label]
        if not (pa.types.is_string(label_col.type) or pa.types.is_large_string(label_col.type)):
            label_col = pc.cast(label_col, pa.string())
        is_pos = pc.fill_null(pc.is_in(label_col, value_set=pa.array(list(pos))), False).to_numpy(zero_copy_only=False)
        is_neg = pc.fill_null(pc.is_in(label_col, value_set=pa.array(list(neg))), False).to_numpy(zero_copy_only=False)
        mark(schema.label, is_pos | is_neg, f"label must be one of {list(pos) + list(neg)}")
        label = is_pos.astype(np.float32)
    numeric_cols = [c for c in names if c in schema.numeric or c in schema.bucketize]
    numbers: dict[str, np.ndarray] = {}
    for c in numeric_cols:
        x, is_number, present = _numbers(table[c])
        numbers[c] = x
        mark(c, is_number, "value is not a number")
        mark(c, ~present | np.isfinite(x), "value is not a finite number (NaN, inf or beyond float64)")
        if c in schema.bucketize:
            with np.errstate(invalid="ignore"):
                mark(c, ~present | ~(x < -2.0 ** 63), "value out of range (bucketized values must be >= -2**63)")

    bag_specs = {b.name: b for b in schema.bags}
    lists: dict[str, pa.Array] = {}
    for c in names:
        if c in bag_specs:
            lists[c] = as_list_column(table[c], bag_specs[c].separator)
            mark(c, item_rows_ok(lists[c]), f"empty item in a multi-valued field (separator "
                                            f"{bag_specs[c].separator!r} doubled or at an end, or a null item)")
        elif c in schema.features and is_list_type(table[c].type):
            raise DataError(f"column type {table[c].type} is a list: declare the field under \"multi_valued\" "
                            "or \"sequence\" in the schema", path=path, field=c)

    bad: list[BadLine] = []
    bad_rows = np.flatnonzero(first_bad >= 0)
    for i in bad_rows:
        fname, reason = reasons[first_bad[i]]
        got = f", got {raw_table[fname][int(i)].as_py()!r}" if fname in names else ""
        bad.append(BadLine(path, int(lines[i]), fname, reason + got))
    if len(bad_rows):
        keep = first_bad < 0
        table = table.filter(pa.array(keep))
        lines = lines[keep]
        label = label[keep]
        numbers = {c: x[keep] for c, x in numbers.items()}
        lists = {c: v.filter(pa.array(keep)) for c, v in lists.items()}
        cut = {c: v[keep] for c, v in (cut or {}).items()}
    if table.num_rows == 0:
        return None, bad
    columns: dict[str, pa.Array | np.ndarray] = {}
    cat_names, num_names, bag_names = [], [], []
    for c in names:
        if c in schema.categorical:
            col = table[c].combine_chunks()
            if not pa.types.is_string(col.type):
                col = pc.cast(col, pa.string())
            columns[c] = col
            cat_names.append(c)
        elif c in schema.bucketize:
            columns[c] = bucketize(numbers[c])
            cat_names.append(c)
        elif c in schema.numeric:
            columns[c] = numbers[c]
            num_names.append(c)
        elif c in lists:
            columns[c] = lists[c]
            bag_names.append(c)
    chunk = RawChunk(columns, tuple(cat_names), tuple(num_names), label, lines, path,
                     tuple(bag_names), {c: v for c, v in (cut or {}).items() if c in lists})
    return chunk, bad

