"""The scoring benchmark runs end to end (tiny sizes) and its PyTorch peer computes our function."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afm_jax import bench
from afm_jax.inference import make_scorer
from afm_jax.models import build_model


def test_bench_run_reports_every_form_and_ratio():
    res = bench.run(models=("deepfm",), batch_sizes=(16,), repeats=1, use_torch=False,
                    progress=False, info=bench.criteo_like_info(8), mlp=(256, 256, 256))
    forms = [r["form"] for r in res["rows"]]
    assert forms == ["original", "AFM dense r64", "AFM dense r32", "AFM dense r32 + emb r8"]
    assert all(r["jax_rows_s"] > 0 and r["flops_per_row"] > 0 for r in res["rows"])
    # compressed forms do fewer FLOPs per row than the original
    f = {r["form"]: r["flops_per_row"] for r in res["rows"]}
    assert f["AFM dense r32"] < f["AFM dense r64"] < f["original"]
    assert "stats_rows_s" in res["rows"][0] and res["ceiling_flops"] > 0
    md = bench.to_markdown(res, "test")
    assert "AFM dense r32 + emb r8" in md and "Statistics pass" in md


@pytest.mark.parametrize("name", ["deepfm", "dcnv2"])
def test_torch_peer_matches_jax_scores(name):
    pytest.importorskip("torch", reason="torch is an optional benchmark dependency")
    from afm_jax import bench_torch

    info = bench.criteo_like_info(6)
    model = build_model(name, info, mlp=(32, 16))
    params = bench._lively(model.init(jax.random.key(0), jnp.zeros(6, jnp.int32),
                                      jnp.zeros(0))["params"])
    batch = bench.random_batch(info, 64)
    for form, p in bench.compressed_forms(model, params, info, calib_rows=4096).items():
        torch_scores = bench_torch.scores(bench_torch.build(name, info, p), batch)
        np.testing.assert_allclose(torch_scores, np.asarray(make_scorer(model)(p, batch)),
                                   atol=2e-6, err_msg=form)
