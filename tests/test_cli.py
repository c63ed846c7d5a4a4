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


def test_score_and_export(tmp_path, capsys):
    """`afm-jax score` writes one score per input row in order; export runs without model code."""
    import numpy as np
    import pyarrow.parquet as pq

    from afm_jax.checkpoint import load_model_dir
    from afm_jax.inference import load_exported, make_scorer
    from tests.test_data import criteo_line, write

    lines = [criteo_line(label=str(i % 2), cats=[f"{(i * 7 + k) % 13:08x}" for k in range(26)])
             for i in range(400)]
    data = write(tmp_path / "day.tsv", lines)
    m = str(tmp_path / "m")
    assert main(["train", "--data", f"criteo:{data}", "--min-count", "1", "--mlp", "16",
                 "--epochs", "1", "--out", m, "--cache-dir", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    dirty = write(tmp_path / "dirty.tsv", lines[:5] + ["0\tbroken"] + lines[5:9])
    assert main(["score", "--model-dir", m, "--data", f"criteo:{dirty}", "--out",
                 str(tmp_path / "s.parquet"), "--no-progress"]) == 2
    assert "line 6" in capsys.readouterr().err
    assert main(["score", "--model-dir", m, "--data", f"criteo:{dirty}", "--on-bad-lines",
                 "skip", "--out", str(tmp_path / "s.parquet"), "--json", "--no-progress"]) == 0
    res = _last_json(capsys)
    assert (res["rows"], res["skipped"]) == (9, 1)
    table = pq.read_table(tmp_path / "s.parquet").to_pydict()
    assert table["line"] == [1, 2, 3, 4, 5, 7, 8, 9, 10]
    # the scores are the model's on the same rows, encoded with the model's encoder
    model, params, _ = load_model_dir(m)
    from afm_jax.checkpoint import load_encoder
    from afm_jax.data.dataset import make_source, parse_data_spec
    chunk = next(c for c, _ in make_source(parse_data_spec(f"criteo:{data}")).chunks(False))
    cat, num = load_encoder(m).encode(chunk)
    live = np.asarray(make_scorer(model)(params, {"cat": cat[:9], "num": num[:9]}))
    np.testing.assert_allclose(table["score"][:5], live[:5], rtol=1e-6)
    # export: same scores from the artifact alone, any batch size
    assert main(["export", "--model-dir", m, "--out", str(tmp_path / "x"), "--no-progress"]) == 0
    score = load_exported(tmp_path / "x")
    for n in (1, 9):
        np.testing.assert_allclose(np.asarray(score(cat[:n], num[:n])), live[:n], rtol=1e-6)
    # beside it: the encoder and a signature a client in any language can read
    sig = json.loads((tmp_path / "x" / "signature.json").read_text())
    assert score.signature == sig and (tmp_path / "x" / "encoder.json").is_file()
    assert [i["name"] for i in sig["inputs"]] == ["cat", "num"]
    assert sig["inputs"][0]["fields"] == list(model.info.cat_names)
    assert sig["inputs"][0]["vocab_sizes"] == list(model.info.vocab_sizes)
    assert sig["inputs"][0]["dtype"] == "int32" and sig["inputs"][1]["dtype"] == "float32"
    assert sig["params"]["leaves"] == len(np.load(tmp_path / "x" / "params.npz").files)


def _truncated_model_dir(tmp_path) -> str:
    """A trained DeepFM directory whose largest params file lost its second half."""
    m = tmp_path / "m"
    assert main(["train", "--data", "synthetic:5000", "--model", "deepfm", "--epochs", "1",
                 "--out", str(m), "--no-progress", "--no-compile-cache"]) == 0
    largest = max((f for f in (m / "params").rglob("*") if f.is_file()),
                  key=lambda f: f.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    return str(m)


def test_corrupt_model_is_one_clean_error(tmp_path):
    """A truncated params file: exit 2 with `cannot restore params`, and no traceback after it
    (orbax's reads still in flight used to report `Event loop is closed` at exit)."""
    import os
    import subprocess
    import sys
    import time

    import afm_jax.checkpoint as checkpoint
    from afm_jax.errors import CheckpointError

    m = _truncated_model_dir(tmp_path)
    # in process: the failed restore's stragglers reach no unraisable hook (without the fix,
    # each failed restore of this directory reported several `Event loop is closed`)
    reported = []
    previous = sys.unraisablehook
    sys.unraisablehook = reported.append
    try:
        for _ in range(3):
            with pytest.raises(CheckpointError, match="cannot restore params"):
                checkpoint.load_params(f"{m}/params")
        time.sleep(0.5)
    finally:
        sys.unraisablehook = previous
    assert [str(r.exc_value) for r in reported] == []
    # the command in a process of its own
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "afm_jax.cli", "evaluate", "--model-dir", m,
                           "--no-progress", "--no-compile-cache"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "cannot restore params" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_import_compress_gives_the_subpackage():
    """`afm_jax.compress` is the subpackage (the map is `afm_jax.compress.compress`)."""
    import types

    import afm_jax
    import afm_jax.compress as c

    assert isinstance(afm_jax.compress, types.ModuleType) and c is afm_jax.compress
    assert callable(c.collect_stats) and callable(c.compress) and callable(c.compress_model)
    assert afm_jax.compress_model is c.compress_model
