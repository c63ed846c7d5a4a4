"""`afm-jax experiment paper-table` end to end on the smallest real sample, and its resume."""

import json

import pytest

from afm_jax.cli import main
from afm_jax.lab.datasets import default_data_dir, real_datasets
from afm_jax.lab.paper_table import summarize

SHARED = default_data_dir()
needs_data = pytest.mark.skipif(not (SHARED / "avazu" / "sample.csv").is_file(),
                                reason=f"real data not found at {SHARED}")


@needs_data
def test_paper_table_cell_report_and_resume(tmp_path, capsys):
    out = tmp_path / "res"
    args = ["experiment", "paper-table", "--data", str(SHARED), "--datasets", "avazu",
            "--models", "deepfm", "--seeds", "0", "--out", str(out), "--no-progress", "--json"]
    assert main(args) == 0
    cell_path = out / "paper_table_cells" / "avazu__deepfm__s0.json"
    cell = json.loads(cell_path.read_text())
    rows = {(r["method"], r["plan"]): r for r in cell["rows"] if "skipped" not in r}
    for key in [("original", "-"), ("AFM", "dense"), ("AFM", "embed"), ("AFM", "both"),
                ("SVD", "both"), ("AFM", "seed code config"), ("AFM relu + fine-tune", "both"),
                ("original + fine-tune", "-"), ("AFM calibration", "1000 rows"),
                ("AFM calibration", "all rows"), ("AFM sweep", "budget 0.1")]:
        assert key in rows, key
    orig, afm, svd = rows[("original", "-")], rows[("AFM", "both")], rows[("SVD", "both")]
    assert orig["auc"] > 0.6                       # a real model on real data
    assert afm["ratio"] > 3.5 and afm["compressible"] == svd["compressible"]
    assert afm["params"] < orig["params"] and afm["rows_per_s"] > 0
    assert afm["stats_seconds"] > 0 and afm["map_seconds"] >= 0
    # the activation variant starts where linear AFM is (shifted bias), then fine-tunes
    relu = rows[("AFM relu + fine-tune", "both")]
    assert relu["auc_start"] == pytest.approx(afm["auc"], abs=1e-4)
    md = (out / "paper_table.md").read_text()
    assert "## avazu" in md and "| deepfm | AFM both |" in md and "Calibration size" in md
    assert (out / "paper_auc_vs_params_avazu.png").stat().st_size > 1000
    assert (out / "paper_spectra_avazu.png").stat().st_size > 1000
    # resume: the finished cell is not recomputed
    mtime = cell_path.stat().st_mtime_ns
    assert main(args) == 0
    assert cell_path.stat().st_mtime_ns == mtime


def test_bad_arguments_are_named(tmp_path, capsys):
    assert main(["experiment", "paper-table", "--data", str(tmp_path / "nope")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["experiment", "paper-table", "--data", str(tmp_path), "--max-rows", "x=y"]) == 2
    assert "--max-rows" in capsys.readouterr().err
    assert main(["experiment", "paper-table", "--data", str(tmp_path), "--models", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_summary_marks_differences_beyond_the_spread():
    def cell(seed, d):
        return {"dataset": "x", "model": "m", "seed": seed, "train_rows": 10, "test_rows": 5,
                "rows": [{"method": "original", "plan": "-", "auc": 0.70, "logloss": 0.5,
                          "params": 100, "compressible": 80, "ratio": 1.0},
                         {"method": "AFM", "plan": "both", "auc": 0.70 + d, "logloss": 0.5,
                          "params": 40, "compressible": 20, "ratio": 4.0},
                         {"method": "SVD", "plan": "both", "auc": 0.69, "logloss": 0.51,
                          "params": 40, "compressible": 20, "ratio": 4.0}]}
    text, summary = summarize([cell(0, 0.010), cell(1, 0.011), cell(2, 0.012)])
    assert "+0.0110*" in text                       # consistent gain: beyond the spread
    assert summary["meets"] == 1 and summary["pairs"][0]["ratio"] == 4.0
    text, summary = summarize([cell(0, 0.010), cell(1, -0.012), cell(2, 0.001)])
    assert "-0.0003 |" in text and summary["meets"] == 1   # within noise, >= -0.0005
    text, summary = summarize([cell(0, -0.002), cell(1, -0.003), cell(2, -0.001)])
    assert summary["meets"] == 0


def test_one_dataset_table_follows_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("AFM_JAX_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    table = real_datasets()
    assert set(table) == {"movielens", "frappe", "avazu", "avazu_partial", "criteo"}
    assert all(str(tmp_path) in spec for spec, _ in table.values())
    assert table["criteo"][1] == {"min_count": 10} and table["avazu"][1] == {"min_count": 2}
