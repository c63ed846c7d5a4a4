"""Every registered model: forward shape per example and per batch, and that training helps."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from afm_jax.errors import AfmError
from afm_jax.inference import logits_fn, make_scorer
from afm_jax.models import NEEDS_SEQUENCE, REGISTRY, build_model, model_from_json, model_to_json
from afm_jax.train import init_params, make_train_step
from tests.helpers import INFO, batches, random_batch, small_model


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - NEEDS_SEQUENCE))
def test_forward_shapes(name):
    model = small_model(name)
    params = init_params(model, INFO)
    one = model.apply({"params": params}, np.zeros(4, np.int32), np.zeros(2, np.float32))
    assert one.shape == ()
    b = random_batch(33)
    assert make_scorer(model)(params, b).shape == (33,)
    assert model_from_json(model_to_json(model), INFO) == model


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - NEEDS_SEQUENCE))
def test_training_lowers_the_loss(name):
    model = small_model(name)
    params = init_params(model, INFO)
    tx = optax.adam(1e-2)
    step = make_train_step(model, tx)
    opt = tx.init(params)
    data = batches(1, size=512)[0]
    # a learnable target: clicks depend on one field's id parity
    data["label"] = (data["cat"][:, 0] % 2).astype(np.float32)
    first = None
    for _ in range(60):
        params, opt, loss = step(params, opt, data)
        first = float(loss) if first is None else first
    assert float(loss) < 0.8 * first, (first, float(loss))


def test_out_of_range_ids_score_as_out_of_vocabulary():
    model = small_model("deepfm")
    params = init_params(model, INFO, seed=3)
    b = random_batch(8)
    oov = dict(b, cat=b["cat"].copy())
    oov["cat"][:, 1] = 0
    bad = dict(b, cat=b["cat"].copy())
    bad["cat"][:, 1] = np.array([60, 10_000, -1, -5, 61, 99, 2**30, 60])
    f = jax.jit(logits_fn(model))
    np.testing.assert_array_equal(np.asarray(f(params, oov)), np.asarray(f(params, bad)))


def test_unknown_model_and_config_are_clear_errors():
    with pytest.raises(AfmError, match="unknown model"):
        build_model("nope", INFO)
    with pytest.raises(AfmError, match="no config field"):
        build_model("deepfm", INFO, depth=3)
