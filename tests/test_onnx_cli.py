"""`afm-jax score` on an ONNX export (issue 23): the raw rows of a file scored by ONNX Runtime
equal `afm-jax score` on the model directory (Criteo, and a bag model on CSV), bad lines are
counted alike, and a corrupt export is one clear error (exit 2), never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from afm_jax.cli import main
from tests.helpers import bag_model_and_rows

pytest.importorskip("onnx", reason="the [onnx] extra (part of [dev]) is not installed")
pytest.importorskip("onnxruntime", reason="the [onnx] extra (part of [dev]) is not installed")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CRITEO = SHARED / "criteo" / "train.tsv"
LINES = 2000


def _scores(path: Path) -> tuple[list, np.ndarray]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["file"], r["line"]) for r in rows], np.array([r["score"] for r in rows])


def _score(model_dir: Path, data: str, out: Path, *extra: str) -> tuple[list, np.ndarray]:
    assert main(["score", "--model-dir", str(model_dir), "--data", data, "--out", str(out),
                 "--no-progress", *extra]) == 0
    return _scores(out)


@pytest.fixture(scope="module")
def criteo_onnx(tmp_path_factory):
    """LR trained through the CLI on the first 2,000 Criteo sample lines, and its ONNX export
    (raw inputs: 13 bucketized fields, 26 categorical): (dir, data file, model dir, export dir).
    LR: DeepFM's training compiles for ~20 s here; the model's part of the graph is checked for
    every model in test_onnx.py, this file checks the command."""
    if not CRITEO.is_file():
        pytest.skip(f"shared Criteo sample not found at {CRITEO}")
    d = tmp_path_factory.mktemp("onnx_cli")
    with open(CRITEO, encoding="utf-8") as f:
        lines = [next(f) for _ in range(LINES)]
    data = d / "sample.tsv"
    data.write_text("".join(lines), encoding="utf-8")
    m, out = d / "m", d / "onnx"
    assert main(["train", "--data", f"criteo:{data}", "--min-count", "2", "--model", "lr",
                 "--epochs", "1", "--out", str(m), "--cache-dir",
                 str(d / "cache"), "--no-progress"]) == 0
    assert main(["export", "--format", "onnx", "--model-dir", str(m), "--out", str(out)]) == 0
    return d, data, m, out


def test_score_of_an_onnx_export_equals_score_of_the_model_dir(criteo_onnx, tmp_path):
    d, data, m, out = criteo_onnx
    keys, want = _score(m, f"criteo:{data}", tmp_path / "jax.jsonl")
    got_keys, got = _score(out, f"criteo:{data}", tmp_path / "onnx.jsonl", "--batch-size", "700")
    assert len(want) == LINES and got_keys == keys
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # the model.onnx file itself names the export too
    _, also = _score(out / "model.onnx", f"criteo:{data}", tmp_path / "file.jsonl")
    np.testing.assert_array_equal(also, got)
    # Criteo's label-free layout (39 columns), with bad lines skipped and counted alike: a
    # short line, a non-number, and a bucketized value below -2**63 (its bucket overflows)
    rows = [line.rstrip("\n").split("\t")[1:] for line in data.read_text().splitlines()[:300]]
    rows[5] = rows[5][:20]
    rows[9][2] = "x7"
    rows[11][0] = "-1e30"
    bad = tmp_path / "nolabel.tsv"
    bad.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    results = []
    for model_dir, name in ((m, "jax"), (out, "onnx")):
        assert main(["score", "--model-dir", str(model_dir), "--data", f"criteo:{bad}",
                     "--on-bad-lines", "skip", "--out", str(tmp_path / f"bad_{name}.jsonl"),
                     "--no-progress", "--json"]) == 0
        results.append(_scores(tmp_path / f"bad_{name}.jsonl"))
    (keys, want), (got_keys, got) = results
    assert len(keys) == 297 and got_keys == keys
    assert {line for _, line in keys}.isdisjoint({6, 10, 12})
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    full = {line: v for (_, line), v in zip(*_scores(tmp_path / "onnx.jsonl"))}
    np.testing.assert_allclose(got, [full[line] for _, line in keys], rtol=0, atol=1e-7)


def test_a_bag_model_on_csv_scores_alike_through_onnx(tmp_path):
    n = 200
    m, enc, _, data, schema = bag_model_and_rows(tmp_path, n, seed=7)
    assert [b.name for b in enc.bags] == ["b0", "b1"]
    keys, want = _score(m, f"csv:{data}", tmp_path / "jax.jsonl", "--schema", str(schema))
    assert len(want) == n
    out = tmp_path / "onnx"
    assert main(["export", "--format", "onnx", "--model-dir", str(m), "--out", str(out)]) == 0
    got_keys, got = _score(out, f"csv:{data}", tmp_path / "onnx.jsonl", "--schema", str(schema))
    assert got_keys == keys
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # without --schema the export's signature.json spells it (the label column may be absent)
    no_label = tmp_path / "no_label.csv"
    no_label.write_text("".join(line.split(",", 1)[1] + "\n"
                                for line in data.read_text().splitlines()))
    got_keys, got = _score(out, f"csv:{no_label}", tmp_path / "onnx2.jsonl")
    assert [line for _, line in got_keys] == [line for _, line in keys]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def _fails(capsys, model_dir: Path, data: Path, out: Path, *extra: str) -> str:
    """`afm-jax score` on model_dir: exit 2, no output file; its one stderr line."""
    capsys.readouterr()
    assert main(["score", "--model-dir", str(model_dir), "--data", f"criteo:{data}", "--out",
                 str(out), "--no-progress", *extra]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("afm-jax score: error: ") and err.count("\n") == 1, err
    return err


def test_a_corrupt_or_truncated_onnx_export_is_a_clear_error(criteo_onnx, tmp_path, capsys):
    d, data, m, out = criteo_onnx
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "signature.json").write_bytes((out / "signature.json").read_bytes())
    model = (out / "model.onnx").read_bytes()
    scores = tmp_path / "s.jsonl"
    for content in (model[: len(model) // 2], model[:100], b"not onnx at all", b""):
        (broken / "model.onnx").write_bytes(content)
        err = _fails(capsys, broken, data, scores)
        assert f"{broken / 'model.onnx'}: not a loadable ONNX model" in err and "export it again" in err
    (broken / "model.onnx").write_bytes(model)
    (broken / "signature.json").write_text('{"format": "afm_jax.onnx/1", "inp')
    assert "cannot read the ONNX export's signature" in _fails(capsys, broken, data, scores)
    (broken / "signature.json").unlink()
    assert str(broken / "signature.json") in _fails(capsys, broken, data, scores)
    # an export of ids in holds no encoder: said so, not a failure deep in ONNX Runtime
    ids = tmp_path / "ids"
    assert main(["export", "--format", "onnx", "--no-raw-inputs", "--model-dir", str(m), "--out",
                 str(ids)]) == 0
    assert "exported with --no-raw-inputs" in _fails(capsys, ids, data, scores)
    # the products are baked into the export
    assert "baked in as float32" in _fails(capsys, out, data, scores, "--precision", "bfloat16")
    # the command in a process of its own: exit 2, one line, no traceback
    (broken / "signature.json").write_bytes((out / "signature.json").read_bytes())
    (broken / "model.onnx").write_bytes(model[: len(model) // 3])
    proc = subprocess.run([sys.executable, "-m", "afm_jax.cli", "score", "--model-dir",
                           str(broken), "--data", f"criteo:{data}", "--out", str(scores),
                           "--no-progress", "--no-compile-cache"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2, proc.stderr
    assert "not a loadable ONNX model" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not scores.exists()


def test_hashed_fields_are_hashed_by_the_command(tmp_path):
    """A DIN with a hashed item field, a hashed bag and a sequence sharing the item's hash rule
    (test_onnx_bags's layout), saved as a model directory: score through its ONNX export equals
    score of the directory; rows with empty bag items are bad lines on both paths."""
    from afm_jax.checkpoint import save_model_dir
    from tests.test_onnx_bags import _info, _lively, _model, _raw_encoder, _raw_rows

    enc = _raw_encoder("sum", hashed={"item": 6, "tags": 5})
    model = _model("din", _info("sum"))
    m = save_model_dir(tmp_path / "m", model, _lively(model, model.info), encoder=enc)
    rows = _raw_rows(120, seed=4)
    data = tmp_path / "rows.csv"
    text = [[("" if np.isnan(v) else repr(float(v))) if k == "x" else str(v) for v in col]
            for k, col in rows.items()]
    data.write_text("\n".join([",".join(rows)] + [",".join(r) for r in zip(*text)]) + "\n")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"label": "label", "numeric": ["x"],
                                  "categorical": [{"name": "item", "hash_buckets": 6}, "user"],
                                  "multi_valued": [dict(enc.bags[0].to_json(), hash_buckets=5)],
                                  "sequence": [enc.bags[1].to_json()]}))
    skip = ("--on-bad-lines", "skip")
    keys, want = _score(m, f"csv:{data}", tmp_path / "jax.jsonl", "--schema", str(schema), *skip)
    assert 100 < len(keys) < 120          # "t1||t4", "|", "m2;;;;m2", ";;": empty items
    out = tmp_path / "onnx"
    assert main(["export", "--format", "onnx", "--model-dir", str(m), "--out", str(out)]) == 0
    sig = json.loads((out / "signature.json").read_text())
    assert {"hashed:item", "hashed:tags", "hashed:hist"} <= {i["name"] for i in sig["inputs"]}
    for extra in (("--schema", str(schema)), ()):   # without: the signature's schema
        got_keys, got = _score(out, f"csv:{data}", tmp_path / "onnx.jsonl", "--overwrite",
                               *extra, *skip)
        assert got_keys == keys
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
