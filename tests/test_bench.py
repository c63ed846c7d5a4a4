"""The scoring benchmark measures every form it promises in every layout, and its PyTorch peer
scores as we do."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afm_jax.inference import bind_scorer, logits_fn, make_scorer
from afm_jax.lab import bench
from afm_jax.models import build_model
from afm_jax.packing import pack


def test_every_form_is_measured_in_every_layout_at_every_batch_size():
    # one model (the sweep of two took 68 s of a CI worker): every model's forms score alike
    # packed and per-field in test_packing.py, and in ONNX Runtime in test_onnx.py
    models, batch_sizes = ("deepfm",), (1, 16)
    # 8 fields x 16 and 256-wide layers: large enough that every AFM form's ranks save
    res = bench.run(models=models, batch_sizes=batch_sizes, repeats=1, use_torch=False,
                    progress=False, info=bench.criteo_like_info(8), mlp=(256, 256))
    forms = ["original", *bench.AFM_FORMS]
    assert bench.LAYOUTS == ("per-field", "packed", "bound", "exported")
    assert sorted((r["model"], r["form"], r["layout"], r["batch"]) for r in res["rows"]) == sorted(
        (m, f, lay, b) for m in models for f in forms for lay in bench.LAYOUTS for b in batch_sizes)
    assert all(r["jax_rows_s"] > 0 and r["flops_per_row"] > 0 for r in res["rows"])
    # per-field, bound and exported scorers score as the live packed one does
    assert all(r["max_rel_diff_vs_packed"] <= 1e-6 for r in res["rows"]), \
        [(r["model"], r["form"], r["layout"], r["max_rel_diff_vs_packed"]) for r in res["rows"]]
    # the packed layout costs one gather per table width (+ the first-order weights), whatever
    # the number of fields; per-field params cost one per field at batch > 1
    for r in res["rows"]:
        if r["layout"] == "packed":
            assert r["gathers"] <= 3 and r["fusions"] > 0 and r["ops"] >= r["fusions"], r
        if r["layout"] == "per-field" and r["batch"] > 1:
            assert r["gathers"] >= 8, r
    # every AFM form is smaller and cheaper per row than the original it came from
    orig = {(r["model"], r["layout"], r["batch"]): r for r in res["rows"] if r["form"] == "original"}
    for r in res["rows"]:
        if r["form"] != "original":
            o = orig[(r["model"], r["layout"], r["batch"])]
            assert r["params"] < o["params"] and r["flops_per_row"] < o["flops_per_row"], r
    # the statistics pass is measured once per model, on the original
    assert sorted(r["model"] for r in res["rows"] if "stats_rows_s" in r) == sorted(models)
    assert res["ceiling_flops"] > 0 and res["torch"] is None and len(res["load_start"]) == 3
    # dispatch costs at batch 1 (16 is not a dispatch batch size), every form
    assert sorted((d["model"], d["form"]) for d in res["dispatch"]) == sorted(
        (m, f) for m in models for f in forms)
    assert all(d["batch"] == 1 and d["leaves_packed"] < d["leaves_per-field"]
               and d["aot_flat_s"] > 0 for d in res["dispatch"])
    # ONNX Runtime (the [onnx] extra, which [dev] pulls) scores each form's graph as JAX does
    if res["onnxruntime"] is not None:
        assert all(r["ort_rows_s"] > 0 and r["ort_max_rel_diff"] <= 1e-5
                   for r in res["rows"]), [(r["model"], r["form"], r.get("ort_max_rel_diff"))
                                           for r in res["rows"]]
    md = bench.to_markdown(res, "test")
    assert all(f"## {m}" in md for m in models) and "Load average" in md
    if res["onnxruntime"] is not None:
        assert "| ORT / ORT original |" in md and "ONNX Runtime on every compressed form" in md
    assert all(f"| {f} | {b} |" in md for f in forms for b in batch_sizes)
    assert all(f"| {m} | {f} | 1 |" in md for m in models for f in forms)


def test_hlo_counts_reads_gathers_fusions_and_ops():
    info = bench.criteo_like_info(5)
    model = build_model("deepfm", info, mlp=(16,))
    params = model.init(jax.random.key(0), jnp.zeros(5, jnp.int32), jnp.zeros(0))["params"]
    batch = bench.random_batch(info, 8)
    logits = logits_fn(model)
    per_field = bench.compiled_cost(logits, params, batch)
    packed = bench.compiled_cost(logits, pack(model, params), batch)
    # 5 field tables + first-order weights vs one table of width 16 + first-order weights
    assert per_field["gathers"] == 6 and packed["gathers"] == 2, (per_field, packed)
    assert all(c["fusions"] > 0 and c["ops"] >= c["fusions"] for c in (per_field, packed))


def test_bind_scorer_compiles_each_batch_shape_once_and_scores_as_the_live_scorer():
    info = bench.criteo_like_info(5)
    model = build_model("dcnv2", info, mlp=(16,))
    params = bench._lively(model.init(jax.random.key(0), jnp.zeros(5, jnp.int32),
                                      jnp.zeros(0))["params"])
    score = bind_scorer(model, params)
    live = make_scorer(model)
    for n in (1, 7, 1, 2500):   # 2500 > the CPU chunk size: the chunked program
        batch = bench.random_batch(info, n, seed=n)
        np.testing.assert_allclose(np.asarray(score(batch)),
                                   np.asarray(live(params, batch)), rtol=1e-6)
    # host int64 ids (e.g. from pandas) are taken as the jitted scorer takes them
    batch = bench.random_batch(info, 7, seed=7)
    wide = {"cat": batch["cat"].astype(np.int64), "num": batch["num"]}
    np.testing.assert_allclose(np.asarray(score(wide)), np.asarray(score(batch)), rtol=1e-7)


@pytest.mark.parametrize("name", ["deepfm", "dcnv2"])
def test_torch_peer_scores_every_form_as_jax_does(name):
    pytest.importorskip("torch", reason="torch is an optional benchmark peer (pip install "
                                        "afm-jax[bench]); the jax half is tested above")
    from afm_jax.lab import bench_torch

    info = bench.criteo_like_info(6)
    model = build_model(name, info, mlp=(32, 16))
    params = bench._lively(model.init(jax.random.key(0), jnp.zeros(6, jnp.int32),
                                      jnp.zeros(0))["params"])
    batch = bench.random_batch(info, 64)
    forms = bench.compressed_forms(model, params, info, calib_rows=4096)
    assert list(forms) == ["original", *bench.AFM_FORMS]
    for form, p in forms.items():
        torch_scores = bench_torch.scores(bench_torch.build(name, info, p, compile=False), batch)
        np.testing.assert_allclose(torch_scores, np.asarray(make_scorer(model)(p, batch)),
                                   atol=2e-6, err_msg=form)
