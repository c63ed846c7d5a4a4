"""Multi-valued and sequence fields, hashed ids: schema, readers, encoder, cache, batches, synthetic
bags and the MovieLens history (issue 22, data side)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afm_jax.data import (
    BagSpec,
    Encoder,
    FeatureInfo,
    Schema,
    SyntheticBags,
    iterate_batches,
    load_dataset,
    synthetic_dataset,
)
from afm_jax.data.batching import host_batches, place_batch, prefetch
from afm_jax.data.dataset import make_source, parse_data_spec
from afm_jax.data.hashing import _fnv1a64, _mix64_int, hash_id, hash_ids
from afm_jax.data.readers import MOVIELENS_BAG_SCHEMA
from afm_jax.data.readers.movielens import user_history
from afm_jax.distributed import make_mesh
from afm_jax.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
needs_movielens = pytest.mark.skipif(not (SHARED / "movielens100k").is_dir(),
                                     reason=f"MovieLens-100k sample not found at {SHARED / 'movielens100k'}")

GOLDEN = [("C1", "68fd1e64", 1000003, 348183), ("C1", "", 1000003, 629392), ("tags", "Sci-Fi", 97, 93),
          ("tags", "é", 97, 8), ("user", "42", 2, 1), ("history", "242", 1 << 20, 333537)]


# ------------------------------------------------------------------------------------- hashing

def test_hash_primitives_match_published_vectors():
    # FNV-1a 64 test vectors (Fowler/Noll/Vo) and splitmix64's first output from state 0.
    assert _fnv1a64(b"") == 0xCBF29CE484222325
    assert _fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert _fnv1a64(b"foobar") == 0x85944171F73967E8
    assert _mix64_int(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


def test_hash_golden_ids_vectorized_and_reference():
    for field, value, buckets, want in GOLDEN:
        assert hash_id(field, value, buckets) == want
        assert hash_ids(field, [value], buckets).tolist() == [want]
    # the field salts the hash; a null is missing (0)
    assert hash_id("a", "bc", 1 << 30) != hash_id("ab", "c", 1 << 30)
    assert hash_ids("C1", pa.array(["68fd1e64", None]), 1000003).tolist() == [348183, 0]


def test_hash_same_in_other_processes():
    code = ("from afm_jax.data.hashing import hash_ids; import json; "
            f"print(json.dumps([int(hash_ids(f, [v], n)[0]) for f, v, n, _ in {GOLDEN!r}]))")
    want = [g[3] for g in GOLDEN]
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == want


def test_hash_never_zero_for_present_values_and_matches_reference_on_many():
    rng = np.random.default_rng(0)
    values = ["".join(chr(c) for c in rng.integers(32, 0x3000, size=rng.integers(0, 40))) for _ in range(3000)]
    for buckets in (2, 3, 1000, (1 << 31) - 1):
        ids = hash_ids("f", values, buckets)
        assert ids.min() >= 1 and ids.max() <= buckets - 1
        assert ids[:300].tolist() == [hash_id("f", v, buckets) for v in values[:300]]
    sliced = pa.array(values).slice(1000, 50)  # an Arrow slice (offset into shared buffers)
    assert hash_ids("f", sliced, 1000).tolist() == hash_ids("f", values[1000:1050], 1000).tolist()
    ids = hash_ids("f", [str(k) for k in range(20000)], 11)  # spread over all 10 ids
    assert np.bincount(ids, minlength=11)[1:].min() > 1500
    for bad in (1, 0, True, 2.5, 2 ** 31):
        with pytest.raises(DataError, match="hash_buckets"):
            hash_ids("f", ["x"], bad)


# -------------------------------------------------------------------------------------- schema

def test_schema_json_round_trip_and_old_json_unchanged():
    old = {"label": "y", "categorical": ["a", "b"], "numeric": ["n"], "bucketize": []}
    assert Schema.from_dict(old).to_json() == old  # single-valued schemas (and cache keys) stay as they were
    raw = {"label": "y", "categorical": ["a", {"name": "c", "hash_buckets": 1000}], "numeric": [], "bucketize": [],
           "multi_valued": [{"name": "tags", "max_len": 4, "combiner": "sqrtn", "separator": "|",
                             "truncation": "keep_first", "hash_buckets": 50}],
           "sequence": [{"name": "hist", "max_len": 3, "combiner": "mean", "separator": ";",
                         "truncation": "keep_last", "shares": "a"}]}
    s = Schema.from_dict(raw)
    assert s.hashed == {"c": 1000, "tags": 50}
    assert s.bag_names == ("tags", "hist") and s.bags[1].shares == "a"
    assert s.to_json() == raw
    assert Schema.from_dict(s.to_json()) == s


@pytest.mark.parametrize("change, match", [
    ({"multi_valued": [{"name": "t", "max_len": 0}]}, "max_len"),
    ({"multi_valued": [{"name": "t"}]}, "max_len"),
    ({"multi_valued": [{"name": "t", "max_len": 3, "combiner": "median"}]}, "combiner"),
    ({"multi_valued": [{"name": "t", "max_len": 3, "truncation": "random"}]}, "truncation"),
    ({"multi_valued": [{"name": "t", "max_len": 3, "separator": ""}]}, "separator"),
    ({"multi_valued": [{"name": "t", "max_len": 3, "sep": "|"}]}, "unknown key 'sep'"),
    ({"multi_valued": [{"name": "t", "max_len": 3, "shares": "a"}]}, "under \"sequence\""),
    ({"sequence": [{"name": "h", "max_len": 3}]}, "needs \"shares\""),
    ({"sequence": [{"name": "h", "max_len": 3, "shares": "nope"}]}, "shares 'nope'"),
    ({"sequence": [{"name": "h", "max_len": 3, "shares": "a", "hash_buckets": 10}]}, "hash_buckets applies"),
    ({"multi_valued": [{"name": "a", "max_len": 3}]}, "appears twice"),
    ({"multi_valued": [{"name": "t", "max_len": 3, "hash_buckets": 1}]}, "hash_buckets must be"),
    ({"categorical": ["a", {"name": "b", "buckets": 3}]}, "categorical entry"),
    ({"multi_valued": {"name": "t"}}, "list of objects"),
])
def test_schema_validation_errors_name_the_file_and_field(tmp_path, change, match):
    raw = {"label": "y", "categorical": ["a"], **change}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=match) as e:
        Schema.from_json(path)
    assert str(path) in str(e.value)


# -------------------------------------------------------------------------------------- readers

def decode(ds, split, field: str) -> list[list[str]]:
    """A split's bag as lists of value strings ("<0>" for id 0), via the encoder's vocabulary."""
    enc = ds.encoder
    spec = next(b for b in enc.bags if b.name == field)
    table = spec.shares or spec.name
    vocab = enc.vocabs[enc.cat_names.index(table)] if table in enc.cat_names else \
        enc.bag_vocabs[[b.name for b in enc.bags].index(table)]
    ids, lens = getattr(ds, split).bags[field], getattr(ds, split).bag_len[field]
    return [["<0>" if i == 0 else vocab[i - 1] for i in row[:n]] for row, n in zip(ids, lens)]


TAG_ROWS = [("1", "u1", "a|b|c", "x"), ("0", "u2", "", "x|y"), ("1", "u1", "b", ""), ("0", "u3", "c|a|b|d|e", "y"),
            ("1", "u2", "a", "z|x|y|x")] * 4


def tag_schema(**over) -> dict:
    tags = {"name": "tags", "max_len": 3, "combiner": "sum", "truncation": "keep_last", **over}
    return {"label": "y", "categorical": ["user"], "multi_valued": [tags],
            "sequence": [{"name": "seen", "max_len": 2, "shares": "user", "truncation": "keep_first"}]}


def expected_tags(truncation: str, max_len: int = 3) -> list[list[str]]:
    out = []
    for _, _, tags, _ in TAG_ROWS:
        items = tags.split("|") if tags else []
        out.append(items[-max_len:] if truncation == "keep_last" and len(items) > max_len else items[:max_len])
    return out


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_reader_round_trip_and_truncation_counted(tmp_path, fmt):
    sch = tmp_path / "schema.json"
    sch.write_text(json.dumps(tag_schema()))
    if fmt == "parquet":
        path = tmp_path / "d.parquet"
        pq.write_table(pa.table({
            "y": [r[0] for r in TAG_ROWS], "user": [r[1] for r in TAG_ROWS],
            "tags": pa.array([r[2].split("|") if r[2] else None for r in TAG_ROWS], pa.list_(pa.string())),
            "seen": pa.array([r[3].split("|") if r[3] else [] for r in TAG_ROWS], pa.large_list(pa.string()))}), path)
        spec = f"parquet:{path}"
    else:
        delim = "," if fmt == "csv" else "\t"
        path = tmp_path / f"d.{fmt}"
        path.write_text("\n".join([delim.join(("y", "user", "tags", "seen"))] + [delim.join(r) for r in TAG_ROWS])
                        + "\n")
        spec = f"csv:{path}"
    ds = load_dataset(spec, schema=str(sch), min_count=1, cache_dir=str(tmp_path / "c"), progress=False)
    got = sum((decode(ds, s, "tags") for s in ("train", "valid", "test")), [])
    assert got == expected_tags("keep_last")
    seen = sum((decode(ds, s, "seen") for s in ("train", "valid", "test")), [])
    users = set(ds.encoder.vocabs[0])
    want_seen = [[v if v in users else "<0>" for v in (r[3].split("|") if r[3] else [])[:2]] for r in TAG_ROWS]
    assert seen == want_seen  # the sequence takes the user field's ids (x, y, z are out of its vocabulary)
    rep = ds.report["bags"]
    assert rep["tags"]["truncated_rows"] == 4 and rep["tags"]["dropped_items"] == 8  # "c|a|b|d|e" x 4
    assert rep["seen"]["truncated_rows"] == 4 and rep["seen"]["dropped_items"] == 8  # "z|x|y|x" x 4
    info = ds.info
    assert [b.name for b in info.bags] == ["tags", "seen"]
    assert info.bags[1].shares == "user" and info.bags[1].vocab_size == info.vocab_sizes[0]
    assert ds.train.bags["tags"].dtype == np.int32 and ds.train.bags["tags"].shape == (16, 3)
    # padding positions hold 0 and are beyond the lengths
    pos = np.arange(3)[None, :]
    assert np.all(ds.train.bags["tags"][pos >= ds.train.bag_len["tags"][:, None]] == 0)
    # the cache holds the bags: a second load is a hit with the same arrays, memory-mapped
    again = load_dataset(spec, schema=str(sch), min_count=1, cache_dir=str(tmp_path / "c"), progress=False)
    assert again.report["cache_hit"] and again.info == info
    for s in ("train", "valid", "test"):
        for k in ("tags", "seen"):
            np.testing.assert_array_equal(getattr(again, s).bags[k], getattr(ds, s).bags[k])
            np.testing.assert_array_equal(getattr(again, s).bag_len[k], getattr(ds, s).bag_len[k])


def test_keep_first_truncation(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("\n".join(["y,user,tags,seen"] + [",".join(r) for r in TAG_ROWS]) + "\n")
    sch = Schema.from_dict(tag_schema(truncation="keep_first", max_len=2))
    ds = load_dataset(f"csv:{path}", schema=sch, min_count=1, cache_dir=str(tmp_path / "c"), progress=False)
    got = sum((decode(ds, s, "tags") for s in ("train", "valid", "test")), [])
    assert got == expected_tags("keep_first", 2)
    assert ds.report["bags"]["tags"]["truncated_rows"] == 8  # "a|b|c" and "c|a|b|d|e", 4 each
    assert ds.report["bags"]["tags"]["dropped_items"] == 4 * (1 + 3)


def test_bad_items_name_file_line_and_field(tmp_path):
    path = tmp_path / "d.csv"
    rows = [",".join(r) for r in TAG_ROWS]
    rows[2] = "1,u1,a||b,x"  # line 4 (after the header)
    path.write_text("\n".join(["y,user,tags,seen"] + rows) + "\n")
    sch = Schema.from_dict(tag_schema())
    with pytest.raises(DataError, match="empty item") as e:
        load_dataset(f"csv:{path}", schema=sch, min_count=1, cache_dir=str(tmp_path / "c"), progress=False)
    assert e.value.path == str(path) and e.value.line == 4 and e.value.field == "tags"
    ds = load_dataset(f"csv:{path}", schema=sch, min_count=1, cache_dir=str(tmp_path / "c"), progress=False,
                      on_bad_lines="skip")
    assert ds.report["rows_skipped"] == 1 and ds.report["skipped_examples"][0]["field"] == "tags"
    pq_path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"y": ["1", "0"], "user": ["a", "b"], "tags": [["x", None], ["y"]],
                             "seen": [["a"], ["b"]]}), pq_path)
    with pytest.raises(DataError, match="empty item") as e:
        load_dataset(f"parquet:{pq_path}", schema=sch, min_count=1, cache_dir=str(tmp_path / "c"), progress=False)
    assert (e.value.line, e.value.field) == (1, "tags")


def test_list_columns_need_a_bag_schema_and_separators_differ_from_delimiter(tmp_path):
    pq_path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"y": ["1"], "user": ["a"], "tags": [["x"]]}), pq_path)
    with pytest.raises(DataError, match="multi_valued") as e:
        make_source(parse_data_spec(f"parquet:{pq_path}"), Schema("y", ("user", "tags")))
    assert e.value.field == "tags"
    path = tmp_path / "d.csv"
    path.write_text("y,user,tags\n1,a,x\n")
    with pytest.raises(DataError, match="delimiter") as e:
        make_source(parse_data_spec(f"csv:{path}"),
                    Schema("y", ("user",), bags=(BagSpec("tags", 3, separator=","),)))
    assert e.value.field == "tags"


def test_hashed_fields_fit_no_vocabulary(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("\n".join(["y,user,tags,seen"] + [",".join(r) for r in TAG_ROWS]) + "\n")
    raw = tag_schema(hash_buckets=64)
    raw["categorical"] = [{"name": "user", "hash_buckets": 1000}]
    ds = load_dataset(f"csv:{path}", schema=Schema.from_dict(raw), min_count=3, cache_dir=str(tmp_path / "c"),
                      progress=False)
    assert ds.encoder.vocabs == [[]] and ds.encoder.bag_vocabs[0] == []
    assert ds.info.vocab_sizes == (1000,) and ds.info.bags[0].vocab_size == 64 and ds.info.bags[1].vocab_size == 1000
    users = [r[1] for r in TAG_ROWS]
    cat = np.concatenate([ds.train.cat, ds.valid.cat, ds.test.cat])[:, 0]
    assert cat.tolist() == [hash_id("user", u, 1000) for u in users]  # no min_count: hashed ids are final
    tags = np.concatenate([ds.train.bags["tags"], ds.valid.bags["tags"], ds.test.bags["tags"]])
    assert tags[0].tolist() == [hash_id("tags", v, 64) for v in "abc"]
    seen = np.concatenate([ds.train.bags["seen"], ds.valid.bags["seen"], ds.test.bags["seen"]])
    assert seen[1].tolist() == [hash_id("user", v, 1000) for v in "xy"]  # a sequence hashes as the field it shares
    j = ds.encoder.to_json()
    assert j["format_version"] == 2 and j["hash_buckets"] == {"user": 1000, "tags": 64}
    assert "fnv1a64" in j["hash_rule"]


# -------------------------------------------------------------------------------------- encoder

def test_encoder_json_round_trip(tmp_path):
    bags = (BagSpec("tags", 3, "max"), BagSpec("hist", 2, truncation="keep_first", shares="item"))
    enc = Encoder(["item", "h"], [["i1", "i2"], []], bags=bags, bag_vocabs=[["t1", "t2", "t3"], []],
                  hash_buckets={"h": 17})
    enc.save(tmp_path / "encoder.json")
    back = Encoder.load(tmp_path / "encoder.json")
    assert back.to_json() == enc.to_json() and back.bags == bags and back.hash_buckets == {"h": 17}
    assert back.info == enc.info
    assert FeatureInfo.from_json(json.loads(json.dumps(enc.info.to_json()))) == enc.info
    cols = {"item": pa.array(["i2", "zz", None]), "h": pa.array(["q", None, "r"]),
            "tags": pa.array(["t3|t1", "", "t2|t9|t1|t3"]), "hist": pa.array([["i1", "i2", "i1"], None, ["x"]])}
    cat, _ = back.encode(cols)
    assert cat.tolist() == [[2, hash_id("h", "q", 17)], [0, 0], [0, hash_id("h", "r", 17)]]
    b, lens, cut = back.encode_bags(cols)
    assert b["tags"].tolist() == [[3, 1, 0], [0, 0, 0], [0, 1, 3]] and lens["tags"].tolist() == [2, 0, 3]
    assert b["hist"].tolist() == [[1, 2], [0, 0], [0, 0]] and lens["hist"].tolist() == [2, 0, 1]
    assert cut == {"tags": {"rows": 1, "items": 1}, "hist": {"rows": 1, "items": 1}}
    # an encoder without bags or hashing writes the version-1 JSON it always did
    plain = Encoder(["a"], [["x"]]).to_json()
    assert plain["format_version"] == 1 and "bags" not in plain and "hash_buckets" not in plain
    assert FeatureInfo(("a",), (2,)).to_json() == {"cat_names": ["a"], "vocab_sizes": [2], "num_names": []}
    bad = enc.to_json()
    bad["hash_rule"] = "python hash()"
    with pytest.raises(DataError, match="hash_rule"):
        Encoder.from_json(bad)


# -------------------------------------------------------------------------------------- batches

def bag_dataset(rows: int = 3000):
    return synthetic_dataset(rows, seed=1, n_categorical=3, n_numeric=1,
                             bags=SyntheticBags(fields=2, mean_len=3.0, max_len=4, vocab=50))


def test_batches_cut_pad_and_place_bags():
    ds = bag_dataset()
    split = ds.valid
    n = len(split)
    batches = list(iterate_batches(split, 128, pad_last=True))
    assert sorted(batches[0]) == ["bag_len", "bags", "cat", "label", "num", "weight"]
    assert {k: v.shape for k, v in batches[-1]["bags"].items()} == {"b0": (128, 4), "b1": (128, 4)}
    real = [b["weight"] > 0 for b in batches]
    for k in ("b0", "b1"):
        np.testing.assert_array_equal(np.concatenate([b["bags"][k][m] for b, m in zip(batches, real)]), split.bags[k])
        np.testing.assert_array_equal(np.concatenate([b["bag_len"][k][m] for b, m in zip(batches, real)]),
                                      split.bag_len[k])
    assert sum(int(m.sum()) for m in real) == n
    shuffled = list(iterate_batches(split, 100, shuffle=True, seed=3))
    order = np.concatenate([b["label"] for b in shuffled])
    assert len(order) == n
    first = shuffled[0]  # each row's bag travels with its row
    idx = np.sort(np.random.default_rng(3).permutation(n)[:100])
    np.testing.assert_array_equal(first["bags"]["b1"], split.bags["b1"][idx])
    np.testing.assert_array_equal(first["cat"], split.cat[idx])
    mesh = make_mesh(1)
    placed = list(iterate_batches(split, 128, mesh=mesh))
    assert isinstance(placed[-1]["bags"]["b0"], type(placed[-1]["cat"]))  # a jax.Array, like the rest
    np.testing.assert_array_equal(np.asarray(placed[0]["bag_len"]["b0"]), split.bag_len["b0"][:128])
    with prefetch(host_batches(split, 128, mesh=mesh), place=lambda b: place_batch(b, mesh)) as it:
        again = list(it)
    np.testing.assert_array_equal(np.asarray(again[-1]["bags"]["b1"]), np.asarray(placed[-1]["bags"]["b1"]))
    plain = next(iter(iterate_batches(synthetic_dataset(500, seed=0).train, 64)))
    assert sorted(plain) == ["cat", "label", "num"]  # single-valued data: the batch it always was


def test_bags_shard_over_a_four_device_mesh(tmp_path):
    code = textwrap.dedent("""
        import numpy as np
        from afm_jax.data import SyntheticBags, iterate_batches, synthetic_dataset
        from afm_jax.data.batching import shard_batch
        from afm_jax.distributed import make_mesh
        mesh = make_mesh(4)
        ds = synthetic_dataset(2000, seed=1, n_categorical=3, bags=SyntheticBags(2, 3.0, 4, 50))
        split = ds.test
        batches = list(iterate_batches(split, 30, mesh=mesh))
        assert batches[0]["bags"]["b0"].shape == (32, 4)
        assert len(batches[0]["bags"]["b0"].sharding.device_set) == 4
        got = np.concatenate([np.asarray(b["bags"]["b0"])[np.asarray(b["weight"]) > 0] for b in batches])
        np.testing.assert_array_equal(got, split.bags["b0"])
        host = {"cat": split.cat[:10], "num": split.num[:10], "label": split.label[:10],
                "bags": {"b1": split.bags["b1"][:10]}, "bag_len": {"b1": split.bag_len["b1"][:10]}}
        s = shard_batch(host, mesh)
        assert s["bags"]["b1"].shape == (12, 4) and np.asarray(s["weight"]).tolist() == [1.0] * 10 + [0.0] * 2
        np.testing.assert_array_equal(np.asarray(s["bag_len"]["b1"])[:10], split.bag_len["b1"][:10])
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


# -------------------------------------------------------------------------------------- synthetic

def test_synthetic_bags_are_opt_in_and_counted():
    base = synthetic_dataset(3000, seed=1, n_categorical=3, n_numeric=1)
    ds = bag_dataset()
    assert base.train.bags == {} and base.info.bags == () and "bags" not in base.report
    # the single-valued columns are the same with bags; the labels also depend on the bags
    np.testing.assert_array_equal(ds.train.cat, base.train.cat)
    np.testing.assert_array_equal(ds.train.num, base.train.num)
    assert not np.array_equal(ds.train.label, base.train.label)
    assert [b.name for b in ds.info.bags] == ["b0", "b1"] and ds.info.bags[0].max_len == 4
    again = bag_dataset()
    np.testing.assert_array_equal(again.test.bags["b1"], ds.test.bags["b1"])
    # Poisson(3) lengths cut at 4: the report counts exactly the rows and items beyond it
    lens = np.concatenate([getattr(ds, s).bag_len["b0"] for s in ("train", "valid", "test")])
    assert lens.max() == 4 and (lens == 0).sum() > 50
    rep = ds.report["bags"]["b0"]
    assert 0.15 < rep["truncated_rows"] / 3000 < 0.25  # P(Poisson(3) > 4) = 0.185
    assert rep["dropped_items"] > rep["truncated_rows"]
    assert ds.report["generator"]["bags"] == SyntheticBags(2, 3.0, 4, 50).to_json()
    assert SyntheticBags.parse("3:5:20") == SyntheticBags(3, 5.0, 20)
    via_spec = load_dataset("synthetic:3000", seed=1, synthetic_bags="2:3:4", progress=False)
    assert [b.name for b in via_spec.info.bags] == ["b0", "b1"]
    for bad in ("x", "0", "2:0", "1:2:3:4"):
        with pytest.raises(DataError, match="synthetic"):
            SyntheticBags.parse(bad)
    with pytest.raises(DataError, match="synthetic data only"):
        load_dataset("csv:/nonexistent.csv", synthetic_bags="2")


# -------------------------------------------------------------------------------------- MovieLens

def test_user_history_by_brute_force():
    rng = np.random.default_rng(0)
    n = 400
    user = rng.integers(0, 7, size=n)
    ts = np.sort(rng.integers(0, 60, size=n))  # many ties within a second
    valid = rng.random(n) > 0.05
    offsets, rows, cut = user_history(user, ts, valid, 5)
    for i in range(n):
        earlier = [j for j in range(n) if valid[i] and valid[j] and user[j] == user[i] and ts[j] < ts[i]]
        earlier = sorted(earlier, key=lambda j: (ts[j], j), reverse=True)
        got = rows[offsets[i]:offsets[i + 1]].tolist()
        assert [ts[j] for j in got] == [ts[j] for j in earlier[:5]]
        assert set(got) <= set(earlier) and len(got) == min(5, len(earlier)) and cut[i] == len(earlier) - len(got)


@needs_movielens
def test_movielens_history_never_sees_own_or_later_ratings(tmp_path):
    directory = SHARED / "movielens100k"
    ratings = pq.read_table(directory / "ratings.parquet")
    user = ratings["user_id"].to_numpy()
    movie = ratings["movie_id"].to_numpy()
    ts = ratings["timestamp"].to_numpy()
    source = make_source(parse_data_spec(f"movielens:{directory}"), MOVIELENS_BAG_SCHEMA)
    chunks = [c for c, _ in source.chunks(False) if c is not None]
    rated: dict[tuple[int, int], int] = {(int(u), int(m)): int(t) for u, m, t in zip(user, movie, ts)}
    by_user: dict[int, list[tuple[int, int]]] = {}
    for u, m, t in zip(user, movie, ts):
        by_user.setdefault(int(u), []).append((int(t), int(m)))
    items_tab = pq.read_table(directory / "items.parquet")
    genre_names = items_tab.column_names[5:]
    movie_genres = {int(m): [g for g in genre_names if items_tab[g][k].as_py()]
                    for k, m in enumerate(items_tab["movie_id"].to_pylist())}
    rows = 0
    for chunk in chunks:
        hist = chunk.columns["history"].to_pylist()
        genres = chunk.columns["genres"].to_pylist()
        for line, items, g in zip(chunk.lines, hist, genres):
            r = int(line) - 1  # lines are 1-based rows of ratings.parquet
            u, m, t = int(user[r]), int(movie[r]), int(ts[r])
            items = [int(x) for x in items]
            assert m not in items  # never its own rating
            assert all(rated[(u, x)] < t for x in items)  # only strictly earlier ones, never the same second
            times = [rated[(u, x)] for x in items]
            assert times == sorted(times, reverse=True)  # most recent first
            earlier = sum(1 for tt, _ in by_user[u] if tt < t)
            assert len(items) == min(20, earlier)
            assert g == movie_genres[m]  # every genre flag set, in column order
            rows += 1
    assert rows == ratings.num_rows
    ds = load_dataset(f"movielens:{directory}", schema=MOVIELENS_BAG_SCHEMA, cache_dir=str(tmp_path), progress=False)
    rep = ds.report["bags"]
    assert rep["history"]["truncated_rows"] == sum(
        1 for u, t in zip(user, ts) if sum(1 for tt, _ in by_user[int(u)] if tt < t) > 20)
    assert rep["genres"]["truncated_rows"] == 0 and 1.5 < rep["genres"]["mean_len"] < 3.0
    hist_info = next(b for b in ds.info.bags if b.name == "history")
    assert hist_info.shares == "movie" and hist_info.vocab_size == ds.info.vocab_sizes[ds.info.cat_names.index("movie")]
    # encoded: a history id is the movie field's id of an earlier rating by the same user
    j_user, j_movie = ds.info.cat_names.index("user"), ds.info.cat_names.index("movie")
    test = ds.test
    for i in range(0, len(test), 97):
        ids = test.bags["history"][i, :test.bag_len["history"][i]]
        assert test.cat[i, j_movie] not in set(ids[ids > 0].tolist()) or test.cat[i, j_movie] == 0
    assert "genre" not in ds.info.cat_names and j_user != j_movie


def test_sequence_sharing_a_bag_encoder_reuse_and_max_rows(tmp_path):
    path = tmp_path / "d.csv"
    lines = ["y,user,tags,clicked"] + [f"{i % 2},u{i % 7},{'|'.join(f't{j % 5}' for j in range(i % 9))},t{i % 6}"
                                        for i in range(400)]
    path.write_text("\n".join(lines) + "\n")
    sch = Schema.from_dict({"label": "y", "categorical": ["user"], "multi_valued": [{"name": "tags", "max_len": 4}],
                            "sequence": [{"name": "clicked", "max_len": 1, "shares": "tags"}]})
    kw = {"schema": sch, "min_count": 1, "cache_dir": str(tmp_path / "c"), "progress": False}
    ds = load_dataset(f"csv:{path}", max_rows=150, **kw)
    assert sum(len(getattr(ds, s)) for s in ("train", "valid", "test")) == 150
    assert ds.report["bags"]["tags"]["truncated_rows"] == sum(1 for i in range(150) if i % 9 > 4)
    tags = ds.encoder.bag_vocabs[0]
    clicked = sum((decode(ds, s, "clicked") for s in ("train", "valid", "test")), [])
    assert clicked == [[f"t{i % 6}" if f"t{i % 6}" in tags else "<0>"] for i in range(150)]  # t5 is no tag
    assert ds.info.bags[1].vocab_size == ds.info.bags[0].vocab_size == len(tags) + 1
    again = load_dataset(f"csv:{path}", max_rows=150, encoder=ds.encoder, **kw)  # a model's encoder
    for s in ("train", "test"):
        for k in ("tags", "clicked"):
            np.testing.assert_array_equal(getattr(again, s).bags[k], getattr(ds, s).bags[k])
    with pytest.raises(DataError, match="differ from the encoder"):
        load_dataset(f"csv:{path}", encoder=synthetic_dataset(100, seed=0).encoder, **kw)
