"""Row-wise table updates: lazy Adam and row-wise Adagrad against dense optax and numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from afm_jax import rowwise
from afm_jax.data import FeatureInfo
from afm_jax.data.batching import pad_indices
from afm_jax.errors import AfmError
from afm_jax.models import build_model
from afm_jax.packing import pack, unpack
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
    assert_row_grads_match_dense(model, params, _batch(rng, cat))


def assert_row_grads_match_dense(model, params, batch) -> None:
    """Each table's gradient of its unique rows (`table_grads`) equals the dense gradient of
    those rows, and the dense gradient of every other row is zero."""
    uniques, _ = rowwise.resolve_rows(params, model, jnp.asarray(batch["cat"]))
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


def test_auto_weighs_table_rows_against_the_batch_slots():
    """auto: row-wise from AUTO_ROWS_PER_SLOT table rows per dedupe slot of a batch on, so a
    larger batch needs larger tables; at table_scale.md's DeepFM tables: dense at 17k rows,
    batch 1024 and 4096, row-wise from 100k rows on at both (the faster one measured there,
    except at 100k rows and batch 4096, where the two tie within the rounds' spread)."""
    from afm_jax.lab.table_scale import vocab_sizes

    def info(sizes):
        return FeatureInfo(cat_names=tuple(f"c{i}" for i in range(len(sizes))),
                           vocab_sizes=tuple(sizes), num_names=())

    one = info([1000])   # slots min(B, 1000): row-wise up to B = 1000 / AUTO_ROWS_PER_SLOT
    assert rowwise.resolve("auto", one, 64) == "rowwise"
    assert rowwise.resolve("auto", one, 1024) == "dense"
    assert rowwise.batch_slots((1000, 5), 64) == 64 + 5
    picks = {(total, b): rowwise.resolve("auto", info(vocab_sizes(total)), b)
             for total in (17_000, 100_000, 200_000, 1_000_000) for b in (1024, 4096)}
    assert picks == {(17_000, 1024): "dense", (100_000, 1024): "rowwise",
                     (200_000, 1024): "rowwise", (1_000_000, 1024): "rowwise",
                     (17_000, 4096): "dense", (100_000, 4096): "rowwise",
                     (200_000, 4096): "rowwise", (1_000_000, 4096): "rowwise"}
    assert rowwise.resolve("rowwise_adagrad", one, 1024) == "rowwise_adagrad"
    assert rowwise.resolve("dense", info(vocab_sizes(1_000_000))) == "dense"


def _numpy_rowwise_adagrad(table, acc, g_full):
    """One row-wise Adagrad step in float64: every row with a gradient adds the mean of its
    squared gradient to its accumulator and moves by -lr * g / (sqrt(acc) + eps); the other
    rows (zero gradient) keep row and accumulator."""
    g2 = (g_full * g_full).reshape(len(g_full), -1).mean(-1)
    acc = acc + g2
    scale = (LR / (np.sqrt(acc) + 1e-8)).reshape((-1,) + (1,) * (g_full.ndim - 1))
    return table - scale * g_full, acc


def _adagrad_against_numpy(model, params, path: str, batches, grad_of) -> np.ndarray:
    """Step row-wise Adagrad through `batches` beside `_numpy_rowwise_adagrad` on the table at
    `path` ("parent/key"), with the gradient `grad_of(params, batch)` (numpy, the whole table);
    rows and accumulators agree within 1e-6 after every step. Returns the accumulator."""
    parent, key = path.split("/")
    step = rowwise.make_step(model, LR, "rowwise_adagrad")
    state = rowwise.init(params, LR, "rowwise_adagrad")
    p = _copy(params)
    table = np.asarray(params[parent][key], np.float64)
    acc = np.zeros(table.shape[0])
    for batch in batches:
        g_full = grad_of(p, batch)
        p, state, _ = step(p, state, batch)
        table, acc = _numpy_rowwise_adagrad(table, acc, g_full)
        np.testing.assert_allclose(np.asarray(p[parent][key]), table, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(state.slots[path]["acc"]), acc, rtol=1e-6, atol=1e-9)
    return acc


def test_rowwise_adagrad_values_match_numpy_lr():
    """Row-wise Adagrad on LR's first-order weights against numpy: the gradient of each row
    computed in numpy from the logits (duplicate ids of a batch summed into one row), then
    the update, over 5 steps."""
    model, params = _model_and_params("lr")   # linear/weights: rows 0-2, 3-4, 5-8 per field
    offsets = np.array([0, 3, 5])
    rng = np.random.default_rng(4)

    def grad_of(p, batch):
        z = np.asarray(jax.vmap(model.apply, in_axes=(None, 0, 0))(
            {"params": p}, jnp.asarray(batch["cat"]), jnp.asarray(batch["num"])), np.float64)
        dz = (1 / (1 + np.exp(-z)) - batch["label"]) / len(z)     # d mean BCE / d logit
        w = params["linear"]["weights"]
        g_full = np.zeros(w.shape)
        for f in range(3):                                          # duplicates combine
            np.add.at(g_full, batch["cat"][:, f] + offsets[f], dz.reshape((-1,) + w.shape[1:]))
        return g_full

    # duplicates within an example's fields' rows and across examples; row 8 never read
    patterns = [[[0, 1, 2], [0, 1, 2], [1, 0, 2]], [[2, 1, 0], [2, 1, 0], [2, 1, 1]],
                [[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[1, 1, 2], [1, 1, 2], [1, 1, 2]],
                [[2, 0, 1], [0, 1, 2], [2, 1, 0]]]
    acc = _adagrad_against_numpy(model, params, "linear/weights",
                                 [_batch(rng, np.array(ids)) for ids in patterns], grad_of)
    assert acc[8] == 0 and np.count_nonzero(acc) == 8


def test_rowwise_adagrad_values_match_numpy_embedding_rows():
    """The same on DeepFM's packed table (rows of width 4: the accumulator takes the mean of
    the squared gradient over the row), the gradient from the dense gradient of the mean loss."""
    model, params = _model_and_params()
    rng = np.random.default_rng(6)

    def grad_of(p, batch):
        return np.asarray(jax.grad(_mean_loss(model, batch))(_copy(p))["embed"]["table_4"],
                          np.float64)

    patterns = [[[1, 1, 2], [1, 0, 2], [1, 1, 2]], [[0, 1, 3], [2, 1, 3], [0, 0, 3]],
                [[1, 1, 2], [2, 0, 0], [2, 0, 0]]]
    acc = _adagrad_against_numpy(model, params, "embed/table_4",
                                 [_batch(rng, np.array(ids)) for ids in patterns], grad_of)
    assert 0 < np.count_nonzero(acc) < len(acc)


@pytest.mark.parametrize("table_optimizer", ["dense", "rowwise", "rowwise_adagrad"])
def test_padded_batch_trains_like_the_short_one_with_embed_l2(table_optimizer):
    """With embed_l2 > 0, a short batch padded (repeats of its first row, weight 0) steps like
    the short batch itself: the L2 of the rows read is a weighted mean as the loss is. Two
    steps (a common one, then short or padded), since a first Adam step only sees signs."""
    model, params = _model_and_params()
    rng = np.random.default_rng(7)
    common = _batch(rng, np.stack([rng.integers(0, v, 16) for v in INFO.vocab_sizes], 1))
    short = _batch(rng, np.stack([rng.integers(0, v, 5) for v in INFO.vocab_sizes], 1))
    idx = pad_indices(np.arange(5), 16)
    padded = {**{k: v[idx] for k, v in short.items()},
              "weight": (np.arange(16) < 5).astype(np.float32)}
    l2 = 0.5
    if table_optimizer == "dense":
        step = make_train_step(model, optax.adam(LR), embed_l2=l2)

        def init(p):
            return optax.adam(LR).init(p)
    else:
        step = rowwise.make_step(model, LR, table_optimizer, embed_l2=l2)

        def init(p):
            return rowwise.init(p, LR, table_optimizer)
    ends = []
    for last in (short, padded):
        p = _copy(params)
        p, s, _ = step(p, init(p), common)
        p, s, loss = step(p, s, last)
        ends.append((float(loss), jax.tree.map(np.asarray, p)))
    (loss_short, p_short), (loss_padded, p_padded) = ends
    np.testing.assert_allclose(loss_padded, loss_short, rtol=1e-6)
    moved = 0
    for a, b, before in zip(jax.tree.leaves(p_short), jax.tree.leaves(p_padded),
                            jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
        moved += int(np.sum(a != np.asarray(before)))
    assert moved > 0


def test_embedding_l2_needs_packed_tables():
    """The per-field L2 path is gone (training packs): per-field tables are a clear error, not a
    silent clamp of out-of-range ids to a table's last row."""
    from afm_jax.train import embedding_l2
    model, params = _model_and_params()
    cat = jnp.asarray(np.array([[2, 1, 3], [0, 0, 0]], np.int32))
    assert float(embedding_l2(params, cat)) > 0
    with pytest.raises(AfmError, match="packed"):
        embedding_l2(unpack(model, params), cat)
