"""Criteo: tab-separated, no header; label, 13 integer fields I1..I13, 26 hashed categorical C1..C26.

Files without the label (Kaggle's `test.txt`, a production log) have the 39 columns I1..I13,
C1..C26; they are read only when scoring (`require_label=False`), where a first line of 39
columns selects that layout for the whole file."""

from __future__ import annotations

from afm_jax.data.readers.base import LABELS_01, ChunkStream, Source, check_file, resolve_schema
from afm_jax.data.readers.fields import convert_table
from afm_jax.data.readers.text import delimited_chunks, read_first_line
from afm_jax.data.schema import Schema

CRITEO_INT = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS = ("label",) + CRITEO_INT + CRITEO_CAT
CRITEO_SCHEMA = Schema(label="label", categorical=CRITEO_CAT, bucketize=CRITEO_INT)

_NO_LABEL_HINT = ("a truncated line, or Criteo's layout without the label (training and evaluation "
                  "need the label first; `afm-jax score` reads files of 39 columns)")


def criteo_source(path: str, schema: Schema | str | None = None, *, require_label: bool = True) -> Source:
    """Criteo TSV without header: label, I1..I13, C1..C26; default I* bucketized, C* categorical.

    require_label=False (scoring): the label column may be absent. The first line decides: 39
    columns is the label-free layout I1..I13, C1..C26 (every line then needs 39; the chunks'
    labels are NaN), any other count the labelled one. With require_label=True a line of 39
    columns is a bad line whose reason says the label is missing.
    """
    path = check_file(path)
    sch = resolve_schema(schema, CRITEO_SCHEMA, path)
    has_label = require_label or read_first_line(path).count(b"\t") + 1 != len(CRITEO_COLUMNS) - 1
    columns = CRITEO_COLUMNS if has_label else CRITEO_COLUMNS[1:]
    hints = {len(CRITEO_COLUMNS) - 1: _NO_LABEL_HINT} if require_label else {}
    labels = LABELS_01 if has_label else None

    def chunks(progress: bool) -> ChunkStream:
        return delimited_chunks(path, delimiter="\t", column_names=columns, header=False, progress=progress,
                                 process=lambda t, ln: convert_table(t, ln, path, sch, labels), count_hints=hints)
    return Source("criteo", (path,), sch, chunks, has_label)
