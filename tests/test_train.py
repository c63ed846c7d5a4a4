"""Training loop: early stopping, checkpoints (save/load/resume), the demo data beats LR."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from afm_jax.checkpoint import load_model_dir
from afm_jax.data import synthetic_dataset
from afm_jax.errors import CheckpointError
from afm_jax.inference import evaluate, make_scorer
from afm_jax.models import build_model
from afm_jax.train import TrainConfig, train


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(40_000, seed=1)


def test_train_save_load_and_resume(data, tmp_path):
    model = build_model("deepfm", data.info, mlp=(64, 32))
    cfg = TrainConfig(epochs=1, batch_size=512, seed=0)
    res = train(model, data, cfg, out_dir=tmp_path / "m", progress=False)
    assert len(res.history) == 1 and res.history[0]["auc"] > 0.6
    m2, p2, meta = load_model_dir(tmp_path / "m")
    assert m2 == model and meta["train_config"]["epochs"] == 1
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, res.params), p2)
    scorer = make_scorer(model)
    assert evaluate(scorer, p2, data.test)["auc"] == pytest.approx(
        evaluate(scorer, res.params, data.test)["auc"])
    # resume: asking for 2 epochs in the same directory runs only the second
    cfg2 = TrainConfig(epochs=2, batch_size=512, seed=0, patience=5)
    res2 = train(model, data, cfg2, out_dir=tmp_path / "m", progress=False)
    assert [h["tag"] for h in res2.history] == ["epoch 1", "epoch 2"]
    # and equals an uninterrupted two-epoch run
    res3 = train(model, data, cfg2, out_dir=tmp_path / "fresh", progress=False)
    assert res3.history[-1]["auc"] == pytest.approx(res2.history[-1]["auc"], abs=1e-6)
    assert json.loads((tmp_path / "m" / "history.json").read_text())[-1]["tag"] == "epoch 2"


def test_early_stopping_keeps_best(data):
    model = build_model("deepfm", data.info, mlp=(32,))
    res = train(model, data, TrainConfig(epochs=4, batch_size=256, learning_rate=3e-2,
                                         patience=1), progress=False)
    aucs = [h["auc"] for h in res.history]
    # it stopped early, at the first epoch that did not improve on the best before it
    assert len(aucs) < 4 and aucs[-1] <= max(aucs[:-1])
    assert all(aucs[i] > max(aucs[:i]) for i in range(1, len(aucs) - 1))
    best = int(np.argmax(aucs))
    assert best < len(aucs) - 1 and res.best_valid == res.history[best]
    # the returned params are the best epoch's, not the last one's: they score its valid AUC
    assert abs(aucs[best] - aucs[-1]) > 1e-4
    assert evaluate(make_scorer(model), res.params, data.valid)["auc"] == pytest.approx(
        aucs[best], abs=1e-7)


def test_deepfm_beats_lr_on_synthetic(data):
    cfg = TrainConfig(epochs=2, batch_size=512)
    aucs = {}
    for name in ("lr", "deepfm"):
        model = build_model(name, data.info, **({} if name == "lr" else {"mlp": (128, 64)}))
        res = train(model, data, cfg, progress=False)
        aucs[name] = evaluate(make_scorer(model), res.params, data.test)["auc"]
    assert aucs["deepfm"] > aucs["lr"] + 0.005, aucs


def test_loading_a_non_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a model directory"):
        load_model_dir(tmp_path)
    (tmp_path / "model.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="malformed"):
        load_model_dir(tmp_path)


def test_params_of_another_config_are_a_clear_error(data, tmp_path):
    from afm_jax.checkpoint import save_model_dir, validate_params
    from afm_jax.compress import collect_stats, compress, fixed_plan
    from afm_jax.data import iterate_batches
    from afm_jax.train import init_params

    model = build_model("wide_deep", data.info, mlp=(32, 16))
    params = init_params(model, data.info)
    stats = collect_stats(model, params, iterate_batches(data.train, 4096), progress=False)
    comp = compress(params, stats, fixed_plan(params, stats, 4), model=model)
    validate_params(model, comp)  # every compressed form is this model's
    save_model_dir(tmp_path / "c", model, comp)
    meta = json.loads((tmp_path / "c" / "model.json").read_text())
    meta["model"]["config"]["mlp"] = [64, 16]
    (tmp_path / "c" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="mlp/dense_0"):
        load_model_dir(tmp_path / "c")
