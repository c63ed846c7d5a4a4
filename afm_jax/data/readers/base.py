"""What every reader yields: RawChunk (validated rows as per-field columns), BadLine, Source, and the
schema and file checks the readers share."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from afm_jax.data.schema import Schema
from afm_jax.errors import DataError

LABELS_01 = (("1", "true", "True", "TRUE", "1.0"), ("0", "false", "False", "FALSE", "0.0"))
LABELS_PM1 = (("1", "+1", "1.0", "+1.0"), ("-1", "0", "-1.0", "0.0"))


@dataclass
class RawChunk:
    """Validated rows of one file: per-field columns in field order, ready for Encoder.encode.

    columns: categorical field -> pa.Array of strings (null = missing); numeric field -> float64
    np.ndarray of raw values (NaN = missing); multi-valued field (bag_names) -> pa list<string>
    array (an empty list = an empty bag; items are never null or empty). label: float32 [N], all
    NaN when the file has no label column (a Source read with require_label=False). lines: int64
    [N], 1-based line (Parquet: row) numbers in `path`. cut: bag field -> int64 [N] items the
    reader itself left out of a row (e.g. a history beyond max_len), so that the dataset report
    counts them with the encoder's own truncation.
    """

    columns: dict[str, pa.Array | np.ndarray]
    cat_names: tuple[str, ...]
    num_names: tuple[str, ...]
    label: np.ndarray
    lines: np.ndarray
    path: str
    bag_names: tuple[str, ...] = ()
    cut: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)

    def head(self, k: int) -> RawChunk:
        return RawChunk({n: c[:k] for n, c in self.columns.items()}, self.cat_names, self.num_names,
                        self.label[:k], self.lines[:k], self.path, self.bag_names,
                        {n: c[:k] for n, c in self.cut.items()})


@dataclass(frozen=True)
class BadLine:
    """A rejected line: where it is, the field at fault (None: the whole line) and why."""

    path: str
    line: int
    field: str | None
    reason: str

    def error(self) -> DataError:
        """The DataError that on_bad_lines='error' raises for this line."""
        return DataError(self.reason + " (pass on_bad_lines='skip' to skip and count such lines)",
                         path=self.path, line=self.line, field=self.field,
                         cli=self.reason + " (--on-bad-lines skip skips and counts such lines)")


ChunkStream = Iterator[tuple[RawChunk | None, list[BadLine]]]


@dataclass
class Source:
    """A parsed data source: its resolved schema and a function that streams its chunks.

    has_label: whether the files have the label column; False only for a source opened with
    require_label=False (scoring) on files without it, whose chunks' labels are NaN."""

    name: str
    paths: tuple[str, ...]
    schema: Schema
    chunks: Callable[[bool], ChunkStream] = field(repr=False)  # chunks(progress)
    has_label: bool = True


def resolve_schema(schema: Schema | str | Path | None, default: Schema | None, path: str) -> Schema:
    """The schema to read with: the one passed (a Schema or a JSON path), else the format's default."""
    if isinstance(schema, Schema):
        return schema
    if schema is not None:
        return Schema.from_json(schema)
    if default is None:
        raise DataError("this format needs a schema: pass schema=Schema(...) or the path of a schema JSON",
                        path=path, cli="this format needs a schema: pass --schema FILE, a JSON file "
                        '{"label": "col", "categorical": [...], "numeric": [...]}')
    return default


def missing_label(path: str, column: str, where: str, line: int | None = None) -> DataError:
    """The error of a reader that needs the label (train, evaluate) on a file without it."""
    return DataError(f"the label column {column!r} is not in {where}: training and evaluation need "
                     "labels (`afm-jax score` reads files without them)", path=path, line=line, field=column)


def check_file(path: str) -> str:
    """`path` if it is a file, else DataError naming it."""
    if not os.path.isfile(path):
        raise DataError("file not found", path=path)
    return path
