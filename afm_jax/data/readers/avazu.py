"""Avazu: comma-separated with a header; `click` is the label, `hour` becomes hour of day (+ weekday).

Kaggle's `test.csv` (and a production log) has no `click`: read only when scoring
(`require_label=False`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from afm_jax.data.readers.base import (
    LABELS_01,
    BadLine,
    ChunkStream,
    RawChunk,
    Source,
    check_file,
    missing_label,
    resolve_schema,
)
from afm_jax.data.readers.fields import convert_table
from afm_jax.data.readers.text import delimited_chunks, read_first_line, split_header
from afm_jax.data.schema import Schema
from afm_jax.errors import DataError


def avazu_source(path: str, schema: Schema | str | None = None, *, require_label: bool = True) -> Source:
    """Avazu CSV with header. `hour` YYMMDDHH -> hour_of_day + weekday; the partial variant (no `id`
    column) has hour-of-day only in `hour` -> hour_of_day. `id` is dropped, label is `click`.

    require_label=False (scoring): a header without `click` is the test layout (labels NaN)."""
    path = check_file(path)
    header = split_header(read_first_line(path), ",", path, quoting=True)
    if "hour" not in header:
        raise DataError("Avazu header lacks column 'hour'", path=path, line=1, field="hour")
    has_label = "click" in header
    if require_label and not has_label:
        raise missing_label(path, "click", "the Avazu header", line=1)
    full = "id" in header
    derived: list[str] = []
    for c in header:
        if c == "hour":
            derived += ["hour_of_day", "weekday"] if full else ["hour_of_day"]
        elif c != "id":
            derived.append(c)
    default = Schema(label="click", categorical=tuple(c for c in derived if c != "click"))
    sch = resolve_schema(schema, default, path)

    def process(table: pa.Table, lines: np.ndarray) -> tuple[RawChunk | None, list[BadLine]]:
        hour = table["hour"]
        if full:
            ok = pc.fill_null(pc.match_substring_regex(hour, r"^[0-9]{8}$"), False)
            date = pc.strptime(pc.utf8_slice_codeunits(hour, 0, 6), format="%y%m%d", unit="s", error_is_null=True)
            hh = pc.utf8_slice_codeunits(hour, 6, 8)
            ok = pc.and_(ok, pc.is_valid(date))
            weekday = pc.cast(pc.day_of_week(date), pa.string())
            reason = "hour must be YYMMDDHH"
        else:
            ok = pc.fill_null(pc.match_substring_regex(hour, r"^[0-9]{1,2}$"), False)
            hh = hour
            reason = "hour must be an hour of day 0..23"
        hour_int = pc.cast(pc.if_else(ok, hh, "0"), pa.int64())
        ok = pc.and_(ok, pc.less_equal(hour_int, 23)).to_numpy(zero_copy_only=False)
        hod = pc.cast(hour_int, pa.string())
        cols, names = [], []
        for c in table.column_names:
            if c == "hour":
                cols.append(hod)
                names.append("hour_of_day")
                if full:
                    cols.append(weekday)
                    names.append("weekday")
            elif c != "id":
                cols.append(table[c])
                names.append(c)
        out = pa.table(cols, names=names)
        return convert_table(out, lines, path, sch, LABELS_01 if has_label else None,
                             checks=[("hour", ok, reason)])

    def chunks(progress: bool) -> ChunkStream:
        return delimited_chunks(path, delimiter=",", column_names=header, header=True, progress=progress,
                                 process=process, quoting=True)
    return Source("avazu", (path,), sch, chunks, has_label)

