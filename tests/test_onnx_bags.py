"""The ONNX export of bag models (issues 22 and 23): multi-valued and sequence fields, DIN and
AFM-compressed bag params score in ONNX Runtime as the JAX scorer does; with raw inputs the
graph splits, looks up, truncates and pads each bag exactly as `Encoder.encode_bags`; hashed
fields come in as the ids a client computes from the documented rule; `afm-jax export --format
onnx` of a `--synthetic-bags` model scores raw rows as `afm-jax score` does."""

from __future__ import annotations

import json

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

from afm_jax import compress
from afm_jax.data import BagInfo, BagSpec, Encoder, FeatureInfo
from afm_jax.inference import make_scorer
from afm_jax.models import build_model
from afm_jax.pooling import COMBINERS
from afm_jax.quantize import quantize
from afm_jax.train import init_params
from tests.helpers import bag_model_and_rows

onnx = pytest.importorskip("onnx", reason="the [onnx] extra (part of [dev]) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra (part of [dev]) is not installed")

from afm_jax.onnx_export import (  # noqa: E402
    HASH_NOTE_KEY,
    encoder_to_onnx,
    load_onnx,
    onnx_signature,
    to_onnx,
)

# "item" and "user" single-valued, "tags" a bag with its own table, "hist" a sequence sharing
# the item's table (the DIN layout)
ITEMS, USERS, TAGS = ["m1", "m2", "m3", "m4", "m5"], ["u1", "u2", "u3"], ["t1", "t2", "t3", "t4"]


def _info(combiner: str = "mean") -> FeatureInfo:
    return FeatureInfo(cat_names=("item", "user"), vocab_sizes=(6, 4), num_names=("x",),
                       bags=(BagInfo("tags", 5, 3, combiner), BagInfo("hist", 6, 4, "mean", shares="item")))


def _model(name: str, info: FeatureInfo):
    """A small registry model; "din_softmax": DIN with its weights normalized by a softmax."""
    config = {"embed_dim": 4}
    if name.startswith("din"):
        config.update(mlp=(8,), attention_mlp=(6,), softmax=name == "din_softmax")
        name = "din"
    elif name != "fm":
        config["mlp"] = (8,)
    return build_model(name, info, **config)


def _lively(model, info, seed: int = 1):
    params = init_params(model, info, 0)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys)])


def _batch(info: FeatureInfo, n: int = 64, seed: int = 0) -> dict:
    """Random ids with empty and full bags, out-of-range ids (score as 0) among the items and
    the single-valued ids, and junk in the padding (masked)."""
    rng = np.random.default_rng(seed)
    cat = np.stack([rng.integers(0, v, n) for v in info.vocab_sizes], 1).astype(np.int32)
    cat[0, 0], cat[1, 1] = 1000, -5
    bags, lens = {}, {}
    for b in info.bags:
        lens[b.name] = rng.integers(0, b.max_len + 1, n).astype(np.int32)
        lens[b.name][:3] = [0, b.max_len, 1]
        bags[b.name] = rng.integers(0, b.vocab_size, (n, b.max_len)).astype(np.int32)
        bags[b.name][1, 0], bags[b.name][2, 0] = 77, -2
    return {"cat": cat, "num": rng.normal(size=(n, len(info.num_names))).astype(np.float32),
            "bags": bags, "bag_len": lens}


def _id_feeds(batch: dict) -> dict:
    feeds = {"cat": batch["cat"], "num": batch["num"]}
    for name in batch["bags"]:
        feeds[f"bag:{name}"], feeds[f"bag_len:{name}"] = batch["bags"][name], batch["bag_len"][name]
    return feeds


def _run(proto, feeds: dict, outputs=("score",)) -> list:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(list(outputs), feeds)


def _jax_scores(model, params, batch) -> np.ndarray:
    keys = ("cat", "num", "bags", "bag_len")
    return np.asarray(make_scorer(model)(params, {k: batch[k] for k in keys}))


def _check_ids(model, params, info, atol=2e-6) -> float:
    """ORT on the id-input graph == the JAX scorer, at batch 64 and 1; the max abs diff."""
    batch = _batch(info)
    proto = to_onnx(model, params)
    got = _run(proto, _id_feeds(batch))[0]
    want = _jax_scores(model, params, batch)
    assert got.shape == want.shape == (64,)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    one = jax.tree.map(lambda a: a[:1], batch)
    np.testing.assert_allclose(_run(proto, _id_feeds(one))[0], want[:1], rtol=0, atol=atol)
    return float(np.max(np.abs(got - want)))


@pytest.mark.parametrize("combiner", COMBINERS)
def test_bag_models_in_the_id_graph_every_combiner(combiner):
    info = _info(combiner)
    model = _model("deepfm", info)
    params = _lively(model, info)
    _check_ids(model, params, info)
    proto = to_onnx(model, params)
    names = [i.name for i in proto.graph.input]
    assert names == ["cat", "num", "bag:tags", "bag_len:tags", "bag:hist", "bag_len:hist"]
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in proto.graph.input}
    assert shapes["bag:tags"] == ["B", 3] and shapes["bag_len:hist"] == ["B"]
    sig = {i["name"]: i for i in onnx_signature(model, None, (), "float32", 0, 0)["inputs"]}
    assert sig["bag:tags"]["combiner"] == combiner and sig["bag:hist"]["shares"] == "item"
    assert sig["bag:hist"]["kind"] == "sequence" and sig["bag:tags"]["shape"] == ["B", 3]


@pytest.mark.parametrize("name", ["din", "din_softmax", "fm"])
def test_din_and_afm_compressed_bag_params(name):
    info = _info("sqrtn")
    model = _model(name, info)
    params = _lively(model, info)
    _check_ids(model, params, info)
    stats = compress.collect_stats(model, params, [_batch(info, 32, s) for s in range(3)],
                                   progress=False)
    plan = compress.make_plan(params, stats, "rank:3")
    assert "embed/tags" in plan and "embed/item" in plan     # the bag's and the shared table
    for folded in (True, False):
        small = compress.compress(params, stats, plan, model=model if folded else None)
        _check_ids(model, small, info)
    _check_ids(model, quantize(small), info)                  # AFM + int8 tables and kernels


def _raw_encoder(combiner: str = "mean", hashed: dict | None = None) -> Encoder:
    """`_info`'s fields with vocabularies: tags keeps its last 3 items ("|"), hist (sharing the
    item's vocabulary) its first 4 (";;" between items)."""
    hashed = hashed or {}
    vocabs = [[] if "item" in hashed else ITEMS, USERS]
    bags = (BagSpec("tags", 3, combiner, "|", "keep_last"),
            BagSpec("hist", 4, "mean", ";;", "keep_first", shares="item"))
    return Encoder(("item", "user"), vocabs, ("x",), [0.3], [1.7], bags=bags,
                   bag_vocabs=[[] if "tags" in hashed else TAGS, []], hash_buckets=hashed)


TAG_VALUES = ["", "t1", "t2|t3|t1|t4|t2", "zz", "t1||t4", "|", "t4|t4|t4", "t3|zz|t1", "t2|t1"]
HIST_VALUES = ["m1;;m2;;m3;;m4;;m5;;m1", "", "m3", "m9;;m1", "m2;;;;m2", "m5;m4", "m1;;m2;;m3;;m4",
               ";;", "m4;;m3;;m2;;m1;;m9"]


def _raw_rows(n: int, seed: int = 0) -> dict:
    """Raw values: the edge cases above first (empty, one item, more than max_len items, unseen,
    empty items), then random rows."""
    rng = np.random.default_rng(seed)
    k = len(TAG_VALUES)

    def bag(vocab, sep, m):
        return sep.join(rng.choice(vocab + ["zz"], rng.integers(0, m)).tolist())

    tags = TAG_VALUES + [bag(TAGS, "|", 6) for _ in range(n - k)]
    hist = HIST_VALUES + [bag(ITEMS, ";;", 7) for _ in range(n - k)]
    item = rng.choice(ITEMS + ["m9", ""], n).astype(object)
    user = rng.choice(USERS + ["u9", ""], n).astype(object)
    x = rng.choice([np.nan, -1.0, 0.0, 0.5, 3.0, 1e4], n)
    return {"item": item, "user": user, "x": x, "tags": np.array(tags, object),
            "hist": np.array(hist, object)}


def _encode(enc: Encoder, rows: dict) -> dict:
    columns = {k: ([v or None for v in rows[k]] if k in ("item", "user") else list(rows[k]))
               for k in ("item", "user", "tags", "hist")}
    cat, num = enc.encode(columns | {"x": rows["x"]})
    bags, lens, _ = enc.encode_bags(columns)
    return {"cat": cat, "num": num, "bags": bags, "bag_len": lens}


def _raw_feeds(rows: dict) -> dict:
    return {k: (v.astype(str) if v.dtype == object else v.astype(np.float64)) for k, v in rows.items()}


@pytest.mark.parametrize("combiner", ["sum", "max"])
def test_raw_bags_split_truncate_and_pad_as_encode_bags(combiner):
    enc = _raw_encoder(combiner)
    info = _info(combiner)
    assert enc.info == info
    rows = _raw_rows(60)
    want = _encode(enc, rows)
    # the edge cases do what they say: empty, unseen, cut to max_len from the right end
    assert list(want["bag_len"]["tags"][:4]) == [0, 1, 3, 1] and want["bags"]["tags"][3, 0] == 0
    assert list(want["bags"]["tags"][2]) == [1, 4, 2]                   # keep_last: t1 t4 t2
    assert list(want["bags"]["hist"][0]) == [1, 2, 3, 4]                # keep_first: m1..m4
    outputs = ["cat", "num", "bag:tags", "bag_len:tags", "bag:hist", "bag_len:hist"]
    got = dict(zip(outputs, _run(encoder_to_onnx(enc), _raw_feeds(rows), outputs)))
    np.testing.assert_array_equal(got["cat"], want["cat"])
    np.testing.assert_array_equal(got["num"], want["num"])
    for name in ("tags", "hist"):
        assert got[f"bag:{name}"].dtype == np.int32 and got[f"bag_len:{name}"].dtype == np.int32
        np.testing.assert_array_equal(got[f"bag:{name}"], want["bags"][name])
        np.testing.assert_array_equal(got[f"bag_len:{name}"], want["bag_len"][name])
    for name in ("deepfm", "din"):
        model = _model(name, info)
        params = _lively(model, info)
        proto = to_onnx(model, params, encoder=enc)
        assert [i.name for i in proto.graph.input] == ["item", "user", "x", "tags", "hist"]
        assert "StringSplit" in {n.op_type for n in proto.graph.node}
        scores = _run(proto, _raw_feeds(rows))[0]
        np.testing.assert_allclose(scores, _jax_scores(model, params, want), rtol=0, atol=2e-6)


# --------------------------------------------------------------------------- hashed fields

HASH_RULE_TEXT = ("id = 1 + mix64(fnv1a64(utf8(field) + 0x1f + utf8(value))) mod (buckets - 1); "
                  "FNV-1a-64 from 0xCBF29CE484222325, prime 0x100000001B3; mix64 = splitmix64's "
                  "finalizer")


def _client_hash(field: str, value: str, buckets: int) -> int:
    """A client's hash written from the rule text alone (no afm_jax import)."""
    m = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for byte in field.encode("utf-8") + b"\x1f" + value.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & m
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & m
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & m
    h ^= h >> 31
    return 1 + h % (buckets - 1)


def _client_bag(field: str, text: str, spec: dict, buckets: int) -> tuple[list[int], int]:
    """A client's padded ids and length of a hashed bag, from the signature's entry."""
    items = text.split(spec["separator"]) if text else []
    items = items[-spec["max_len"]:] if spec["truncation"] == "keep_last" else items[:spec["max_len"]]
    ids = [_client_hash(field, v, buckets) for v in items]      # an empty item is hashed too
    return ids + [0] * (spec["max_len"] - len(ids)), len(ids)


def test_client_hash_from_the_rule_text_matches_the_library():
    from afm_jax.data.hashing import HASH_RULE, hash_id, hash_ids

    assert HASH_RULE in HASH_RULE_TEXT
    values = ["m1", "", "a", "zürich", "Ω≈ç", "x" * 40, "1234567890"]
    for field, buckets in (("item", 6), ("tags", 1 << 20), ("user", 2)):
        want = [hash_id(field, v, buckets) for v in values]
        assert [_client_hash(field, v, buckets) for v in values] == want
        np.testing.assert_array_equal(hash_ids(field, values, buckets), want)


def test_hashed_fields_take_client_ids_and_score_as_jax(tmp_path):
    from afm_jax.onnx_export import export_onnx

    # item hashed (so hist, sharing it, hashes with the name "item"); tags a hashed bag
    enc = _raw_encoder("sum", hashed={"item": 6, "tags": 5})
    info = _info("sum")
    assert enc.info == info
    rows = _raw_rows(40, seed=3)
    rows["item"][:4] = ["", "m1", "zürich", "m2"]
    want = _encode(enc, rows)
    model = _model("din", info)
    params = _lively(model, info)
    out = export_onnx(model, params, tmp_path / "onnx", encoder=enc)
    sig = json.loads((out / "signature.json").read_text())
    proto = onnx.load(str(out / "model.onnx"))
    names = [i.name for i in proto.graph.input]
    assert names == ["hashed:item", "user", "x", "hashed:tags", "bag_len:tags", "hashed:hist",
                     "bag_len:hist"]
    note = json.loads({p.key: p.value for p in proto.metadata_props}[HASH_NOTE_KEY])
    assert set(note) == {"hashed:item", "hashed:tags", "hashed:hist"}
    assert note["hashed:hist"]["hash_field"] == "item" and note["hashed:hist"]["buckets"] == 6
    assert sig["hashed_inputs"] == note
    spec = {i["name"]: i for i in sig["inputs"]}
    assert spec["hashed:item"]["kind"] == "hashed" and spec["hashed:tags"]["max_len"] == 3
    # the client: user strings as they are; hashed fields hashed from the rule and the signature
    feeds = {"user": rows["user"].astype(str), "x": rows["x"]}
    feeds["hashed:item"] = np.array([_client_hash("item", v, 6) if v else 0 for v in rows["item"]],
                                    np.int64)
    np.testing.assert_array_equal(feeds["hashed:item"], want["cat"][:, 0])
    for name in ("tags", "hist"):
        s = spec[f"hashed:{name}"]
        padded = [_client_bag(s["hash_field"], v, s, s["hash_buckets"]) for v in rows[name]]
        feeds[f"hashed:{name}"] = np.array([p[0] for p in padded], np.int64)
        feeds[f"bag_len:{name}"] = np.array([p[1] for p in padded], np.int64)
        np.testing.assert_array_equal(feeds[f"hashed:{name}"], want["bags"][name])
        np.testing.assert_array_equal(feeds[f"bag_len:{name}"], want["bag_len"][name])
    score = load_onnx(out)
    np.testing.assert_allclose(score(feeds), _jax_scores(model, params, want), rtol=0, atol=2e-6)
    # ids outside [0, buckets) score as id 0, also beyond int32
    bad = dict(feeds)
    bad["hashed:item"] = feeds["hashed:item"].copy()
    bad["hashed:item"][:3] = [6, -1, 1 << 40]
    zero = dict(feeds, **{"hashed:item": np.where(np.arange(40) < 3, 0, feeds["hashed:item"])})
    np.testing.assert_array_equal(score(bad), score(zero))


# ------------------------------------------------------------------------------------ the CLI

def test_cli_export_of_a_synthetic_bags_model_scores_raw_rows_as_afm_jax_score(tmp_path):
    from afm_jax.cli import main

    n = 50
    m, enc, cols, data, schema = bag_model_and_rows(tmp_path, n)
    assert [b.name for b in enc.bags] == ["b0", "b1"]
    assert main(["score", "--model-dir", str(m), "--data", f"csv:{data}", "--schema", str(schema),
                 "--out", str(tmp_path / "s.parquet"), "--no-progress"]) == 0
    want = np.asarray(pq.read_table(tmp_path / "s.parquet")["score"])
    assert len(want) == n
    out = tmp_path / "onnx"
    assert main(["export", "--format", "onnx", "--model-dir", str(m), "--out", str(out)]) == 0
    sig = json.loads((out / "signature.json").read_text())
    bag_inputs = {i["name"]: i for i in sig["inputs"] if i.get("kind") == "multi_valued"}
    assert set(bag_inputs) == {"b0", "b1"} and bag_inputs["b0"]["separator"] == enc.bags[0].separator
    feeds = {}
    for spec in sig["inputs"]:
        v = np.asarray(cols[spec["name"]])
        feeds[spec["name"]] = v.astype(str) if spec["dtype"] == "string" else v.astype(np.float64)
    np.testing.assert_allclose(load_onnx(out)(feeds), want, rtol=0, atol=1e-6)
