"""Mesh soak (issue 21): the CLI trains for hundreds of steps on forced host devices, with
validation and checkpoints inside the epoch, then compresses, evaluates and scores.

A thread that places batches while the step's all-reduce waits deadlocks XLA's rendezvous
only after tens of steps, so short mesh tests never saw it: these runs are long enough to.
Each CLI call is a subprocess bounded by a timeout, so a hang fails the test instead of CI.
The data is a Criteo-layout TSV written here (no shared files needed).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300   # one CLI call; the slowest here takes ~40 s on a loaded 2-core machine
# 320,000 training rows: 313 steps of batch 1024 with the default DeepFM; a smaller model or
# batch did not reproduce the prefetch deadlock of issue 21 on the old code, this does
SOAK_ROWS = 400_000
BATCH = "1024"
MODEL = ["--model", "deepfm"]


def write_criteo_tsv(path: Path, rows: int, seed: int = 0) -> Path:
    """A Criteo-layout TSV (label, I1..I13, C1..C26) whose label depends on a few fields, so
    that a model learns something (AUC well above 0.5); 5% of the values missing."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    cats = rng.zipf(1.6, size=(rows, 26)) % 97
    ints = rng.poisson(3.0, size=(rows, 13))
    effect = rng.normal(size=(26, 97))
    logit = effect[np.arange(4), cats[:, :4]].sum(1) + 0.2 * ints[:, 0] - 1.5
    label = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    missing = rng.uniform(size=(rows, 39)) < 0.05
    hexes = np.array([f"{(c * 2654435761) % (1 << 32):08x}" for c in range(97)])
    columns = {"label": pa.array(label)}
    for j in range(39):
        values = ints[:, j].astype(str) if j < 13 else hexes[cats[:, j - 13]]
        columns[f"c{j}"] = pc.if_else(pa.array(missing[:, j]), "", pa.array(values))
    pacsv.write_csv(pa.table(columns), path, pacsv.WriteOptions(
        include_header=False, delimiter="\t", quoting_style="none"))
    return path


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    return env


def cli(*args: str, devices: int = 4) -> dict:
    """`afm-jax ARGS --json --no-progress` in a subprocess with `devices` forced host devices;
    its JSON result. A hang is a failure after TIMEOUT_S, not a stuck CI."""
    cmd = [sys.executable, "-m", "afm_jax.cli", *args, "--json", "--no-progress"]
    try:
        proc = subprocess.run(cmd, env=_env(devices), cwd=ROOT, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"timed out after {TIMEOUT_S}s (a hang on the mesh?): {' '.join(args)}\n"
                    f"{(e.stderr or b'')[-2000:]!r}")
    assert proc.returncode == 0, f"exit {proc.returncode}: {' '.join(args)}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def soak_data(tmp_path_factory) -> Path:
    return write_criteo_tsv(tmp_path_factory.mktemp("soak") / "soak.tsv", SOAK_ROWS)


def _history(model_dir: Path) -> list[dict]:
    return json.loads((model_dir / "history.json").read_text())


def _train_compress_evaluate_score(tmp: Path, data: Path, devices: int, extra: tuple = (),
                                   train_extra: tuple = ()) -> None:
    """extra: mesh flags for every command; train_extra: for train alone."""
    spec = f"criteo:{data}"
    model_dir = tmp / "model"
    res = cli("train", "--data", spec, *MODEL, "--epochs", "1", "--batch-size", BATCH,
              "--eval-every", "100", "--checkpoint-every", "100", "--min-count", "2",
              "--out", str(model_dir), "--devices", str(devices), *extra, *train_extra,
              devices=devices)
    assert res["devices"] == devices and res["auc"] > 0.6, res
    steps = [h["step"] for h in _history(model_dir)]
    assert steps[-1] >= 300 and [s for s in steps if s % 100 == 0][:3] == [100, 200, 300], steps

    small = tmp / "compressed"
    comp = cli("compress", "--model-dir", str(model_dir), "--plan", "budget:0.5",
               "--calibration-rows", "4096", "--out", str(small), "--devices", str(devices),
               *extra, devices=devices)
    assert comp["out"] == str(small)
    ev = cli("evaluate", "--model-dir", str(small), "--devices", str(devices), *extra,
             devices=devices)
    assert ev["auc"] > res["auc"] - 0.02, (ev, res)

    lines = tmp / "lines.tsv"
    with open(data) as src:
        lines.write_text("".join(next(src) for _ in range(3000)))
    out = tmp / "scores.parquet"
    sc = cli("score", "--model-dir", str(small), "--data", f"criteo:{lines}", "--out", str(out),
             "--devices", str(devices), *extra, devices=devices)
    assert sc["rows"] == 3000 and out.is_file()


def test_mesh_soak_four_devices_cli(soak_data, tmp_path):
    """4 devices on the data axis: 312 steps, validation and checkpoints every 100 steps."""
    _train_compress_evaluate_score(tmp_path, soak_data, 4)


def test_mesh_soak_2x2_sharded_rowwise_tables(soak_data, tmp_path):
    """A 2x2 mesh with row-sharded tables (all-reduces over both axes) and row-wise lazy Adam."""
    _train_compress_evaluate_score(tmp_path, soak_data, 4, ("--shard-embeddings", "--model-axis", "2"),
                                   ("--table-optimizer", "rowwise"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_process_gloo_training_soak(soak_data, tmp_path):
    """Two processes of 2 devices each (gloo collectives) train 150+ steps through the CLI."""
    port = _free_port()
    cmd = lambda i: [sys.executable, "-m", "afm_jax.cli", "train", "--data",  # noqa: E731
                     f"criteo:{soak_data}", *MODEL, "--epochs", "1", "--batch-size", "2048",
                     "--min-count", "2", "--out", str(tmp_path / "model"),
                     "--checkpoint-every", "50", "--eval-every", "50", "--coordinator", f"localhost:{port}",
                     "--num-processes", "2", "--process-id", str(i), "--devices", "2",
                     "--json", "--no-progress"]
    procs = [subprocess.Popen(cmd(i), env=_env(2), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, err[-3000:]
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    res = json.loads(outs[0].strip().splitlines()[-1])  # process 0 reports, process 1 is quiet
    assert res["processes"] == 2 and res["devices"] == 4 and res["auc"] > 0.6, res
    assert not any(line.startswith("{") for line in outs[1].splitlines())  # gloo's own lines only
    assert _history(tmp_path / "model")[-1]["step"] >= 150
