"""TT-Rec baseline: tensor-train tables compute the rows they encode, and train from scratch."""

import jax
import numpy as np
import pytest

from afm_jax.compress.ttrec import (
    tt_cores,
    tt_param_count,
    tt_plan_like,
    tt_rank_for_budget,
    tt_shape,
    tt_tables,
)
from afm_jax.data import synthetic_dataset
from afm_jax.errors import CompressionError
from afm_jax.inference import count_params, evaluate, make_scorer
from afm_jax.models import build_model
from afm_jax.nn import tt_row
from afm_jax.train import TrainConfig, init_params, train
from tests.helpers import INFO, lively_params, np_tree, random_batch, small_model


@pytest.mark.parametrize("vocab,dim", [(1, 16), (37, 16), (1000, 16), (5003, 10), (64, 7)])
def test_tt_shape_covers_the_table(vocab, dim):
    (v1, v2, v3), (d1, d2, d3) = tt_shape(vocab, dim)
    assert v1 * v2 * v3 >= vocab and d1 * d2 * d3 == dim


def test_tt_row_is_the_tensor_train_contraction():
    vocab, dim, rank = 50, 8, 3
    cores = tt_cores(vocab, dim, rank, seed=1)
    g0, g1, g2 = (cores[f"tt_{i}"].astype(np.float64) for i in range(3))
    v2, v3 = g1.shape[0], g2.shape[0]
    rows = jax.jit(jax.vmap(lambda i: tt_row([cores[f"tt_{k}"] for k in range(3)], i)))(
        np.arange(vocab, dtype=np.int32))
    for i in range(vocab):
        i1, i2, i3 = i // (v2 * v3), (i // v3) % v2, i % v3
        want = np.einsum("ar,rbs,sc->abc", g0[i1], g1[i2], g2[i3]).reshape(-1)
        np.testing.assert_allclose(np.asarray(rows[i]), want, rtol=1e-5, atol=1e-9)
    # rows are distinct and of the intended scale (std 1e-2 like a normal(1e-2) table)
    assert 0.003 < float(np.std(rows)) < 0.03


def test_budget_and_counts():
    assert tt_param_count(1000, 16, 1) == sum(np.prod(c.shape) for c in
                                              tt_cores(1000, 16, 1).values())
    r = tt_rank_for_budget(10_000, 16, 20_000)
    assert tt_param_count(10_000, 16, r) <= 20_000 < tt_param_count(10_000, 16, r + 1)


def test_tt_model_scores_trains_and_counts():
    model = small_model("deepfm")
    params = init_params(model, INFO, 0)
    plan = tt_plan_like(params, {"embed/a": 60, "embed/b": 80, "embed/d": 10}, min_rows=30)
    assert set(plan) == {"embed/a", "embed/b"}   # "d" has 9 rows: stays full
    tt = tt_tables(params, plan, seed=0)
    assert "tt_0" in tt["embed"]["a"] and "embedding" in tt["embed"]["d"]
    assert count_params(tt) < count_params(params)
    batch = random_batch(64)
    scores = make_scorer(model)(tt, batch)
    assert scores.shape == (64,) and np.all(np.isfinite(scores))
    # trains from scratch like the original, and learns the synthetic signal
    ds = synthetic_dataset(20000, seed=0)
    model = build_model("deepfm", ds.info, embed_dim=8, mlp=(32,))
    p0 = init_params(model, ds.info, 0)
    big = {f"embed/{n}": 400 for n, v in zip(ds.info.cat_names, ds.info.vocab_sizes) if v >= 50}
    tt0 = tt_tables(p0, tt_plan_like(p0, big, min_rows=50), seed=0)
    res = train(model, ds, TrainConfig(epochs=2, batch_size=256), params=tt0, progress=False)
    assert "tt_1" in next(t for t in res.params["embed"].values() if "tt_1" in t)
    auc = evaluate(make_scorer(model), res.params, ds.test)["auc"]
    assert auc > 0.6


def test_bad_site_is_named():
    params = init_params(small_model("deepfm"), INFO, 0)
    with pytest.raises(CompressionError, match="embed/zz"):
        tt_tables(params, {"embed/zz": 2})


def test_a_saved_ttrec_model_directory_loads_back(tmp_path):
    """Validation accepts TT cores where a table was (a defect: it wanted "embedding")."""
    from afm_jax.checkpoint import load_model_dir, save_model_dir

    model = small_model("deepfm")
    params = np_tree(lively_params(model))
    tt = np_tree(tt_tables(params, {"embed/a": 2, "embed/b": 3}, seed=0))
    save_model_dir(tmp_path / "m", model, tt)
    _, loaded, _ = load_model_dir(tmp_path / "m")
    batch = random_batch(16)
    np.testing.assert_allclose(np.asarray(make_scorer(model)(loaded, batch)),
                               np.asarray(make_scorer(model)(tt, batch)), rtol=1e-6)
