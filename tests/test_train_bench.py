"""Training benchmark: the pipeline feeds every row once per epoch; a tiny run measures rows/s."""

from __future__ import annotations

import numpy as np
import pytest

from afm_jax.data import iterate_batches, synthetic_dataset
from afm_jax.data.dataset import EncodedSplit
from afm_jax.lab import train_bench


def _id_split(n: int) -> EncodedSplit:
    ids = np.arange(n, dtype=np.float32)
    return EncodedSplit(cat=np.zeros((n, 2), np.int32), num=ids[:, None].copy(),
                        label=ids.copy())


@pytest.mark.parametrize("n,bs", [(1003, 100), (1000, 250), (7, 1024)])
def test_every_training_row_once_per_epoch(n, bs):
    split = _id_split(n)
    for epoch in range(3):
        # the seed train() uses for epoch `epoch` with config seed 0
        batches = list(iterate_batches(split, bs, shuffle=True, seed=epoch))
        seen = np.concatenate([b["num"][:, 0] for b in batches])
        labels = np.concatenate([b["label"] for b in batches])
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))
        np.testing.assert_array_equal(seen, labels)  # rows stay whole across arrays
        assert len(batches) == -(-n // bs)


def test_subsample_takes_first_rows():
    ds = synthetic_dataset(3000)
    sub = train_bench.subsample(ds, 500)
    assert len(sub.train) == 500
    np.testing.assert_array_equal(sub.train.cat, ds.train.cat[:500])
    assert train_bench.subsample(ds, None) is ds


def test_tiny_run_afm_jax_only():
    ds = synthetic_dataset(3000)
    res = train_bench.run(ds, models=("deepfm",), batch_sizes=(256,), rounds=1, peers=(),
                          embed_dim=4, mlp=(16,), progress=False)
    by = {r["contender"]: r for r in res["rows"]}
    assert set(by) == {"afm_jax epoch", "bare step"}
    for r in by.values():
        assert r["rows_s"]["median"] > 0
    assert by["afm_jax epoch"]["rows_s_no_valid"]["median"] > by["afm_jax epoch"]["rows_s"]["median"]
    md = train_bench.to_markdown(res, "python experiments/train_bench.py --test")
    assert md.splitlines()[2] == "Command: `python experiments/train_bench.py --test`"
    # the bare step's FLOP rate against the measured matmul ceiling
    bare = by["bare step"]
    assert bare["flops_per_step"] > 2 * 256 * 16 * 4   # at least the MLP's forward products
    assert bare["gflops_s"]["median"] > 0 and res["matmul_ceiling_gflops"][256] > 0
    assert "| deepfm | 256 |" in md.split("Bare step's FLOP rate")[1]


def test_step_flops_counts_a_matmul():
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda a, b: a @ b)
    flops = train_bench.step_flops(f, jnp.ones((64, 32)), jnp.ones((32, 16)))
    assert flops == pytest.approx(2 * 64 * 32 * 16, rel=0.01)


def test_tiny_run_deepctr_peer():
    reason = "DeepCTR-Torch is an optional benchmark peer (pip install afm-jax[bench])"
    pytest.importorskip("torch", reason=reason)
    pytest.importorskip("deepctr_torch", reason=reason)
    ds = synthetic_dataset(3000)
    res = train_bench.run(ds, models=("deepfm",), batch_sizes=(512,), rounds=1,
                          peers=("deepctr",), embed_dim=4, mlp=(16,), progress=False)
    peer = [r for r in res["rows"] if r["contender"] == "DeepCTR-Torch fit"]
    assert peer and peer[0]["rows_s"]["median"] > 0

