"""`afm-jax experiment paper-table` end to end on the smallest real sample, and its resume;
the driver's core methods (int8 rows, bytes), completing stored cells, the report's goals."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from afm_jax.cli import main
from afm_jax.errors import AfmError
from afm_jax.lab import paper_table
from afm_jax.lab.datasets import default_data_dir, real_datasets
from afm_jax.lab.paper_table import (
    AFM_AT_AFM_INT8,
    AFM_AT_GOAL,
    AFM_AT_INT8,
    AFM_INT8,
    AFM_INT8_GOAL,
    CORE_METHODS,
    INT8,
    METHODS,
    ORIGINAL,
    migrate_capped_cells,
    resolve_dataset,
    summarize,
)

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
                ("AFM calibration", "all rows"), ("AFM sweep", "budget 0.1"), INT8, AFM_INT8,
                AFM_AT_AFM_INT8, AFM_AT_INT8, AFM_INT8_GOAL, AFM_AT_GOAL]:
        assert key in rows, key
    assert cell["methods"] == list(METHODS) and cell["max_rows"] is None
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
    assert "| deepfm | AFM + int8 both |" in md and "## Goals: AFM both + int8" in md
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


# ---------------------------------------------------------------- core methods, bytes, merging

DRIVER = Path(__file__).resolve().parents[1] / "experiments" / "paper_table.py"
TINY = "avazu_3k"                    # the first 3,000 rows of the Avazu sample
CELL = f"{TINY}__deepfm__s0.json"
NEW_ROWS = (INT8, AFM_INT8, AFM_AT_AFM_INT8, AFM_AT_INT8, AFM_INT8_GOAL, AFM_AT_GOAL)


def driver_args(out) -> list[str]:
    return ["--data", str(SHARED), "--datasets", TINY, "--models", "deepfm", "--seeds", "0",
            "--methods", "core", "--out", str(out), "--no-progress", "--json"]


def keyed(cell: dict) -> dict:
    return {(r["method"], r["plan"]): r for r in cell["rows"] if "skipped" not in r}


@pytest.fixture(scope="module")
def core_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("core")
    assert main(["experiment", "paper-table", *driver_args(out)]) == 0
    return out


@needs_data
def test_core_cell_has_int8_rows_and_bytes(core_out):
    cell = json.loads((core_out / "paper_table_cells" / CELL).read_text())
    assert cell["dataset"] == TINY and cell["max_rows"] == 3000
    assert cell["methods"] == list(CORE_METHODS) and cell["finetune_steps"] is None
    rows = keyed(cell)
    names = {m for m, _ in rows}
    assert not names & {"TT-Rec", "AFM calibration", "original + fine-tune"}
    assert ("AFM", "seed code config") not in rows and ("AFM sweep", "budget 0.1") in rows
    orig = rows[ORIGINAL]
    assert orig["bytes_ratio"] == 1.0
    for key, r in rows.items():
        if key != ORIGINAL:
            assert r["bytes_ratio"] > 1, key
            assert r["bytes_ratio"] == pytest.approx(orig["bytes"] / r["bytes"])
        if key not in (INT8, AFM_INT8, AFM_INT8_GOAL):   # float32 rows: 4 bytes a parameter
            assert r["bytes"] == 4 * r["params"], key
    assert rows[AFM_INT8]["bytes"] < rows[("AFM", "both")]["bytes"]
    assert rows[INT8]["bytes"] < orig["bytes"] / 3.5
    for key, target in ((AFM_AT_AFM_INT8, AFM_INT8), (AFM_AT_INT8, INT8)):
        r = rows[key]
        assert r["bytes_target"] == rows[target]["bytes"]
        assert 0.9 * r["bytes_target"] <= r["bytes"] <= r["bytes_target"], key
    goal = orig["bytes"] // paper_table.GOAL_RATIO
    for key in (AFM_INT8_GOAL, AFM_AT_GOAL):     # both fill 1/14 of the original's bytes
        assert rows[key]["bytes_target"] == goal
        assert 0.9 * goal <= rows[key]["bytes"] <= goal, key
    # at equal bytes the int8 form affords a larger plan than the float one
    assert rows[AFM_INT8_GOAL]["params"] > rows[AFM_AT_GOAL]["params"]
    md = (core_out / "paper_table.md").read_text()
    assert "first 3,000 rows of the file" in md and "| bytes | bytes ratio |" in md
    assert "| deepfm | int8 |" in md and "| deepfm | AFM both, bytes of int8 |" in md
    assert "## Goals: AFM both + int8" in md and "Calibration size" not in md
    for png in (f"paper_auc_vs_params_{TINY}.png", f"paper_auc_vs_bytes_{TINY}.png"):
        assert (core_out / png).stat().st_size > 1000


@needs_data
def test_stored_cell_gains_missing_rows_or_refuses(core_out, tmp_path):
    full = json.loads((core_out / "paper_table_cells" / CELL).read_text())
    # a cell as written before the int8 rows: no "methods" field, no bytes
    old = {k: v for k, v in full.items() if k != "methods"}
    old["rows"] = [{k: v for k, v in r.items() if k not in ("bytes", "bytes_ratio")}
                   for r in full["rows"] if (r["method"], r["plan"]) not in NEW_ROWS]
    old["rows"][1]["marker"] = "kept"
    path = tmp_path / "paper_table_cells" / CELL
    path.parent.mkdir()
    path.write_text(json.dumps(old))
    assert paper_table.cell_methods(old) == ("afm", "svd", "sweep")
    assert main(["experiment", "paper-table", *driver_args(tmp_path)]) == 0
    merged = json.loads(path.read_text())
    assert merged["methods"] == list(CORE_METHODS) and merged["rows"][1]["marker"] == "kept"
    assert [m["methods"] for m in merged["merges"]] == [["int8"]]
    assert merged["merges"][0]["original_auc_diff"] == pytest.approx(0, abs=1e-6)
    rows, ref = keyed(merged), keyed(full)
    assert len(merged["rows"]) == len(full["rows"])
    assert {k: v for k, v in rows[ORIGINAL].items() if "bytes" not in k} == old["rows"][0]
    for key in NEW_ROWS:   # training with a fixed seed is deterministic: the same rows again
        assert rows[key]["auc"] == pytest.approx(ref[key]["auc"], abs=1e-6), key
    for key, r in rows.items():  # the old rows get bytes (float32: 4 a parameter)
        assert r["bytes"] == ref[key]["bytes"], key
    # a stored original that the retrained one does not match: refused, file untouched
    old["rows"][0] = {**old["rows"][0], "auc": old["rows"][0]["auc"] + 1e-3}
    path.write_text(json.dumps(old))
    before = path.read_text()
    with pytest.raises(AfmError, match="does not match") as err:
        paper_table.run(SHARED, tmp_path, datasets=(TINY,), models=("deepfm",), seeds=(0,),
                        methods="core", progress=False, log=lambda s: None)
    assert str(path) in str(err.value) and "test auc" in str(err.value)
    assert path.read_text() == before and not path.with_suffix(".tmp").exists()


def test_capped_cells_are_their_own_dataset(tmp_path):
    known = real_datasets(tmp_path)
    assert resolve_dataset("criteo_40k", known, {}) == ("criteo_40k", "criteo", 40_000)
    assert resolve_dataset("criteo", known, {"criteo": 40_000}) == ("criteo_40k", "criteo", 40_000)
    assert resolve_dataset("criteo", known, {}) == ("criteo", "criteo", None)
    assert resolve_dataset("avazu_partial", known, {}) == ("avazu_partial", "avazu_partial", None)
    assert resolve_dataset("frappe_1500", known, {})[2] == 1500
    with pytest.raises(AfmError, match="bogus_3k"):
        resolve_dataset("bogus_3k", known, {})
    with pytest.raises(AfmError, match="core"):
        paper_table.resolve_methods("most")
    cells = tmp_path / "cells"
    cells.mkdir()
    base = {"model": "deepfm", "seed": 0, "rows": []}
    (cells / "criteo__deepfm__s0.json").write_text(
        json.dumps({**base, "dataset": "criteo", "max_rows": 40000}))
    (cells / "criteo__dcn__s1.json").write_text(
        json.dumps({**base, "model": "dcn", "seed": 1, "dataset": "criteo", "max_rows": None}))
    assert migrate_capped_cells(cells, log=lambda s: None) == ["criteo_40k__deepfm__s0.json"]
    moved = json.loads((cells / "criteo_40k__deepfm__s0.json").read_text())
    assert moved["dataset"] == "criteo_40k" and moved["renamed_from"] == "criteo"
    assert sorted(p.name for p in cells.iterdir()) == ["criteo_40k__deepfm__s0.json",
                                                       "criteo__dcn__s1.json"]
    assert migrate_capped_cells(cells, log=lambda s: None) == []
    (cells / "criteo__deepfm__s0.json").write_text(
        json.dumps({**base, "dataset": "criteo", "max_rows": 40000}))
    with pytest.raises(AfmError, match="exists"):
        migrate_capped_cells(cells, log=lambda s: None)


def goal_cell(dataset, model, seed, *, dauc=0.0, ratio=15.0, int8_auc=0.69, max_rows=None,
              old=False):
    """A synthetic cell: original 0.70 AUC; AFM + int8 (at budget 0.25 and at the goal's size)
    at `ratio` x fewer bytes, `dauc` off."""
    def row(method, plan, auc, logloss, nbytes):
        r = {"method": method, "plan": plan, "auc": auc, "logloss": logloss, "params": 100,
             "compressible": 80, "ratio": 1.0}
        return r if old else {**r, "bytes": nbytes, "bytes_ratio": 1500 / nbytes}
    rows = [row("original", "-", 0.70, 0.50, 1500), row("AFM", "both", 0.70, 0.50, 400),
            row("AFM sweep", "budget 0.1", 0.699, 0.501, 150)]
    if not old:
        rows += [row("int8", "-", int8_auc, 0.501, 390),
                 row("AFM + int8", "both", 0.70 + dauc, 0.50, 1500 / ratio),
                 row("AFM", "both, bytes of AFM + int8", 0.695, 0.505, 1500 / ratio - 1),
                 row("AFM", "both, bytes of int8", 0.70, 0.50, 389),
                 row(*AFM_INT8_GOAL, 0.70 + dauc, 0.50, 1500 / ratio),
                 row(*AFM_AT_GOAL, 0.695, 0.505, 1500 / ratio - 1)]
    return {"dataset": dataset, "model": model, "seed": seed, "train_rows": 80, "test_rows": 10,
            "max_rows": max_rows, "rows": rows}


def test_report_goals_and_bytes_columns(tmp_path):
    cells = [goal_cell("movielens", m, s, dauc=d, int8_auc=i)
             for m, d, i in (("deepfm", 0.0, 0.69), ("dcn", 0.001, 0.69), ("nfm", -0.002, 0.69),
                             ("gdcn", 0.0, 0.69), ("fibinet", 0.0, 0.71)) for s in (0, 1)]
    cells += [goal_cell("frappe", "deepfm", 0, ratio=10.0)]
    cells += [goal_cell("criteo_40k", "deepfm", s, max_rows=40000, old=True) for s in (0, 1)]
    text, summary = summarize(cells)
    g = summary["goals"]["datasets"]
    ml = g["movielens"]
    assert ml["passing"] == 4 and ml["met"] and len(ml["models"]) == 5
    assert ml["beats_int8"] == 4 and ml["beats_afm_equal_bytes"] == 5   # fibinet's int8 wins
    assert not g["frappe"]["met"] and g["frappe"]["models"][0]["ratio_ok"] is False
    assert g["criteo"]["models"] == [] and not summary["goals"]["met"]
    assert "| nfm | 2 | 15.00x | -0.0020 | +0.0000 | no (AUC) |" in text
    assert "movielens: 4 of 5 models pass (goal: >= 4 of 7) -> met" in text
    assert "No criteo cell has the AFM + int8 rows yet." in text
    assert "## criteo_40k (80 train / 10 test rows, first 40,000 rows of the file)" in text
    assert "| deepfm | original | 1.00x | 100 |  |  | 0.7000" in text   # old rows: no bytes
    assert "| deepfm | AFM + int8 both | 1.00x | 100 | 100 | 15.00x |" in text
    paths = paper_table.plot(cells, tmp_path)
    names = {p.name for p in paths}
    assert "paper_auc_vs_bytes_movielens.png" in names
    assert "paper_auc_vs_bytes_criteo_40k.png" not in names   # no int8 rows there
    assert all(p.stat().st_size > 1000 for p in paths)


def test_driver_flags(tmp_path, capsys):
    from afm_jax.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["experiment", "paper-table", "--methods", "some"])
    args = build_parser().parse_args(["experiment", "paper-table"])
    assert args.methods == "all" and args.max_rows == ""          # whole samples by default
    assert main(["experiment", "paper-table", "--data", str(tmp_path / "nope"),
                 "--no-compile-cache"]) == 2
    assert "--data" in capsys.readouterr().err
    # experiments/paper_table.py is the same command
    proc = subprocess.run([sys.executable, str(DRIVER), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--methods" in proc.stdout


def test_goals_count_a_model_that_cannot_fit_as_a_fail():
    cells = [goal_cell("movielens", "deepfm", s) for s in (0, 1)]
    bad = goal_cell("movielens", "autoint", 0)
    bad["rows"] = [r for r in bad["rows"] if (r["method"], r["plan"]) != AFM_INT8_GOAL]
    bad["rows"].append({"method": AFM_INT8_GOAL[0], "plan": AFM_INT8_GOAL[1],
                        "skipped": "bytes:90770 cannot be met"})
    text, summary = summarize(cells + [bad])
    ml = summary["goals"]["datasets"]["movielens"]
    assert ml["passing"] == 1 and len(ml["models"]) == 2
    assert "| autoint | 1 | no plan fits: bytes:90770 cannot be met | | | no |" in text
    assert "{GOAL" not in text
