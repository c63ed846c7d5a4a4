"""Exact identities of AFM on every registered model, statistics numerics, plans, baselines."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afm_jax.compress import (
    afm_embedding,
    afm_linear,
    budget_plan,
    collect_stats,
    compress,
    energy_plan,
    fixed_plan,
    fold_projections,
    load_stats,
    plan_report,
    principal_directions,
    save_stats,
    svd_compress,
)
from afm_jax.compress.afm import get_path, set_path
from afm_jax.compress.stats import batch_moments, merge_moments
from afm_jax.errors import CompressionError
from afm_jax.inference import count_params, make_scorer
from afm_jax.models import NEEDS_SEQUENCE, REGISTRY
from afm_jax.nn import Linear
from tests.helpers import batches, lively_params, logits, np_tree, random_batch, small_model

MODELS = sorted(set(REGISTRY) - NEEDS_SEQUENCE)


def _close(a, b, rel=1e-5):
    scale = max(np.abs(a).max(), 1.0)
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * scale)


@pytest.fixture(scope="module", params=MODELS)
def setup(request):
    model = small_model(request.param)
    params = lively_params(model)
    stats = collect_stats(model, params, batches(4), progress=False)
    return request.param, model, params, stats


def test_full_rank_reproduces_scores(setup):
    name, model, params, stats = setup
    plan = {s: int(st.mean.shape[0]) for s, st in stats.items()}
    comp = compress(params, stats, plan, model=model)
    test = random_batch(512, seed=99)
    _close(logits(model, params, test), logits(model, comp, test))
    # the same jitted scorer takes both forms
    scorer = make_scorer(model)
    assert scorer(comp, test).shape == (512,)


def test_affine_subspace_is_reproduced_at_its_rank(setup):
    """A site whose outputs lie in an r-dim affine subspace is exact at rank r."""
    name, model, params, stats = setup
    if not stats:
        pytest.skip(f"{name} has no compressible sites")
    r = 3
    rng = np.random.default_rng(0)
    low = dict(params)
    for site in stats:
        node = get_path(params, site)
        if "kernel" in node and node["kernel"].shape[1] > r:
            i, o = node["kernel"].shape
            w = rng.normal(size=(i, r)) @ rng.normal(size=(r, o)) / np.sqrt(i * r)
            low = set_path(low, site, {"kernel": jnp.asarray(w, jnp.float32),
                                       "bias": node["bias"]})
        elif "embedding" in node and node["embedding"].shape[1] > r:
            v, d = node["embedding"].shape
            e = rng.normal(size=d) + rng.normal(size=(v, r)) @ rng.normal(size=(r, d))
            low = set_path(low, site, {"embedding": jnp.asarray(e, jnp.float32)})
    st = collect_stats(model, low, batches(4), progress=False)
    plan = {s: min(r, int(x.mean.shape[0])) for s, x in st.items()}
    comp = compress(low, st, plan, model=model)
    test = random_batch(512, seed=7)
    _close(logits(model, low, test), logits(model, comp, test), rel=2e-5)


def test_rank_truncation_changes_scores_and_counts_params(setup):
    name, model, params, stats = setup
    plan = fixed_plan(params, stats, 2)
    comp = compress(params, stats, plan)  # no folding: counts follow the formula exactly
    report = plan_report(params, stats, plan)
    assert count_params(comp) - count_params(params) == report.params_after - report.params_before
    if any(r is not None for r in plan.values()):
        test = random_batch(256, seed=3)
        assert not np.allclose(logits(model, params, test), logits(model, comp, test))


def test_folding_leaves_scores_unchanged():
    model = small_model("wide_deep")
    params = lively_params(model)
    stats = collect_stats(model, params, batches(4), progress=False)
    plan = {s: 3 for s in stats if s.startswith("embed/")}
    unfolded = compress(params, stats, plan)
    folded = compress(params, stats, plan, model=model)
    assert "proj" not in folded["embed"]["a"] and "proj" in unfolded["embed"]["a"]
    assert folded["embed"]["a"]["embedding"].shape == (40, 3)
    test = random_batch(512, seed=5)
    _close(logits(model, unfolded, test), logits(model, folded, test))
    # folding removes each projection (k*d + d) and shrinks the first Dense's rows d -> k
    out = params["mlp"]["dense_0"]["kernel"].shape[1]
    saved = 4 * (3 * 8 + 8) + 4 * (8 - 3) * out
    assert count_params(unfolded) - count_params(folded) == saved
    # then the folded first Dense is itself factorized from the original statistics
    both = compress(params, stats, {**plan, "mlp/dense_0": 4}, model=model)
    assert set(both["mlp"]["dense_0"]) == {"u", "v"}
    assert both["mlp"]["dense_0"]["u"]["kernel"].shape == (4 * 3 + 2 * 8, 4)


def test_fold_is_noop_where_an_interaction_reads_the_embeddings():
    model = small_model("deepfm")
    params = lively_params(model)
    stats = collect_stats(model, params, batches(2), progress=False)
    comp = compress(params, stats, {"embed/a": 2}, model=model)
    assert "proj" in comp["embed"]["a"]
    assert fold_projections(model, comp)["embed"]["a"].keys() == comp["embed"]["a"].keys()


def test_afm_linear_formula():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(6, 5)), rng.normal(size=5)
    x = rng.normal(size=(1000, 6)) @ np.diag([3, 2, 1, .1, .1, .1])
    y = x @ w + b
    from afm_jax.compress import SiteStats
    st = SiteStats(len(y), y.mean(0), np.cov(y.T, bias=True))
    u, _ = principal_directions(st.cov, 2)
    p = afm_linear({"kernel": w, "bias": b}, st, 2)
    np.testing.assert_allclose(p["u"]["kernel"], w @ u)
    np.testing.assert_allclose(p["u"]["bias"], b @ u)
    np.testing.assert_allclose(p["v"]["kernel"], u.T)
    np.testing.assert_allclose(p["v"]["bias"], st.mean - st.mean @ u @ u.T)
    approx = (x @ p["u"]["kernel"] + p["u"]["bias"]) @ p["v"]["kernel"] + p["v"]["bias"]
    np.testing.assert_allclose(approx, (y - st.mean) @ u @ u.T + st.mean, atol=1e-10)
    # the activation variant starts exactly at linear AFM on rows within the shift
    r = afm_linear({"kernel": w, "bias": b}, st, 2, activation="relu", shift_std=10.0)
    h = np.maximum(x @ r["u_relu"]["kernel"] + r["u_relu"]["bias"], 0.0)
    np.testing.assert_allclose(h @ r["v"]["kernel"] + r["v"]["bias"], approx, atol=1e-10)
    e = afm_embedding({"embedding": y}, st, 2)
    np.testing.assert_allclose(e["embedding"] @ e["proj"]["kernel"] + e["proj"]["bias"], approx,
                               atol=1e-10)


def test_eigenvectors_are_sign_fixed_and_descending():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 8))
    cov = a @ a.T
    u, ev = principal_directions(cov, 4)
    assert np.all(np.diff(ev) <= 0)
    assert np.all(u[np.argmax(np.abs(u), 0), np.arange(4)] > 0)
    u2, _ = principal_directions(cov.copy(), 4)
    np.testing.assert_array_equal(u, u2)
    with pytest.raises(CompressionError):
        principal_directions(cov, 9)


class _Probe(nn.Module):
    """A single Linear over the numeric inputs: its output is the site 'probe'."""

    d: int

    @nn.compact
    def __call__(self, cat, num):
        return Linear(self.d, name="probe")(num).sum()


def test_statistics_accurate_with_large_mean():
    """Mean 1e3, std 1, 1e6 rows: covariance within 1e-5 relative of float64 numpy."""
    d, n, bs = 6, 1_000_000, 8192
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    model = _Probe(d)
    params = {"probe": {"kernel": jnp.asarray(mix, jnp.float32),
                        "bias": jnp.full((d,), 1e3, jnp.float32)}}
    data = rng.normal(size=(n, d)).astype(np.float32)
    y64 = (data.astype(np.float64) @ mix.astype(np.float32).astype(np.float64) + 1e3)
    ref_mean, ref_cov = y64.mean(0), np.cov(y64.T, bias=True)
    empty = np.zeros((bs, 0), np.int32)
    stream = ({"cat": empty[: min(bs, n - i)], "num": data[i:i + bs]} for i in range(0, n, bs))
    st = collect_stats(model, params, stream, progress=False)["probe"]
    assert st.count == n
    # outputs are computed in float32 (rounding ~6e-5 at 1e3); compare on a float32-exact ref
    y32 = np.asarray(jax.jit(jax.vmap(lambda x: x @ params["probe"]["kernel"]
                                      + params["probe"]["bias"]))(data), np.float64)
    ref_cov32 = np.cov(y32.T, bias=True)
    rel = np.abs(st.cov - ref_cov32).max() / np.abs(ref_cov32).max()
    assert rel < 1e-5, rel
    np.testing.assert_allclose(st.mean, ref_mean, rtol=1e-6)
    assert np.abs(st.cov - ref_cov).max() / np.abs(ref_cov).max() < 1e-3
    # raw float32 sums of squares lose this: the centred merge is what keeps it
    s1 = y32.astype(np.float32).sum(0, dtype=np.float32)
    s2 = (y32.astype(np.float32).T @ y32.astype(np.float32))
    naive = s2 / n - np.outer(s1 / n, s1 / n)
    assert np.abs(naive - ref_cov32).max() / np.abs(ref_cov32).max() > 1e-3


def test_merge_moments_is_jittable_and_exact():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(100, 3)) + 5, rng.normal(size=(37, 3)) - 2
    m = jax.jit(merge_moments)(batch_moments(jnp.asarray(a)), batch_moments(jnp.asarray(b)))
    both = np.concatenate([a, b])
    np.testing.assert_allclose(m.mean, both.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m.m2) / len(both), np.cov(both.T, bias=True),
                               rtol=1e-4)


def test_stats_save_load_roundtrip(tmp_path):
    model = small_model("deepfm")
    params = lively_params(model)
    stats = collect_stats(model, params, batches(2), progress=False)
    save_stats(tmp_path / "s.npz", stats)
    back = load_stats(tmp_path / "s.npz")
    assert sorted(back) == sorted(stats)
    for s in stats:
        assert back[s].count == stats[s].count
        np.testing.assert_array_equal(back[s].cov, stats[s].cov)
    with pytest.raises(CompressionError):
        collect_stats(model, params, batches(1), sites=["nope"], progress=False)


def test_plans():
    model = small_model("dcnv2")
    params = lively_params(model)
    stats = collect_stats(model, params, batches(3), progress=False)
    plan = fixed_plan(params, stats, 4, sites=["mlp"])
    assert set(plan) == {"mlp/dense_0", "mlp/dense_1"} and set(plan.values()) == {4}
    # a rank that would not save parameters leaves the site full
    assert fixed_plan(params, stats, 24, sites=["mlp/dense_1"])["mlp/dense_1"] is None
    assert fixed_plan(params, stats, 2)["out"] is None
    e = energy_plan(params, stats, 0.9)
    rep = plan_report(params, stats, e)
    assert all(r["variance_kept"] >= 0.9 - 1e-9 for r in rep.rows if r["rank"] is not None)
    b = budget_plan(params, stats, 0.3)
    rep = plan_report(params, stats, b)
    assert rep.params_after <= 0.3 * rep.params_before
    assert rep.params_after > 0.2 * rep.params_before  # the budget is spent, not wasted
    with pytest.raises(CompressionError):
        budget_plan(params, stats, 0.001)
    assert "total" in rep.to_markdown()


def test_svd_baseline_full_rank_is_exact_and_truncation_is_worse_than_afm_on_outputs():
    model = small_model("deepfm")
    params = lively_params(model)
    stats = collect_stats(model, params, batches(4), progress=False)
    full = {s: int(st.mean.shape[0]) for s, st in stats.items() if s != "out"}
    test = random_batch(512, seed=11)
    _close(logits(model, params, test), logits(model, svd_compress(params, full), test), 1e-4)

    # truncated: on the rows the statistics came from, AFM reconstructs each site's outputs
    # at least as well as weight SVD at the same rank -- by construction, as AFM keeps the
    # best rank-k affine subspace of the outputs, and SVD's outputs lie in some rank-k one
    from afm_jax.compress import SiteStats, svd_embedding, svd_linear

    def site_stats(y):
        c = y - y.mean(0)
        return SiteStats(len(y), y.mean(0), c.T @ c / len(y))

    def affine(p, x):
        return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)

    def error(y, y_hat):
        return float(np.mean(np.sum((y - y_hat) ** 2, axis=1)))

    rng = np.random.default_rng(5)
    rank = 3
    # a Linear whose inputs are correlated, so that W's top singular directions are not the
    # outputs' top principal directions
    x = rng.normal(size=(4000, 12)) @ rng.normal(size=(12, 12)) * np.linspace(3.0, 0.1, 12)
    layer = {"kernel": rng.normal(size=(12, 10)).astype(np.float32),
             "bias": rng.normal(size=10).astype(np.float32)}
    y = affine(layer, x)
    afm, svd = afm_linear(layer, site_stats(y), rank), svd_linear(layer, rank)
    afm_err = error(y, affine(afm["v"], affine(afm["u"], x)))
    svd_err = error(y, affine(svd["v"], affine(svd["u"], x)))
    assert afm_err < 0.9 * svd_err, (afm_err, svd_err)
    # an embedding table read with skewed row frequencies
    table = {"embedding": rng.normal(size=(50, 10)).astype(np.float32)}
    ids = rng.zipf(1.5, 4000) % 50
    y = np.asarray(table["embedding"], np.float64)[ids]
    afm, svd = afm_embedding(table, site_stats(y), rank), svd_embedding(table, rank)
    afm_err = error(y, affine(afm["proj"], np.asarray(afm["embedding"], np.float64)[ids]))
    svd_err = error(y, affine(svd["proj"], np.asarray(svd["embedding"], np.float64)[ids]))
    assert afm_err < 0.9 * svd_err, (afm_err, svd_err)


def test_compress_is_pure_and_jittable_scorer_works_on_every_form():
    model = small_model("dcnv2")
    params = lively_params(model)
    before = jax.tree.map(np.array, params)
    stats = collect_stats(model, params, batches(2), progress=False)
    plan = fixed_plan(params, stats, 3)
    comp = compress(params, stats, plan, activation="relu")
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, params))
    assert "u_relu" in comp["mlp"]["dense_0"]
    scorer = make_scorer(model)
    test = random_batch(64, seed=1)
    for p in (params, comp, compress(params, stats, plan), svd_compress(params, plan)):
        s = np.asarray(scorer(p, test))
        assert s.shape == (64,) and np.all((s > 0) & (s < 1))


def test_chunked_scoring_equals_whole_batch_scoring():
    """The CPU scorer works in chunks of rows (cache locality); scores must not change."""
    from afm_jax.inference import logits_fn
    model = small_model("deepfm")
    params = lively_params(model)
    for n in (5, 64, 100):
        b = random_batch(n, seed=n)
        whole = np.asarray(jax.jit(logits_fn(model))(params, b))
        chunked = np.asarray(jax.jit(logits_fn(model, chunk_rows=32))(params, b))
        np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)


def test_degenerate_sites_ranks_and_budgets_are_defined():
    """Constant outputs, rank 0, rank > dim, unmeetable budget: defined results or clear errors."""
    from afm_jax.compress import SiteStats
    d = 6
    const = SiteStats(100, np.full(d, 3.0), np.zeros((d, d)))
    rng = np.random.default_rng(0)
    layer = {"kernel": rng.normal(size=(4, d)), "bias": rng.normal(size=d)}
    x = rng.normal(size=(10, 4))
    # rank 0: the output becomes its mean (for constant outputs that is exact)
    p = afm_linear(layer, const, 0)
    y = (x @ p["u"]["kernel"] + p["u"]["bias"]) @ p["v"]["kernel"] + p["v"]["bias"]
    np.testing.assert_allclose(y, np.full((10, d), 3.0))
    # a constant site keeps all its (zero) variance at rank 0: energy plans pick rank 0
    from afm_jax.compress import variance_kept
    assert variance_kept(const.cov)[0] == 1.0
    with pytest.raises(CompressionError, match="outside"):
        afm_linear(layer, const, d + 1)
    with pytest.raises(CompressionError, match="rank must be >= 0"):
        fixed_plan({"s": layer}, {"s": const}, -1)
    # rank larger than the site's dim in a plan is capped at the dim, then left full
    assert fixed_plan({"s": layer}, {"s": const}, 99)["s"] is None
    with pytest.raises(CompressionError, match="cannot be met"):
        budget_plan({"s": layer}, {"s": const}, 0.01)


def test_compress_model_is_collect_plan_map_in_one_call():
    """`compress_model` gives what its pieces give by hand, in a CompressionResult."""
    from afm_jax.compress import CompressionResult, compress_model, make_plan
    from afm_jax.data import iterate_batches, synthetic_dataset
    from afm_jax.models import build_model

    ds = synthetic_dataset(3000, seed=1)
    model = build_model("deepfm", ds.info, embed_dim=8, mlp=(16, 8))
    params = lively_params(model, info=ds.info)
    res = compress_model(model, params, ds, "rank:3", sites=["mlp"], stats_rows=1000,
                         batch_size=500, progress=False)
    assert isinstance(res, CompressionResult) and res.finetune is None
    first = ds.train
    sub = type(first)(cat=first.cat[:1000], num=first.num[:1000], label=first.label[:1000])
    stats = collect_stats(model, params, iterate_batches(sub, 500), progress=False)
    plan = make_plan(params, stats, "rank:3", ["mlp"])
    assert res.plan == plan and set(plan) == {"mlp/dense_0", "mlp/dense_1"}
    jax.tree.map(_close, compress(params, stats, plan, model=model), res.params)
    assert res.report.params_after < res.report.params_before
    # a ready plan works as the spec does
    again = compress_model(model, params, ds, plan, stats_rows=1000, batch_size=500,
                           progress=False)
    jax.tree.map(_close, res.params, again.params)


def test_finetune_trains_folded_tables_and_factors_and_freezes_the_rest():
    """Wide&Deep folds compressed tables into its first Dense; fine-tuning "factors" must move
    those tables (a defect froze them) and leave full layers and the first order alone."""
    from afm_jax.compress import finetune
    from afm_jax.data import iterate_batches, synthetic_dataset
    from afm_jax.models import build_model

    ds = synthetic_dataset(3000, n_categorical=4, vocab_sizes=[20, 30, 40, 50])
    model = build_model("wide_deep", ds.info, embed_dim=8, mlp=(16, 8))
    params = np_tree(lively_params(model, info=ds.info))
    stats = collect_stats(model, params, iterate_batches(ds.train, 512), progress=False)
    embed = {s: 3 for s in stats if s.startswith("embed/")}
    small = np_tree(compress(params, stats, {**embed, "mlp/dense_1": 4}, model=model))
    assert all(np.shape(t["embedding"])[1] == 3 for t in small["embed"].values()
               if "embedding" in t) and "proj" not in small["embed"]["c0"]   # folded
    res = finetune(model, small, ds, 5, learning_rate=1e-2, progress=False)
    tuned, report = np_tree(res.params), res.report
    assert not np.array_equal(tuned["embed"]["c0"]["embedding"], small["embed"]["c0"]["embedding"])
    assert not np.array_equal(tuned["mlp"]["dense_1"]["u"]["kernel"],
                              small["mlp"]["dense_1"]["u"]["kernel"])
    assert np.array_equal(tuned["mlp"]["dense_0"]["kernel"], small["mlp"]["dense_0"]["kernel"])
    assert np.array_equal(tuned["linear"]["weights"], small["linear"]["weights"])
    assert report["steps"] == 5
