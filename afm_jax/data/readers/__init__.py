"""Streaming readers, one module per source: files -> RawChunk (validated rows as per-field columns)
+ BadLine records.

Each `*_source(path, schema)` checks the file and resolves the schema up front and returns a Source
whose `chunks(progress)` streams (RawChunk | None, [BadLine]) pairs. Shared pieces: `base` (the
types, schema and file checks), `text` (delimited lines -> string tables), `fields` (label,
numeric and UTF-8 validation -> RawChunk).

Labels: training and evaluation read with `require_label=True` (the default), and a file without
the label column is a DataError naming the file and the column (Criteo, which has no header: each
line of 39 columns is a bad line saying the label is missing). Scoring reads with
`require_label=False`: the label column may be absent (Criteo: a first line of 39 columns selects
the layout I1..I13, C1..C26 for the file; Avazu: no `click`; CSV/Parquet: no schema label; libFM:
lines of features only); such a Source has `has_label` False and its chunks' labels are NaN.

What is a bad line (a BadLine naming the line and field; on_bad_lines decides skip or error):
- text: an empty line, a wrong column count, a carriage return inside a line (only a CR right
  before the LF is a line end), bytes that are not UTF-8 (the field holding them is named);
- a label outside the format's label values (null/empty included);
- numeric and bucketized fields: an empty value (text), an empty string or a null (Parquet) is
  *missing*; anything else must be a finite decimal number: text that is not a number, NaN, inf
  and values overflowing float64 (e.g. "1e400") are bad lines, in text and in typed (float)
  Parquet columns alike. Huge finite values are valid (10**30 -> bucket "b4772", dense
  log1p(10**30)); a bucketized value below -2**63 (its integer bucket would overflow int64) is a
  bad line;
- Parquet binary columns with bytes that are not UTF-8. Nested Parquet columns (list, struct,
  map) are rejected up front (DataError naming the field), except list<scalar> columns of
  multi-valued fields;
- multi-valued fields (schema "multi_valued"/"sequence"): a delimited string (empty: an empty
  bag) or a list (null: an empty bag); an empty or null item is a bad line;
- CSV and Avazu files (`csv:`, `avazu:`): quotes as RFC 4180 writes them (pandas, spreadsheets,
  Python's csv module): a field in double quotes may hold the delimiter, and "" in it is one
  quote; a quote inside an unquoted field is data. A line whose quotes do not close a field
  (`"a"b`, an unclosed `"a`, a quoted value that spans lines) is a bad line. In Criteo TSV and
  libFM files quotes are plain characters.
"""

from afm_jax.data.readers.avazu import avazu_source
from afm_jax.data.readers.base import LABELS_01, LABELS_PM1, BadLine, ChunkStream, RawChunk, Source
from afm_jax.data.readers.criteo import CRITEO_CAT, CRITEO_COLUMNS, CRITEO_INT, CRITEO_SCHEMA, criteo_source
from afm_jax.data.readers.fields import bucketize, convert_table
from afm_jax.data.readers.libfm import libfm_source
from afm_jax.data.readers.movielens import MOVIELENS_BAG_SCHEMA, MOVIELENS_FIELDS, movielens_source
from afm_jax.data.readers.tabular import PARQUET_BATCH, csv_source, parquet_source
from afm_jax.data.readers.text import BLOCK_SIZE, read_first_line

__all__ = ["RawChunk", "BadLine", "ChunkStream", "Source", "LABELS_01", "LABELS_PM1",
           "criteo_source", "avazu_source", "libfm_source", "csv_source", "parquet_source", "movielens_source",
           "CRITEO_INT", "CRITEO_CAT", "CRITEO_COLUMNS", "CRITEO_SCHEMA", "MOVIELENS_FIELDS", "MOVIELENS_BAG_SCHEMA",
           "bucketize", "convert_table", "read_first_line", "BLOCK_SIZE", "PARQUET_BATCH"]
