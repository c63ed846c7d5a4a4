"""Tests of afm_jax.data: readers on real and malformed lines, encoder, cache, splits, synthetic, batches."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afm_jax.data import (
    DATASET_DEFAULTS,
    Encoder,
    FeatureInfo,
    Schema,
    iterate_batches,
    load_dataset,
    parse_data_spec,
    synthetic_dataset,
)
from afm_jax.data.dataset import make_source
from afm_jax.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared real data not found at {SHARED}")


def criteo_line(label="0", ints=None, cats=None) -> str:
    ints = ints if ints is not None else ["1", "", "5", "-1", "300", "0", "2", "", "7", "1", "3", "", "12"]
    cats = cats if cats is not None else [f"{k:08x}" for k in range(26)]
    return "\t".join([label] + ints + cats)


def write(path: Path, lines: list[str], gz: bool = False) -> str:
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


@pytest.fixture
def cache(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


# ------------------------------------------------------------------------------ real shared files

def _data_lines(path: Path, header: bool) -> int:
    data = path.read_bytes()
    n = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    return n - int(header)


REAL = [
    ("criteo", ["criteo/train.tsv"], False, 39),
    ("criteo", ["criteo/extra.tsv"], False, 39),
    ("criteo", ["criteo_1tb/day_0.part.tsv"], False, 39),
    ("avazu", ["avazu/sample.csv"], True, 23),
    ("avazu", ["avazu/random15k_partial.csv"], True, 21),
    ("libfm", ["frappe/frappe.validation.libfm", "frappe/frappe.test.libfm"], False, 10),
]


@needs_shared
@pytest.mark.parametrize("kind,files,header,n_fields", REAL, ids=[r[1][0] for r in REAL])
def test_real_file_every_row_accounted(kind, files, header, n_fields, tmp_path):
    spec = f"{kind}:" + ",".join(str(SHARED / f) for f in files)
    ds = load_dataset(spec, cache_dir=str(tmp_path), on_bad_lines="skip", min_count=2, progress=False)
    lines = sum(_data_lines(SHARED / f, header) for f in files)
    r = ds.report
    assert r["rows_read"] + r["rows_skipped"] == lines
    assert r["rows_skipped"] == 0  # these samples are clean
    assert sum(r["splits"].values()) == r["rows_read"]
    assert ds.info.n_categorical == n_fields and ds.info.n_numeric == 0
    for split in (ds.train, ds.valid, ds.test):
        assert split.cat.dtype == np.int32 and split.label.dtype == np.float32
        assert np.all(np.asarray(split.cat) >= 0)
        assert np.all(np.asarray(split.cat) < np.array(ds.info.vocab_sizes))
        assert set(np.unique(split.label)) <= {0.0, 1.0}
    assert 0.0 < r["positive_rate"] < 1.0


@needs_shared
def test_real_avazu_hour_fields(tmp_path):
    ds = load_dataset(f"avazu:{SHARED / 'avazu/sample.csv'}", cache_dir=str(tmp_path), min_count=1, progress=False)
    assert ds.info.cat_names[:3] == ("hour_of_day", "weekday", "C1")
    assert "id" not in ds.info.cat_names and "click" not in ds.info.cat_names
    assert ds.encoder.vocabs[0] == ["0"] and ds.encoder.vocabs[1] == ["1"]  # 2014-10-21 00h was a Tuesday
    part = load_dataset(f"avazu:{SHARED / 'avazu/random15k_partial.csv'}", cache_dir=str(tmp_path), min_count=1,
                        progress=False)
    assert part.info.cat_names[0] == "hour_of_day" and "weekday" not in part.info.cat_names
    assert part.info.vocab_sizes[0] == 25


@needs_shared
def test_real_movielens(tmp_path):
    ds = load_dataset(f"movielens:{SHARED / 'movielens100k'}", cache_dir=str(tmp_path), progress=False)
    r = ds.report
    assert r["rows_read"] + r["rows_skipped"] == pq.ParquetFile(SHARED / "movielens100k/ratings.parquet").metadata.num_rows
    assert ds.info.cat_names == ("user", "movie", "age", "gender", "occupation", "zip3", "genre", "year")
    assert abs(np.mean(np.concatenate([ds.train.label, ds.valid.label, ds.test.label])) - 0.554) < 0.01
    assert ds.info.vocab_sizes[3] == 3  # gender F/M + id 0


@needs_shared
def test_real_criteo_encode_matches_reader_and_roundtrip(tmp_path):
    path = str(SHARED / "criteo_1tb/day_0.part.tsv")
    ds = load_dataset(f"criteo:{path}", cache_dir=str(tmp_path), min_count=3, progress=False)
    enc = ds.encoder
    enc.save(tmp_path / "enc.json")
    enc2 = Encoder.load(tmp_path / "enc.json")
    all_cat = np.concatenate([ds.train.cat, ds.valid.cat, ds.test.cat])
    start = 0
    for chunk, bad in make_source(parse_data_spec(f"criteo:{path}")).chunks(False):
        assert not bad
        cat, num = enc2.encode(chunk)
        np.testing.assert_array_equal(cat, all_cat[start:start + len(chunk)])
        assert num.shape == (len(chunk), 0)
        start += len(chunk)
    assert start == len(all_cat)
    assert enc2.info == ds.info


# ------------------------------------------------------------------------------ malformed lines

@pytest.fixture
def bad_criteo(tmp_path: Path) -> str:
    lines = [criteo_line()] * 3
    lines.insert(1, criteo_line()[: criteo_line().rfind("\t")])  # line 2: 39 columns
    lines.insert(3, criteo_line(ints=["x1"] + [""] * 12))       # line 4: non-numeric I1
    lines.insert(4, "")                                          # line 5: empty
    lines.append(criteo_line(label="2"))                         # line 7: bad label
    return write(tmp_path / "bad.tsv", lines)


@pytest.mark.parametrize("line,field,needle", [(2, "C26", "columns"), (4, "I1", "not a number"),
                                               (5, None, "empty line"), (7, "label", "label")])
def test_bad_lines_error_names_path_line_field(bad_criteo, cache, line, field, needle):
    text = Path(bad_criteo).read_text().split("\n")
    keep = [text[i] for i in range(len(text) - 1) if i + 1 == line or i + 1 in (1, 3, 6)]
    p = Path(bad_criteo).with_name(f"one_{line}.tsv")
    p.write_text("\n".join(keep) + "\n")
    bad_line_no = keep.index(text[line - 1]) + 1
    with pytest.raises(DataError) as ei:
        load_dataset(f"criteo:{p}", cache_dir=cache, progress=False)
    e = ei.value
    assert e.path == str(p) and e.line == bad_line_no and e.field == field
    assert str(p) in str(e) and f"line {bad_line_no}" in str(e) and needle in str(e)
    assert not list(Path(cache).glob("*"))  # no half cache left behind


def test_bad_lines_first_error_and_skip(bad_criteo, cache):
    with pytest.raises(DataError) as ei:
        load_dataset(f"criteo:{bad_criteo}", cache_dir=cache, progress=False)
    assert ei.value.line == 2
    ds = load_dataset(f"criteo:{bad_criteo}", cache_dir=cache, on_bad_lines="skip", max_bad_fraction=1.0, min_count=1, progress=False)
    r = ds.report
    assert (r["rows_read"], r["rows_skipped"]) == (3, 4)
    assert r["first_skipped_lines"] == [2, 4, 5, 7]
    assert [e["field"] for e in r["skipped_examples"]] == ["C26", "I1", None, "label"]


def test_skip_keeps_first_ten_line_numbers(tmp_path, cache):
    lines = []
    for i in range(30):
        lines.append(criteo_line(label=str(i % 2)))
        lines.append("garbage")
    p = write(tmp_path / "many.tsv", lines)
    ds = load_dataset(f"criteo:{p}", cache_dir=cache, on_bad_lines="skip", max_bad_fraction=1.0, progress=False, min_count=1)
    assert ds.report["rows_read"] == 30 and ds.report["rows_skipped"] == 30
    assert ds.report["first_skipped_lines"] == list(range(2, 21, 2))


def test_avazu_libfm_csv_bad_lines(tmp_path, cache):
    head = "id,click,hour,C1,site_id"
    av = write(tmp_path / "a.csv", [head, "1,0,14102100,1005,aa", "2,1,1410210x,1005,bb", "3,1,14102105,1005"])
    with pytest.raises(DataError) as ei:
        load_dataset(f"avazu:{av}", cache_dir=cache, progress=False)
    assert (ei.value.line, ei.value.field) == (3, "hour")
    ds = load_dataset(f"avazu:{av}", cache_dir=cache, on_bad_lines="skip", max_bad_fraction=1.0, progress=False, min_count=1)
    assert ds.report["first_skipped_lines"] == [3, 4] and ds.report["rows_read"] == 1

    fm = write(tmp_path / "a.libfm", ["1 1:1 7:1", "-1 2:1 8:1", "-1 2:1", "+1 3:1 9:1 11:1", "2 3:1 9:1",
                                      "1 3:1 abc"])
    with pytest.raises(DataError) as ei:
        load_dataset(f"libfm:{fm}", cache_dir=cache, progress=False)
    assert ei.value.line == 3 and str(fm) in str(ei.value)
    ds = load_dataset(f"libfm:{fm}", cache_dir=cache, on_bad_lines="skip", max_bad_fraction=1.0, progress=False)
    assert ds.report["first_skipped_lines"] == [3, 4, 5, 6] and ds.report["rows_read"] == 2
    assert [e["field"] for e in ds.report["skipped_examples"]] == ["f1", "column 4 (unexpected)", "label", "f1"]

    schema = Schema(label="y", categorical=("a",), numeric=("x",))
    csv = write(tmp_path / "g.csv", ["a,x,y", "u,1.5,1", "v,2,true", "w,abc,0", "u,3,2", "v,,False"])
    with pytest.raises(DataError) as ei:
        load_dataset(f"csv:{csv}", schema=schema, cache_dir=cache, progress=False)
    assert (ei.value.line, ei.value.field) == (4, "x")
    ds = load_dataset(f"csv:{csv}", schema=schema, cache_dir=cache, on_bad_lines="skip", max_bad_fraction=1.0, min_count=1, progress=False)
    assert ds.report["first_skipped_lines"] == [4, 5] and ds.report["rows_read"] == 3


def test_gz_reads_like_plain(tmp_path, cache):
    lines = [criteo_line(label=str(i % 2), cats=[f"v{(i * k) % 5}" for k in range(26)]) for i in range(50)]
    plain = write(tmp_path / "d.tsv", lines)
    gz = write(tmp_path / "d.tsv.gz", lines, gz=True)
    a = load_dataset(f"criteo:{plain}", cache_dir=cache, min_count=1, progress=False)
    b = load_dataset(f"criteo:{gz}", cache_dir=cache, min_count=1, progress=False)
    assert not b.report["cache_hit"] and b.report["rows_read"] == 50
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(a, s).cat, getattr(b, s).cat)
        np.testing.assert_array_equal(getattr(a, s).label, getattr(b, s).label)


def test_progress_bar_path(tmp_path, cache):
    p = write(tmp_path / "p.tsv", [criteo_line(label=str(i % 2)) for i in range(10)])
    assert load_dataset(f"criteo:{p}", cache_dir=cache, progress=True).report["rows_read"] == 10


def test_no_trailing_newline_and_crlf(tmp_path, cache):
    p = tmp_path / "c.tsv"
    p.write_bytes(("\r\n".join([criteo_line(), criteo_line(label="1")])).encode())
    ds = load_dataset(f"criteo:{p}", cache_dir=cache, min_count=1, progress=False, split="random")
    assert ds.report["rows_read"] == 2 and ds.report["rows_skipped"] == 0


# ------------------------------------------------------------------------------ encoder, splits, cache

def _csv(tmp_path: Path, n: int = 100) -> tuple[str, Schema]:
    rows = ["a,b,x,y"]
    for i in range(n):
        a = "common" if i % 2 == 0 else ("rare" if i == 1 else f"u{i % 7}")
        b = "" if i % 10 == 0 else f"b{i % 3}"
        x = "" if i % 5 == 0 else str(i)
        rows.append(f"{a},{b},{x},{i % 3 == 0:d}")
    return write(tmp_path / "t.csv", rows), Schema(label="y", categorical=("a", "b"), numeric=("x",))


def test_encoder_vocab_min_count_oov_missing(tmp_path, cache):
    path, schema = _csv(tmp_path)
    ds = load_dataset(f"csv:{path}", schema=schema, cache_dir=cache, min_count=2, progress=False)
    enc = ds.encoder
    assert ds.info.cat_names == ("a", "b") and ds.info.num_names == ("x",)
    assert enc.vocabs[0][0] == "common" and "rare" not in enc.vocabs[0]  # rare seen once < min_count
    counts = {}
    for i in range(80):
        a = "common" if i % 2 == 0 else ("rare" if i == 1 else f"u{i % 7}")
        counts[a] = counts.get(a, 0) + 1
    expected = sorted((v for v in counts if counts[v] >= 2), key=lambda v: (-counts[v], v))
    assert enc.vocabs[0] == expected
    cat, num = enc.encode({"a": ["common", "rare", "never", None], "b": [None, "b1", "zz", "b0"],
                           "x": np.array([np.nan, 3.0, -5.0, 1e6])})
    assert cat[:, 0].tolist() == [1, 0, 0, 0] and cat[0, 1] == 0 and cat[2, 1] == 0 and cat[1, 1] > 0
    assert num[0, 0] == 0.0 and num.dtype == np.float32
    t = np.log1p(np.maximum(np.array([i for i in range(80) if i % 5], float), 0))
    assert np.isclose(enc.num_mean[0], t.mean()) and np.isclose(enc.num_std[0], t.std())
    assert abs(float(np.mean(ds.train.num[:, 0]))) < 0.1  # standardized with missing -> 0

    enc.save(tmp_path / "enc.json")
    enc2 = Encoder.load(tmp_path / "enc.json")
    cols = {"a": ["u3", "common", None], "b": ["b2", "b0", "b1"], "x": np.array([4.0, np.nan, 0.0])}
    for got, want in zip(enc2.encode(cols), enc.encode(cols)):
        np.testing.assert_array_equal(got, want)
    assert json.loads((tmp_path / "enc.json").read_text())["vocabs"] == enc.vocabs
    assert FeatureInfo.from_json(ds.info.to_json()) == ds.info


def test_split_sizes_and_random_split(tmp_path, cache):
    path, schema = _csv(tmp_path, n=1000)
    seq = load_dataset(f"csv:{path}", schema=schema, cache_dir=cache, progress=False)
    assert (len(seq.train), len(seq.valid), len(seq.test)) == (800, 100, 100)
    labels = np.array([i % 3 == 0 for i in range(1000)], np.float32)
    np.testing.assert_array_equal(seq.train.label, labels[:800])
    r1 = load_dataset(f"csv:{path}", schema=schema, cache_dir=cache, progress=False, split="random", seed=1)
    r1b = load_dataset(f"csv:{path}", schema=schema, cache_dir=cache, progress=False, split="random", seed=1)
    r2 = load_dataset(f"csv:{path}", schema=schema, cache_dir=cache, progress=False, split="random", seed=2)
    assert (len(r1.train), len(r1.valid), len(r1.test)) == (800, 100, 100)
    assert r1b.report["cache_hit"] and not r2.report["cache_hit"]
    np.testing.assert_array_equal(r1.train.num, r1b.train.num)
    assert not np.array_equal(r1.train.num, r2.train.num)
    assert not np.array_equal(r1.train.label, seq.train.label)
    assert sorted(np.concatenate([r1.train.label, r1.valid.label, r1.test.label])) == sorted(labels)


def test_cache_hit_identical_and_memmapped(tmp_path, cache):
    lines = [criteo_line(label=str(i % 2), cats=[f"v{(i * k) % 7}" for k in range(26)]) for i in range(200)]
    p = write(tmp_path / "d.tsv", lines)
    a = load_dataset(f"criteo:{p}", cache_dir=cache, min_count=2, progress=False)
    b = load_dataset(f"criteo:{p}", cache_dir=cache, min_count=2, progress=False)
    assert not a.report["cache_hit"] and b.report["cache_hit"]
    assert isinstance(b.train.cat, np.memmap)
    for s in ("train", "valid", "test"):
        for k in ("cat", "num", "label"):
            np.testing.assert_array_equal(getattr(getattr(a, s), k), getattr(getattr(b, s), k))
    assert a.info == b.info and a.encoder.to_json() == b.encoder.to_json()
    assert len([d for d in Path(cache).iterdir()]) == 1  # no temp dirs left
    c = load_dataset(f"criteo:{p}", cache_dir=cache, min_count=3, progress=False)
    assert not c.report["cache_hit"]


def test_max_rows(tmp_path, cache):
    lines = [criteo_line(label=str(i % 2)) for i in range(20)]
    lines.insert(5, "bad")
    lines.insert(15, "bad")
    p = write(tmp_path / "m.tsv", lines)
    ds = load_dataset(f"criteo:{p}", cache_dir=cache, max_rows=10, on_bad_lines="skip", max_bad_fraction=1.0, progress=False)
    assert ds.report["rows_read"] == 10 and ds.report["rows_skipped"] == 1 and ds.report["truncated"]
    with pytest.raises(DataError):
        load_dataset(f"criteo:{p}", cache_dir=cache, max_rows=10, progress=False)
    assert load_dataset(f"criteo:{p}", cache_dir=cache, max_rows=5, progress=False).report["rows_read"] == 5


def test_parquet_generic(tmp_path, cache):
    n = 50
    t = pa.table({"y": pa.array([i % 2 == 0 for i in range(n)]), "c": pa.array([f"v{i % 4}" for i in range(n)]),
                  "k": pa.array(list(range(n)), pa.int64()), "z": pa.array([float(i) for i in range(n)])})
    pq.write_table(t, tmp_path / "d.parquet")
    schema = Schema(label="y", categorical=("c",), bucketize=("k",), numeric=("z",))
    ds = load_dataset(f"parquet:{tmp_path / 'd.parquet'}", schema=schema, cache_dir=cache, min_count=1, progress=False)
    assert ds.report["rows_read"] == n and ds.info.cat_names == ("c", "k") and ds.info.num_names == ("z",)
    assert ds.train.label[:4].tolist() == [1, 0, 1, 0]
    vocab = ds.encoder.vocabs[1]  # train rows k = 0..39: "0".."2", then b1..b13 (floor(log(39)^2) = 13)
    assert {"0", "1", "2", "b1", "b13"} <= set(vocab) and "b14" not in vocab and "3" not in vocab
    cat, _ = ds.encoder.encode({"c": ["v1"], "k": ["b13"], "z": np.array([1.0])})
    assert cat[0, 1] == vocab.index("b13") + 1


def test_csv_reads_quoted_fields_as_csv_writers_write_them(tmp_path, cache):
    """RFC 4180: a quoted field holds commas and doubled quotes; a quoted header name holds a
    comma; a file with every field quoted (csv.QUOTE_ALL) encodes exactly as the minimally quoted
    one; a quote inside an unquoted field is data; a line whose quotes do not close a field is a
    bad line naming the file and line."""
    import csv

    from afm_jax.data.bags import BagSpec

    header = ["y", "user, id", "ua", "tags", "price"]
    rows = [[i % 2, f"u{i % 5}", ['Mozilla/5.0 (X11, Linux)', 'say "hi"', '5" screen', ""][i % 4],
             ["news, local|tech", 'a"b', "", "tech"][i % 4], "" if i % 7 == 0 else f"{i * 1.5}"]
            for i in range(60)]
    schema = Schema(label="y", categorical=("user, id", "ua"), numeric=("price",),
                    bags=(BagSpec("tags", max_len=3, separator="|"),))
    encoded = {}
    for style in (csv.QUOTE_MINIMAL, csv.QUOTE_ALL):
        path = tmp_path / f"q{style}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f, quoting=style)
            w.writerow(header)
            w.writerows(rows)
        ds = load_dataset(f"csv:{path}", schema=schema, cache_dir=cache, min_count=1, progress=False)
        assert ds.report["rows_read"] == len(rows) and ds.report["rows_skipped"] == 0
        assert set(ds.encoder.vocabs[1]) == {'Mozilla/5.0 (X11, Linux)', 'say "hi"', '5" screen'}
        assert set(ds.encoder.bag_vocabs[0]) == {"news, local", "tech", 'a"b'}
        encoded[style] = (ds.train.cat, ds.train.num, ds.train.bags["tags"], ds.train.bag_len["tags"])
    for a, b in zip(*encoded.values()):
        np.testing.assert_array_equal(a, b)
    bad = tmp_path / "bad.csv"
    bad.write_text('y,a\n0,5" tv\n1,"ok, fine"\n0,"unclosed\n1,"a"b\n')
    with pytest.raises(DataError) as ei:
        load_dataset(f"csv:{bad}", schema=Schema(label="y", categorical=("a",)), cache_dir=cache,
                     progress=False)
    assert ei.value.line == 4 and "malformed quotes" in str(ei.value) and str(bad) in str(ei.value)
    ds = load_dataset(f"csv:{bad}", schema=Schema(label="y", categorical=("a",)), cache_dir=cache,
                      progress=False, min_count=1, on_bad_lines="skip", max_bad_fraction=1.0)
    assert ds.report["rows_read"] == 2 and ds.report["first_skipped_lines"] == [4, 5]
    assert '5" tv' in ds.encoder.vocabs[0]   # the train split's one row


def test_utf8_byte_order_mark_is_not_data(tmp_path, cache):
    """A file that starts with a UTF-8 byte order mark (Excel's "CSV UTF-8") reads as the same
    file without it: a CSV header, and the first line of a headerless Criteo file."""
    rng = np.random.default_rng(0)
    csv_text = "y,a\n" + "".join(f"{i % 2},v{rng.integers(0, 4)}\n" for i in range(40))
    criteo = "".join("\t".join([str(i % 2)] + [str(i % 5)] * 13 + [f"{i % 3:08x}"] * 26) + "\n"
                     for i in range(40))
    for name, text, schema in (("d.csv", csv_text, Schema(label="y", categorical=("a",))),
                               ("d.tsv", criteo, None)):
        kind = "csv" if schema else "criteo"
        got = []
        for prefix in (b"", b"\xef\xbb\xbf"):
            path = tmp_path / f"{len(prefix)}{name}"
            path.write_bytes(prefix + text.encode())
            ds = load_dataset(f"{kind}:{path}", schema=schema, cache_dir=cache, min_count=1,
                              progress=False)
            assert ds.report["rows_read"] == 40 and ds.report["rows_skipped"] == 0, kind
            got.append((ds.train.cat, ds.train.label, ds.encoder.vocabs))
        np.testing.assert_array_equal(got[0][0], got[1][0])
        np.testing.assert_array_equal(got[0][1], got[1][1])
        assert got[0][2] == got[1][2], kind


def test_schema_json(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"label": "y", "categorical": ["a"], "numeric": ["x"]}))
    s = Schema.from_json(p)
    assert s == Schema(label="y", categorical=("a",), numeric=("x",))
    assert Schema.from_dict(s.to_json()) == s
    p.write_text(json.dumps({"label": "y", "categorical": ["a"], "dense": ["x"]}))
    with pytest.raises(DataError) as ei:
        Schema.from_json(p)
    assert ei.value.field == "dense" and str(p) in str(ei.value)
    p.write_text(json.dumps({"label": "y", "categorical": "a"}))
    with pytest.raises(DataError) as ei:
        Schema.from_json(p)
    assert ei.value.field == "categorical"


def test_parse_data_spec():
    assert parse_data_spec("synthetic").rows is None
    assert parse_data_spec("synthetic:5000").rows == 5000
    assert parse_data_spec("libfm:a,b").paths == ("a", "b")
    assert parse_data_spec("criteo:x.tsv").kind == "criteo"
    for bad in ("nope:x", "criteo", "synthetic:abc", ""):
        with pytest.raises(DataError):
            parse_data_spec(bad)
    assert DATASET_DEFAULTS["criteo"]["min_count"] == 10


# ------------------------------------------------------------------------------ synthetic, batches

def test_synthetic_deterministic_and_prefix():
    a = synthetic_dataset(3000, seed=3, n_categorical=5, n_numeric=1, vocab_sizes=[5, 50, 500, 5000, 20])
    b = synthetic_dataset(3000, seed=3, n_categorical=5, n_numeric=1, vocab_sizes=[5, 50, 500, 5000, 20])
    c = synthetic_dataset(3000, seed=4, n_categorical=5, n_numeric=1, vocab_sizes=[5, 50, 500, 5000, 20])
    np.testing.assert_array_equal(a.train.cat, b.train.cat)
    np.testing.assert_array_equal(a.test.num, b.test.num)
    np.testing.assert_array_equal(a.valid.label, b.valid.label)
    assert not np.array_equal(a.train.label, c.train.label)
    assert a.info.cat_names == ("c0", "c1", "c2", "c3", "c4") and a.info.num_names == ("n0",)
    assert all(v <= s + 1 for v, s in zip(a.info.vocab_sizes, [5, 50, 500, 5000, 20]))
    assert len(a.train) == 2400 and a.train.num.shape == (2400, 1)
    d = synthetic_dataset(100_000, seed=0)
    assert 0.18 < d.report["positive_rate"] < 0.27
    assert d.info.n_categorical == 16 and max(d.info.vocab_sizes) > 1000
    small = load_dataset("synthetic:1000", progress=False)
    np.testing.assert_array_equal(small.train.label, synthetic_dataset(1000).train.label)


def test_iterate_batches_cover_every_row_once():
    ds = synthetic_dataset(2000, seed=0, n_categorical=3, n_numeric=1, vocab_sizes=[10, 10, 10])
    split = ds.train
    tagged = type(split)(np.arange(len(split), dtype=np.int32)[:, None] * np.ones((1, 3), np.int32),
                         np.asarray(split.num), np.asarray(split.label))
    for shuffle in (False, True):
        seen = []
        for batch in iterate_batches(tagged, 128, shuffle=shuffle, seed=7):
            assert batch["cat"].dtype == np.int32 and batch["num"].dtype == np.float32
            assert batch["label"].dtype == np.float32 and batch["num"].shape == (len(batch["label"]), 1)
            assert np.all(np.diff(batch["cat"][:, 0]) > 0)  # sorted within a batch
            np.testing.assert_array_equal(batch["label"], tagged.label[batch["cat"][:, 0]])
            seen.append(batch["cat"][:, 0])
        seen = np.concatenate(seen)
        assert sorted(seen.tolist()) == list(range(len(split)))
        if shuffle:
            assert not np.array_equal(seen, np.arange(len(split)))
    drops = list(iterate_batches(tagged, 300, drop_remainder=True))
    assert all(len(b["label"]) == 300 for b in drops) and len(drops) == len(split) // 300
    e1 = np.concatenate([b["cat"][:, 0] for b in iterate_batches(tagged, 100, shuffle=True, seed=1)])
    e2 = np.concatenate([b["cat"][:, 0] for b in iterate_batches(tagged, 100, shuffle=True, seed=1)])
    np.testing.assert_array_equal(e1, e2)


def test_padded_batches_still_yield_every_row_once():
    """train() pads the last batch (weight 0) to keep one shape: real rows still appear once."""
    from afm_jax.data.dataset import EncodedSplit

    n = 1000
    split = EncodedSplit(np.zeros((n, 1), np.int32), np.arange(n, dtype=np.float32)[:, None],
                         np.zeros(n, np.float32))
    seen = []
    for b in iterate_batches(split, 96, shuffle=True, seed=3, pad_last=True):
        assert b["cat"].shape[0] == 96
        seen.append(b["num"][b["weight"] > 0, 0])
    seen = np.concatenate(seen)
    assert np.array_equal(np.sort(seen), np.arange(n))


def test_encoder_fit_min_count_boundary_and_oov_id_0():
    """Encoder.fit keeps values seen exactly min_count times, drops those seen once fewer, orders by
    descending count then value; missing and out-of-vocabulary values get id 0."""
    from afm_jax.data.encoder import NumericMoments

    values, counts = [["a", "b", "c", "d", "e"]], [np.array([3, 2, 1, 2, 5])]
    x = np.array([[0.0], [1.0], [np.nan], [3.0]])  # transformed numeric values, NaN = missing
    moments = NumericMoments.of(x[:2]).merge(NumericMoments.of(x[2:]))
    enc = Encoder.fit(("f",), values, counts, ("n",), moments, min_count=2)
    assert enc.vocabs == [["e", "a", "b", "d"]] and enc.info.vocab_sizes == (5,)  # "c" seen 1 < 2 times
    cat, _ = enc.encode({"f": ["e", "d", "c", None, "never"], "n": np.zeros(5)})
    assert cat[:, 0].tolist() == [1, 4, 0, 0, 0]
    present = np.array([0.0, 1.0, 3.0])
    assert np.isclose(enc.num_mean[0], present.mean()) and np.isclose(enc.num_std[0], present.std())
    assert Encoder.fit(("f",), values, counts, min_count=3).vocabs == [["e", "a"]]
    assert Encoder.fit(("f",), values, counts, min_count=6).vocabs == [[]]
    constant = Encoder.fit((), [], [], ("n",), NumericMoments.of(np.full((3, 1), 2.0)))
    assert constant.num_mean.tolist() == [2.0] and constant.num_std.tolist() == [1.0]
    with pytest.raises(DataError, match="min_count must be >= 1"):
        Encoder.fit(("f",), values, counts, min_count=0)


# ------------------------------------------------------------------ prefetch (issue 15, part 3)

def _threads_named(name: str) -> list:
    import threading
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def test_prefetch_same_batches_in_order_placed_on_the_consumer_thread():
    """The thread cuts host batches; `place` runs on the thread that takes them (issue 21)."""
    import threading

    import jax

    from afm_jax.data.batching import host_batches, place_batch, prefetch

    ds = synthetic_dataset(3000, seed=1, n_categorical=3, n_numeric=1, vocab_sizes=[10, 20, 30])
    want = list(iterate_batches(ds.train, 256, shuffle=True, seed=5, pad_last=True, start_batch=2))
    placed_on = []

    def place(batch):
        placed_on.append(threading.current_thread().name)
        return place_batch(batch)

    with prefetch(host_batches(ds.train, 256, shuffle=True, seed=5, pad_last=True, start_batch=2),
                  size=2, place=place) as it:
        got = list(it)
    assert len(got) == len(want) == 8
    assert set(placed_on) == {threading.current_thread().name}
    for g, w in zip(got, want):
        assert set(g) == set(w) == {"cat", "num", "label", "weight"}
        for k in w:
            assert isinstance(g[k], jax.Array)
            np.testing.assert_array_equal(np.asarray(g[k]), w[k])
    assert not _threads_named("afm_jax-prefetch")
    assert list(prefetch(iter([]))) == []
    with pytest.raises(DataError, match="prefetch size"):
        prefetch(iter([1]), size=0)


def test_prefetch_refuses_device_arrays_from_its_thread():
    """A source that places batches itself (so dispatches from the prefetch thread) is refused
    at that item, with the way out, instead of racing the step's collectives."""
    from afm_jax.data.batching import prefetch, to_device

    ds = synthetic_dataset(1000, seed=1, n_categorical=2, n_numeric=1, vocab_sizes=[10, 20])
    it = prefetch(map(to_device, iterate_batches(ds.train, 256)), size=2)
    with pytest.raises(DataError, match=r"item 0 holds a device array at \['cat'\].*host_batches"):
        next(it)
    assert not _threads_named("afm_jax-prefetch")


def test_prefetch_raises_the_source_error_at_its_position():
    from afm_jax.data.batching import prefetch

    def source():
        yield 1
        yield 2
        raise ValueError("bad batch 3")

    it = prefetch(source(), size=4, place=None)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(ValueError, match="bad batch 3"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    assert not _threads_named("afm_jax-prefetch")


def test_prefetch_stops_cleanly_when_the_consumer_stops_early_or_raises():
    """No thread outlives the consumer: an early break with close(), an exception in the
    consumer's loop under `with`, and a dropped iterator all end the thread and close the source."""
    import gc
    import time

    from afm_jax.data.batching import prefetch

    closed = []

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)

    it = prefetch(endless(), size=2, place=None)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    assert closed == [True] and not _threads_named("afm_jax-prefetch")

    with pytest.raises(RuntimeError, match="step failed"):
        with prefetch(endless(), size=3, place=None) as it:
            for i in it:
                if i == 3:
                    raise RuntimeError("step failed")
    assert closed == [True, True] and not _threads_named("afm_jax-prefetch")

    it = prefetch(endless(), size=2, place=None)
    next(it)
    del it
    gc.collect()
    deadline = time.time() + 5
    while _threads_named("afm_jax-prefetch") and time.time() < deadline:
        time.sleep(0.01)
    assert not _threads_named("afm_jax-prefetch") and closed == [True, True, True]


# ------------------------------------------------------- fixed-size synthetic tables (issue 15, part 4)

def test_synthetic_total_vocab_tables_sum_to_n_ids_in_range_and_deterministic():
    """total_vocab N: the tables' rows, each table's out-of-vocabulary row 0 included, sum to
    exactly N, split like the default mix; every id is in 1..V-1 (the data never holds id 0)."""
    from afm_jax.data.synthetic import IdentityEncoder, table_sizes

    n = 123_457
    a = synthetic_dataset(4000, seed=3, total_vocab=n)
    sizes = a.info.vocab_sizes
    assert sum(sizes) == n and len(sizes) == 16 and min(sizes) >= 2
    assert sizes[4] > sizes[3] > sizes[2] and abs(sizes[4] - sizes[12]) <= 1  # the mix, scaled
    assert isinstance(a.encoder, IdentityEncoder) and a.encoder.info == a.info
    for s in (a.train, a.valid, a.test):
        assert s.cat.dtype == np.int32 and s.cat.min() >= 1
        assert np.all(s.cat.max(axis=0) < np.array(sizes))
    assert 0.15 < a.report["positive_rate"] < 0.3 and a.report["generator"]["total_vocab"] == n
    b = synthetic_dataset(4000, seed=3, total_vocab=n)
    c = synthetic_dataset(4000, seed=4, total_vocab=n)
    for k in ("cat", "num", "label"):
        for s in ("train", "valid", "test"):
            np.testing.assert_array_equal(getattr(getattr(a, s), k), getattr(getattr(b, s), k))
    assert not np.array_equal(a.train.cat, c.train.cat)
    longer = synthetic_dataset(70_000, seed=3, total_vocab=n)  # row i is the same for any n_rows > i
    np.testing.assert_array_equal(longer.train.cat[:3200], a.train.cat)
    np.testing.assert_array_equal(longer.train.label[:3200], a.train.label)
    assert table_sizes(10, [1, 1, 1, 1, 1]) == [2] * 5 and sum(table_sizes(10**7, [10, 100, 1000])) == 10**7
    # the identity encoder: value "k" is id k below V, anything else id 0; its JSON reads back
    v0 = sizes[0]
    assert a.encoder.ids(0, ["1", str(v0 - 1), str(v0), "0", "01", "-1", "x", None]).tolist() == \
        [1, v0 - 1, 0, 0, 0, 0, 0, 0]
    again = Encoder.from_json(a.encoder.to_json())
    assert again.info == a.info and again.ids(0, [str(v0 - 1)]).tolist() == [v0 - 1]
    same = synthetic_dataset(4000, seed=3, total_vocab=n, encoder=again)
    np.testing.assert_array_equal(same.test.num, a.test.num)
    np.testing.assert_array_equal(same.test.cat, a.test.cat)


def test_synthetic_total_vocab_bad_values_and_load_dataset():
    with pytest.raises(DataError, match="--synthetic-vocab") as ei:
        synthetic_dataset(100, total_vocab=31)  # 16 fields need 2 rows each
    assert ei.value.field == "total_vocab"
    with pytest.raises(DataError, match="not both"):
        synthetic_dataset(100, total_vocab=1000, vocab_sizes=[10] * 16)
    with pytest.raises(DataError, match="min_count"):
        synthetic_dataset(100, total_vocab=1000, min_count=2)
    other = synthetic_dataset(1000, total_vocab=2000)
    with pytest.raises(DataError, match="differ"):
        synthetic_dataset(1000, total_vocab=3000, encoder=other.encoder)
    ds = load_dataset("synthetic:2000", synthetic_vocab=50_000, progress=False)
    assert sum(ds.info.vocab_sizes) == 50_000 and len(ds.train) == 1600
    with pytest.raises(DataError, match="synthetic data only") as ei:
        load_dataset("criteo:/nonexistent.tsv", synthetic_vocab=1000, progress=False)
    assert ei.value.field == "synthetic_vocab"


def test_synthetic_total_vocab_memory_is_below_the_tables_own_size():
    """Generation keeps 8 bytes per table row (the Zipf CDFs) beyond the data and a fixed chunk's
    buffers; a 16-wide float32 table is 64 bytes per row. Peak numpy allocation (tracemalloc)
    grows by under 16 bytes per added table row (10M rows: ~134 MiB peak in all)."""
    import tracemalloc

    peaks = {}
    for n in (100_000, 2_000_000):
        tracemalloc.start()
        try:
            ds = synthetic_dataset(2000, total_vocab=n)
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert sum(ds.info.vocab_sizes) == n
    per_row = (peaks[2_000_000] - peaks[100_000]) / 1_900_000
    assert per_row < 16, f"{per_row:.1f} bytes per table row; peaks {peaks}"


def test_cli_synthetic_vocab_flag(capsys):
    from afm_jax.cli import _data_options, build_parser

    parser = build_parser()
    for command in (["train", "--model", "deepfm", "--out", "x"], ["evaluate", "--model-dir", "m"],
                    ["compress", "--model-dir", "m", "--out", "x"]):
        args = parser.parse_args(command + ["--data", "synthetic:1000", "--synthetic-vocab", "10_000_000"])
        assert _data_options(args)["synthetic_vocab"] == 10_000_000
        assert _data_options(parser.parse_args(command + ["--data", "synthetic"]))["synthetic_vocab"] is None
    assert parser.parse_args(["bench", "--train", "--synthetic-vocab", "5000"]).synthetic_vocab == 5000
    for bad in ("0", "-5", "1e6", "many"):
        with pytest.raises(SystemExit):
            parser.parse_args(["train", "--model", "deepfm", "--out", "x", "--data", "synthetic",
                               "--synthetic-vocab", bad])
        assert "--synthetic-vocab" in capsys.readouterr().err


def test_train_with_prefetch_is_bit_identical_to_direct_feeding(monkeypatch):
    """train() feeds through `prefetch`: the same batches in the same order as iterate_batches
    straight into the step, so the trained params are bit-identical (a mid-epoch resume, which
    only skips `start_batch` batches, stays so too: tests/test_resume.py)."""
    import contextlib

    import jax

    import afm_jax.data.batching as batching
    from afm_jax.models import build_model
    from afm_jax.train import TrainConfig, train

    ds = synthetic_dataset(3000, seed=2)
    model = build_model("deepfm", ds.info, mlp=(16,))
    cfg = TrainConfig(epochs=2, batch_size=256, patience=5)
    fed = train(model, ds, cfg, progress=False).params
    monkeypatch.setattr(batching, "prefetch", lambda batches, size=2, place=None:
                        contextlib.nullcontext(map(place, batches)))
    direct = train(model, ds, cfg, progress=False).params
    jax.tree.map(np.testing.assert_array_equal, fed, direct)
    assert not _threads_named("afm_jax-prefetch")
