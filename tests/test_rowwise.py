"""Row-wise table updates: lazy Adam and row-wise Adagrad against dense optax and numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from afm_jax import rowwise
from afm_jax.data import FeatureInfo
from afm_jax.errors import AfmError
from afm_jax.models import build_model
from afm_jax.packing import pack
from afm_jax.train import TrainConfig, init_params, make_train_step, train

INFO = FeatureInfo(cat_names=("a", "b", "c"), vocab_sizes=(3, 2, 4), num_names=("x",))
LR = 1e-2


def _model_and_params(name: str = "deepfm"):
    model = build_model(name, INFO, **({} if name == "lr" else {"embed_dim": 4, "mlp": (8,)}))
    params = init_params(model, INFO, 0)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return model, pack(model, jax.tree.unflatten(tree, leaves))


def _batch(rng, cat) -> dict:
    n = cat.shape[0]
    return {"cat": cat.astype(np.int32), "num": rng.normal(size=(n, 1)).astype(np.float32),
            "label": (rng.uniform(size=n) < 0.4).astype(np.float32)}


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def test_lazy_adam_equals_dense_adam_when_every_row_is_touched():
    model, params = _model_and_params()
    rng = np.random.default_rng(0)
    every_id = np.stack([np.arange(12) % v for v in INFO.vocab_sizes], 1)
    batches = [_batch(rng, every_id) for _ in range(4)]
    dense_step, row_step = make_train_step(model, optax.adam(LR)), rowwise.make_step(model, LR)
    pd, sd = _copy(params), optax.adam(LR).init(params)
    pr = _copy(params)
    sr = rowwise.init(pr, LR, "rowwise")
    for b in batches:
        pd, sd, loss_d = dense_step(pd, sd, b)
        pr, sr, loss_r = row_step(pr, sr, b)
        np.testing.assert_allclose(float(loss_r), float(loss_d), rtol=1e-6)
    assert jax.tree.structure(pd) == jax.tree.structure(pr)
    for a, b in zip(jax.tree.leaves(pd), jax.tree.leaves(pr), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def _numpy_dense_adam(table, m, v, g_full, t):
    """One optax-style Adam step over every row (zero gradient where the batch read nothing)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    m = b1 * m + (1 - b1) * g_full
    v = b2 * v + (1 - b2) * g_full * g_full
    return table - LR * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps), m, v


def _mean_loss(model, batch):
    def loss(p):
        logits = jax.vmap(lambda c, n: model.apply({"params": p}, c, n))(batch["cat"], batch["num"])
        return optax.sigmoid_binary_cross_entropy(logits, batch["label"]).mean()
    return loss


def test_lazy_adam_matches_numpy_and_leaves_untouched_rows_and_moments_exactly():
    """Lazy Adam with catch-up against a numpy dense Adam: each step's touched rows equal the
    dense rows (their missed steps applied first), untouched rows and moments stay exactly as
    they were, and `settle` brings every row to the dense table."""
    model, params = _model_and_params("lr")   # one table: the first-order weights [9]
    rng = np.random.default_rng(1)
    step = rowwise.make_step(model, LR)
    state = rowwise.init(params, LR, "rowwise")
    w = np.asarray(params["linear"]["weights"], np.float64)
    m, v = np.zeros_like(w), np.zeros_like(w)
    p = _copy(params)
    touched_ever = set()
    # rows come back after gaps of 1 to 3 steps, and row 3 only at the end
    pattern = [[0, 1, 0], [2, 1, 0], [0, 1, 1], [2, 0, 0], [1, 1, 2], [0, 1, 3]]
    for t, ids in enumerate(pattern, start=1):
        cat = np.array([ids, ids], np.int32)                    # a duplicated row per field
        batch = _batch(rng, cat)
        dense_grad = jax.grad(_mean_loss(model, batch))(_copy(p))
        g_full = np.asarray(dense_grad["linear"]["weights"], np.float64)
        rows = np.flatnonzero(g_full)
        before = np.asarray(p["linear"]["weights"]).copy()
        m_before = np.asarray(state.slots["linear/weights"]["m"]).copy()
        v_before = np.asarray(state.slots["linear/weights"]["v"]).copy()
        p, state, _ = step(p, state, batch)
        w, m, v = _numpy_dense_adam(w, m, v, g_full, t)
        got = np.asarray(p["linear"]["weights"])
        np.testing.assert_allclose(got[rows], w[rows], rtol=1e-5, atol=1e-6)   # float32 vs 64
        untouched = np.setdiff1d(np.arange(w.size), rows)
        assert untouched.size and np.array_equal(got[untouched], before[untouched])
        slots = state.slots["linear/weights"]
        assert np.array_equal(np.asarray(slots["m"])[untouched], m_before[untouched])
        assert np.array_equal(np.asarray(slots["v"])[untouched], v_before[untouched])
        np.testing.assert_allclose(np.asarray(slots["v"])[rows], v[rows], rtol=1e-5, atol=1e-12)
        assert np.all(np.asarray(slots["last"])[rows] == t)
        touched_ever |= set(rows.tolist())
    lagging = np.abs(got - w) > 1e-6
    assert lagging.any()                     # some rows still owe dense Adam's momentum tail
    settled = rowwise.settle(p, state, LR, "rowwise")
    np.testing.assert_allclose(np.asarray(settled["linear"]["weights"]), w, rtol=1e-5, atol=1e-6)
    assert np.array_equal(np.asarray(p["linear"]["weights"]), got)   # settle changed nothing


def test_catchup_over_long_gaps_matches_dense_adam():
    """A row read at step 1 and then again after 5 to 400 idle steps moves as under dense Adam:
    exact terms up to CATCHUP_STEPS, the closed-form tail past them within 0.8% (0.2% late)."""
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1.0
    for start in (1, 30, 500):
        for gap in (5, rowwise.CATCHUP_STEPS, 40, 400):
            m, v, x = 0.0, 0.0, 0.0
            m, v = (1 - b1) * 0.7, (1 - b2) * 0.49          # one gradient 0.7 at step `start`
            m0, v0 = m, v
            for j in range(start + 1, start + gap + 1):       # dense Adam, zero gradient
                m, v = b1 * m, b2 * v
                x -= lr * (m / (1 - b1 ** j)) / (np.sqrt(v / (1 - b2 ** j)) + eps)
            delta, m1, v1 = rowwise._adam_catchup(
                jnp.asarray([[m0]], jnp.float32), jnp.asarray([[v0]], jnp.float32),
                jnp.asarray([start]), jnp.asarray(start + gap + 1), lr, b1, b2, eps)
            # exact terms; the tail's one bias correction is within 0.8% early in training
            tol = 1e-5 if gap <= rowwise.CATCHUP_STEPS else (8e-3 if start < 500 else 2e-3)
            np.testing.assert_allclose(float(delta[0, 0]), x, rtol=tol)
            np.testing.assert_allclose(float(m1[0, 0]), m, rtol=1e-4)
            np.testing.assert_allclose(float(v1[0, 0]), v, rtol=1e-4)


def test_duplicate_ids_accumulate_as_in_the_dense_gradient():
    model, params = _model_and_params()
    rng = np.random.default_rng(2)
    cat = np.array([[0, 1, 2], [0, 1, 2], [0, 0, 3], [2, 1, 2]], np.int32)  # repeats
    batch = _batch(rng, cat)
    uniques, resolved = rowwise.resolve_rows(params, model, jnp.asarray(batch["cat"]))
    g_rows = rowwise.table_grads(model, params, batch)

    dense = jax.grad(_mean_loss(model, batch))(params)
    for name, g in g_rows.items():
        parent, key = name.split("/")
        full = np.asarray(dense[parent][key])
        u = np.asarray(uniques[name])
        real = u < full.shape[0]
        np.testing.assert_allclose(np.asarray(g)[real], full[u[real]], rtol=1e-5, atol=1e-8)
        rest = np.setdiff1d(np.arange(full.shape[0]), u[real])
        assert np.all(full[rest] == 0)        # rows the batch did not read have no gradient


def test_rowwise_adagrad_updates_only_touched_rows():
    model, params = _model_and_params()
    state = rowwise.init(params, LR, "rowwise_adagrad")
    step = rowwise.make_step(model, LR, "rowwise_adagrad")
    before = np.asarray(params["embed"]["table_4"]).copy()
    batch = _batch(np.random.default_rng(3), np.array([[1, 1, 2], [1, 0, 2]], np.int32))
    new, state, loss = step(_copy(params), state, batch)
    after = np.asarray(new["embed"]["table_4"])
    touched = {1, 3 + 1, 3 + 0, 5 + 2}          # per-field offsets 0, 3, 5
    changed = set(np.flatnonzero(np.any(after != before, axis=1)))
    assert changed <= touched and changed and np.isfinite(float(loss))
    acc = np.asarray(state.slots["embed/table_4"]["acc"])
    assert set(np.flatnonzero(acc)) == changed


def test_train_rejects_unknown_table_optimizer():
    from afm_jax.data import synthetic_dataset
    ds = synthetic_dataset(200)
    with pytest.raises(AfmError, match="table_optimizer"):
        train(build_model("lr", ds.info), ds, TrainConfig(table_optimizer="sparse"), progress=False)


def test_auto_picks_rowwise_for_large_tables_only():
    small = FeatureInfo(cat_names=("a",), vocab_sizes=(1000,), num_names=())
    large = FeatureInfo(cat_names=("a", "b"), vocab_sizes=(rowwise.AUTO_ROWWISE_ROWS - 5, 5),
                        num_names=())
    assert rowwise.resolve("auto", small) == "dense"
    assert rowwise.resolve("auto", large) == "rowwise"
    assert rowwise.resolve("rowwise_adagrad", small) == "rowwise_adagrad"
