"""Criteo: tab-separated, no header; label, 13 integer fields I1..I13, 26 hashed categorical C1..C26."""

from __future__ import annotations

from afm_jax.data.readers.base import LABELS_01, ChunkStream, Source, check_file, resolve_schema
from afm_jax.data.readers.fields import convert_table
from afm_jax.data.readers.text import delimited_chunks
from afm_jax.data.schema import Schema

CRITEO_INT = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS = ("label",) + CRITEO_INT + CRITEO_CAT
CRITEO_SCHEMA = Schema(label="label", categorical=CRITEO_CAT, bucketize=CRITEO_INT)


def criteo_source(path: str, schema: Schema | str | None = None) -> Source:
    """Criteo TSV without header: label, I1..I13, C1..C26; default I* bucketized, C* categorical."""
    path = check_file(path)
    sch = resolve_schema(schema, CRITEO_SCHEMA, path)

    def chunks(progress: bool) -> ChunkStream:
        return delimited_chunks(path, delimiter="\t", column_names=CRITEO_COLUMNS, header=False, progress=progress,
                                 process=lambda t, ln: convert_table(t, ln, path, sch, LABELS_01))
    return Source("criteo", (path,), sch, chunks)

