"""The afm-jax command on bad input (issue 26): every mistake exits 2 with one line that names the
fix, prints no traceback and leaves the filesystem exactly as it was (a listing and hashes of
every file before and after), including a run interrupted while it saves.

One tiny model directory, trained once on a small Criteo-format file, serves every case; the
cases run in process through `afm_jax.cli.main`, only the interrupted ones in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from afm_jax.cli import main
from tests.test_data import criteo_line, write

ROOT = Path(__file__).resolve().parents[1]
TRAIN_FLAGS = ["--min-count", "1", "--mlp", "8", "--embed-dim", "4", "--epochs", "1",
               "--batch-size", "128", "--no-progress"]
BAD_LINE = "0\tbroken"


def _good_lines(n: int) -> list[str]:
    return [criteo_line(label=str(i % 2), cats=[f"{(i * 7 + k) % 13:08x}" for k in range(26)])
            for i in range(n)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A folder as a user has it: data files, a trained model `m`, a previous output `taken`
    (an int8 model), an export `ex`, an existing score file and an unfinished training run."""
    w = tmp_path_factory.mktemp("world")
    cache = tmp_path_factory.mktemp("cache")  # outside the world: caching is allowed
    write(w / "good.tsv", _good_lines(400))
    write(w / "bad.tsv", [BAD_LINE] * 50)
    write(w / "mostly_bad.tsv", _good_lines(20) + [BAD_LINE] * 30)
    (w / "plain.csv").write_text("label,a\n1,x\n0,y\n")
    (w / "good.parquet").write_bytes(b"")
    (w / "cache").mkdir()  # a cache folder the cases point at: nothing may land in it
    cwd = os.getcwd()
    os.chdir(w)
    try:
        assert main(["train", "--data", "criteo:good.tsv", *TRAIN_FLAGS, "--out", "m",
                     "--cache-dir", str(cache)]) == 0
        assert main(["quantize", "--model-dir", "m", "--out", "taken", "--no-progress"]) == 0
        assert main(["export", "--model-dir", "m", "--out", "ex", "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    (w / "scores.parquet").write_bytes(b"PAR1 an earlier result")
    (w / "run.partial" / "state").mkdir(parents=True)  # a killed `train --out run`
    return w


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root: a file by its content's sha256, a folder as 'dir'."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_one_line_error(command: str, err: str, expect: list[str]) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err}"
    assert lines[0].startswith(f"afm-jax {command}: error: "), lines[0]
    for text in expect:
        assert text in lines[0], f"{text!r} not in: {lines[0]}"


M = ["--model-dir", "m"]
Q = ["--no-progress", "--no-compile-cache"]

# (id, argv, texts the one line must hold)
CASES = [
    # bad plans: refused before the statistics pass, nothing written
    ("plan-rank-0", ["compress", *M, "--plan", "rank:0", "--out", "r0"],
     ["'rank:0'", "rank must be an integer >= 1"]),
    ("plan-budget-percent", ["compress", *M, "--plan", "budget:25", "--out", "r"],
     ["budget must be in (0, 1]", "did you mean budget:0.25?"]),
    ("plan-energy-above-1", ["compress", *M, "--plan", "energy:1.5", "--out", "r"],
     ["energy must be in (0, 1]"]),
    ("plan-budget-0", ["compress", *M, "--plan", "budget:0", "--out", "r"],
     ["budget must be in (0, 1]"]),
    ("plan-bytes-0", ["compress", *M, "--plan", "bytes:0", "--out", "r"], ["bytes", "> 0"]),
    ("plan-auc-drop-negative", ["compress", *M, "--plan", "auc-drop:-0.1", "--out", "r"],
     ["auc-drop", ">= 0"]),
    ("plan-unknown-lists-every-kind", ["compress", *M, "--plan", "fast", "--out", "r"],
     ["unknown plan kind 'fast'", "rank:K", "energy:E", "budget:F", "bytes:N", "auc-drop:D",
      "logloss-rise:L"]),
    # flags that contradict each other or are out of range
    ("calibration-and-stats-rows",
     ["compress", *M, "--calibration-rows", "10", "--stats-rows", "10", "--out", "r"],
     ["--calibration-rows", "--stats-rows", "not both"]),
    ("max-bad-fraction-without-skip",
     ["train", "--data", "criteo:good.tsv", "--max-bad-fraction", "0.2", "--out", "t"],
     ["--max-bad-fraction", "--on-bad-lines skip"]),
    ("max-bad-fraction-out-of-range",
     ["train", "--data", "criteo:good.tsv", "--on-bad-lines", "skip", "--max-bad-fraction",
      "1.5", "--out", "t"], ["--max-bad-fraction must be in [0, 1]"]),
    ("split-seed-without-random", ["train", "--data", "criteo:good.tsv", "--split-seed", "3"],
     ["--split-seed", "--split-by random"]),
    ("checkpoint-every-without-out",
     ["train", "--data", "criteo:good.tsv", "--checkpoint-every", "5"],
     ["--checkpoint-every needs --out"]),
    ("synthetic-vocab-on-a-file",
     ["train", "--data", "criteo:good.tsv", "--synthetic-vocab", "1000", "--out", "t"],
     ["--synthetic-vocab applies to --data synthetic"]),
    ("unknown-activation", ["compress", *M, "--act", "swish", "--out", "r"],
     ["--act swish", "relu"]),
    # existing outputs, and the input as the output
    ("out-is-model-dir", ["compress", *M, "--plan", "rank:2", "--out", "m", "--overwrite"],
     ["--out m is the input m", "choose another --out"]),
    ("out-is-model-dir-resolved",
     ["compress", *M, "--plan", "rank:2", "--out", "./m/", "--overwrite"],
     ["is the input", "choose another --out"]),
    ("out-contains-model-dir", ["quantize", *M, "--out", ".", "--overwrite"],
     ["contains the input"]),
    ("compress-out-exists", ["compress", *M, "--plan", "rank:2", "--out", "taken"],
     ["--out taken", "exists", "--overwrite"]),
    ("quantize-out-exists", ["quantize", *M, "--out", "taken"], ["exists", "--overwrite"]),
    ("export-out-exists", ["export", *M, "--out", "ex"], ["exists", "--overwrite"]),
    ("score-out-exists",
     ["score", *M, "--data", "criteo:good.tsv", "--out", "scores.parquet"],
     ["--out scores.parquet", "exists", "--overwrite"]),
    ("train-out-exists", ["train", "--data", "criteo:good.tsv", "--out", "taken"],
     ["exists", "--overwrite"]),
    ("score-out-is-the-data",
     ["score", *M, "--data", "csv:plain.csv", "--out", "plain.csv", "--overwrite"],
     ["is the input"]),
    # unknown extensions
    ("score-out-txt", ["score", *M, "--data", "criteo:good.tsv", "--out", "s.txt"],
     ["unknown extension '.txt'", ".parquet, .csv or .jsonl"]),
    ("score-out-no-extension", ["score", *M, "--data", "criteo:good.tsv", "--out", "scores"],
     ["unknown extension", ".parquet, .csv or .jsonl"]),
    # missing files
    ("train-data-missing", ["train", "--data", "criteo:missing.tsv", "--out", "t"],
     ["missing.tsv", "file not found"]),
    ("score-data-missing", ["score", *M, "--data", "criteo:missing.tsv", "--out", "s.csv"],
     ["missing.tsv", "file not found"]),
    ("model-dir-missing", ["evaluate", "--model-dir", "nowhere"], ["nowhere", "no such model"]),
    # bare paths: the kind: prefix is what is missing
    ("bare-tsv", ["train", "--data", "good.tsv", "--out", "t"],
     ["no kind: prefix", "did you mean --data criteo:good.tsv?"]),
    ("bare-parquet", ["score", *M, "--data", "good.parquet", "--out", "s.csv"],
     ["did you mean --data parquet:good.parquet?"]),
    # all-bad and mostly-bad files, and errors spoken in flags
    ("score-all-bad-skip",
     ["score", *M, "--data", "criteo:bad.tsv", "--on-bad-lines", "skip", "--out", "s.csv"],
     ["every line read was bad", "50 bad, 0 good"]),
    ("score-mostly-bad-skip",
     ["score", *M, "--data", "criteo:mostly_bad.tsv", "--on-bad-lines", "skip", "--out",
      "s.jsonl"], ["30 of 50 lines read were bad", "--max-bad-fraction"]),
    ("train-all-bad-skip",
     ["train", "--data", "criteo:bad.tsv", "--on-bad-lines", "skip", "--out", "t",
      "--cache-dir", "cache"], ["50 bad lines skipped"]),
    ("train-mostly-bad-skip",
     ["train", "--data", "criteo:mostly_bad.tsv", "--on-bad-lines", "skip", "--min-count", "1",
      "--out", "t", "--cache-dir", "cache"], ["30 of 50 lines read were bad"]),
    ("bad-line-names-the-flag",
     ["score", *M, "--data", "criteo:bad.tsv", "--out", "s.parquet"],
     ["line 1", "--on-bad-lines skip"]),
    ("csv-without-schema-names-the-flag",
     ["train", "--data", "csv:plain.csv", "--out", "t", "--cache-dir", "cache"],
     ["--schema FILE"]),
    # model directories of the wrong kind
    ("export-as-model-dir", ["evaluate", "--model-dir", "ex"], ["exported scorer"]),
    ("export-as-compress-input", ["compress", "--model-dir", "ex", "--out", "r"],
     ["exported scorer"]),
    ("unfinished-run-as-model-dir", ["evaluate", "--model-dir", "run.partial"],
     ["unfinished training run", "resume"]),
    ("file-as-model-dir", ["score", "--model-dir", "good.tsv", "--data", "criteo:good.tsv",
                           "--out", "s.csv"], ["a file, not a model directory"]),
    ("params-as-model-dir", ["quantize", "--model-dir", "m/params", "--out", "q"],
     ["not a model directory"]),
    ("out-over-an-interrupted-training-run",
     ["compress", *M, "--plan", "rank:2", "--out", "run"],
     ["run.partial holds an interrupted training run's checkpoints", "resume it"]),
]


@pytest.mark.parametrize("argv,expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(world, monkeypatch, capsys,
                                                             argv, expect):
    monkeypatch.chdir(world)
    before = snapshot(world)
    assert main([*argv, *Q]) == 2
    captured = capsys.readouterr()
    assert_one_line_error(argv[0], captured.err, expect)
    assert "Traceback" not in captured.out
    assert snapshot(world) == before


def test_the_matrix_has_every_kind_of_case():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


# ---------------------------------------------------------------------- interrupted writes

_INTERRUPT = textwrap.dedent("""
    import os, signal, sys, time
    import afm_jax.checkpoint as checkpoint
    from afm_jax.cli import main

    save = checkpoint.save_params

    def save_then_die(path, params):  # the params are on disk, model.json beside them
        save(path, params)
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        time.sleep(60)

    checkpoint.save_params = save_then_die
    sys.exit(main(sys.argv[2:]))
""")


def _interrupted(world: Path, sig: str, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", _INTERRUPT, sig, *argv, *Q], cwd=world,
                          capture_output=True, text=True, timeout=300, env=env)


def test_sigterm_while_saving_leaves_the_previous_output_as_it_was(world):
    """SIGTERM while `quantize --overwrite` saves over an earlier output: exit 2, one line,
    the earlier output intact, no temporary directory left."""
    before = snapshot(world)
    proc = _interrupted(world, "SIGTERM", ["quantize", *M, "--out", "taken", "--overwrite"])
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error("quantize", proc.stderr, ["interrupted by SIGTERM",
                                                    "taken is as it was", "run the command again"])
    assert snapshot(world) == before


def test_sigkill_while_saving_never_shows_a_half_written_model(world, tmp_path, capsys):
    """SIGKILL (no clean-up possible) while `quantize` writes a new output: the output does not
    exist (only its .partial sibling), so nothing reads half a model; the same command then
    completes and leaves no debris."""
    import shutil

    shutil.copytree(world / "m", tmp_path / "m")
    shutil.copy(world / "good.tsv", tmp_path / "good.tsv")  # the model's own data spec
    before = snapshot(tmp_path)
    proc = _interrupted(tmp_path, "SIGKILL", ["quantize", *M, "--out", "q"])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (tmp_path / "q").exists() and (tmp_path / "q.partial").is_dir()
    after = snapshot(tmp_path)
    assert {k: after[k] for k in before} == before
    assert all(k.startswith("q.partial") for k in set(after) - set(before))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["quantize", *M, "--out", "q", *Q]) == 0
        assert main(["evaluate", "--model-dir", "q", "--json", *Q]) == 0
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "q.partial").exists()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == 40


# --------------------------------------------------------------- what the fixes must not lose

def test_score_writes_the_format_its_extension_names(world, tmp_path, capsys):
    """`score --out` picks parquet, csv or jsonl by extension; the same rows and scores in each
    (issue 26: scores.csv used to hold Parquet)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    tables = {}
    for ext in (".parquet", ".csv", ".jsonl"):
        out = tmp_path / f"s{ext}"
        assert main(["score", "--model-dir", str(world / "m"), "--data",
                     f"criteo:{world / 'good.tsv'}", "--out", str(out), *Q]) == 0
        if ext == ".parquet":
            tables[ext] = pq.read_table(out).to_pydict()
        elif ext == ".csv":
            assert out.read_text().startswith('"file","line","score"')
            tables[ext] = pacsv.read_csv(out).to_pydict()
        else:
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            tables[ext] = {k: [r[k] for r in rows] for k in ("file", "line", "score")}
    capsys.readouterr()
    ref = tables[".parquet"]
    assert ref["line"] == list(range(1, 401))
    for ext in (".csv", ".jsonl"):
        assert tables[ext]["line"] == ref["line"] and tables[ext]["file"] == ref["file"]
        np.testing.assert_allclose(tables[ext]["score"], ref["score"], rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "s.jsonl", "s.parquet"]


def test_overwrite_replaces_an_output_and_a_mostly_good_file_is_scored(world, tmp_path, capsys):
    """--overwrite replaces an existing output; under --on-bad-lines skip a file within
    --max-bad-fraction is scored with the counts."""
    out = tmp_path / "s.csv"
    out.write_text("old")
    assert main(["score", "--model-dir", str(world / "m"), "--data",
                 f"criteo:{world / 'mostly_bad.tsv'}", "--on-bad-lines", "skip",
                 "--max-bad-fraction", "0.7", "--out", str(out), "--overwrite", "--json",
                 *Q]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (res["rows"], res["skipped"]) == (20, 30)
    assert len(out.read_text().splitlines()) == 21
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]


def test_library_errors_keep_python_names(world):
    """The same mistakes through the library speak its argument names."""
    from afm_jax.compress.plan_spec import parse_plan
    from afm_jax.data import load_dataset
    from afm_jax.errors import CompressionError, DataError

    with pytest.raises(DataError, match="on_bad_lines='skip'"):
        load_dataset(f"criteo:{world / 'bad.tsv'}", cache_dir=str(world.parent / "libcache"),
                     progress=False)
    with pytest.raises(DataError, match=r"schema=Schema"):
        load_dataset(f"csv:{world / 'plain.csv'}", progress=False)
    with pytest.raises(CompressionError, match="did you mean budget:0.25"):
        parse_plan("budget:25")
    assert parse_plan("bytes:4k").value == 4096 and parse_plan("rank:3").value == 3
    assert parse_plan("auc-drop:0.001,logloss-rise:0.01").target.logloss_rise == 0.01


def test_atomic_dir_leaves_nothing_on_failure_and_refuses_existing(tmp_path):
    from afm_jax.errors import OutputError
    from afm_jax.outputs import atomic_dir

    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "a") as d:
            (d / "half").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "a") as d:
        (d / "whole").write_text("1")
    with pytest.raises(OutputError, match="overwrite=True"):
        with atomic_dir(tmp_path / "a"):
            pass
    with atomic_dir(tmp_path / "a", overwrite=True) as d:
        (d / "whole").write_text("2")
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    assert (tmp_path / "a" / "whole").read_text() == "2" and len(list((tmp_path / "a").iterdir())) == 1


def test_train_overwrite_trains_afresh_and_replaces_the_directory(tmp_path):
    """train(out_dir=D) on a finished D resumes from its checkpoints; overwrite=True trains
    afresh instead and replaces D whole (no D.partial left)."""
    import jax

    from afm_jax.checkpoint import load_params
    from afm_jax.data import synthetic_dataset
    from afm_jax.models import build_model
    from afm_jax.train import TrainConfig, train

    ds = synthetic_dataset(3000, seed=1)
    model = build_model("deepfm", ds.info, mlp=(8,), embed_dim=4)
    d = tmp_path / "m"
    train(model, ds, TrainConfig(epochs=1, batch_size=256, seed=0), out_dir=d, progress=False)
    first = load_params(d / "params")
    seed1 = TrainConfig(epochs=1, batch_size=256, seed=1)
    resumed = train(model, ds, seed1, out_dir=d, progress=False)  # nothing left to run
    jax.tree.map(np.testing.assert_array_equal, first, jax.tree.map(np.asarray, resumed.params))
    fresh = train(model, ds, seed1, out_dir=d, progress=False, overwrite=True)
    alone = train(model, ds, seed1, progress=False)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, alone.params),
                 load_params(d / "params"))
    assert not np.array_equal(first["mlp"]["dense_0"]["kernel"],
                              np.asarray(fresh.params["mlp"]["dense_0"]["kernel"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
