"""Property-based fuzzing of every file reader: Criteo TSV, Avazu CSV, generic CSV/TSV, Parquet, libFM.

Each generated file mixes valid lines with lines that carry exactly one injected fault (wrong
column count, non-numeric / NaN / inf / out-of-range numbers, bad labels, empty lines, stray tabs
and carriage returns, invalid UTF-8, a header line where none belongs), with LF or CRLF line ends
and with or without a trailing newline. Stray quotes, tabs in comma-separated fields, huge
positive integers and non-ASCII UTF-8 are *valid* data and appear in the valid lines. CSV and Avazu
files are written as RFC 4180 says (a value holding the delimiter or a quote is quoted, its quotes
doubled), so their valid values also hold commas; a field whose quotes do not close it is a fault.

Properties, for every file:
1. on_bad_lines="error": the file loads (then it had no bad line and every line became a row) or
   raises DataError naming the file, the first bad line (1-based) and its field. A file without
   any valid line (empty, header only) raises DataError naming the file, possibly without a line.
   Any other exception type fails the test.
2. on_bad_lines="skip": rows_read + rows_skipped == the number of data lines, first_skipped_lines
   are the first (up to 10) injected bad lines and skipped_examples name their fields, as long as
   one valid line remains (otherwise DataError naming the file).

Data lines of a text file: its records separated by b"\\n" (a CRLF ending belongs to its record,
a last record without trailing newline counts), minus the header line for Avazu and CSV. Parquet:
its rows, numbered from 1.

Numeric policy checked here (see afm_jax.data.readers): in numeric and bucketized fields an empty
value / null is missing; NaN, inf and anything overflowing float64 (1e400) is a bad line naming
the field; bucketized values below -2**63 are bad lines; huge positive values (10**30) are valid.

Set AFM_JAX_WRITE_FUZZ_COUNTS=1 to write what was tried to experiments/results/fuzz_counts.json
(or AFM_JAX_WRITE_FUZZ_COUNTS=PATH to write it to PATH, as experiments/robustness.py --out does).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from afm_jax.data import Schema, load_dataset
from afm_jax.data.readers import CRITEO_COLUMNS
from afm_jax.errors import DataError

# No shrink phase: shrinking 40-column files takes minutes; a failure prints the (small) file as drawn.
SETTINGS = settings(max_examples=100, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])

COUNTS: dict[str, Counter] = defaultdict(Counter)
BAD_KINDS: dict[str, Counter] = defaultdict(Counter)


@pytest.fixture(scope="module", autouse=True)
def _write_counts():
    yield
    where = os.environ.get("AFM_JAX_WRITE_FUZZ_COUNTS")
    if where:
        out = (Path(__file__).resolve().parents[1] / "experiments" / "results" / "fuzz_counts.json"
               if where == "1" else Path(where))
        out.parent.mkdir(parents=True, exist_ok=True)
        data = {r: {**dict(COUNTS[r]), "bad_lines_by_kind": dict(sorted(BAD_KINDS[r].items()))}
                for r in sorted(COUNTS)}
        data["total"] = {k: sum(c[k] for c in COUNTS.values()) for k in ("files", "lines", "bad_lines")}
        out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------ value strategies

HUGE = "1" + "0" * 30
CAT_TEXT = st.text(alphabet="abcxyz019 _-.é日'\"", max_size=6)
CAT = st.one_of(st.just(""), st.integers(0, 2**32).map(lambda k: f"{k:08x}"), CAT_TEXT, st.just(HUGE))
INT = st.one_of(st.just(""), st.integers(-3, 10_000).map(str), st.sampled_from(
    ["2.5", "1e3", " 7 ", "+3", "-0", HUGE, "123456789012345678901234567890", "0.000", ".5"]))
NUM = st.one_of(INT, st.sampled_from(["-" + HUGE, "-1e300", "1e300", "3.25E-2"]))
NOT_NUMBER = st.sampled_from(["abc", "x1", "1;5", "0x10", '"5"', "5'", "1 2", "--1", "e5", "."])
NON_FINITE = st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e999", "1" + "0" * 400])
HUGE_NEG = st.sampled_from(["-" + HUGE, "-1e300", "-9.3e18"])
LABEL01 = st.sampled_from(["0", "1", "0", "1", "1.0", "0.0", "true", "False", "TRUE"])
BAD_LABEL01 = st.sampled_from(["2", "-1", "", "nan", "yes", " 1", "0.5", "1e0", '"1"'])
BAD_UTF8 = st.sampled_from([b"\xff", b"\xc3", b"ab\xfe\xfdcd", b"\xed\xa0\x80", b"\x80x"])


def _b(s: str) -> bytes:
    return s.encode("utf-8")


def _csv(delim: bytes):
    """A value as a CSV writer (RFC 4180, csv.QUOTE_MINIMAL) puts it in a line."""
    def field(s: str | bytes) -> bytes:
        v = s if isinstance(s, bytes) else _b(s)
        return b'"' + v.replace(b'"', b'""') + b'"' if delim in v or b'"' in v else v
    return field


def write_text_file(path: Path, header: bytes | None, lines: list[bytes], eol: bytes, trailing: bool) -> int:
    """Write the file; return its number of data lines (records, minus the header)."""
    if lines and lines[-1] == b"":
        trailing = True  # an empty last record only exists with a newline after it
    parts = ([header] if header is not None else []) + lines
    body = eol.join(parts) + (eol if trailing and parts else b"")
    path.write_bytes(body)
    n = body.count(b"\n") + (0 if not body or body.endswith(b"\n") else 1)
    return n - (1 if header is not None else 0)


# ------------------------------------------------------------------------------ the properties

def _check_error(e: DataError, path: str, n_lines: int) -> None:
    msg = str(e)
    assert e.path == path, f"DataError names path {e.path!r}, not {path!r}: {msg}"
    assert path in msg and "\n" not in msg and len(msg) < 1000, msg
    assert "Traceback" not in msg
    if e.line is not None:
        assert 1 <= e.line <= max(n_lines, 1), msg
        assert f"line {e.line}" in msg


def _check_encoded(ds) -> None:
    for s in (ds.train, ds.valid, ds.test):
        assert np.all(np.asarray(s.cat) >= 0) and np.all(np.asarray(s.cat) < np.array(ds.info.vocab_sizes))
        assert np.all(np.isfinite(np.asarray(s.num)))
        assert set(np.unique(np.asarray(s.label)).tolist()) <= {0.0, 1.0}
    assert np.all(np.isfinite(ds.encoder.num_mean)) and np.all(np.isfinite(ds.encoder.num_std))
    for vocab in ds.encoder.vocabs:
        assert not any(isinstance(v, str) and "9223372036854775808" in v for v in vocab), vocab[:5]


def check_file(reader: str, spec: str, path: str, n_data: int, header: bool, bad: dict[int, tuple[str, str | None]],
               schema=None) -> None:
    """bad: file line number -> (fault kind, field the error must name)."""
    COUNTS[reader]["files"] += 1
    COUNTS[reader]["lines"] += n_data
    COUNTS[reader]["bad_lines"] += len(bad)
    BAD_KINDS[reader].update(kind for kind, _ in bad.values())
    n_lines = n_data + int(header)
    n_good = n_data - len(bad)
    bad_lines = sorted(bad)
    for mode in ("error", "skip"):
        cache = tempfile.mkdtemp(prefix="afm_fuzz_cache_")
        try:
            ds = load_dataset(spec, schema=schema, cache_dir=cache, progress=False, min_count=1, on_bad_lines=mode,
                              max_bad_fraction=1.0)
        except DataError as e:
            _check_error(e, path, n_lines)
            if mode == "error" and bad:
                first = bad_lines[0]
                assert (e.line, e.field) == (first, bad[first][1]), f"expected line {first} {bad[first]}: {e}"
            else:
                # only a file without any valid line may fail here (empty, header only, all bad)
                assert n_good == 0, f"{mode}: a file with {n_good} valid lines was rejected: {e}"
            continue
        except Exception as e:  # noqa: BLE001 - any other exception type is the bug we hunt
            pytest.fail(f"{mode}: {type(e).__name__} escaped instead of DataError: {e}")
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        assert n_good > 0
        r = ds.report
        if mode == "error":
            assert not bad, f"loaded although lines {bad_lines} are bad"
        assert (r["rows_read"], r["rows_skipped"]) == (n_good, len(bad))
        assert r["rows_read"] + r["rows_skipped"] == n_data
        assert r["first_skipped_lines"] == bad_lines[:10]
        assert [x["field"] for x in r["skipped_examples"]] == [bad[i][1] for i in bad_lines[:10]]
        assert all(x["path"] == path for x in r["skipped_examples"])
        _check_encoded(ds)


# ------------------------------------------------------------------------------ Criteo

def _criteo_good(draw) -> list[bytes]:
    return ([_b(draw(LABEL01))] + [_b(v) for v in draw(st.lists(INT, min_size=13, max_size=13))]
            + [_b(v) for v in draw(st.lists(CAT, min_size=26, max_size=26))])


def _column_count_field(names, n_found: int) -> str:
    return names[n_found] if n_found < len(names) else f"column {len(names) + 1} (unexpected)"


def _fault(draw, fields: list[bytes], names, delim: bytes, kinds: dict) -> tuple[bytes, str, str | None]:
    """Inject one fault of a drawn kind into a valid line's fields; return (line, kind, field)."""
    kind = draw(st.sampled_from(sorted(kinds)))
    return kinds[kind](draw, fields, names, delim) + (kind,)


def _columns(draw, fields, names, delim):
    n = draw(st.integers(1, len(names) + 3).filter(lambda k: k != len(names)))
    line = delim.join((fields + [b"x"] * 3)[:n])
    return line, (_column_count_field(names, n) if line else None)  # one empty field: an empty line


def _set(cols: list[str], values, write=None):
    """A bad value in one of cols; write: how the file writes a value (`_csv`), else as it is."""
    def fault(draw, fields, names, delim):
        name = draw(st.sampled_from(cols))
        j = list(names).index(name)
        v = draw(values)
        fields = list(fields)
        fields[j] = write(v) if write else v if isinstance(v, bytes) else _b(v)
        return delim.join(fields), name
    return fault


def _unclosed_quotes(cols: list[str]):
    """A field whose quotes do not close it (RFC 4180): a bad line that names no field."""
    def fault(draw, fields, names, delim):
        j = list(names).index(draw(st.sampled_from(cols)))
        fields = list(fields)
        fields[j] = draw(st.sampled_from([b'"ab', b'"a"b', b'"a""', b'"a" ']))
        return delim.join(fields), None
    return fault


def _empty(draw, fields, names, delim):
    return b"", None


def _insert(cols: list[str], junk: bytes):
    """Put junk (invalid UTF-8, a lone CR) inside a field: the error names that field."""
    def fault(draw, fields, names, delim):
        name = draw(st.sampled_from(cols))
        j = list(names).index(name)
        fields = list(fields)
        fields[j] = fields[j][:1] + (draw(BAD_UTF8) if junk == b"utf8" else junk) + fields[j][1:]
        return delim.join(fields), name
    return fault


def _stray_delim(cols: list[str], extra: bytes):
    def fault(draw, fields, names, delim):
        name = draw(st.sampled_from(cols))
        j = list(names).index(name)
        fields = list(fields)
        fields[j] = fields[j] + extra + b"q"
        return delim.join(fields), _column_count_field(names, len(names) + 1)
    return fault


def _header_line(field: str):
    def fault(draw, fields, names, delim):
        return delim.join(_b(n) for n in names), field
    return fault


ALL_CRITEO = list(CRITEO_COLUMNS)
CRITEO_FAULTS = {
    "columns": _columns,
    "int_not_number": _set(ALL_CRITEO[1:14], NOT_NUMBER),
    "int_non_finite": _set(ALL_CRITEO[1:14], NON_FINITE),
    "int_huge_negative": _set(ALL_CRITEO[1:14], HUGE_NEG),
    "label": _set(["label"], BAD_LABEL01),
    "empty": _empty,
    "stray_tab": _stray_delim(ALL_CRITEO[14:], b"\t"),
    "non_utf8": _insert(ALL_CRITEO[::3], b"utf8"),
    "stray_cr": _insert(ALL_CRITEO[14:], b"\rz"),
    "header": _header_line("label"),
}


@st.composite
def text_files(draw, good, faults, names, delim: bytes, max_lines: int = 20, first_good: bool = False):
    n = draw(st.integers(0, max_lines))
    lines, bad = [], {}
    for i in range(n):
        fields = good(draw)
        if (first_good and i == 0) or not draw(st.booleans()):
            lines.append(delim.join(fields))
        else:
            line, field, kind = _fault(draw, fields, names, delim, faults)
            lines.append(line)
            bad[i] = (kind, field)
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    return lines, bad, eol, draw(st.booleans())


def _run_text(reader, kind, tmp, name, header, data, schema=None, spec_path=None):
    lines, bad0, eol, trailing = data
    path = tmp / name
    n_data = write_text_file(path, header, lines, eol, trailing)
    off = 2 if header is not None else 1
    bad = {i + off: v for i, v in bad0.items()}
    check_file(reader, f"{kind}:{path}", str(path), n_data, header is not None, bad, schema=schema)


@pytest.fixture
def tmp():
    d = Path(tempfile.mkdtemp(prefix="afm_fuzz_"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _fresh(tmp: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp))


@SETTINGS
@given(data=text_files(_criteo_good, CRITEO_FAULTS, CRITEO_COLUMNS, b"\t"))
def test_fuzz_criteo(tmp, data):
    _run_text("criteo", "criteo", _fresh(tmp), "f.tsv", None, data)


# ------------------------------------------------------------------------------ Avazu

AVAZU_FULL = ("id", "click", "hour", "C1", "banner_pos", "site_id", "device_type")
AVAZU_PART = ("click", "hour", "C1", "banner_pos", "site_id")
CSV_CAT = st.one_of(CAT, st.just("a\tb"), st.just('"q'), st.just("x;y"), st.just("a,b"), st.just('"'))
DATES = ["141021", "141030", "150101", "160229", "991231"]


def _avazu_good(full: bool):
    def good(draw):
        hh = draw(st.integers(0, 23))
        hour = draw(st.sampled_from(DATES)) + f"{hh:02d}" if full else draw(st.sampled_from([str(hh), f"{hh:02d}"]))
        row = [draw(st.sampled_from(["1", "0", HUGE, "10000174058809263569"]))] if full else []
        n_cat = 4 if full else 3
        row += [draw(LABEL01), hour] + draw(st.lists(CSV_CAT, min_size=n_cat, max_size=n_cat))
        return [_csv(b",")(v) for v in row]
    return good


BAD_HOUR_FULL = st.sampled_from(["", "abc", "1410210x", "14102124", "14133100", "141021", "1410210100", "-4102100",
                                 "141021 1"])
BAD_HOUR_PART = st.sampled_from(["", "x", "24", "123", "-1", "1.5", " 3"])


def _avazu_faults(names) -> dict:
    full = "id" in names
    return {
        "columns": _columns,
        "hour": _set(["hour"], BAD_HOUR_FULL if full else BAD_HOUR_PART, _csv(b",")),
        "label": _set(["click"], BAD_LABEL01, _csv(b",")),
        "unclosed_quotes": _unclosed_quotes(list(names[-3:])),
        "empty": _empty,
        "stray_comma": _stray_delim(list(names[-3:]), b","),
        "non_utf8": _insert(list(names), b"utf8"),
        "stray_cr": _insert(list(names[-3:]), b"\rz"),
        "repeated_header": _header_line("hour"),
    }


AVAZU_FILES = st.one_of(
    text_files(_avazu_good(True), _avazu_faults(AVAZU_FULL), AVAZU_FULL, b",").map(lambda d: (True, d)),
    text_files(_avazu_good(False), _avazu_faults(AVAZU_PART), AVAZU_PART, b",").map(lambda d: (False, d)))


@SETTINGS
@given(data=AVAZU_FILES)
def test_fuzz_avazu(tmp, data):
    full, data = data
    names = AVAZU_FULL if full else AVAZU_PART
    _run_text("avazu", "avazu", _fresh(tmp), "a.csv", b",".join(_b(n) for n in names), data)


# ------------------------------------------------------------------------------ generic CSV / TSV

CSV_SCHEMA = Schema(label="y", categorical=("a", "b"), numeric=("x",), bucketize=("k",))


@st.composite
def csv_files(draw):
    names = tuple(draw(st.permutations(["a", "x", "k", "y", "z", "b"])))
    tsv = draw(st.booleans())
    delim = b"\t" if tsv else b","
    cat = st.one_of(CAT if tsv else CSV_CAT, st.just("a\tb"), st.just("a,b"))
    values = {"a": cat, "b": cat, "z": cat, "x": NUM, "k": INT, "y": LABEL01}
    write = _csv(delim)

    def good(draw):
        return [write(draw(values[n])) for n in names]

    faults = {
        "columns": _columns,
        "numeric_not_number": _set(["x"], NOT_NUMBER, write),
        "numeric_non_finite": _set(["x"], NON_FINITE, write),
        "bucketize_not_number": _set(["k"], NOT_NUMBER, write),
        "bucketize_non_finite": _set(["k"], NON_FINITE, write),
        "bucketize_huge_negative": _set(["k"], HUGE_NEG, write),
        "label": _set(["y"], BAD_LABEL01, write),
        "unclosed_quotes": _unclosed_quotes(["a", "b", "z"]),
        "empty": _empty,
        "stray_delimiter": _stray_delim(["a", "b", "z"], delim),
        "non_utf8": _insert(list(names), b"utf8"),
        "stray_cr": _insert(["a", "b", "z"], b"\rz"),
        "repeated_header": _header_line("y"),
    }
    data = draw(text_files(good, faults, names, delim))
    return names, tsv, draw(st.booleans()), data


@SETTINGS
@given(case=csv_files())
def test_fuzz_csv(tmp, case):
    names, tsv, schema_as_json, data = case
    d = _fresh(tmp)
    schema = CSV_SCHEMA
    if schema_as_json:
        schema = str(d / "schema.json")
        Path(schema).write_text(json.dumps(CSV_SCHEMA.to_json()))
    _run_text("csv", "csv", d, "g.tsv" if tsv else "g.csv", b"\t".join(_b(n) for n in names) if tsv
              else b",".join(_b(n) for n in names), data, schema=schema)


# ------------------------------------------------------------------------------ libFM

@st.composite
def libfm_files(draw):
    n_feat = draw(st.integers(1, 3))
    names = ("label",) + tuple(f"f{k}" for k in range(n_feat))
    feat = st.builds(lambda i, v: f"{i}:{v}", st.one_of(st.integers(0, 10**6).map(str), st.just(HUGE)),
                     st.sampled_from(["1", "0.5", "nan", "x", "-3", "1e400"]))

    def good(draw):
        return [_b(draw(st.sampled_from(["1", "+1", "-1", "0", "1.0", "-1.0", "0.0", "+1.0"])))] + [
            _b(draw(feat)) for _ in range(n_feat)]

    faults = {
        "columns": _columns,
        "feature": _set(list(names[1:]), st.sampled_from(["abc", "1:", ":1", "1:2:3", "a:1", "-1:1",
                                                          '"1:1"'])),
        "label": _set(["label"], st.sampled_from(["2", "nan", "yes", "", "1e0", "+2"])),
        "empty": _empty,
        "stray_space": _stray_delim(list(names[1:]), b" "),
        "non_utf8": _insert(list(names), b"utf8"),
        "stray_cr": _insert(list(names[1:]), b"\rz"),
        "header": _header_line("f0"),
    }
    # The number of fields comes from line 1, so line 1 is valid (or the file is empty).
    return draw(text_files(good, faults, names, b" ", first_good=True))


@SETTINGS
@given(data=libfm_files())
def test_fuzz_libfm(tmp, data):
    _run_text("libfm", "libfm", _fresh(tmp), "d.libfm", None, data)


# ------------------------------------------------------------------------------ Parquet

PQ_LABEL = {  # type -> (valid values, bad values)
    "int64": (pa.int64(), [0, 1], [2, -1, None]),
    "float64": (pa.float64(), [0.0, 1.0], [0.5, float("nan"), float("inf"), None]),
    "string": (pa.string(), ["0", "1", "true", "1.0"], ["yes", "", None, " 1", "2"]),
    "bool": (pa.bool_(), [True, False], [None]),
}
PQ_NUM = {
    "float64": (pa.float64(), [None, 0.0, -3.5, 1e30, -1e30, 1e300, 2.0], [float("nan"), float("inf"), float("-inf")]),
    "string": (pa.string(), [None, "", "1", " 2.5 ", HUGE, "-" + HUGE], ["abc", "nan", "1e400", "inf", '"1"']),
    "int64": (pa.int64(), [None, 0, -5, 2**63 - 1, -2**62], []),
}
PQ_BUCKET = {
    "int64": (pa.int64(), [None, 0, 3, -2, 2**63 - 1, -2**62], []),
    "float64": (pa.float64(), [None, 2.5, 1e30, -7.0], [float("nan"), float("inf"), -1e30]),
    "string": (pa.string(), [None, "", "12", HUGE], ["abc", "nan", "-1e30", "1e400"]),
    "uint64": (pa.uint64(), [None, 0, 2**64 - 1], []),
}
PQ_CAT = {
    "string": (pa.string(), [None, "", "u", "é日", '"', HUGE], []),
    "int64": (pa.int64(), [None, 0, 2**63 - 1, -5], []),
    "binary": (pa.binary(), [None, b"", b"v", "é".encode()], [b"\xff", b"a\xc3"]),
}


@st.composite
def parquet_files(draw):
    types = {"y": draw(st.sampled_from(sorted(PQ_LABEL))), "x": draw(st.sampled_from(sorted(PQ_NUM))),
             "k": draw(st.sampled_from(sorted(PQ_BUCKET))), "a": draw(st.sampled_from(sorted(PQ_CAT)))}
    tables = {"y": PQ_LABEL, "x": PQ_NUM, "k": PQ_BUCKET, "a": PQ_CAT}
    names = draw(st.permutations(["a", "x", "k", "y"]))
    n = draw(st.integers(0, 25))
    rows, bad = {c: [] for c in names}, {}
    for i in range(n):
        for c in names:
            rows[c].append(draw(st.sampled_from(tables[c][types[c]][1])))
        can_break = [c for c in names if tables[c][types[c]][2]]
        if can_break and draw(st.booleans()):
            c = draw(st.sampled_from(can_break))
            rows[c][i] = draw(st.sampled_from(tables[c][types[c]][2]))
            bad[i + 1] = (f"{c}:{types[c]}", c)
    arrays = [pa.array(rows[c], type=tables[c][types[c]][0]) for c in names]
    return pa.table(arrays, names=list(names)), bad, draw(st.integers(1, 30))


@SETTINGS
@given(case=parquet_files())
def test_fuzz_parquet(tmp, case):
    table, bad, row_group = case
    path = _fresh(tmp) / "d.parquet"
    pq.write_table(table, path, row_group_size=row_group)
    schema = Schema(label="y", categorical=("a",), numeric=("x",), bucketize=("k",))
    check_file("parquet", f"parquet:{path}", str(path), table.num_rows, False, bad, schema=schema)


# ------------------------------------------------------------------------------ fixed edge cases

@pytest.mark.parametrize("kind,name,content", [
    ("criteo", "e.tsv", b""), ("libfm", "e.libfm", b""), ("avazu", "e.csv", b""), ("csv", "e.csv", b""),
    ("avazu", "h.csv", b"id,click,hour,C1\n"), ("csv", "h.csv", b"a,x,k,y\r\n"), ("criteo", "n.tsv", b"\n\n"),
    ("avazu", "nohead.csv", b"1,0,14102100,5\n"),  # header missing: 'click' is not a column
    ("csv", "dup.csv", b"a,x,k,y,a\nu,1,2,0,v\n"),  # duplicate header column
])
def test_empty_header_only_and_broken_headers(tmp, kind, name, content):
    path = tmp / name
    path.write_bytes(content)
    schema = Schema(label="y", categorical=("a",), numeric=("x",), bucketize=("k",)) if kind == "csv" else None
    for mode in ("error", "skip"):
        with pytest.raises(DataError) as ei:
            load_dataset(f"{kind}:{path}", schema=schema, cache_dir=str(tmp / "cache"), progress=False, min_count=1,
                         on_bad_lines=mode)
        _check_error(ei.value, str(path), max(content.count(b"\n"), 1))


def test_parquet_empty_and_nested_column(tmp):
    schema = Schema(label="y", categorical=("a",))
    p = tmp / "e.parquet"
    pq.write_table(pa.table({"y": pa.array([], pa.int64()), "a": pa.array([], pa.string())}), p)
    with pytest.raises(DataError) as ei:
        load_dataset(f"parquet:{p}", schema=schema, cache_dir=str(tmp / "c"), progress=False, min_count=1)
    _check_error(ei.value, str(p), 1)
    p = tmp / "n.parquet"
    pq.write_table(pa.table({"y": [0, 1], "a": pa.array([[1], [2, 3]])}), p)
    with pytest.raises(DataError) as ei:
        load_dataset(f"parquet:{p}", schema=schema, cache_dir=str(tmp / "c"), progress=False, min_count=1)
    assert ei.value.field == "a" and ei.value.path == str(p)


def test_numeric_policy_huge_and_non_finite(tmp):
    """Huge positive integers are valid (bucket b<floor(log(x)^2)>, dense log1p); NaN/inf/1e400 are bad."""
    from tests.test_data import criteo_line
    ints = [HUGE] + [""] * 12
    lines = [criteo_line(ints=ints), criteo_line(label="1", ints=["-5"] + [""] * 12),
             criteo_line(ints=["nan"] + [""] * 12), criteo_line(ints=["1e400"] + [""] * 12),
             criteo_line(ints=["-" + HUGE] + [""] * 12)]
    p = tmp / "h.tsv"
    p.write_text("\n".join(lines) + "\n")
    ds = load_dataset(f"criteo:{p}", cache_dir=str(tmp / "c"), progress=False, min_count=1, on_bad_lines="skip", max_bad_fraction=1.0,
                      split="random")
    r = ds.report
    assert (r["rows_read"], r["first_skipped_lines"]) == (2, [3, 4, 5])
    assert [x["field"] for x in r["skipped_examples"]] == ["I1", "I1", "I1"]
    reasons = [x["reason"] for x in r["skipped_examples"]]
    assert "not a number" in reasons[0] and "finite" in reasons[1] and "range" in reasons[2], reasons
    csv = tmp / "n.csv"
    csv.write_text(f"x,y,a\n{HUGE},1,u\n-{HUGE},0,v\n1e300,1,w\n")
    ds = load_dataset(f"csv:{csv}", schema=Schema(label="y", categorical=("a",), numeric=("x",)),
                      cache_dir=str(tmp / "c"), progress=False, min_count=1)
    assert ds.report["rows_read"] == 3 and ds.train.num.shape[1] == 1
