"""The ONNX export (issue 23): every registry model and params form scores in ONNX Runtime as the
JAX scorer does, int8 stays int8 in the file, and raw values (strings, numbers, missing, unseen)
go through the encoder in the graph exactly as `Encoder.encode` does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest

from afm_jax import compress
from afm_jax.compress.baselines import svd_compress
from afm_jax.compress.ttrec import tt_plan_like, tt_tables
from afm_jax.data import Encoder, FeatureInfo
from afm_jax.data.readers import bucketize
from afm_jax.models import NEEDS_SEQUENCE, REGISTRY
from afm_jax.quantize import quantize
from tests.helpers import INFO, batches, lively_params, random_batch, small_model

onnx = pytest.importorskip("onnx", reason="the [onnx] extra (part of [dev]) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra (part of [dev]) is not installed")

from afm_jax.onnx_export import (  # noqa: E402
    ExportError,
    encoder_to_onnx,
    initializer_bytes,
    load_onnx,
    loaded_bytes,
    runtime_nodes,
    scorer_fn,
    to_onnx,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CRITEO = SHARED / "criteo" / "train.tsv"


def _ids_batch(n: int = 96, info=INFO) -> dict:
    """Random ids with every table's first and last row (rows 3 and 4) and out-of-range ids."""
    b = random_batch(n, seed=3, info=info)
    b["cat"][3] = 0
    b["cat"][4] = np.asarray(info.vocab_sizes) - 1
    b["cat"][0, 0], b["cat"][1, 1], b["cat"][2, 3] = 10_000, -7, info.vocab_sizes[3]  # -> id 0
    return {"cat": b["cat"], "num": b["num"]}


def _ort_scores(proto, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["score"], feeds)[0]


def _check(model, params, compute_dtype=None, atol=1e-5, label="", max_ranks=None):
    """ORT scores == the JAX scorer's. atol: float32 sums run in another order in ORT; the
    lively params push AutoInt's and xDeepFM's logits to O(10-100), where float32's spacing
    is 1e-6..1e-5 (most models agree to 2e-7). max_ranks: as `to_onnx` takes it."""
    batch = _ids_batch()
    proto = to_onnx(model, params, compute_dtype=compute_dtype, max_ranks=max_ranks)
    got = _ort_scores(proto, batch)
    want = np.asarray(jax.jit(scorer_fn(model, params, compute_dtype))(batch["cat"], batch["num"]))
    assert got.shape == want.shape == (len(batch["cat"]),)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=label)
    return proto


def _forms(model, params, stats) -> dict:
    """Every params form of `model` (issue 23): AFM folded and with projections kept, dense and
    embedding sites alone, with an activation, weight SVD, int8 alone and AFM + int8."""
    plan = compress.make_plan(params, stats, "rank:4")
    dense_only = {s: r for s, r in plan.items() if not s.startswith("embed/")}
    embed_only = {s: r for s, r in plan.items() if s.startswith("embed/")}
    afm = compress.compress(params, stats, plan, model=model)                # folded where it can
    forms = {"original": params, "afm": afm,
             "afm, projections kept": compress.compress(params, stats, plan),
             "embed": compress.compress(params, stats, embed_only),
             "int8": quantize(params), "afm+int8": quantize(afm)}
    if dense_only:   # FM and LR have no Linear site but the output
        forms.update({"dense": compress.compress(params, stats, dense_only),
                      "activation": compress.compress(params, stats, dense_only, activation="relu"),
                      "svd": svd_compress(params, dense_only)})
    return forms


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - NEEDS_SEQUENCE))
def test_every_model_every_form(name):
    model = small_model(name)
    params = lively_params(model)
    stats = compress.collect_stats(model, params, batches(2), progress=False)
    for form, p in _forms(model, params, stats).items():
        _check(model, p, label=f"{name} {form}")
    # tables of ranks 2-5, int8, merged into one rank in the graph (export's default)
    sites = sorted(s for s in stats if s.startswith("embed/"))
    varied = quantize(compress.compress(params, stats, {s: 2 + i % 4 for i, s in enumerate(sites)}))
    _check(model, varied, label=f"{name} ranks merged in the graph", max_ranks=1)


@pytest.fixture(scope="module")
def deepfm():
    model = small_model("deepfm")
    params = lively_params(model)
    stats = compress.collect_stats(model, params, batches(2), progress=False)
    return model, params, stats


def test_deepfm_tt_rec_and_precisions_and_any_batch_from_one_file(deepfm):
    """The forms beyond `_forms`: TT-Rec tables, int8 products (MatMulInteger) and bfloat16
    products; and one file scoring batches of 1, 3, 257 and 4096 rows."""
    model, params, stats = deepfm
    afm = compress.compress(params, stats, compress.make_plan(params, stats, "rank:4"), model=model)
    tt = tt_tables(params, tt_plan_like(params, {"embed/a": 60, "embed/b": 80}, min_rows=30))
    _check(model, tt, label="tt")
    _check(model, quantize(afm), compute_dtype="int8")
    _check(model, params, compute_dtype="bfloat16", atol=1e-3)   # see the module docstring
    batch = _ids_batch(4096)
    session = ort.InferenceSession(to_onnx(model, afm).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    want = np.asarray(jax.jit(scorer_fn(model, afm))(batch["cat"], batch["num"]))
    for n in (1, 3, 257, 4096):   # rows are scored independently: a prefix of the batch
        got = session.run(["score"], {k: v[:n] for k, v in batch.items()})[0]
        np.testing.assert_allclose(got, want[:n], rtol=0, atol=1e-5, err_msg=str(n))


def test_compressed_graph_has_no_per_field_slices_or_index_wraps(deepfm):
    """AFM tables of several ranks: each rank group's ids are one Gather of the id columns
    straight into the table Gather (no index-vector Gather, no Where wrapping negative ids,
    which ONNX Gather does itself), and the fields come back in model order through one
    Concat + Gather, not a Slice per field. Elementwise ops take a constant operand as it is
    (ONNX broadcasts): no Expand of jnp.where(ok, ids, 0)'s zero to the batch's shape."""
    model, params, stats = deepfm
    plan = compress.make_plan(params, stats, "rank:4")
    embeds = sorted(s for s in plan if s.startswith("embed/"))
    plan.update({s: 2 + i % 3 for i, s in enumerate(embeds)})      # three rank groups
    proto = _check(model, compress.compress(params, stats, plan, model=model))
    made = {o: n for n in proto.graph.node for o in n.output}
    slices = [n for n in proto.graph.node if n.op_type == "Slice"
              and made.get(n.input[0]) is not None and made[n.input[0]].op_type != "Shape"]
    for n in proto.graph.node:
        if n.op_type == "Gather" and n.input[1] in made:
            assert made[n.input[1]].op_type not in ("Where", "Expand"), n
        if n.op_type == "Concat":
            assert not any(i in made and made[i] in slices for i in n.input), n
    assert len(slices) <= 3
    consts = {t.name for t in proto.graph.initializer}
    assert not [n for n in proto.graph.node if n.op_type in ("Expand", "Unsqueeze")
                and n.input[0] in consts], "a constant widened at run time"
    # int8 tables: each width's row scales are gathered as [N, 1] rows straight into the Mul
    # with its rows (no Unsqueeze per width at run time)
    proto = _check(model, quantize(compress.compress(params, stats, plan, model=model)))
    made = {o: n for n in proto.graph.node for o in n.output}
    consts = {t.name: t for t in proto.graph.initializer}
    scale_gathers = [n for n in proto.graph.node if n.op_type == "Gather" and n.input[0] in consts
                     and consts[n.input[0]].data_type == onnx.TensorProto.FLOAT
                     and list(consts[n.input[0]].dims[1:]) == [1]]
    assert len(scale_gathers) == 3, [n.input[0] for n in scale_gathers]   # one per rank group
    assert not [n for n in proto.graph.node if n.op_type == "Unsqueeze" and n.input[0] in made
                and made[n.input[0]].op_type == "Gather"], "a gathered row scale reshaped per call"


def test_padded_ranks_score_the_same_in_fewer_nodes(deepfm):
    """`compress.pad_ranks`: tables of ranks 2, 3 and 4 padded to a multiple of 4 (zero columns,
    zero projection rows) score exactly as before, in JAX and in ONNX Runtime, float and int8,
    with one table width instead of three and fewer graph nodes; the table bytes grow."""
    from afm_jax.inference import count_bytes
    from afm_jax.packing import pack

    model, params, stats = deepfm
    plan = {s: 2 + i % 3 for i, s in enumerate(sorted(s for s in stats if s.startswith("embed/")))}
    afm = compress.compress(params, stats, plan)          # projections kept: FM reads them
    for label, form in (("float", afm), ("int8", quantize(afm))):
        padded = compress.pad_ranks(form, 4)
        assert {k for k in pack(model, padded)["embed"] if k.startswith("table_")} == {"table_4"}
        assert len({k for k in pack(model, form)["embed"] if k.startswith("table_")}) == 3
        batch = _ids_batch()
        want = np.asarray(jax.jit(scorer_fn(model, form))(batch["cat"], batch["num"]))
        got = np.asarray(jax.jit(scorer_fn(model, padded))(batch["cat"], batch["num"]))
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=label)
        big = _check(model, padded, label=label)                 # ORT == JAX on the padded
        assert len(big.graph.node) < len(to_onnx(model, form).graph.node), label
        assert count_bytes(padded) > count_bytes(form), label
    assert compress.pad_ranks(params, 4)["embed"] == params["embed"]   # full tables untouched
    with pytest.raises(Exception, match="multiple must be >= 1"):
        compress.pad_ranks(afm, 0)


def test_merged_ranks_are_the_cheapest_padding_to_that_many_ranks(deepfm):
    """`compress.merge_ranks(params, G)`: at most G distinct ranks, scores unchanged (JAX and ONNX
    Runtime, float and int8), and the bytes it adds are the least of every choice of G kept
    ranks (brute force over the subsets)."""
    from itertools import combinations

    from afm_jax.inference import count_bytes

    model, params, stats = deepfm
    sites = sorted(s for s in stats if s.startswith("embed/"))
    plan = {s: 2 + (3 * i) % 5 for i, s in enumerate(sites)}           # ranks 2..6
    afm = compress.compress(params, stats, plan)
    batch = _ids_batch()
    for label, form in (("float", afm), ("int8", quantize(afm))):
        tables = {n: t for n, t in form["embed"].items() if "proj" in t}
        ranks = {n: np.shape(t["proj"]["kernel"]) for n, t in tables.items()}
        assert len({k for k, _ in ranks.values()}) >= 4
        per_column = {}                  # bytes of one more column: table rows + projection row
        for n, t in tables.items():
            table = t["embedding_q"] if "embedding_q" in t else t["embedding"]
            kernel = t["proj"]["kernel"]
            per_column[n] = (table.shape[0] * np.dtype(table.dtype).itemsize
                             + kernel.shape[1] * np.dtype(kernel.dtype).itemsize)
        for g in (1, 2, 3):
            merged = compress.merge_ranks(form, g)
            got = {n: np.shape(merged["embed"][n]["proj"]["kernel"])[0] for n in ranks}
            assert len(set(got.values())) <= g and all(got[n] >= ranks[n][0] for n in ranks)
            distinct = sorted({k for k, _ in ranks.values()})
            best = min(sum((min(w for w in kept if w >= k) - k) * per_column[n]
                           for n, (k, _) in ranks.items())
                       for c in range(g) for rest in combinations(distinct[:-1], c)
                       for kept in [(*rest, distinct[-1])])
            assert count_bytes(merged) - count_bytes(form) == best, (label, g)
            want = np.asarray(jax.jit(scorer_fn(model, form))(batch["cat"], batch["num"]))
            got_s = np.asarray(jax.jit(scorer_fn(model, merged))(batch["cat"], batch["num"]))
            np.testing.assert_allclose(got_s, want, rtol=1e-6, err_msg=label)
        _check(model, compress.merge_ranks(form, 2), label=label)          # ORT == JAX
    assert compress.merge_ranks(afm, 6)["embed"] == afm["embed"]           # fewer ranks already
    with pytest.raises(Exception, match="ranks must be >= 1"):
        compress.merge_ranks(afm, 0)
    # no table pads past its projection's width d: ranks 1, 2 (d = 2) and 3, 4 (d = 4) cannot
    # become one rank, so two remain
    mixed = {"embed": {n: {"embedding": np.ones((5, k), np.float32),
                           "proj": {"kernel": np.ones((k, d), np.float32),
                                    "bias": np.zeros(d, np.float32)}}
                       for n, k, d in (("a", 1, 2), ("b", 2, 2), ("c", 3, 4), ("d", 4, 4))}}
    got = compress.merge_ranks(mixed, 1)["embed"]
    assert {n: t["embedding"].shape[1] for n, t in got.items()} == {"a": 2, "b": 2, "c": 4, "d": 4}


def test_ranks_merged_in_the_graph_keep_the_file_small_and_every_score(deepfm):
    """`to_onnx(..., max_ranks=N|"auto")` pads and packs the tables in the graph: ONNX Runtime
    runs the same nodes and scores as for the params merged beforehand (`merge_ranks`), while the
    file holds the tables as compressed (within 5 % of the unmerged file's bytes). "auto" is the
    fewest ranks whose padding adds at most the params' own bytes."""
    from afm_jax.inference import count_bytes

    model, params, stats = deepfm
    sites = sorted(s for s in stats if s.startswith("embed/"))
    afm = compress.compress(params, stats, {s: 2 + (3 * i) % 5 for i, s in enumerate(sites)})
    batch = _ids_batch()
    for label, form in (("float", afm), ("int8", quantize(afm))):
        plain = to_onnx(model, form)
        for n in (1, 2, "auto"):
            plan = compress.rank_plan(form, n)
            merged = compress.padded(form, plan)
            in_graph, before = to_onnx(model, form, max_ranks=n), to_onnx(model, merged)
            assert len(in_graph.SerializeToString()) <= 1.05 * len(plain.SerializeToString())
            assert runtime_nodes(in_graph) == runtime_nodes(before) < runtime_nodes(plain)
            np.testing.assert_allclose(_ort_scores(in_graph, batch), _ort_scores(before, batch),
                                       rtol=0, atol=0, err_msg=f"{label} {n}")
        own = count_bytes(form)
        added = {g: count_bytes(compress.merge_ranks(form, g)) - own for g in (1, 2, 3, 4, 5)}
        g = len(set(compress.rank_plan(form, "auto").values()))
        assert added[g] <= own and (g == 1 or added[g - 1] > own), (label, g, added, own)
    assert compress.rank_plan(afm, 0) is None and compress.rank_plan(afm, None) is None


def test_rank_padding_keeps_one_storage_per_packed_width(deepfm):
    """After `quantize`, a rank-1 table stays float (int8 would not make it smaller) beside int8
    tables of ranks 2-4. pad_ranks and merge_ranks never pad it into an int8 width (the packed
    layout refuses a width that mixes storages), so the params still pack, score as before and
    export, with export's default merge to 3 ranks."""
    from afm_jax.packing import pack

    model, params, stats = deepfm
    sites = sorted(s for s in stats if s.startswith("embed/"))
    q = quantize(compress.compress(params, stats, {s: 1 + i % 4 for i, s in enumerate(sites)}))
    int8 = {n: "embedding_q" in t for n, t in q["embed"].items() if "proj" in t}
    assert not all(int8.values()) and any(int8.values())
    batch = _ids_batch()
    want = np.asarray(jax.jit(scorer_fn(model, q))(batch["cat"], batch["num"]))
    for label, padded in (("pad 4", compress.pad_ranks(q, 4)),
                          *((f"merge {g}", compress.merge_ranks(q, g)) for g in (1, 2, 3))):
        embed = pack(model, padded)["embed"]                       # raised before: mixed width
        assert {k for k in embed if k.startswith("table_")} == {
            f"table_{w}" for w in {np.shape(t["proj"]["kernel"])[0]
                                   for t in padded["embed"].values() if "proj" in t}}, label
        for n, t in padded["embed"].items():
            if n in int8 and not int8[n]:
                assert t["embedding"].shape[1] == 1, label         # the float table kept rank 1
        got = np.asarray(jax.jit(scorer_fn(model, padded))(batch["cat"], batch["num"]))
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=label)
    merged = compress.merge_ranks(q, 2)   # int8 ranks 2-4 into one, the float rank 1 apart
    assert sorted({np.shape(t["proj"]["kernel"])[0] for t in merged["embed"].values()
                   if "proj" in t}) == [1, 4]
    _check(model, merged, label="merged")                           # ORT == JAX


def test_int8_stays_int8_and_runs_matmul_integer():
    info = FeatureInfo(cat_names=("a", "b", "c", "d"), vocab_sizes=(4000, 6000, 2500, 900),
                       num_names=("x", "y"))
    model = small_model("deepfm", info)
    params = lively_params(model, info=info)
    q = quantize(params)
    f32 = len(to_onnx(model, params).SerializeToString())
    proto = to_onnx(model, q, compute_dtype="int8")
    batch = random_batch(128, seed=1, info=info)
    got = _ort_scores(proto, {"cat": batch["cat"], "num": batch["num"]})
    want = np.asarray(jax.jit(scorer_fn(model, q, "int8"))(batch["cat"], batch["num"]))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert "MatMulInteger" in {n.op_type for n in proto.graph.node}
    assert any(t.data_type == onnx.TensorProto.INT8 for t in proto.graph.initializer)
    int8_tables = {t.name for t in proto.graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2 and t.dims[0] > 100}
    assert int8_tables   # the packed table of the four fields
    for n in proto.graph.node:   # tables are gathered as int8, never cast whole to float
        assert n.op_type == "Gather" or not int8_tables & set(n.input), n
    stored = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(q))
    size = len(proto.SerializeToString())
    init = initializer_bytes(proto)
    assert stored <= init < 1.05 * stored    # the initializers are the stored params
    assert stored < size < 1.1 * stored + 32_000    # the file's bytes follow the stored bytes
    assert size < 0.5 * f32    # int8 rows + a float scale per row; rank-1 tables stay float


@pytest.mark.parametrize("name", ["deepfm", "dcnv2"])
def test_int8_at_float32_keeps_int8_in_the_file_and_runs_as_the_float_model(name):
    """int8 kernels and tables scored at float32: the file holds them as int8 (a kernel's
    float cast and scale are a constant that ONNX Runtime folds at load, whatever the kernel's
    size), the gathered table rows are dequantized by one DequantizeLinear, and ONNX Runtime
    runs at most 5 nodes more than for the float params (`loaded_bytes` counts the float
    kernels it holds)."""
    info = FeatureInfo(cat_names=("a", "b", "c", "d"), vocab_sizes=(4000, 6000, 2500, 900),
                       num_names=("x", "y"))
    model = small_model(name, info)
    params = lively_params(model, info=info)
    q = quantize(params)
    proto = to_onnx(model, q)
    batch = random_batch(128, seed=2, info=info)
    got = _ort_scores(proto, {"cat": batch["cat"], "num": batch["num"]})
    want = np.asarray(jax.jit(scorer_fn(model, q))(batch["cat"], batch["num"]))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    stored = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(q))
    init = initializer_bytes(proto)
    assert stored <= init < 1.01 * stored, (stored, init)
    assert [n.op_type for n in proto.graph.node].count("DequantizeLinear") == 1
    assert runtime_nodes(proto) <= runtime_nodes(to_onnx(model, params)) + 5
    # once loaded, the kernels are float32 (3 bytes more a value) and the tables still int8
    kernel_values = sum(np.size(x) for path, x in jax.tree_util.tree_leaves_with_path(q)
                        if "kernel_q" in jax.tree_util.keystr(path))
    assert abs(loaded_bytes(proto) - (stored + 3 * kernel_values)) < 0.01 * stored


def test_a_primitive_without_a_rule_names_itself():
    from afm_jax.onnx_export import _Converter, _Graph

    closed = jax.make_jaxpr(lambda x: jnp.cumsum(x, axis=0))(np.ones((3, 2), np.float32))
    with pytest.raises(ExportError, match="no rule for primitive 'cumsum'"):
        _Converter(_Graph("x")).run(closed.jaxpr, closed.consts, ["x"])


def _raw_encoder() -> tuple[Encoder, tuple[str, ...]]:
    """INFO's fields with vocabularies: a, b strings; c bucketized from numbers; d strings."""
    vocabs = [[f"a{i}" for i in range(1, 40)], [f"b{i}" for i in range(1, 60)],
              ["b4", "1", "0", "b9", "2", "-3", "b0"] + [f"b{i}" for i in range(10, 27)],
              ["x", "y", "z", "w", "v", "u", "t", "s"]]
    enc = Encoder(INFO.cat_names, vocabs, INFO.num_names, num_mean=[0.7, 1.5], num_std=[0.9, 2.0])
    assert enc.info.vocab_sizes == INFO.vocab_sizes
    return enc, ("c",)


def test_raw_inputs_equal_encoder_then_scorer(deepfm):
    model, params, stats = deepfm
    enc, bucketized = _raw_encoder()
    rng = np.random.default_rng(0)
    n = 200
    a = np.array([f"a{i}" for i in rng.integers(0, 45, n)], dtype=object)       # a0, a40+ unseen
    a[:5] = ["", "a3", "", "zzz", "a39"]
    b = np.array([f"b{i}" for i in rng.integers(1, 60, n)], dtype=object)
    c = rng.choice([np.nan, -3.7, 0.0, 1.0, 2.0, 2.5, 7.39, 54.6, 1e6, 1e30, 3.0], n)
    d = np.array(list("xyzwvuts?"), dtype=object)[rng.integers(0, 9, n)]
    x = rng.choice([np.nan, -1.0, 0.0, 0.5, 3.0, 1e4], n)
    y = rng.normal(size=n) * 10
    feeds = {"a": a, "b": b, "c": c, "d": d, "x": x, "y": y}
    columns = {"a": [v or None for v in a], "b": list(b), "c": bucketize(c), "d": list(d),
               "x": x, "y": y}
    cat, num = enc.encode(columns)
    feeds = {k: (v.astype(str) if v.dtype == object else v.astype(np.float64))
             for k, v in feeds.items()}
    session = ort.InferenceSession(encoder_to_onnx(enc, bucketized).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got_cat, got_num = session.run(["cat", "num"], feeds)
    np.testing.assert_array_equal(got_cat, cat)      # ids: the same, unseen and missing -> 0
    np.testing.assert_array_equal(got_num, num)      # numbers: the same float32 bits
    for p in (params, quantize(compress.compress(params, stats,
                                                 compress.make_plan(params, stats, "rank:4"),
                                                 model=model))):
        proto = to_onnx(model, p, encoder=enc, bucketize=bucketized)
        got = _ort_scores(proto, feeds)
        want = np.asarray(jax.jit(scorer_fn(model, p))(cat, num))
        # the same inputs (above); float32 sums in another order: logits of these lively params
        # reach ~10, whose float32 spacing is ~1e-6
        np.testing.assert_allclose(got, want, rtol=0, atol=4e-6)


@pytest.fixture(scope="module")
def criteo_export(tmp_path_factory):
    """A DeepFM trained on 1,200 Criteo sample lines, compressed at budget 0.5, its `afm-jax
    score` scores, and its ONNX export (with .ort, ranks padded to 4, then merged in the graph as
    export does by default, `--max-ranks auto`): (dir, data file, lines, scores, export)."""
    from afm_jax.cli import main

    if not CRITEO.is_file():
        pytest.skip(f"shared Criteo sample not found at {CRITEO}")
    d = tmp_path_factory.mktemp("onnx_criteo")
    with open(CRITEO, encoding="utf-8") as f:
        lines = [next(f).rstrip("\n") for _ in range(1200)]
    data = d / "sample.tsv"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    m, small, out = d / "m", d / "small", d / "onnx"
    assert main(["train", "--data", f"criteo:{data}", "--min-count", "2", "--mlp", "16",
                 "--epochs", "1", "--out", str(m), "--cache-dir", str(d / "cache"),
                 "--no-progress"]) == 0
    assert main(["compress", "--model-dir", str(m), "--data", f"criteo:{data}", "--plan",
                 "budget:0.5", "--out", str(small), "--cache-dir", str(d / "cache"),
                 "--no-progress"]) == 0
    assert main(["score", "--model-dir", str(small), "--data", f"criteo:{data}", "--out",
                 str(d / "s.parquet"), "--no-progress"]) == 0
    want = np.asarray(pq.read_table(d / "s.parquet")["score"])
    # ranks padded to 4 (compress.pad_ranks): the tests below hold for the padded graph too
    assert main(["export", "--format", "onnx", "--ort", "--pad-ranks", "4", "--model-dir",
                 str(small), "--out", str(out)]) == 0
    return d, data, lines, want, out


def _criteo_feeds(lines: list[str]) -> dict:
    from afm_jax.data.readers import CRITEO_CAT, CRITEO_INT

    rows = [line.split("\t") for line in lines]
    feeds = {name: np.array([float(r[1 + j]) if r[1 + j] else np.nan for r in rows])
             for j, name in enumerate(CRITEO_INT)}
    return feeds | {name: np.array([r[14 + j] for r in rows], dtype=str)
                    for j, name in enumerate(CRITEO_CAT)}


def test_cli_onnx_export_scores_raw_criteo_lines_as_afm_jax_score(criteo_export, tmp_path):
    d, data, lines, want, out = criteo_export
    sig = json.loads((out / "signature.json").read_text())
    assert sig["max_ranks"] == "auto" and sig["bytes"]["rank_padding"] >= 0   # export's default
    kinds = {i["name"]: i["kind"] for i in sig["inputs"]}
    assert kinds["I1"] == "bucketized" and kinds["C1"] == "categorical"
    feeds = _criteo_feeds(lines)
    score = load_onnx(out)
    np.testing.assert_allclose(score(feeds), want, rtol=0, atol=1e-6)
    for n in (1, 3, 257):                                    # one file, any batch size
        np.testing.assert_allclose(score({k: v[:n] for k, v in feeds.items()}), want[:n],
                                   rtol=0, atol=1e-6)
    # a client without JAX: onnxruntime, numpy and the two files only
    client = tmp_path / "client_scores.npy"
    proc = subprocess.run([sys.executable, "-c", JAX_FREE_CLIENT, str(out), str(data), str(client)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(client), want, rtol=0, atol=1e-6)


def test_ort_format_for_a_minimal_runtime(criteo_export):
    d, data, lines, want, out = criteo_export
    sig = json.loads((out / "signature.json").read_text())
    ort_file = out / "model.with_runtime_opt.ort"
    config = out / "model.required_operators.with_runtime_opt.config"
    assert ort_file.is_file() and config.is_file()
    assert sig["ort"]["bytes"] == ort_file.stat().st_size
    # the operators as the file lists them, and no path of the converter's working folders
    assert [ln for ln in config.read_text().splitlines() if not ln.startswith("#")] == \
        sig["ort"]["operators"] and ".partial" not in config.read_text()
    assert any("LabelEncoder" in line for line in sig["ort"]["operators"])
    session = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["score"], _criteo_feeds(lines))[0], want,
                               rtol=0, atol=1e-6)


def _encoded(model_dir: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The Criteo file's rows as the model directory's encoder encodes them: (cat, num)."""
    from afm_jax.checkpoint import load_encoder
    from afm_jax.data.dataset import make_source, parse_data_spec

    encoder = load_encoder(model_dir)
    cat, num = [], []
    for chunk, bad in make_source(parse_data_spec(f"criteo:{data}")).chunks(False):
        assert not bad
        c, n = encoder.encode(chunk)
        cat.append(c)
        num.append(n)
    return np.concatenate(cat), np.concatenate(num)


def test_max_ranks_merges_the_ranks_and_keeps_every_score(criteo_export, tmp_path, capsys):
    """`afm-jax export --max-ranks N`: the jax.export artifact with the ranks merged to 2 holds
    at most 2 compressed table widths and scores the Criteo lines as `afm-jax score` does. The
    ONNX files merge in the graph: with the default (`auto`) and with 2, the file holds the
    tables as compressed (its bytes within 3 % of `--max-ranks 0`'s), ONNX Runtime runs fewer
    nodes once it has loaded it, signature.json counts the bytes the padding adds in memory,
    and the scores equal the unmerged file's."""
    from afm_jax.checkpoint import load_model_dir
    from afm_jax.cli import main
    from afm_jax.inference import load_exported
    from afm_jax.packing import pack

    d, data, lines, want, _ = criteo_export
    small = d / "small"
    model, params, _ = load_model_dir(small)
    ranks = {np.shape(t["proj"]["kernel"])[0] for t in params["embed"].values() if "proj" in t}
    assert len(ranks) > 3, ranks                      # the default merge has work to do
    assert main(["export", "--model-dir", str(small), "--max-ranks", "2", "--out",
                 str(tmp_path / "j")]) == 0
    with np.load(tmp_path / "j" / "params.npz") as z:   # the packed leaves, in order
        shapes = [z[f"leaf_{i:05d}"].shape for i in range(len(z.files))]
    merged = compress.merge_ranks(params, 2)
    assert shapes == [np.shape(x) for x in jax.tree_util.tree_leaves(pack(model, merged))]
    assert shapes != [np.shape(x) for x in jax.tree_util.tree_leaves(pack(model, params))]
    cat, num = _encoded(small, data)
    np.testing.assert_allclose(np.asarray(load_exported(tmp_path / "j")(cat, num)), want,
                               rtol=0, atol=1e-6)
    nodes, size, scores = {}, {}, {}
    for n in ("0", "2", None):
        out = tmp_path / f"onnx{n}"
        assert main(["export", "--format", "onnx", "--no-raw-inputs", "--model-dir", str(small),
                     "--out", str(out), *(["--max-ranks", n] if n else [])]) == 0
        sig = json.loads((out / "signature.json").read_text())
        assert sig["max_ranks"] == {"0": None, "2": 2, None: "auto"}[n]
        assert (sig["bytes"]["rank_padding"] == 0) == (n == "0")
        assert sig["ranks"] == (None if n == "0" else sorted(set(compress.rank_plan(
            params, sig["max_ranks"]).values())))
        proto = onnx.load(out / "model.onnx")
        nodes[n], size[n] = runtime_nodes(proto), (out / "model.onnx").stat().st_size
        scores[n] = _ort_scores(proto, {"cat": cat, "num": num})
    assert nodes["0"] > nodes["2"] >= nodes[None], nodes
    assert size["2"] <= 1.03 * size["0"] and size[None] <= 1.03 * size["0"], size
    for n in ("2", None):
        np.testing.assert_allclose(scores[n], scores["0"], rtol=0, atol=1e-7)
    with pytest.raises(SystemExit) as e:          # argparse: exit 2, the option named
        main(["export", "--model-dir", str(small), "--max-ranks", "three", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert "--max-ranks: expected 'auto' or an integer >= 0, got 'three'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_client_encodes_from_signature_and_encoder_json_alone(criteo_export, tmp_path):
    """Both export formats state every transform: a client that imports neither afm_jax nor jax
    turns raw Criteo lines into the scorer's inputs exactly as Encoder.encode does."""
    from afm_jax.cli import main

    d, data, lines, want, onnx_out = criteo_export
    jax_out = tmp_path / "jax_export"
    assert main(["export", "--model-dir", str(d / "small"), "--out", str(jax_out)]) == 0
    cat, num = _encoded(d / "small", data)
    for export_dir in (jax_out, onnx_out):
        got = tmp_path / f"{export_dir.name}_encoded.npz"
        proc = subprocess.run([sys.executable, "-c", CLIENT_ENCODER, str(export_dir),
                               str(d / "small" / "encoder.json"), str(data), str(got)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        with np.load(got) as z:
            np.testing.assert_array_equal(z["cat"], cat)
            np.testing.assert_array_equal(z["num"], num)


def test_a_corrupt_or_truncated_onnx_file_is_a_clear_error(criteo_export, tmp_path):
    out = criteo_export[4]
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (out / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="not a loadable ONNX model"):
        load_onnx(broken)
    (broken / "model.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(ExportError, match=str(broken / "model.onnx")):
        load_onnx(broken)
    with pytest.raises(ExportError, match="no ONNX file here"):
        load_onnx(tmp_path)


# Encodes a Criteo TSV from signature.json ("fields", "source") and encoder.json alone: what a
# client in another language does. Neither afm_jax nor jax can be imported in it.
CLIENT_ENCODER = """
import sys
sys.modules["jax"] = None
sys.modules["afm_jax"] = None
import json
import numpy as np
export_dir, encoder_json, data, out = sys.argv[1:5]
sig = json.load(open(export_dir + "/signature.json"))
enc = json.load(open(encoder_json))
columns = sig["source"]["columns"]
rows = [line.rstrip("\\n").split(sig["source"]["delimiter"]) for line in open(data, encoding="utf-8")]
cat_fields = [f for f in sig["fields"] if f["input"] == "cat"]
num_fields = [f for f in sig["fields"] if f["input"] == "num"]
cat = np.zeros((len(rows), len(cat_fields)), np.int32)
num = np.zeros((len(rows), len(num_fields)), np.float32)
for f in cat_fields:
    vocab = {v: i + 1 for i, v in enumerate(enc["vocabs"][f["column"]])}
    j = columns.index(f["field"])
    for i, r in enumerate(rows):
        raw = r[j]
        if raw == "":
            continue                       # missing -> 0
        if f["kind"] == "bucketized":
            x = float(raw)
            key = "b%d" % int(np.floor(np.log(x) ** 2)) if x > 2 else "%d" % int(np.floor(x))
        elif f["kind"] == "categorical":
            key = raw
        else:
            raise SystemExit("unexpected kind " + f["kind"])
        cat[i, f["column"]] = vocab.get(key, 0)
for f in num_fields:
    j = columns.index(f["field"])
    for i, r in enumerate(rows):
        if r[j] == "":
            continue
        t = np.float32(np.log1p(max(float(r[j]), 0.0)))
        num[i, f["column"]] = np.float32((np.float64(t) - f["mean"]) / f["std"])
np.savez(out, cat=cat, num=num)
"""


# Reads a Criteo TSV (label, I1..I13, C1..C26) and scores it from signature.json and model.onnx
# alone; importing jax fails in it.
JAX_FREE_CLIENT = """
import sys
sys.modules["jax"] = None
try:
    import jax  # noqa
    raise SystemExit("jax imported")
except ImportError:
    pass
import json
import numpy as np
import onnxruntime as ort
export_dir, data, out = sys.argv[1:4]
sig = json.load(open(export_dir + "/signature.json"))
columns = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
rows = [line.rstrip("\\n").split("\\t") for line in open(data, encoding="utf-8")]
feeds = {}
for spec in sig["inputs"]:
    j = columns.index(spec["name"])
    if spec["dtype"] == "string":
        feeds[spec["name"]] = np.array([r[j] for r in rows], dtype=str)
    else:   # missing: NaN
        feeds[spec["name"]] = np.array([float(r[j]) if r[j] else np.nan for r in rows])
session = ort.InferenceSession(export_dir + "/" + sig["file"], providers=["CPUExecutionProvider"])
np.save(out, session.run([sig["output"]["name"]], feeds)[0])
"""


def test_hashed_fields_in_the_graph_take_the_clients_ids(deepfm):
    """A hashed field comes in as `hashed:<field>`, the id the client computed (standard ONNX
    cannot hash strings; the rule is in the metadata): tests/test_onnx_bags.py checks scores."""
    model, params, _ = deepfm
    enc, bucketized = _raw_encoder()
    hashed = Encoder(enc.cat_names, [[]] + enc.vocabs[1:], enc.num_names, enc.num_mean,
                     enc.num_std, hash_buckets={"a": INFO.vocab_sizes[0]})
    assert hashed.info.vocab_sizes == INFO.vocab_sizes
    proto = to_onnx(model, params, encoder=hashed, bucketize=bucketized)
    assert [i.name for i in proto.graph.input][:2] == ["hashed:a", "b"]
    assert "hashed:a" in {p.key: p.value for p in proto.metadata_props}["afm_jax.hashed_inputs"]
    _check(model, params)       # ids in: the client hashes, as signature.json says
