"""`nn.merge_costly_pairs`: factor pairs that cost about as much as the full layer multiplied
back into one kernel, with the logits of the pair (float32 tolerance), on packed and per-field
params; cheap pairs, pairs with an activation and int8 pairs stay as they are."""

from __future__ import annotations

import numpy as np
import pytest

from afm_jax import forms
from afm_jax.compress import collect_stats, compress, fixed_plan
from afm_jax.inference import make_scorer
from afm_jax.nn import MERGE_FLOP_FRACTION, merge_costly_pairs
from afm_jax.packing import pack
from afm_jax.quantize import quantize
from tests.helpers import batches, lively_params, logits, random_batch, small_model


@pytest.fixture(scope="module")
def setup():
    model = small_model("deepfm")
    params = lively_params(model)
    stats = collect_stats(model, params, batches(4), progress=False)
    dense = [s for s in stats if s.startswith("mlp/")]
    return model, params, stats, dense


def _pairs(params) -> dict[str, tuple]:
    """site -> (in, k, out) of every factor pair under "mlp"."""
    out = {}
    for name, node in params["mlp"].items():
        if forms.linear_form(node) == "factor":
            first = node[forms.first_factor_key(node)]
            out[name] = (*np.shape(forms.kernel_of(first)), np.shape(forms.kernel_of(node["v"]))[1])
    return out


def _costly(shape) -> bool:
    n_in, k, n_out = shape
    return k * (n_in + n_out) >= MERGE_FLOP_FRACTION * n_in * n_out


def test_costly_pairs_merge_with_the_pairs_logits(setup):
    model, params, stats, dense = setup
    # the largest rank every site allows: pairs that cost more than their full layer
    plan = {s: int(stats[s].mean.shape[0]) for s in dense}
    comp = compress(params, stats, plan)
    pairs = _pairs(comp)
    assert pairs and all(_costly(s) for s in pairs.values())
    merged = merge_costly_pairs(comp)
    assert _pairs(merged) == {}
    for site, (n_in, _, n_out) in pairs.items():
        assert np.shape(merged["mlp"][site]["kernel"]) == (n_in, n_out)
        assert merged["mlp"][site]["kernel"].dtype == np.float32
    test = random_batch(256, seed=5)
    a, b = logits(model, comp, test), logits(model, merged, test)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * max(np.abs(a).max(), 1.0))
    # the live scorer on packed params: the same scores
    scorer = make_scorer(model)
    batch = {k: test[k] for k in ("cat", "num")}
    np.testing.assert_allclose(np.asarray(scorer(pack(model, merged), batch)),
                               np.asarray(scorer(pack(model, comp), batch)), rtol=0, atol=1e-6)


def test_cheap_activation_and_int8_pairs_stay(setup):
    model, params, stats, dense = setup
    comp = compress(params, stats, fixed_plan(params, stats, 1, dense))
    pairs = _pairs(comp)
    assert pairs and not any(_costly(s) for s in pairs.values())
    assert _pairs(merge_costly_pairs(comp)) == pairs
    # a full-rank pair with relu between the factors is no linear map: never merged
    full = compress(params, stats, {s: int(stats[s].mean.shape[0]) for s in dense})
    site = next(iter(_pairs(full)))
    node = full["mlp"][site]
    with_relu = {**full, "mlp": {**full["mlp"], site: {"u_relu": node["u"], "v": node["v"]}}}
    assert set(merge_costly_pairs(with_relu)["mlp"][site]) == {"u_relu", "v"}
    # int8 factors keep their storage
    q = quantize(full)
    assert _pairs(merge_costly_pairs(q)) == _pairs(q)
    # the original params pass through unchanged
    orig = merge_costly_pairs(params)
    assert all(np.array_equal(orig["mlp"][s]["kernel"], params["mlp"][s]["kernel"])
               for s in params["mlp"])
