"""Streaming readers: files -> RawChunk (validated rows as per-field columns) + bad-line records.

Text files are read in byte blocks of complete lines; column counts are checked with numpy on the
whole block, the good lines are parsed by pyarrow.csv (all columns as strings, no quoting), and
field values are validated a column at a time with pyarrow.compute. Only bad lines are handled one
by one. `.gz` files are decompressed on the fly.

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
  map) are rejected up front (DataError naming the field).
Quotes are plain characters (no quoting), so a stray quote in a categorical field is just data.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from afm_jax.data.schema import Schema
from afm_jax.errors import DataError

BLOCK_SIZE = 16 << 20  # bytes of text parsed at a time
PARQUET_BATCH = 1 << 18  # rows of Parquet parsed at a time

_NUMBER_RE = r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"
LABELS_01 = (("1", "true", "True", "TRUE", "1.0"), ("0", "false", "False", "FALSE", "0.0"))
LABELS_PM1 = (("1", "+1", "1.0", "+1.0"), ("-1", "0", "-1.0", "0.0"))

CRITEO_INT = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS = ("label",) + CRITEO_INT + CRITEO_CAT
CRITEO_SCHEMA = Schema(label="label", categorical=CRITEO_CAT, bucketize=CRITEO_INT)


@dataclass
class RawChunk:
    """Validated rows of one file: per-field columns in field order, ready for Encoder.encode.

    columns: categorical field -> pa.Array of strings (null = missing); numeric field -> float64
    np.ndarray of raw values (NaN = missing). label: float32 [N]. lines: int64 [N], 1-based line
    (Parquet: row) numbers in `path`.
    """

    columns: dict[str, pa.Array | np.ndarray]
    cat_names: tuple[str, ...]
    num_names: tuple[str, ...]
    label: np.ndarray
    lines: np.ndarray
    path: str

    def __len__(self) -> int:
        return len(self.label)

    def head(self, k: int) -> RawChunk:
        return RawChunk({n: c[:k] for n, c in self.columns.items()}, self.cat_names, self.num_names,
                        self.label[:k], self.lines[:k], self.path)


@dataclass(frozen=True)
class BadLine:
    path: str
    line: int
    field: str | None
    reason: str

    def error(self) -> DataError:
        return DataError(self.reason + " (pass on_bad_lines='skip' to skip and count such lines)",
                         path=self.path, line=self.line, field=self.field)


ChunkStream = Iterator[tuple[RawChunk | None, list[BadLine]]]


@dataclass
class Source:
    """A parsed data source: its resolved schema and a function that streams its chunks."""

    name: str
    paths: tuple[str, ...]
    schema: Schema
    chunks: Callable[[bool], ChunkStream] = field(repr=False)  # chunks(progress)


# ----------------------------------------------------------------------------------------- text I/O

def _open_binary(path: str):
    raw = open(path, "rb")
    if path.endswith(".gz"):
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")
    return raw, raw


def _progress_bar(path: str, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=f"parse {Path(path).name}",
                leave=False)


def read_first_line(path: str) -> bytes:
    raw, f = _open_binary(path)
    with raw:
        return f.readline()


def _line_blocks(path: str, skip_lines: int, progress: bool) -> Iterator[tuple[bytes, int]]:
    """Yield (buffer of complete lines ending in b"\\n", 1-based line number of its first line)."""
    bar = _progress_bar(path, progress)
    raw, f = _open_binary(path)
    try:
        line_no = 1
        for _ in range(skip_lines):
            f.readline()
            line_no += 1
        rest = b""
        while True:
            data = f.read(BLOCK_SIZE)
            if bar is not None:
                bar.update(raw.tell() - bar.n)
            if not data:
                break
            data = rest + data if rest else data
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            block, rest = data[: cut + 1], data[cut + 1:]
            yield block, line_no
            line_no += block.count(b"\n")
        if rest:
            yield rest + b"\n", line_no
    finally:
        raw.close()
        if bar is not None:
            bar.close()


def _split_header(line: bytes, delimiter: str, path: str) -> list[str]:
    names = [n.strip().strip('"') for n in line.decode("utf-8", "replace").rstrip("\r\n").split(delimiter)]
    if not any(names):
        raise DataError("empty header line", path=path, line=1)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError("column name appears twice in the header", path=path, line=1, field=name)
        seen.add(name)
    return names


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _column_at(line: bytes, pos: int, delim: int, column_names: Sequence[str]) -> str:
    """Name of the column holding byte `pos` of a line with the right column count."""
    return column_names[min(line.count(delim, 0, pos), len(column_names) - 1)]


def _delimited_chunks(path: str, *, delimiter: str, column_names: Sequence[str], header: bool, progress: bool,
                      process: Callable[[pa.Table, np.ndarray], tuple[RawChunk | None, list[BadLine]]]
                      ) -> ChunkStream:
    """Column-count check (numpy), pyarrow parse of the good lines, then `process` for field checks."""
    n_cols = len(column_names)
    delim = ord(delimiter)
    read_opts = pacsv.ReadOptions(column_names=list(column_names), use_threads=True, block_size=1 << 22)
    parse_opts = pacsv.ParseOptions(delimiter=delimiter, quote_char=False, double_quote=False, escape_char=False,
                                    newlines_in_values=False, ignore_empty_lines=False)
    convert_opts = pacsv.ConvertOptions(column_types={c: pa.string() for c in column_names},
                                        null_values=[""], strings_can_be_null=True)
    for buf, first_line in _line_blocks(path, 1 if header else 0, progress):
        a = np.frombuffer(buf, dtype=np.uint8)
        ends = np.flatnonzero(a == 10)
        n = len(ends)
        starts = np.empty(n, dtype=np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        counts = np.bincount(np.searchsorted(ends, np.flatnonzero(a == delim)), minlength=n) + 1
        length = ends - starts
        has_cr = np.zeros(n, dtype=bool)
        nonempty = length > 0
        has_cr[nonempty] = a[ends[nonempty] - 1] == 13
        empty = (length - has_cr) == 0
        bad_mask = (counts != n_cols) | empty
        lines = first_line + np.arange(n, dtype=np.int64)
        bad: list[BadLine] = []
        if bad_mask.any():
            for i in np.flatnonzero(bad_mask):
                if empty[i]:
                    bad.append(BadLine(path, int(lines[i]), None, "empty line"))
                else:
                    c = int(counts[i])
                    fname = column_names[c] if c < n_cols else f"column {n_cols + 1} (unexpected)"
                    bad.append(BadLine(path, int(lines[i]), fname,
                                       f"expected {n_cols} {delimiter!r}-separated columns, found {c}"))
        # A CR not right before the LF would end a row inside pyarrow: a bad line, not a split row.
        cr = np.flatnonzero(a == 13)
        cr = cr[a[cr + 1] != 10]
        for i in np.unique(np.searchsorted(ends, cr)):
            if not bad_mask[i]:
                line = buf[starts[i]:ends[i]]
                bad_mask[i] = True
                bad.append(BadLine(path, int(lines[i]), _column_at(line, line.find(b"\r"), delim, column_names),
                                   "carriage return inside the line"))
        # Bytes that are not UTF-8 (pyarrow would reject the whole block): look at the lines with
        # non-ASCII bytes, one by one only when the block does not decode.
        high = np.flatnonzero(a >= 0x80)
        if len(high) and not _is_utf8(buf):
            for i in np.unique(np.searchsorted(ends, high)):
                if bad_mask[i]:
                    continue
                line = buf[starts[i]:ends[i]]
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    bad_mask[i] = True
                    bad.append(BadLine(path, int(lines[i]), _column_at(line, e.start, delim, column_names),
                                       f"invalid UTF-8 bytes {line[e.start:e.end]!r}"))
        if bad_mask.any():
            bad.sort(key=lambda b: b.line)
            good = np.flatnonzero(~bad_mask)
            good_buf = b"".join(buf[starts[i]:ends[i] + 1] for i in good)
            lines = lines[good]
        else:
            good_buf = buf
        if len(lines) == 0:
            yield None, bad
            continue
        try:
            table = pacsv.read_csv(pa.BufferReader(good_buf), read_options=read_opts, parse_options=parse_opts,
                                   convert_options=convert_opts)
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            raise DataError(f"cannot parse lines {lines[0]}..{lines[-1]}: {e}", path=path, line=int(lines[0])) from e
        if table.num_rows != len(lines):
            raise DataError(f"parsed {table.num_rows} rows from {len(lines)} lines (quoted fields are not "
                            "supported)", path=path, line=int(lines[0]))
        chunk, field_bad = process(table, lines)
        if field_bad:
            bad = sorted(bad + field_bad, key=lambda b: b.line)
        yield chunk, bad


# ------------------------------------------------------------------------------ field validation

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
                  labels: tuple[Sequence[str], Sequence[str]],
                  checks: Sequence[tuple[str, np.ndarray, str]] = ()) -> tuple[RawChunk | None, list[BadLine]]:
    """Validate label and numeric columns, drop bad rows, build the RawChunk.

    checks: extra (field, ok_mask, reason) from the format. Fields follow the table's column order.
    """
    n = table.num_rows
    names = table.column_names
    for col in (schema.label,) + schema.categorical + schema.numeric + schema.bucketize:
        if col not in names:
            raise DataError(f"schema column {col!r} is not in the data (columns: {', '.join(names)})",
                            path=path, field=col)
    utf8_checks = []
    raw_table = table  # bad-line messages quote the values as read
    for c in names:
        if (c == schema.label or c in schema.features) and _is_binary(table[c].type):
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
    pos, neg = labels
    label_col = table[schema.label]
    if not (pa.types.is_string(label_col.type) or pa.types.is_large_string(label_col.type)):
        label_col = pc.cast(label_col, pa.string())
    is_pos = pc.fill_null(pc.is_in(label_col, value_set=pa.array(list(pos))), False).to_numpy(zero_copy_only=False)
    is_neg = pc.fill_null(pc.is_in(label_col, value_set=pa.array(list(neg))), False).to_numpy(zero_copy_only=False)
    mark(schema.label, is_pos | is_neg, f"label must be one of {list(pos) + list(neg)}")
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
        is_pos = is_pos[keep]
        numbers = {c: x[keep] for c, x in numbers.items()}
    if table.num_rows == 0:
        return None, bad
    columns: dict[str, pa.Array | np.ndarray] = {}
    cat_names, num_names = [], []
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
    chunk = RawChunk(columns, tuple(cat_names), tuple(num_names), is_pos.astype(np.float32), lines, path)
    return chunk, bad


def _resolve_schema(schema: Schema | str | Path | None, default: Schema | None, path: str) -> Schema:
    if isinstance(schema, Schema):
        return schema
    if schema is not None:
        return Schema.from_json(schema)
    if default is None:
        raise DataError("this format needs a schema: pass schema=Schema(...) or the path of a schema JSON",
                        path=path)
    return default


def _check_file(path: str) -> str:
    if not os.path.isfile(path):
        raise DataError("file not found", path=path)
    return path


# ----------------------------------------------------------------------------------------- formats

def criteo_source(path: str, schema: Schema | str | None = None) -> Source:
    """Criteo TSV without header: label, I1..I13, C1..C26; default I* bucketized, C* categorical."""
    path = _check_file(path)
    sch = _resolve_schema(schema, CRITEO_SCHEMA, path)

    def chunks(progress: bool) -> ChunkStream:
        return _delimited_chunks(path, delimiter="\t", column_names=CRITEO_COLUMNS, header=False, progress=progress,
                                 process=lambda t, ln: convert_table(t, ln, path, sch, LABELS_01))
    return Source("criteo", (path,), sch, chunks)


def avazu_source(path: str, schema: Schema | str | None = None) -> Source:
    """Avazu CSV with header. `hour` YYMMDDHH -> hour_of_day + weekday; the partial variant (no `id`
    column) has hour-of-day only in `hour` -> hour_of_day. `id` is dropped, label is `click`."""
    path = _check_file(path)
    header = _split_header(read_first_line(path), ",", path)
    for required in ("click", "hour"):
        if required not in header:
            raise DataError(f"Avazu header lacks column {required!r}", path=path, line=1, field=required)
    full = "id" in header
    derived: list[str] = []
    for c in header:
        if c == "hour":
            derived += ["hour_of_day", "weekday"] if full else ["hour_of_day"]
        elif c != "id":
            derived.append(c)
    default = Schema(label="click", categorical=tuple(c for c in derived if c != "click"))
    sch = _resolve_schema(schema, default, path)

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
        return convert_table(out, lines, path, sch, LABELS_01, checks=[("hour", ok, reason)])

    def chunks(progress: bool) -> ChunkStream:
        return _delimited_chunks(path, delimiter=",", column_names=header, header=True, progress=progress,
                                 process=process)
    return Source("avazu", (path,), sch, chunks)


def libfm_source(paths: Sequence[str], schema: Schema | str | None = None) -> Source:
    """libFM/libSVM lines `label idx:val ...` (label +1/-1 or 1/0); position k -> field f{k} with the
    idx as value (the val is ignored). Every line must have as many features as the first line."""
    paths = tuple(_check_file(p) for p in paths)
    first = read_first_line(paths[0]).decode("utf-8", "replace").strip()
    n_feat = len(first.split(" ")) - 1
    if not first or n_feat < 1:
        raise DataError("first line has no features, cannot infer the number of fields", path=paths[0], line=1)
    fields = tuple(f"f{k}" for k in range(n_feat))
    sch = _resolve_schema(schema, Schema(label="label", categorical=fields), paths[0])
    column_names = ("label",) + fields

    def process(path: str) -> Callable[[pa.Table, np.ndarray], tuple[RawChunk | None, list[BadLine]]]:
        def fn(table: pa.Table, lines: np.ndarray) -> tuple[RawChunk | None, list[BadLine]]:
            checks, cols = [], [table["label"]]
            for f in fields:
                col = table[f]
                ok = pc.fill_null(pc.match_substring_regex(col, r"^[0-9]+:[^:\s]+\s*$"), False)
                checks.append((f, ok.to_numpy(zero_copy_only=False), "feature must be idx:value"))
                cols.append(pc.replace_substring_regex(col, r":.*$", ""))
            out = pa.table(cols, names=list(column_names))
            return convert_table(out, lines, path, sch, LABELS_PM1, checks=checks)
        return fn

    def chunks(progress: bool) -> ChunkStream:
        for p in paths:
            yield from _delimited_chunks(p, delimiter=" ", column_names=column_names, header=False,
                                         progress=progress, process=process(p))
    return Source("libfm", paths, sch, chunks)


def csv_source(path: str, schema: Schema | str | None) -> Source:
    """Generic CSV with a header (tab-separated if the name ends in .tsv/.tsv.gz) and a schema."""
    path = _check_file(path)
    delimiter = "\t" if path.endswith((".tsv", ".tsv.gz")) else ","
    sch = _resolve_schema(schema, None, path)
    header = _split_header(read_first_line(path), delimiter, path)
    for c in (sch.label,) + sch.categorical + sch.numeric + sch.bucketize:
        if c not in header:
            raise DataError(f"schema column {c!r} is not in the header", path=path, line=1, field=c)

    def chunks(progress: bool) -> ChunkStream:
        return _delimited_chunks(path, delimiter=delimiter, column_names=header, header=True, progress=progress,
                                 process=lambda t, ln: convert_table(t, ln, path, sch, LABELS_01))
    return Source("csv", (path,), sch, chunks)


def parquet_source(path: str, schema: Schema | str | None) -> Source:
    """Generic Parquet with a schema; 'line' numbers are 1-based row numbers."""
    path = _check_file(path)
    sch = _resolve_schema(schema, None, path)
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    for c in (sch.label,) + sch.categorical + sch.numeric + sch.bucketize:
        if c not in names:
            raise DataError(f"schema column {c!r} is not in the Parquet file", path=path, field=c)
    wanted = [c for c in names if c == sch.label or c in sch.features]
    for c in wanted:
        t = pf.schema_arrow.field(c).type
        if pa.types.is_nested(t):
            raise DataError(f"column type {t} is not supported (a field needs one scalar value per row)",
                            path=path, field=c)

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
                yield convert_table(table, lines, path, sch, LABELS_01)
        finally:
            if bar is not None:
                bar.close()
    return Source("parquet", (path,), sch, chunks)


_AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])
_AGE_NAMES = np.array(["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"], dtype=object)
MOVIELENS_FIELDS = ("user", "movie", "age", "gender", "occupation", "zip3", "genre", "year")


def movielens_source(directory: str, schema: Schema | str | None = None) -> Source:
    """MovieLens-100k from ratings/users/items.parquet; label rating >= 4; rows sorted by timestamp.

    Fields: user, movie, age bucket, gender, occupation, zip3 (zip prefix), genre (first genre flag
    set, or "none"), year (release year). 'Line' numbers are 1-based rows of ratings.parquet.
    """
    d = Path(directory)
    paths = tuple(_check_file(str(d / f"{n}.parquet")) for n in ("ratings", "users", "items"))
    sch = _resolve_schema(schema, Schema(label="label", categorical=MOVIELENS_FIELDS), paths[0])

    def chunks(progress: bool) -> ChunkStream:
        ratings, users, items = (pq.read_table(p) for p in paths)
        for tab, cols, p in ((ratings, ("user_id", "movie_id", "rating", "timestamp"), paths[0]),
                             (users, ("user_id", "age", "gender", "occupation", "zip_code"), paths[1]),
                             (items, ("movie_id", "release_date"), paths[2])):
            for c in cols:
                if c not in tab.column_names:
                    raise DataError(f"column {c!r} missing", path=p, field=c)
        genres = [c for c in items.column_names[items.column_names.index("release_date") + 1:]
                  if c not in ("video_release_date", "IMDb_URL")]
        n = ratings.num_rows
        order = np.argsort(pc.fill_null(ratings["timestamp"], 0).to_numpy(zero_copy_only=False), kind="stable")
        ratings = ratings.take(pa.array(order))
        lines = order.astype(np.int64) + 1
        rating = pc.cast(ratings["rating"], pa.float64())
        ok = pc.fill_null(pc.and_(pc.greater_equal(rating, 0.5), pc.less_equal(rating, 5.0)), False)
        ok = pc.and_(ok, pc.is_valid(ratings["user_id"]))
        ok = pc.and_(ok, pc.is_valid(ratings["movie_id"])).to_numpy(zero_copy_only=False)
        label = pc.if_else(pc.greater_equal(pc.fill_null(rating, 0), 4.0), "1", "0")
        ui = pc.index_in(ratings["user_id"], value_set=users["user_id"])
        mi = pc.index_in(ratings["movie_id"], value_set=items["movie_id"])

        def take(tab: pa.Table, col: str | pa.Array, idx: pa.Array) -> pa.Array:
            values = tab[col] if isinstance(col, str) else col
            return pc.take(values, idx)

        age = users["age"].to_numpy(zero_copy_only=False)
        age_bucket = pa.array(_AGE_NAMES[np.searchsorted(_AGE_EDGES, age, side="right")].tolist(), type=pa.string())
        zip3 = pc.utf8_slice_codeunits(pc.cast(users["zip_code"], pa.string()), 0, 3)
        if genres:
            flags = np.stack([pc.fill_null(items[g], 0).to_numpy(zero_copy_only=False) for g in genres], axis=1) > 0
            first = np.where(flags.any(axis=1), flags.argmax(axis=1), len(genres))
            genre = pa.array((genres + ["none"])[i] for i in first)
        else:
            genre = pa.array(["none"] * items.num_rows)
        year = pc.extract_regex(pc.cast(items["release_date"], pa.string()), r"(?P<y>[0-9]{4})\s*$")
        year = pc.struct_field(year, [0])
        table = pa.table({
            "label": label,
            "user": pc.cast(ratings["user_id"], pa.string()),
            "movie": pc.cast(ratings["movie_id"], pa.string()),
            "age": take(users, age_bucket, ui),
            "gender": pc.cast(take(users, "gender", ui), pa.string()),
            "occupation": pc.cast(take(users, "occupation", ui), pa.string()),
            "zip3": take(users, zip3, ui),
            "genre": take(items, genre, mi),
            "year": take(items, year, mi),
        })
        if n:
            yield convert_table(table, lines, paths[0], sch, (("1",), ("0",)),
                                checks=[("rating", ok, "rating must be a number in 0.5..5 with user and movie ids")])
    return Source("movielens", paths, sch, chunks)
