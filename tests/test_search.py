"""Quality-target plans (auc-drop / logloss-rise), bytes plans, and calibration on a sample."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from afm_jax.compress import (
    QualityTarget,
    SiteStats,
    bytes_plan,
    calibration_indices,
    collect_stats,
    compress_model,
    parse_quality_target,
    plan_report,
    search_plan,
)
from afm_jax.compress.afm import get_path, set_path
from afm_jax.compress.search import parse_bytes
from afm_jax.data import EncodedSplit, iterate_batches, synthetic_dataset
from afm_jax.errors import CompressionError
from afm_jax.inference import count_params, evaluate, make_scorer
from afm_jax.models import build_model
from tests.helpers import lively_params

SITE = "mlp/dense_0"


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(6000, seed=3)


@pytest.fixture(scope="module")
def trained():
    """A small DeepFM after one epoch on 16k synthetic rows (valid AUC ~0.68), and its data."""
    from afm_jax.train import TrainConfig, train
    data = synthetic_dataset(20000, seed=3)
    model = build_model("deepfm", data.info, embed_dim=8, mlp=(32, 16))
    # dense tables, as this fixture was built with (auto now picks row-wise for these tables
    # at batch 256, which trains another model; the search tests need one whose bisection
    # takes several steps)
    params = train(model, data, TrainConfig(epochs=1, batch_size=256, learning_rate=1e-2,
                                            table_optimizer="dense"), progress=False).params
    return data, model, params


def _low_rank_params(model, info, rank: int, seed: int = 0, noise: float = 0.0):
    """Lively params with the first MLP kernel of exactly `rank` (plus optional full-rank noise)."""
    params = lively_params(model, seed=seed, info=info)
    node = get_path(params, SITE)
    i, o = node["kernel"].shape
    rng = np.random.default_rng(seed)
    a = np.linalg.qr(rng.normal(size=(i, rank)))[0]
    b = np.linalg.qr(rng.normal(size=(o, rank)))[0].T
    w = 3.0 * a @ b + noise * rng.normal(size=(i, o)) / np.sqrt(i)
    return set_path(params, SITE, {"kernel": jnp.asarray(w, jnp.float32), "bias": node["bias"]})


# --- specs -------------------------------------------------------------------------------------

def test_quality_specs_parse_and_malformed_ones_name_the_spec():
    assert parse_quality_target("auc-drop:0.0005") == QualityTarget(0.0005, None)
    assert parse_quality_target("logloss-rise:0.01") == QualityTarget(None, 0.01)
    both = parse_quality_target("auc-drop:0.001, logloss-rise:0.002")
    assert both == QualityTarget(0.001, 0.002) and str(both) == "auc-drop:0.001,logloss-rise:0.002"
    for bad in ("auc-drop:", "auc-drop:x", "auc-drop:-0.1", "auc-drop:nan", "auc-drop:inf",
                "auc-drop:0.1,auc-drop:0.2", "auc-drop:0.1,bogus:1", "auc-drop:0.1,",
                "auc-drop"):
        with pytest.raises(CompressionError, match="bad plan") as e:
            parse_quality_target(bad)
        assert repr(bad) in str(e.value)
    assert parse_bytes("bytes:4M") == 4 << 20 and parse_bytes("bytes:1_000") == 1000
    for bad in ("bytes:", "bytes:zero", "bytes:0", "bytes:-5", "bytes:inf"):
        with pytest.raises(CompressionError, match="bytes:N"):
            parse_bytes(bad)


def test_compress_model_rejects_a_malformed_spec_before_the_statistics_pass(data):
    model = build_model("deepfm", data.info, embed_dim=8, mlp=(32, 16))
    params = lively_params(model, info=data.info)
    with pytest.raises(CompressionError, match="'auc-drop:oops'"):
        compress_model(model, params, data, "auc-drop:oops", progress=False)
    with pytest.raises(CompressionError, match="'logloss-rise:0.1,foo:2'"):
        compress_model(model, params, data, "logloss-rise:0.1,foo:2", progress=False)


# --- the search, pure (a fake scorer) ----------------------------------------------------------

def _toy():
    """Three Linear sites with decaying spectra; params and statistics only."""
    rng = np.random.default_rng(0)
    params, stats = {}, {}
    for name, (i, o) in {"a": (40, 30), "b": (50, 20), "c": (30, 30)}.items():
        params[name] = {"kernel": rng.normal(size=(i, o)), "bias": np.zeros(o)}
        q = np.linalg.qr(rng.normal(size=(o, o)))[0]
        stats[name] = SiteStats(1000, np.zeros(o), q @ np.diag(0.7 ** np.arange(o)) @ q.T)
    return params, stats


def _fake_score(params, stats, quality):
    """Scores a plan by a made-up function of its size: `quality(params_after) -> (auc, ll)`."""
    def score(plan):
        rep = plan_report(params, stats, plan)
        auc, ll = quality(rep.params_after, rep.params_before)
        return {"auc": auc, "logloss": ll}
    return score


def test_search_never_returns_a_plan_beyond_the_target_even_when_quality_is_not_monotone():
    params, stats = _toy()
    target = QualityTarget(auc_drop=0.01)

    def wiggly(after, before):  # better with size on the whole, but with rejected islands
        f = after / before
        island = f < 0.8 and int(f * 97) % 3 == 0
        auc = 0.8 - 0.05 * (1 - f) ** 2 - (0.02 if island else 0.0)
        return auc, 0.4
    res = search_plan(params, stats, target, _fake_score(params, stats, wiggly))
    assert res.steps and res.baseline["auc"] == pytest.approx(0.8)
    chosen = res.chosen
    assert res.compressed and chosen is not None and chosen.accepted
    assert chosen.auc_drop <= 0.01
    # the plan returned is the one scored at the chosen budget, and it is the smallest accepted
    rep = plan_report(params, stats, res.plan)
    assert rep.params_after == chosen.params_after
    assert chosen.params_after == min(s.params_after for s in res.steps if s.accepted)
    # scoring the returned plan again gives the accepted scores
    auc, _ = wiggly(rep.params_after, rep.params_before)
    assert res.baseline["auc"] - auc <= 0.01
    assert "(chosen)" in res.to_markdown() and len(res.to_json()["steps"]) == len(res.steps)


def test_search_returns_the_uncompressed_plan_when_no_budget_meets_the_target():
    params, stats = _toy()
    res = search_plan(params, stats, QualityTarget(0.0, 0.0),
                      _fake_score(params, stats, lambda a, b: (0.8 - 0.1 * (a < b), 0.4)))
    assert not res.compressed and res.budget is None and res.chosen is None
    assert all(r is None for r in res.plan.values()) and set(res.plan) == {"a", "b", "c"}
    assert "uncompressed" in res.note
    assert all(not s.accepted for s in res.steps)


def test_search_stops_at_the_smallest_budget_when_everything_passes():
    params, stats = _toy()
    res = search_plan(params, stats, QualityTarget(logloss_rise=1.0),
                      _fake_score(params, stats, lambda a, b: (0.8, 0.4)))
    assert len(res.steps) == 1 and res.compressed
    assert all(r == 1 for r in res.plan.values())


def test_search_finds_the_exact_rank_of_a_one_site_monotone_quality():
    """A site whose quality is perfect from rank r on: the search lands on rank r exactly."""
    params, stats = _toy()
    r = 7
    def score(plan):
        k = plan["a"] if plan["a"] is not None else 30
        return {"auc": 0.8 - 0.01 * max(r - k, 0), "logloss": 0.4}
    res = search_plan(params, stats, QualityTarget(0.0), score, sites=["a"])
    assert res.plan == {"a": r}


# --- bytes plans -------------------------------------------------------------------------------

def test_bytes_plan_fits_the_whole_model(data):
    from afm_jax.compress import compress
    model = build_model("deepfm", data.info, embed_dim=8, mlp=(32, 16))
    params = lively_params(model, info=data.info)
    stats = collect_stats(model, params, iterate_batches(data.train, 1000), progress=False)
    total = count_params(params)
    assert all(r is None for r in bytes_plan(params, stats, 4 * total).values())
    n_bytes = int(4 * total * 0.6)
    plan = bytes_plan(params, stats, n_bytes)
    assert any(r is not None for r in plan.values())
    assert 4 * count_params(compress(params, stats, plan, model=model)) <= n_bytes
    with pytest.raises(CompressionError, match="bytes:10 cannot be met"):
        bytes_plan(params, stats, 10)


def test_int8_bytes_plan_fits_the_int8_model_and_keeps_more(trained):
    """With int8, bytes:N fits the stored int8 model, so it keeps higher ranks than the float
    plan for the same N; fit_bytes measures what it fits."""
    from afm_jax.forms import is_int8
    from afm_jax.inference import count_bytes

    data, model, params = trained
    n_bytes = int(4 * count_params(params) * 0.3)
    common = dict(calibration_rows=2000, batch_size=1000, progress=False)
    flt = compress_model(model, params, data, f"bytes:{n_bytes}", **common)
    q = compress_model(model, params, data, f"bytes:{n_bytes}", int8=True, **common)
    assert count_bytes(flt.params) <= n_bytes and count_bytes(q.params) <= n_bytes
    assert 0.8 * n_bytes < count_bytes(q.params)                  # it fills the bytes
    assert q.report.params_after > flt.report.params_after        # int8 affords more
    assert is_int8(q.params["mlp"]["dense_0"]) or is_int8(q.params["mlp"]["dense_0"]["u"])
    with pytest.raises(CompressionError, match="cannot be met"):
        compress_model(model, params, data, "bytes:100", int8=True, **common)
    # a quality target with int8 scores the int8 candidates: the stored model keeps the drop
    d = 0.003
    res = compress_model(model, params, data, f"auc-drop:{d}", int8=True, **common)
    scorer = make_scorer(model)
    base, after = (evaluate(scorer, p, data.valid) for p in (params, res.params))
    assert base["auc"] - after["auc"] <= d + 1e-9
    assert res.search.chosen is None or res.search.chosen.auc == pytest.approx(after["auc"],
                                                                                abs=1e-6)


# --- the search on a model ---------------------------------------------------------------------

def test_auc_drop_plan_never_exceeds_the_drop_on_validation(trained):
    data, model, params = trained
    d = 0.003
    res = compress_model(model, params, data, f"auc-drop:{d}", calibration_rows=2000,
                         batch_size=1000, progress=False)
    found = res.search
    assert found is not None and found.steps
    scorer = make_scorer(model)
    base = evaluate(scorer, params, data.valid)
    after = evaluate(scorer, res.params, data.valid)
    assert found.baseline["auc"] == pytest.approx(base["auc"], abs=1e-6)
    assert base["auc"] - after["auc"] <= d + 1e-9
    for s in found.steps:
        assert s.accepted == (s.auc_drop <= d)
    assert found.compressed and len(found.steps) > 2  # a real bisection, not a corner case
    if found.compressed:
        assert found.chosen.auc == pytest.approx(after["auc"], abs=1e-6)
        assert res.report.params_after == found.chosen.params_after
    print(f"\nauc-drop:{d}: budget {found.budget}, ratio {res.report.ratio:.2f}x, "
          f"valid AUC {base['auc']:.5f} -> {after['auc']:.5f}, {len(found.steps)} tries")


def test_search_lands_on_the_rank_of_an_exactly_low_rank_site(data):
    """A Linear of rank r: with only that site, a drop of ~0 lands on rank r, not r - 1."""
    r = 4
    model = build_model("deepfm", data.info, embed_dim=8, mlp=(32, 16))
    params = _low_rank_params(model, data.info, r)
    # labels the original ranks perfectly (AUC 1): any change of ranking is an AUC drop
    probs = np.asarray(make_scorer(model)(params, {k: jnp.asarray(getattr(data.valid, k))
                                                   for k in ("cat", "num", "label")}))
    labels = (probs > np.median(probs)).astype(np.float32)
    valid = EncodedSplit(cat=data.valid.cat, num=data.valid.num, label=labels)
    ds = dataclasses.replace(data, valid=valid)
    res = compress_model(model, params, ds, "auc-drop:1e-4", sites=[SITE],
                         calibration_rows=None, batch_size=1000, progress=False)
    assert res.search.baseline["auc"] == pytest.approx(1.0)
    assert res.plan == {SITE: r}, res.search.to_markdown()
    assert any(not s.accepted for s in res.search.steps)  # a smaller rank was tried, refused


# --- calibration on a sample -------------------------------------------------------------------

def test_calibration_indices_are_an_even_sorted_sample():
    idx = calibration_indices(1_000_003, 1000)
    assert len(idx) == 1000 and np.all(np.diff(idx) > 0)
    assert idx[0] < 1001 and idx[-1] >= 1_000_003 - 1001 and idx[-1] < 1_000_003
    counts = np.histogram(idx, bins=10, range=(0, 1_000_003))[0]
    assert counts.min() >= 99 and counts.max() <= 101
    np.testing.assert_array_equal(idx, calibration_indices(1_000_003, 1000))  # seeded
    assert calibration_indices(50, 100) is None and calibration_indices(50, None) is None
    assert len(calibration_indices(7, 6)) == 6
    with pytest.raises(CompressionError, match=">= 1"):
        calibration_indices(50, 0)


def _principal_angles_deg(cov_a: np.ndarray, cov_b: np.ndarray, k: int) -> np.ndarray:
    ua = np.linalg.eigh(cov_a)[1][:, ::-1][:, :k]
    ub = np.linalg.eigh(cov_b)[1][:, ::-1][:, :k]
    s = np.linalg.svd(ua.T @ ub, compute_uv=False)
    return np.degrees(np.arccos(np.clip(s, -1.0, 1.0)))


def test_calibration_sample_spans_the_same_top_subspace_as_the_full_pass():
    data = synthetic_dataset(30000, seed=5)
    model = build_model("deepfm", data.info, embed_dim=8, mlp=(32, 16))
    k = 4
    params = _low_rank_params(model, data.info, k, noise=0.3)
    full = compress_model(model, params, data, "rank:4", sites=["mlp"], calibration_rows=None,
                          batch_size=2000, progress=False)
    sample = compress_model(model, params, data, "rank:4", sites=["mlp"], calibration_rows=1000,
                            batch_size=2000, progress=False)
    assert full.calibration_rows == len(data.train) and sample.calibration_rows == 1000
    evals = np.linalg.eigvalsh(full.stats[SITE].cov)[::-1]
    gap = evals[k - 1] / evals[k]
    angles = _principal_angles_deg(full.stats[SITE].cov, sample.stats[SITE].cov, k)
    print(f"\n{SITE}: eigengap lambda_{k}/lambda_{k + 1} = {gap:.1f}; principal angles "
          f"(deg), 1000 of {len(data.train)} rows vs all: {np.round(angles, 3).tolist()}")
    assert gap > 5 and angles.max() < 10.0
    # the sample is what the statistics saw: the same as collecting on those rows by hand
    idx = calibration_indices(len(data.train), 1000)
    tr = data.train
    sub = EncodedSplit(cat=tr.cat[idx], num=tr.num[idx], label=tr.label[idx])
    by_hand = collect_stats(model, params, iterate_batches(sub, 2000), progress=False)
    np.testing.assert_allclose(by_hand[SITE].cov, sample.stats[SITE].cov, rtol=1e-5, atol=1e-6)


def test_stats_rows_keeps_its_first_rows_meaning(data):
    model = build_model("deepfm", data.info, embed_dim=8, mlp=(32, 16))
    params = lively_params(model, info=data.info)
    res = compress_model(model, params, data, "rank:2", sites=["mlp"], stats_rows=500,
                         batch_size=500, progress=False)
    tr = data.train
    sub = EncodedSplit(cat=tr.cat[:500], num=tr.num[:500], label=tr.label[:500])
    first = collect_stats(model, params, iterate_batches(sub, 500), progress=False)
    assert res.calibration_rows == 500
    np.testing.assert_allclose(first[SITE].cov, res.stats[SITE].cov, rtol=1e-5, atol=1e-6)
    with pytest.raises(CompressionError, match="not both"):
        compress_model(model, params, data, "rank:2", stats_rows=500, calibration_rows=100,
                       progress=False)


# --- the command ------------------------------------------------------------------------------

def test_cli_compress_with_a_quality_target_writes_the_search_table(tmp_path, capsys):
    import json

    from afm_jax.cli import main
    m, c = str(tmp_path / "m"), str(tmp_path / "c")
    common = ["--json", "--no-progress"]
    assert main(["train", "--data", "synthetic:8000", "--model", "deepfm", "--mlp", "16",
                 "--embed-dim", "4", "--epochs", "1", "--out", m, *common]) == 0
    capsys.readouterr()
    assert main(["compress", "--model-dir", m, "--plan", "auc-drop:0.01,logloss-rise:0.01",
                 "--calibration-rows", "1000", "--out", c, *common]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["calibration_rows"] == 1000 and out["search"]["steps"]
    plan_md = (tmp_path / "c" / "plan.md").read_text()
    assert "## search" in plan_md and "| try | budget |" in plan_md
    meta = json.loads((tmp_path / "c" / "model.json").read_text())
    assert meta["compression"]["search"]["target"] == "auc-drop:0.01,logloss-rise:0.01"
    # malformed specs and calibration flags: clean errors, not tracebacks
    assert main(["compress", "--model-dir", m, "--plan", "auc-drop:lots", "--out", c,
                 "--no-progress"]) == 2
    assert "'auc-drop:lots'" in capsys.readouterr().err
    assert main(["compress", "--model-dir", m, "--stats-rows", "100", "--calibration-rows",
                 "all", "--out", c, "--no-progress"]) == 2
    assert "not both" in capsys.readouterr().err
