"""libFM/libSVM: `label idx:val ...` lines, one field per position (e.g. the Frappe files)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from afm_jax.data.readers.base import (
    LABELS_PM1,
    BadLine,
    ChunkStream,
    RawChunk,
    Source,
    check_file,
    missing_label,
    resolve_schema,
)
from afm_jax.data.readers.fields import convert_table
from afm_jax.data.readers.text import delimited_chunks, read_first_line
from afm_jax.data.schema import Schema
from afm_jax.errors import DataError


def libfm_source(paths: Sequence[str], schema: Schema | str | None = None, *, require_label: bool = True) -> Source:
    """libFM/libSVM lines `label idx:val ...` (label +1/-1 or 1/0); position k -> field f{k} with the
    idx as value (the val is ignored). Every line must have as many features as the first line.

    require_label=False (scoring): lines may be features only (`idx:val ...`, labels NaN); the
    first line of the first file decides, by whether its first item is a feature."""
    paths = tuple(check_file(p) for p in paths)
    first = read_first_line(paths[0]).decode("utf-8", "replace").strip()
    items = first.split(" ")
    has_label = ":" not in items[0]
    if require_label and not has_label:
        raise missing_label(paths[0], "label", f"line 1 (its first item {items[0]!r} is a feature)", line=1)
    n_feat = len(items) - int(has_label)
    if not first or n_feat < 1:
        raise DataError("first line has no features, cannot infer the number of fields", path=paths[0], line=1)
    fields = tuple(f"f{k}" for k in range(n_feat))
    sch = resolve_schema(schema, Schema(label="label", categorical=fields), paths[0])
    column_names = (("label",) if has_label else ()) + fields

    def process(path: str) -> Callable[[pa.Table, np.ndarray], tuple[RawChunk | None, list[BadLine]]]:
        def fn(table: pa.Table, lines: np.ndarray) -> tuple[RawChunk | None, list[BadLine]]:
            checks, cols = [], [table["label"]] if has_label else []
            for f in fields:
                col = table[f]
                ok = pc.fill_null(pc.match_substring_regex(col, r"^[0-9]+:[^:\s]+\s*$"), False)
                checks.append((f, ok.to_numpy(zero_copy_only=False), "feature must be idx:value"))
                cols.append(pc.replace_substring_regex(col, r":.*$", ""))
            out = pa.table(cols, names=list(column_names))
            return convert_table(out, lines, path, sch, LABELS_PM1 if has_label else None, checks=checks)
        return fn

    def chunks(progress: bool) -> ChunkStream:
        for p in paths:
            yield from delimited_chunks(p, delimiter=" ", column_names=column_names, header=False,
                                         progress=progress, process=process(p))
    return Source("libfm", paths, sch, chunks, has_label)

