"""Multi-valued fields in the models (issue 22, model side): pooling against numpy, zero gradient
on padding, every registry model on bags, row-wise updates with bags, AFM on pooled fields."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from afm_jax import rowwise
from afm_jax.compress.afm import compress
from afm_jax.compress.ranks import SiteShape, site_shapes
from afm_jax.compress.stats import collect_stats
from afm_jax.data import BagInfo, FeatureInfo, iterate_batches, load_dataset
from afm_jax.errors import CompressionError
from afm_jax.inference import logits_fn
from afm_jax.models import NEEDS_SEQUENCE, REGISTRY, build_model
from afm_jax.packing import bag_rows, layout_of, pack, unpack
from afm_jax.pooling import COMBINERS, affine_projection, model_inputs, pool
from afm_jax.train import init_params, make_train_step

LR = 1e-2


def _reference(rows: np.ndarray, n: int, combiner: str) -> np.ndarray:
    real = rows[:n].astype(np.float64)
    if n == 0:
        return np.zeros(rows.shape[1:])
    return {"sum": real.sum(0), "mean": real.mean(0), "sqrtn": real.sum(0) / np.sqrt(n),
            "max": real.max(0)}[combiner]


@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("max_len", [1, 6])
def test_pool_matches_numpy_for_ragged_and_empty_bags(combiner, max_len):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(9, max_len, 5)).astype(np.float32)
    lengths = np.array([0, max_len, 1, max_len // 2, 0, max_len, 1, max_len - 1, 0], np.int32)
    got = jax.vmap(lambda r, n: pool(r, n, combiner))(jnp.asarray(rows), jnp.asarray(lengths))
    want = np.stack([_reference(r, n, combiner) for r, n in zip(rows, lengths)])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(got)[lengths == 0] == 0)          # an empty bag pools to zero
    scalars = jax.vmap(lambda r, n: pool(r, n, combiner))(jnp.asarray(rows[..., 0]),
                                                            jnp.asarray(lengths))
    np.testing.assert_allclose(np.asarray(scalars), want[:, 0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("combiner", COMBINERS)
def test_pool_with_a_projection_pools_the_reconstructed_rows(combiner):
    # a compressed table's rows are c K + b: pooling must equal pooling those rows
    rng = np.random.default_rng(1)
    c = rng.normal(size=(4, 5, 3)).astype(np.float32)
    proj = {"kernel": rng.normal(size=(3, 6)).astype(np.float32),
            "bias": rng.normal(size=6).astype(np.float32)}
    lengths = np.array([0, 5, 2, 1], np.int32)
    got = jax.vmap(lambda r, n: pool(r, n, combiner, affine_projection(proj)))(c, lengths)
    full = c @ proj["kernel"] + proj["bias"]
    want = np.stack([_reference(r, n, combiner) for r, n in zip(full, lengths)])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("combiner", COMBINERS)
def test_padding_gets_exactly_zero_gradient(combiner):
    rng = np.random.default_rng(2)
    rows = jnp.asarray(rng.normal(size=(6, 7, 4)).astype(np.float32))
    lengths = jnp.asarray([0, 7, 3, 1, 5, 2], jnp.int32)
    probe = jnp.asarray(rng.normal(size=(6, 4)).astype(np.float32))
    g = jax.grad(lambda r: (jax.vmap(lambda x, n: pool(x, n, combiner))(r, lengths)
                            * probe).sum())(rows)
    g = np.asarray(g)
    pad = np.arange(7)[None, :] >= np.asarray(lengths)[:, None]
    assert np.all(g[pad] == 0.0)
    assert np.all(np.isfinite(g)) and np.abs(g[~pad]).sum() > 0


# ------------------------------------------------------------------------------ the models

# a categorical "item", a bag with its own table and a sequence sharing the item's table
INFO = FeatureInfo(cat_names=("item", "user"), vocab_sizes=(6, 4), num_names=("x",),
                   bags=(BagInfo("tags", 5, 3, "sum"), BagInfo("hist", 6, 4, "mean", shares="item")))


def _bag_batch(rng, n: int, info=INFO, every_row: bool = False) -> dict:
    cat = np.stack([rng.integers(0, v, n) for v in info.vocab_sizes], 1).astype(np.int32)
    if every_row:
        cat = np.stack([np.arange(n) % v for v in info.vocab_sizes], 1).astype(np.int32)
    bags, lens = {}, {}
    for b in info.bags:
        lens[b.name] = rng.integers(0, b.max_len + 1, n).astype(np.int32)
        if every_row:
            lens[b.name][: b.vocab_size] = b.max_len
        ids = rng.integers(0, b.vocab_size, (n, b.max_len)).astype(np.int32)
        if every_row:
            ids[: b.vocab_size, 0] = np.arange(b.vocab_size)
        ids[np.arange(b.max_len)[None, :] >= lens[b.name][:, None]] = 0   # padding holds 0
        bags[b.name] = ids
    return {"cat": cat, "num": rng.normal(size=(n, len(info.num_names))).astype(np.float32),
            "label": (rng.uniform(size=n) < 0.4).astype(np.float32), "bags": bags, "bag_len": lens}


def _lively(params, seed: int = 1):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys)])


def _model(name: str, info=INFO):
    config = {} if name == "lr" else {"embed_dim": 4}
    if name in ("deepfm", "wide_deep", "dcn", "dcnv2", "fibinet", "nfm", "autoint", "gdcn",
                "xdeepfm", "pnn"):
        config["mlp"] = (8,)
    return build_model(name, info, **config)


def _numpy_fm_logits(params, batch) -> np.ndarray:
    """FM by hand in numpy: first order and pairwise products over categorical fields, pooled
    bags (tags: sum, hist: mean over the item table) and the numeric field."""
    emb, lin = params["embed"], params["linear"]
    w = np.asarray(lin["weights"], np.float64)
    out = []
    for i in range(len(batch["cat"])):
        item, user = batch["cat"][i]
        nt, nh = batch["bag_len"]["tags"][i], batch["bag_len"]["hist"][i]
        tags, hist = batch["bags"]["tags"][i][:nt], batch["bags"]["hist"][i][:nh]
        e_item, e_user = (np.asarray(emb["item"]["embedding"], np.float64),
                          np.asarray(emb["user"]["embedding"], np.float64))
        e_tags = np.asarray(emb["tags"]["embedding"], np.float64)
        vecs = [e_item[item], e_user[user], e_tags[tags].sum(0),
                e_item[hist].mean(0) if nh else np.zeros(4),
                batch["num"][i, 0] * np.asarray(emb["x"]["vector"], np.float64)]
        first = (w[item] + w[6 + user] + w[10 + tags].sum() + (w[hist].mean() if nh else 0.0)
                 + float(lin["bias"]) + batch["num"][i] @ np.asarray(lin["num_weights"]))
        v = np.stack(vecs)
        s = v.sum(0)
        out.append(first + 0.5 * (s @ s - (v * v).sum()))
    return np.array(out)


def test_fm_with_bags_matches_numpy_per_field_and_packed():
    model = _model("fm")
    params = _lively(init_params(model, INFO, 0))
    assert params["linear"]["weights"].shape == (6 + 4 + 5,)   # no rows for the shared bag
    assert set(params["embed"]) == {"item", "user", "tags", "x"}
    batch = _bag_batch(np.random.default_rng(3), 16)
    want = _numpy_fm_logits(params, batch)
    f = logits_fn(model)
    np.testing.assert_allclose(np.asarray(f(params, batch)), want, rtol=1e-5, atol=1e-6)
    packed = pack(model, params)
    layout = packed["embed"]["layout"]
    assert packed["embed"]["table_4"].shape == (6 + 4 + 5, 4)     # tags' rows after the fields
    assert [b.table.name for b in layout.bags] == ["tags", "item"]
    np.testing.assert_allclose(np.asarray(f(packed, batch)), want, rtol=1e-5, atol=1e-6)
    back = unpack(model, packed)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_bag_rows_gives_the_unpooled_rows_and_mask():
    model = _model("fm")
    params = _lively(init_params(model, INFO, 0))
    packed = pack(model, params)
    batch = _bag_batch(np.random.default_rng(4), 3)
    x = jax.tree.map(lambda a: a[1], model_inputs(batch))
    rows, mask = bag_rows(packed["embed"], x, "hist")
    ids, n = batch["bags"]["hist"][1], batch["bag_len"]["hist"][1]
    np.testing.assert_array_equal(np.asarray(mask), np.arange(4) < n)
    np.testing.assert_allclose(np.asarray(rows), np.asarray(params["embed"]["item"]["embedding"])[ids])


def test_padding_rows_of_a_table_get_zero_gradient_through_the_model():
    # padding holds id 0; no real item or field reads row 0 of "tags": its gradient is exactly 0
    model = _model("deepfm")
    params = _lively(init_params(model, INFO, 0))
    batch = _bag_batch(np.random.default_rng(5), 12)
    batch["bags"]["tags"] = np.where(batch["bags"]["tags"] == 0, 1, batch["bags"]["tags"])
    mask = np.arange(3)[None, :] < batch["bag_len"]["tags"][:, None]
    batch["bags"]["tags"][~mask] = 0
    f = logits_fn(model)
    for p in (params, pack(model, params)):
        g = jax.grad(lambda q: optax.sigmoid_binary_cross_entropy(f(q, batch), batch["label"]).mean())(p)
        unpacked = unpack(model, g)
        assert np.all(np.asarray(unpacked["embed"]["tags"]["embedding"])[0] == 0.0)
        assert np.abs(np.asarray(unpacked["embed"]["tags"]["embedding"])[1:]).sum() > 0
        assert float(np.asarray(unpacked["linear"]["weights"])[10]) == 0.0   # tags id 0


@pytest.fixture(scope="module")
def synthetic_bags():
    return load_dataset("synthetic:600", synthetic_bags="2:3:6")


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - NEEDS_SEQUENCE))
def test_every_registry_model_trains_and_scores_with_bags(name, synthetic_bags):
    ds = synthetic_bags
    model = _model(name, ds.info)
    params = pack(model, init_params(model, ds.info, 0))
    batch = next(iterate_batches(ds.train, 64))
    step = make_train_step(model, optax.adam(LR))
    p = jax.tree.map(jnp.copy, params)
    state = optax.adam(LR).init(p)
    before = logits_fn(model)(params, batch)
    p, state, loss = step(p, state, batch)
    after = logits_fn(model)(p, batch)
    assert np.isfinite(float(loss))
    assert after.shape == (64,) and np.all(np.isfinite(np.asarray(after)))
    assert not np.allclose(np.asarray(before), np.asarray(after))
    # the pooled fields are fields: per-field and packed params score alike
    np.testing.assert_allclose(np.asarray(logits_fn(model)(unpack(model, p), batch)),
                               np.asarray(after), rtol=1e-5, atol=1e-5)
    # with the bags' ids changed, the scores change (the models read them)
    other = dict(batch, bags={k: (v + 1) % 50 for k, v in batch["bags"].items()})
    assert not np.allclose(np.asarray(logits_fn(model)(p, other)), np.asarray(after))


# ------------------------------------------------------------------------- row-wise updates

def test_lazy_adam_with_bags_equals_dense_adam_when_every_row_is_touched():
    model = _model("deepfm")
    params = pack(model, _lively(init_params(model, INFO, 0)))
    rng = np.random.default_rng(6)
    batches = [_bag_batch(rng, 12, every_row=True) for _ in range(4)]
    dense_step, row_step = make_train_step(model, optax.adam(LR)), rowwise.make_step(model, LR)
    pd, sd = jax.tree.map(jnp.copy, params), optax.adam(LR).init(params)
    pr = jax.tree.map(jnp.copy, params)
    sr = rowwise.init(pr, LR, "rowwise")
    for b in batches:
        pd, sd, loss_d = dense_step(pd, sd, b)
        pr, sr, loss_r = row_step(pr, sr, b)
        np.testing.assert_allclose(float(loss_r), float(loss_d), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(pd), jax.tree.leaves(pr), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def test_duplicate_ids_within_and_across_bags_combine_as_the_dense_gradient():
    model = _model("deepfm")
    params = pack(model, _lively(init_params(model, INFO, 0)))
    batch = _bag_batch(np.random.default_rng(7), 8)
    batch["bags"]["hist"][:, :] = np.array([2, 2, 3, 0])      # duplicates in a bag
    batch["bag_len"]["hist"][:] = 3
    batch["cat"][:, 0] = 2                                    # and the item reads row 2 too
    uniques, _ = rowwise.resolve_rows(params, model, model_inputs(batch))
    g_rows = rowwise.table_grads(model, params, batch)
    f = logits_fn(model)
    dense = jax.grad(lambda p: optax.sigmoid_binary_cross_entropy(f(p, batch), batch["label"]).mean())(params)
    for name, g in g_rows.items():
        parent, key = name.split("/")
        full = np.asarray(dense[parent][key])
        u = np.asarray(uniques[name])
        real = u < full.shape[0]
        assert len(set(u[real].tolist())) == real.sum()       # each row once
        np.testing.assert_allclose(np.asarray(g)[real], full[u[real]], rtol=1e-5, atol=1e-8)
        rest = np.setdiff1d(np.arange(full.shape[0]), u[real])
        assert np.all(full[rest] == 0)
    # the padding of "hist" (id 0, position 3) touches no row: row 0 of item is read by nobody
    assert 0 not in np.asarray(uniques["embed/table_4"]).tolist()


# ------------------------------------------------------------------------------------- AFM

def _full_rank_plan(stats, dim: int) -> dict:
    return {s: dim for s in stats if s.startswith("embed/") and np.shape(stats[s].mean) == (dim,)
            and s != "embed/x"}


@pytest.mark.parametrize("name", ["fm", "deepfm", "wide_deep"])
@pytest.mark.parametrize("combiner", ["sum", "sqrtn", "max"])
def test_afm_on_pooled_and_shared_tables_is_exact_at_full_rank(name, combiner):
    info = FeatureInfo(INFO.cat_names, INFO.vocab_sizes, INFO.num_names,
                       (BagInfo("tags", 5, 3, combiner), BagInfo("hist", 6, 4, "mean", shares="item")))
    model = _model(name, info)
    params = _lively(init_params(model, info, 0))
    rng = np.random.default_rng(8)
    batches = [_bag_batch(rng, 32, info) for _ in range(3)]
    stats = collect_stats(model, params, batches, progress=False)
    assert "embed/tags" in stats and "embed/hist" not in stats     # hist merged into item
    assert stats["embed/tags"].count == sum(int((b["bag_len"]["tags"] > 0).sum()) for b in batches)
    rows_item = sum(len(b["cat"]) for b in batches)
    hist_full = sum(int((b["bag_len"]["hist"] > 0).sum()) for b in batches)
    assert stats["embed/item"].count == rows_item + hist_full
    shapes = site_shapes(params, stats)   # what plans, budgets and bytes:N count
    assert shapes["embed/tags"] == SiteShape("embedding", 5, 4)
    assert shapes["embed/item"] == SiteShape("embedding", 6, 4) and "embed/hist" not in shapes
    plan = _full_rank_plan(stats, 4)
    assert {"embed/item", "embed/tags", "embed/user"} <= set(plan)
    small = jax.tree.map(jnp.asarray, compress(params, stats, plan, model=model))
    assert "proj" in small["embed"]["tags"] and "proj" in small["embed"]["item"]   # not folded
    f = logits_fn(model)
    for b in batches:
        want = np.asarray(f(params, b))
        for p in (small, pack(model, small)):
            got = np.asarray(f(p, b))
            assert np.max(np.abs(got - want)) <= 1e-5 * max(1.0, np.max(np.abs(want)))


def test_stats_refuse_a_shared_bag_site_by_name():
    model = _model("fm")
    params = init_params(model, INFO, 0)
    with pytest.raises(CompressionError, match="merged into"):
        collect_stats(model, params, [_bag_batch(np.random.default_rng(9), 8)], ["embed/hist"],
                      progress=False)


def test_int8_and_packing_count_bag_tables():
    from afm_jax.quantize import quantize
    model = _model("fm")
    params = _lively(init_params(model, INFO, 0))
    q = quantize(params)
    assert "embedding_q" in q["embed"]["tags"]
    packed = pack(model, q)
    assert packed["embed"]["table_4"].dtype == jnp.int8
    assert packed["embed"]["scale_4"].shape == (15,)
    batch = _bag_batch(np.random.default_rng(10), 8)
    f = jax.jit(logits_fn(model))
    np.testing.assert_allclose(np.asarray(f(packed, batch)), np.asarray(f(q, batch)), rtol=1e-5,
                               atol=1e-5)
    assert layout_of(model, params["embed"]).bags[1].table == layout_of(model, params["embed"]).fields[0]


# --------------------------------------------------------------------------- without bags

def test_without_bags_the_params_and_layout_are_as_before():
    info = FeatureInfo(("a", "b"), (3, 5), ("x",))
    model = _model("deepfm", info)
    params = init_params(model, info, 0)
    assert params["linear"]["weights"].shape == (8,)
    assert set(params["embed"]) == {"a", "b", "x"}
    packed = pack(model, params)
    assert packed["embed"]["layout"].bags == ()
    assert packed["embed"]["table_4"].shape == (8, 4)
    batch = {"cat": np.array([[1, 4], [2, 0]], np.int32), "num": np.ones((2, 1), np.float32)}
    np.testing.assert_allclose(np.asarray(logits_fn(model)(packed, batch)),
                               np.asarray(logits_fn(model)(params, batch)), rtol=1e-6)


def test_train_rowwise_with_bags_round_trips_through_a_model_dir(synthetic_bags, tmp_path):
    from afm_jax.checkpoint import load_model_dir
    from afm_jax.inference import device_params, make_scorer, predict
    from afm_jax.train import TrainConfig, train

    ds = synthetic_bags
    model = _model("deepfm", ds.info)
    res = train(model, ds, TrainConfig(epochs=1, batch_size=128, table_optimizer="rowwise",
                                       embed_l2=1e-5), out_dir=str(tmp_path / "m"), progress=False)
    loaded, params, _ = load_model_dir(tmp_path / "m")
    assert loaded.info.bags == ds.info.bags
    want = predict(make_scorer(model), device_params(model, res.params), ds.test)
    got = predict(make_scorer(loaded), device_params(loaded, params), ds.test)
    np.testing.assert_array_equal(got, want)
    assert 0.0 < float(np.mean(got)) < 1.0


def test_a_bag_model_without_bags_in_the_batch_says_so():
    from afm_jax.errors import AfmError

    model = _model("fm")
    params = init_params(model, INFO, 0)
    batch = _bag_batch(np.random.default_rng(11), 4)
    plain = {"cat": batch["cat"], "num": batch["num"]}
    for p in (params, pack(model, params)):
        with pytest.raises(AfmError, match="bag fields"):
            jax.jit(logits_fn(model))(p, plain)


@pytest.mark.parametrize("name", ["fm", "deepfm", "autoint"])
def test_bags_join_the_one_gather_per_width(name):
    import re

    model = _model(name)
    packed = pack(model, _lively(init_params(model, INFO, 0)))
    batch = {k: v for k, v in _bag_batch(np.random.default_rng(12), 32).items() if k != "label"}
    text = jax.jit(logits_fn(model)).lower(packed, batch).compile().as_text()
    widths = len(packed["embed"]["layout"].widths())
    assert widths == 1
    # one gather of the packed table (categorical ids and both bags' items) + the first order
    assert len(re.findall(r"\bgather\(", text)) <= widths + 1
