"""afm_jax.lab.table_peers: the synthetic rows, the per-round ratios, and a tiny run beside
DeepCTR-Torch."""

import numpy as np
import pytest

from afm_jax.lab import table_peers
from afm_jax.lab.table_scale import vocab_sizes


def test_synthetic_table_dataset_rows_within_tables():
    ds = table_peers.synthetic_table_dataset(100_000, 3000, valid_rows=500)
    assert ds.info.vocab_sizes == tuple(vocab_sizes(100_000))
    assert sum(ds.info.vocab_sizes) == 100_000
    assert ds.train.cat.shape == (3000, 26) and ds.valid.cat.shape == (500, 26)
    assert ds.train.num.shape == (3000, 0)
    assert (ds.train.cat >= 0).all()
    assert (ds.train.cat < np.asarray(ds.info.vocab_sizes)).all()
    # Zipf(1.2) ids: row 0 of a big table holds ~18% of its reads, row 10 ~1%
    big = ds.train.cat[:, 2]
    assert np.mean(big == 0) > 0.12 and np.mean(big == 0) > 5 * np.mean(big == 10)
    again = table_peers.synthetic_table_dataset(100_000, 3000, valid_rows=500)
    np.testing.assert_array_equal(ds.train.cat, again.train.cat)
    np.testing.assert_array_equal(ds.valid.label, again.valid.label)


def test_markdown_ratios_are_per_round():
    a, d, p = table_peers.CONTENDERS
    row = {"vocab_rows": 1000, "batch": 64, "train_rows": 640, "valid_rows": 64, "rounds": 3,
           "torch_threads": 2, "versions": {"deepctr": "0.3.0", "torch": "2"},
           "rows_s": {a: [100.0, 50.0, 90.0], d: [50.0, 50.0, 30.0], p: [10.0, 25.0, 30.0]},
           "median": {a: 90.0, d: 50.0, p: 25.0}}
    np.testing.assert_allclose(table_peers.ratios(row, a, d), [2.0, 1.0, 3.0])
    md = table_peers.epochs_markdown([row, {"vocab_rows": 5, "batch": 64, "error": "boom"}],
                                     "cmd", "here")
    line = next(x for x in md.splitlines() if x.startswith("| 1,000 |"))
    # medians of the per-round ratios, not ratios of the medians (90 / 50 = 1.8)
    assert "| 2.00x [1.00-3.00] |" in line
    assert "| 3.00x [2.00-10.00] |" in line   # row-wise / DeepCTR: 10, 2, 3
    assert "failed: boom" in md and "`cmd`" in md


def test_tiny_run_beside_deepctr():
    reason = "DeepCTR-Torch is an optional benchmark peer (pip install afm-jax[bench])"
    pytest.importorskip("torch", reason=reason)
    pytest.importorskip("deepctr_torch", reason=reason)
    res = table_peers.epochs(2_000, 128, 256, rounds=1, valid_rows=128, embed_dim=4,
                             mlp=(16,))
    assert "error" not in res, res.get("error")
    assert set(res["rows_s"]) == set(table_peers.CONTENDERS)
    for k, v in res["rows_s"].items():
        assert len(v) == 1 and min(v) > 0, k
    assert res["vocab_rows"] == 2_000 and res["versions"]["deepctr"]
    assert len(res["load"]) == 1
