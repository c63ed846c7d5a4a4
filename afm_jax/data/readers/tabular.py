"""Generic tables with a user schema: CSV/TSV with a header, and Parquet (list<string> columns for
multi-valued fields; other nested columns rejected)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from afm_jax.data.bags import is_list_type
from afm_jax.data.readers.base import (
    LABELS_01,
    ChunkStream,
    Source,
    check_file,
    missing_label,
    resolve_schema,
)
from afm_jax.data.readers.fields import convert_table
from afm_jax.data.readers.text import delimited_chunks, read_first_line, split_header
from afm_jax.data.schema import Schema
from afm_jax.errors import DataError

PARQUET_BATCH = 1 << 18  # rows of Parquet parsed at a time


def csv_delimiter(path: str) -> str:
    """The column delimiter of a `csv:` file: a tab for .tsv / .tsv.gz, else a comma."""
    return "\t" if path.endswith((".tsv", ".tsv.gz")) else ","


def csv_source(path: str, schema: Schema | str | None, *, require_label: bool = True) -> Source:
    """Generic CSV with a header (tab-separated if the name ends in .tsv/.tsv.gz) and a schema.

    require_label=False (scoring): the schema's label column may be absent (labels NaN)."""
    path = check_file(path)
    delimiter = csv_delimiter(path)
    sch = resolve_schema(schema, None, path)
    header = split_header(read_first_line(path), delimiter, path, quoting=True)
    has_label = sch.label in header
    if require_label and not has_label:
        raise missing_label(path, sch.label, "the header", line=1)
    for c in sch.columns[1:]:
        if c not in header:
            raise DataError(f"schema column {c!r} is not in the header", path=path, line=1, field=c)
    for b in sch.bags:
        if delimiter in b.separator:
            raise DataError(f"the separator {b.separator!r} of a multi-valued field cannot contain the file's "
                            f"column delimiter {delimiter!r}", path=path, field=b.name)
    labels = LABELS_01 if has_label else None

    def chunks(progress: bool) -> ChunkStream:
        return delimited_chunks(path, delimiter=delimiter, column_names=header, header=True, progress=progress,
                                 process=lambda t, ln: convert_table(t, ln, path, sch, labels), quoting=True)
    return Source("csv", (path,), sch, chunks, has_label)


def parquet_source(path: str, schema: Schema | str | None, *, require_label: bool = True) -> Source:
    """Generic Parquet with a schema; 'line' numbers are 1-based row numbers.

    require_label=False (scoring): the schema's label column may be absent (labels NaN)."""
    path = check_file(path)
    sch = resolve_schema(schema, None, path)
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    has_label = sch.label in names
    if require_label and not has_label:
        raise missing_label(path, sch.label, "the Parquet file")
    for c in sch.columns[1:]:
        if c not in names:
            raise DataError(f"schema column {c!r} is not in the Parquet file", path=path, field=c)
    labels = LABELS_01 if has_label else None
    wanted = [c for c in names if c == sch.label or c in sch.features]
    bag_names = set(sch.bag_names)
    for c in wanted:
        t = pf.schema_arrow.field(c).type
        if c in bag_names and is_list_type(t) and not pa.types.is_nested(t.value_type):
            continue
        if pa.types.is_nested(t):
            what = ("a list of scalars or a delimited string" if c in bag_names
                    else "one scalar value per row (a list column belongs under \"multi_valued\")")
            raise DataError(f"column type {t} is not supported (a field needs {what})", path=path, field=c)

    def chunks(progress: bool) -> ChunkStream:
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=pf.metadata.num_rows, unit="rows", desc=f"parse {Path(path).name}", leave=False)
        row = 1
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH, columns=wanted):
                table = pa.Table.from_batches([batch])
                lines = row + np.arange(table.num_rows, dtype=np.int64)
                row += table.num_rows
                if bar is not None:
                    bar.update(table.num_rows)
                yield convert_table(table, lines, path, sch, labels)
        finally:
            if bar is not None:
                bar.close()
    return Source("parquet", (path,), sch, chunks, has_label)

