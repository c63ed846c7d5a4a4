"""The afm-jax command end to end on synthetic data: train, evaluate, compress, --json."""

from __future__ import annotations

import json

import pytest

from afm_jax.cli import main


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_train_evaluate_compress_roundtrip(tmp_path, capsys):
    m, c = str(tmp_path / "m"), str(tmp_path / "c")
    common = ["--json", "--no-progress"]
    assert main(["train", "--data", "synthetic:20000", "--model", "deepfm", "--mlp", "64,32",
                 "--epochs", "1", "--out", m, *common]) == 0
    trained = _last_json(capsys)
    assert {"auc", "logloss", "rows", "params", "seconds"} <= set(trained)
    assert main(["evaluate", "--model-dir", m, *common]) == 0
    ev = _last_json(capsys)
    assert ev["auc"] == pytest.approx(trained["auc"]) and ev["rows"] == trained["rows"]
    assert main(["compress", "--model-dir", m, "--plan", "rank:4", "--sites", "mlp",
                 "--act", "relu", "--finetune-steps", "3", "--out", c, *common]) == 0
    comp = _last_json(capsys)
    assert comp["params_after"] < comp["params_before"]
    assert comp["ratio"] == pytest.approx(comp["params_before"] / comp["params_after"])
    assert main(["evaluate", "--model-dir", c, *common]) == 0
    ev2 = _last_json(capsys)
    assert ev2["auc"] == pytest.approx(comp["auc"]) and ev2["params"] == comp["params"]
    meta = json.loads((tmp_path / "c" / "model.json").read_text())
    assert meta["compression"]["finetune"]["steps"] == 3
    assert (tmp_path / "c" / "plan.md").read_text().count("mlp/dense_") == 2


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["evaluate", "--model-dir", str(tmp_path)]) == 2
    assert "not a model directory" in capsys.readouterr().err
    assert main(["train", "--data", f"criteo:{tmp_path / 'missing.tsv'}", "--no-progress"]) == 2
    assert "missing.tsv" in capsys.readouterr().err
