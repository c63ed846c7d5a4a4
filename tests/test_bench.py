"""The scoring benchmark measures every form it promises, and its PyTorch peer scores as we do."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afm_jax.inference import make_scorer
from afm_jax.lab import bench
from afm_jax.models import build_model


def test_every_form_of_every_model_is_measured_at_every_batch_size():
    models, batch_sizes = ("deepfm", "dcnv2"), (4, 16)
    # 8 fields x 16 and 256-wide layers: large enough that every AFM form's ranks save
    res = bench.run(models=models, batch_sizes=batch_sizes, repeats=1, use_torch=False,
                    progress=False, info=bench.criteo_like_info(8), mlp=(256, 256))
    forms = ["original", *bench.AFM_FORMS]
    assert sorted((r["model"], r["form"], r["batch"]) for r in res["rows"]) == sorted(
        (m, f, b) for m in models for f in forms for b in batch_sizes)
    assert all(r["jax_rows_s"] > 0 and r["flops_per_row"] > 0 for r in res["rows"])
    # every AFM form is smaller and cheaper per row than the original it came from
    orig = {(r["model"], r["batch"]): r for r in res["rows"] if r["form"] == "original"}
    for r in res["rows"]:
        if r["form"] != "original":
            o = orig[(r["model"], r["batch"])]
            assert r["params"] < o["params"] and r["flops_per_row"] < o["flops_per_row"], r
    # the statistics pass is measured once per model, on the original
    assert sorted(r["model"] for r in res["rows"] if "stats_rows_s" in r) == sorted(models)
    assert res["ceiling_flops"] > 0 and res["torch"] is None
    md = bench.to_markdown(res, "test")
    assert all(f"| {m} | {f} |" in md for m in models for f in forms)


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
