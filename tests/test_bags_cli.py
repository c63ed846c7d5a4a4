"""Bag fields through the command line (issue 22, item 9): --synthetic-bags trains, saves,
compresses and evaluates (the saved tables keep the bags' rows: `distributed.host_params`)."""

from __future__ import annotations

import json

from afm_jax.checkpoint import load_model_dir
from afm_jax.cli import main


def test_synthetic_bags_train_compress_evaluate(tmp_path, capsys):
    m, c = tmp_path / "m", tmp_path / "c"
    assert main(["train", "--data", "synthetic:3000", "--synthetic-bags", "2:3:8", "--model",
                 "deepfm", "--epochs", "1", "--mlp", "16", "--out", str(m), "--no-progress"]) == 0
    model, params, meta = load_model_dir(m)
    assert [b.name for b in model.info.bags] == ["b0", "b1"]
    assert params["embed"]["b0"]["embedding"].shape == (model.info.bags[0].vocab_size, 16)
    assert meta["data"]["synthetic_bags"] == "2:3:8"
    assert main(["compress", "--model-dir", str(m), "--plan", "budget:0.5", "--out", str(c),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model-dir", str(c), "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["rows"] == 300 and 0.0 < out["auc"] < 1.0
