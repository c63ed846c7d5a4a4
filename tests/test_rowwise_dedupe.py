"""The row-wise step's per-field dedupe (issue 24): every way (no dedupe for fields of at most B
rows, sort-free first readers, per-column sort) against numpy, its static size, and lazy Adam
through each way against dense optax Adam."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from afm_jax import rowwise
from afm_jax.data import FeatureInfo
from afm_jax.models import build_model
from afm_jax.packing import pack
from afm_jax.train import make_train_step
from tests.helpers import lively_params
from tests.test_rowwise import assert_row_grads_match_dense

# B = 8: field rows below, at and above the batch
ROWS = (3, 8, 50, 1000)
WAYS = {"sorted": 0, "first readers": 2**40, "default": None}


def _cat(rng, n=8, rows=ROWS):
    cat = np.stack([rng.integers(0, min(r, 6), n) for r in rows], 1)   # repeats in every field
    cat[0, 3], cat[1, 3] = 999, 517
    cat[2, 2], cat[3, 0] = -4, 77             # out of vocabulary: read row 0
    return cat.astype(np.int32)


@pytest.mark.parametrize("way", WAYS)
def test_dedupe_fields_match_numpy(way):
    cat = _cat(np.random.default_rng(0))
    out = rowwise._dedupe_fields(jnp.asarray(cat), ROWS, WAYS[way])
    for f, (u, valid, inv) in enumerate(out):
        u, valid, inv = np.asarray(u), np.asarray(valid), np.asarray(inv)
        local = np.where((cat[:, f] >= 0) & (cat[:, f] < ROWS[f]), cat[:, f], 0)
        assert u.shape == valid.shape == (min(8, ROWS[f]),)
        np.testing.assert_array_equal(u[inv], local)         # each id finds its row
        assert valid[inv].all()
        assert sorted(u[valid].tolist()) == sorted(set(local.tolist()))   # distinct, all read


def _model(rows=ROWS):
    info = FeatureInfo(cat_names=tuple("abcd"[:len(rows)]), vocab_sizes=rows, num_names=("x",))
    model = build_model("deepfm", info, embed_dim=4, mlp=(8,))
    return model, pack(model, lively_params(model, 0, info))


def test_resolve_rows_static_size_is_the_batch_slots_and_rows_resolve():
    model, params = _model()
    cat = _cat(np.random.default_rng(1))
    uniques, resolved = rowwise.resolve_rows(params, model, jnp.asarray(cat))
    slots = rowwise.batch_slots(ROWS, 8)
    assert slots == 3 + 8 + 8 + 8
    offsets = np.cumsum(ROWS) - np.asarray(ROWS)
    local = np.where((cat >= 0) & (cat < np.asarray(ROWS)), cat, 0)
    for name, key in (("embed/table_4", "embed"), ("linear/weights", "linear")):
        u = np.asarray(uniques[name])
        assert u.shape == (slots,)
        np.testing.assert_array_equal(u[np.asarray(resolved[key])], local + offsets)
        real = u[u < sum(ROWS)]
        assert len(real) == len(set(real.tolist()))


def _batch(rng):
    cat = _cat(rng)
    return {"cat": cat, "num": rng.normal(size=(8, 1)).astype(np.float32),
            "label": (rng.uniform(size=8) < 0.4).astype(np.float32)}


@pytest.mark.parametrize("way", WAYS)
def test_lazy_adam_through_each_dedupe_matches_dense_adam(way, monkeypatch):
    """One step from a fresh state equals dense Adam on every param (a row without gradient
    does not move in Adam's first step); on later steps each table's gradient of its unique
    rows equals the dense gradient of those rows at the same params, and nothing else of the
    dense gradient is nonzero."""
    if WAYS[way] is not None:
        monkeypatch.setattr(rowwise, "SCAN_ROWS_PER_ID", WAYS[way] // 8)
    model, params = _model()
    rng = np.random.default_rng(2)
    lr = 1e-2
    first = _batch(rng)
    pd, _, loss_d = make_train_step(model, optax.adam(lr))(
        jax.tree.map(jnp.copy, params), optax.adam(lr).init(params), first)
    step = rowwise.make_step(model, lr)
    pr = jax.tree.map(jnp.copy, params)
    pr, sr, loss_r = step(pr, rowwise.init(pr, lr, "rowwise"), first)
    np.testing.assert_allclose(float(loss_r), float(loss_d), rtol=1e-6)
    for a, c in zip(jax.tree.leaves(pd), jax.tree.leaves(pr), strict=True):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-6, atol=1e-7)
    for _ in range(3):
        b = _batch(rng)
        assert_row_grads_match_dense(model, pr, b)
        pr, sr, _ = step(pr, sr, b)
