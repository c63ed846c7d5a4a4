"""Delimited text files -> pyarrow tables of string columns, with every malformed line a BadLine.

Text is read in byte blocks of complete lines (`.gz` decompressed on the fly); column counts,
empty lines, stray carriage returns and invalid UTF-8 are found with numpy on the whole block, and
only the good lines go to pyarrow.csv (all columns as strings). A UTF-8 byte order mark at the
start of a file (Excel's "CSV UTF-8") is skipped.

Quoting (`quoting=True`: CSV files with a header, RFC 4180 as pandas and spreadsheets write it): a
field enclosed in double quotes may hold the delimiter, and "" inside it is one quote; a quote
inside an unquoted field is data. A line whose quotes do not close a field (`"a"b`, an unclosed
`"a`, or a quoted value that spans lines) is a bad line. The lines holding a quote are counted
with Python's csv module; the others with numpy. Without it quotes are plain characters."""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from afm_jax.data.readers.base import BadLine, ChunkStream, RawChunk
from afm_jax.errors import DataError

BLOCK_SIZE = 16 << 20  # bytes of text parsed at a time
QUOTE = ord('"')
BOM = b"\xef\xbb\xbf"   # a UTF-8 byte order mark (Excel's "CSV UTF-8"): not part of the data


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
        return f.readline().removeprefix(BOM)


def _line_blocks(path: str, skip_lines: int, progress: bool) -> Iterator[tuple[bytes, int]]:
    """Yield (buffer of complete lines ending in b"\\n", 1-based line number of its first line)."""
    bar = _progress_bar(path, progress)
    raw, f = _open_binary(path)
    try:
        line_no = 1
        for _ in range(skip_lines):
            f.readline()
            line_no += 1
        rest = b"" if skip_lines else f.read(len(BOM)).removeprefix(BOM)
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


def split_header(line: bytes, delimiter: str, path: str, quoting: bool = False) -> list[str]:
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    if quoting:
        try:
            names = [n.strip() for n in next(csv.reader([text], delimiter=delimiter, strict=True))]
        except (csv.Error, StopIteration) as e:
            raise DataError(f"malformed quotes in the header: {e}", path=path, line=1) from e
    else:
        names = [n.strip().strip('"') for n in text.split(delimiter)]
    if not any(names):
        raise DataError("empty header line", path=path, line=1)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError("column name appears twice in the header", path=path, line=1, field=name)
        seen.add(name)
    return names


def _quoted_counts(buf: bytes, starts: np.ndarray, ends: np.ndarray, a: np.ndarray, delimiter: str,
                   counts: np.ndarray) -> dict[int, str]:
    """Column counts of the lines holding a quote, by the csv module (set in `counts`); returns
    {line index: why} for those whose quotes are malformed."""
    malformed: dict[int, str] = {}
    for i in np.unique(np.searchsorted(ends, np.flatnonzero(a == QUOTE))):
        # a carriage return inside the line is reported by its own check, with its column
        text = buf[starts[i]:ends[i]].decode("utf-8", "replace").rstrip("\r").replace("\r", " ")
        try:
            counts[i] = len(next(csv.reader([text], delimiter=delimiter, strict=True)))
        except csv.Error as e:
            malformed[int(i)] = str(e)
    return malformed


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _column_at(line: bytes, pos: int, delim: int, column_names: Sequence[str], quoting: bool = False) -> str:
    """Name of the column holding byte `pos` of a line with the right column count (with quoting, a
    delimiter inside a quoted field does not end it)."""
    if not quoting:
        return column_names[min(line.count(delim, 0, pos), len(column_names) - 1)]
    field, quoted, at_start, i = 0, False, True, 0
    while i < pos:
        c = line[i]
        if quoted and c == QUOTE:
            if line[i + 1:i + 2] == b'"':
                i += 1                  # "" inside a quoted field: one quote
            else:
                quoted = False
        elif not quoted and c == QUOTE and at_start:
            quoted = True
        elif not quoted and c == delim:
            field += 1
        at_start = not quoted and c == delim
        i += 1
    return column_names[min(field, len(column_names) - 1)]


def delimited_chunks(path: str, *, delimiter: str, column_names: Sequence[str], header: bool, progress: bool,
                      process: Callable[[pa.Table, np.ndarray], tuple[RawChunk | None, list[BadLine]]],
                      count_hints: Mapping[int, str] | None = None, quoting: bool = False) -> ChunkStream:
    """Column-count check (numpy), pyarrow parse of the good lines, then `process` for field checks.

    count_hints: column count -> what a line of that many columns may be, added to its reason.
    quoting: fields may be quoted (module docstring)."""
    count_hints = count_hints or {}
    n_cols = len(column_names)
    delim = ord(delimiter)
    read_opts = pacsv.ReadOptions(column_names=list(column_names), use_threads=True, block_size=1 << 22)
    parse_opts = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False,
                                    double_quote=quoting, escape_char=False,
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
        malformed = _quoted_counts(buf, starts, ends, a, delimiter, counts) if quoting else {}
        bad_mask = (counts != n_cols) | empty
        bad_mask[list(malformed)] = True
        lines = first_line + np.arange(n, dtype=np.int64)
        bad: list[BadLine] = []
        if bad_mask.any():
            for i in np.flatnonzero(bad_mask):
                if empty[i]:
                    bad.append(BadLine(path, int(lines[i]), None, "empty line"))
                elif i in malformed:
                    bad.append(BadLine(path, int(lines[i]), None, f"malformed quotes: {malformed[i]} "
                                       "(a quoted field ends at its closing quote, on its line)"))
                else:
                    c = int(counts[i])
                    fname = column_names[c] if c < n_cols else f"column {n_cols + 1} (unexpected)"
                    hint = f": {count_hints[c]}" if c in count_hints else ""
                    bad.append(BadLine(path, int(lines[i]), fname,
                                       f"expected {n_cols} {delimiter!r}-separated columns, found {c}{hint}"))
        # A CR not right before the LF would end a row inside pyarrow: a bad line, not a split row.
        cr = np.flatnonzero(a == 13)
        cr = cr[a[cr + 1] != 10]
        for i in np.unique(np.searchsorted(ends, cr)):
            if not bad_mask[i]:
                line = buf[starts[i]:ends[i]]
                bad_mask[i] = True
                bad.append(BadLine(path, int(lines[i]), _column_at(line, line.find(b"\r"), delim, column_names, quoting),
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
                    bad.append(BadLine(path, int(lines[i]), _column_at(line, e.start, delim, column_names, quoting),
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

