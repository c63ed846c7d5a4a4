"""DIN (issue 22, item 5): target attention over a behaviour sequence that shares the target
item's table; masked, no softmax by default; the interest vector joins the fields in the MLP."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from afm_jax.data import FeatureInfo
from afm_jax.data.schema import BagInfo
from afm_jax.errors import AfmError
from afm_jax.inference import logits_fn
from afm_jax.models import build_model
from afm_jax.packing import pack
from afm_jax.train import init_params, make_train_step

INFO = FeatureInfo(cat_names=("item", "user"), vocab_sizes=(7, 5), num_names=("x",),
                   bags=(BagInfo("tags", 5, 3, "sum"), BagInfo("hist", 7, 4, "mean", shares="item")))
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _batch(n: int = 32, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    cat = np.stack([rng.integers(0, v, n) for v in INFO.vocab_sizes], 1).astype(np.int32)
    bags, lens = {}, {}
    for b in INFO.bags:
        lens[b.name] = rng.integers(0, b.max_len + 1, n).astype(np.int32)
        ids = rng.integers(1, b.vocab_size, (n, b.max_len)).astype(np.int32)
        ids[np.arange(b.max_len)[None, :] >= lens[b.name][:, None]] = 0
        bags[b.name] = ids
    return {"cat": cat, "num": rng.normal(size=(n, 1)).astype(np.float32),
            "label": (rng.uniform(size=n) < 0.4).astype(np.float32), "bags": bags, "bag_len": lens}


def _lively(model, seed: int = 1):
    params = init_params(model, INFO, 0)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return pack(model, jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype)
                                                for x, k in zip(leaves, keys)]))


@pytest.fixture(scope="module")
def din():
    model = build_model("din", INFO, embed_dim=4, mlp=(8,), attention_mlp=(6,))
    return model, _lively(model)


def _logits(model, params, batch):
    return np.asarray(jax.jit(logits_fn(model))(params, batch))


def test_padding_and_order_of_the_history_do_not_matter(din):
    model, params = din
    batch = _batch()
    base = _logits(model, params, batch)
    hist, n = batch["bags"]["hist"].copy(), batch["bag_len"]["hist"]
    padded = hist.copy()
    padded[np.arange(4)[None, :] >= n[:, None]] = 3          # other ids in the padding slots
    assert not np.array_equal(padded, hist)
    np.testing.assert_array_equal(_logits(model, params, dict(batch, bags={**batch["bags"], "hist": padded})), base)
    flipped = hist.copy()                                      # the real items in reverse order
    for i, k in enumerate(n):
        flipped[i, :k] = hist[i, :k][::-1]
    np.testing.assert_allclose(_logits(model, params, dict(batch, bags={**batch["bags"], "hist": flipped})),
                               base, rtol=0, atol=2e-6)


def test_the_history_and_the_target_change_the_score(din):
    model, params = din
    batch = _batch()
    base = _logits(model, params, batch)
    other = dict(batch, bags={**batch["bags"], "hist": np.where(batch["bags"]["hist"] > 0,
                                                               batch["bags"]["hist"] % 6 + 1, 0)})
    has = batch["bag_len"]["hist"] > 0
    assert not np.allclose(_logits(model, params, other)[has], base[has])


def test_no_softmax_weights_are_unnormalized_and_softmax_is_an_option(din):
    model, params = din
    batch = _batch()
    soft = build_model("din", INFO, embed_dim=4, mlp=(8,), attention_mlp=(6,), softmax=True)
    a, b = _logits(model, params, batch), _logits(soft, params, batch)
    assert np.all(np.isfinite(b)) and not np.allclose(a, b)
    empty = dict(batch, bag_len={**batch["bag_len"], "hist": np.zeros(32, np.int32)},
                 bags={**batch["bags"], "hist": np.zeros((32, 4), np.int32)})
    # an empty history: the interest is zero either way, so both forms score alike
    np.testing.assert_allclose(_logits(model, params, empty), _logits(soft, params, empty), atol=1e-6)


def test_din_trains_and_padding_rows_get_no_gradient(din):
    model, params = din
    batch = _batch(64)
    opt = optax.adam(1e-2)
    step = make_train_step(model, opt)
    p, state = jax.tree.map(jnp.copy, params), opt.init(params)
    losses = []
    for _ in range(20):
        p, state, loss = step(p, state, batch)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert {"attention_0", "attention_out", "mlp", "out"} <= set(p)


def test_din_without_a_sequence_says_what_it_needs():
    info = FeatureInfo(cat_names=("a",), vocab_sizes=(3,), num_names=(),
                       bags=(BagInfo("tags", 5, 3, "sum"),))
    model = build_model("din", info)
    with pytest.raises(AfmError, match="behaviour sequence"):
        init_params(model, info, 0)


@pytest.mark.skipif(not (SHARED / "movielens100k").is_dir(), reason=f"MovieLens not found in {SHARED}")
def test_din_on_movielens_with_genres_and_history(tmp_path):
    from afm_jax.data import load_dataset
    from afm_jax.data.readers import MOVIELENS_BAG_SCHEMA
    from afm_jax.inference import device_params, evaluate, make_scorer
    from afm_jax.train import TrainConfig, train

    ds = load_dataset(f"movielens:{SHARED / 'movielens100k'}", schema=MOVIELENS_BAG_SCHEMA,
                      cache_dir=str(tmp_path), progress=False)
    model = build_model("din", ds.info)
    res = train(model, ds, TrainConfig(epochs=2), progress=False)
    test = evaluate(make_scorer(model), device_params(model, res.params), ds.test)
    # DeepFM with the first genre only reaches 0.7038 on this split
    assert test["auc"] > 0.70, test
