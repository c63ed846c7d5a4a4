"""Crash and resume: a run killed with SIGKILL and restarted ends bit-identical; NaN stops cleanly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from afm_jax.checkpoint import load_params
from afm_jax.data import synthetic_dataset
from afm_jax.errors import AfmError
from afm_jax.models import build_model
from afm_jax.train import TrainConfig, train

TRAIN = [sys.executable, "-m", "afm_jax.cli", "train", "--data", "synthetic:20000", "--model",
         "deepfm", "--mlp", "32", "--epochs", "2", "--batch-size", "256", "--patience", "5",
         "--checkpoint-every", "7", "--no-progress",
         # row-wise tables: their moments and step count are part of the resumed state too
         "--table-optimizer", "rowwise"]


def _run(out: Path) -> None:
    subprocess.run(TRAIN + ["--out", str(out)], check=True, capture_output=True, timeout=300)


def _steps(out: Path) -> list[int]:
    """The checkpoints of the run writing `out`: in its .partial sibling until it completes."""
    state = out.with_name(out.name + ".partial") / "state"
    return sorted(int(p.name) for p in state.iterdir() if p.name.isdigit()) if state.exists() else []


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path):
    """Kill the run (SIGKILL, no chance to clean up) right after a random one of its first-epoch
    checkpoints, with steps still to go; the same command then resumes and ends bit-identical."""
    reference = tmp_path / "ref"
    _run(reference)
    killed = tmp_path / "killed"
    rng = random.Random(int(os.environ.get("AFM_JAX_KILL_SEED", "0")))
    # 16,000 training rows / 256 = 63 steps an epoch, 2 epochs, a checkpoint every 7 steps:
    # stopping at one of steps 7..42 leaves 84 steps or more still to run when the kill lands
    target = rng.choice(range(7, 43, 7))
    proc = subprocess.Popen(TRAIN + ["--out", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while max(_steps(killed), default=0) < target and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.05))  # somewhere between that checkpoint and the next
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"the run was not killed: it exited with {proc.returncode} before the kill "
        f"(checkpoints {_steps(killed)}); stderr: {err.decode()[-2000:]}")
    assert _steps(killed), "the run never checkpointed before the kill"
    assert not killed.exists(), "the killed run got to write its model directory"
    _run(killed)  # the same command resumes from the last checkpoint
    a, b = load_params(reference / "params"), load_params(killed / "params")
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # and the same record of it: best_valid (model.json) and the history, all but timings
    best, history = _record(reference)
    assert set(best) >= {"auc", "logloss", "rows", "step", "tag", "train_loss"}
    assert len(history) == 2 and best in history
    assert _record(killed) == (best, history)


def _record(out: Path) -> tuple[dict, list[dict]]:
    """(best_valid of model.json, history.json), without the wall-clock "seconds"."""
    def untimed(h: dict) -> dict:
        return {k: v for k, v in h.items() if k != "seconds"}
    meta = json.loads((out / "model.json").read_text())
    return untimed(meta["best_valid"]), [untimed(h) for h in json.loads((out / "history.json").read_text())]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    data = synthetic_dataset(8000, seed=2)
    model = build_model("deepfm", data.info, mlp=(16,))
    cfg = TrainConfig(epochs=1, batch_size=512, log_every=1)
    train(model, data, cfg, out_dir=tmp_path / "m", progress=False)
    good = load_params(tmp_path / "m" / "params")
    data.train.num[:] = np.inf  # a poisoned input stream
    with pytest.raises(AfmError, match="loss became nan"):
        train(model, data, TrainConfig(epochs=2, batch_size=512, log_every=1, patience=5),
              out_dir=tmp_path / "m", progress=False)
    jax.tree.map(np.testing.assert_array_equal, good, load_params(tmp_path / "m" / "params"))


def test_same_seed_gives_bit_identical_params_and_statistics():
    from afm_jax.compress import collect_stats
    from afm_jax.data import iterate_batches

    data = synthetic_dataset(8000, seed=3)
    runs = []
    for _ in range(2):
        model = build_model("dcnv2", data.info, mlp=(16,))
        params = train(model, data, TrainConfig(epochs=1, batch_size=512, seed=5),
                       progress=False).params
        stats = collect_stats(model, params, iterate_batches(data.train, 1024), progress=False)
        runs.append((params, stats))
    jax.tree.map(np.testing.assert_array_equal, runs[0][0], runs[1][0])
    for site in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][site].cov, runs[1][1][site].cov)
        np.testing.assert_array_equal(runs[0][1][site].mean, runs[1][1][site].mean)


def test_corrupted_or_half_written_checkpoints(tmp_path):
    """A damaged params checkpoint is a clear error; a half-written state step is ignored."""
    from afm_jax.checkpoint import load_model_dir
    from afm_jax.errors import CheckpointError

    data = synthetic_dataset(6000, seed=4)
    model = build_model("deepfm", data.info, mlp=(16,))
    cfg = TrainConfig(epochs=1, batch_size=512)
    train(model, data, cfg, out_dir=tmp_path / "m", progress=False)
    # a crash while writing leaves orbax's temporary directory; resuming must not read it
    steps = sorted(int(p.name) for p in (tmp_path / "m" / "state").iterdir() if p.name.isdigit())
    partial = tmp_path / "m" / "state" / f"{steps[-1] + 5}.orbax-checkpoint-tmp-123"
    partial.mkdir()
    (partial / "junk").write_text("half")
    res = train(model, data, TrainConfig(epochs=2, batch_size=512, patience=5),
                out_dir=tmp_path / "m", progress=False)
    assert [h["tag"] for h in res.history] == ["epoch 1", "epoch 2"]
    # truncate every data file of the params checkpoint
    files = [p for p in (tmp_path / "m" / "params").rglob("*") if p.is_file() and p.stat().st_size > 64]
    assert files
    for p in files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="params"):
        load_model_dir(tmp_path / "m")


def test_resume_keeps_the_best_validation_record_and_decisions(tmp_path):
    """A second train() on a finished run's directory resumes after its last epoch: its
    best_valid and model.json equal the first run's, every key (issue 25: the float32 best AUC
    in the checkpoint no longer matched the float64 history, so only {"auc"} was left)."""
    import json

    ds = synthetic_dataset(3000, seed=4)
    model = build_model("deepfm", ds.info, mlp=(16,))
    cfg = TrainConfig(epochs=2, batch_size=256, patience=5)
    first = train(model, ds, cfg, out_dir=str(tmp_path), progress=False)
    meta = json.loads((tmp_path / "model.json").read_text())
    again = train(model, ds, cfg, out_dir=str(tmp_path), progress=False)
    assert set(first.best_valid) >= {"auc", "logloss", "rows", "step", "tag", "train_loss"}
    assert again.best_valid == first.best_valid and again.history == first.history
    assert json.loads((tmp_path / "model.json").read_text())["best_valid"] == meta["best_valid"]
    # one more epoch after the resume: kept or not by the float64 comparison, as uninterrupted
    longer = train(model, ds, TrainConfig(epochs=3, batch_size=256, patience=5),
                   out_dir=str(tmp_path), progress=False)
    straight = train(model, ds, TrainConfig(epochs=3, batch_size=256, patience=5), progress=False)
    assert longer.best_valid == {**straight.best_valid, "seconds": longer.best_valid["seconds"]}
