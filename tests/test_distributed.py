"""Multi-device and multi-process paths (afm_jax/distributed.py), tested on CPU.

Each multi-device check runs in a subprocess (tests/distributed_worker.py) that starts JAX with
XLA_FLAGS=--xla_force_host_platform_device_count=N; the two-process check starts two workers that
meet through `jax.distributed.initialize` on localhost with gloo CPU collectives.
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

from afm_jax import distributed as dist
from afm_jax.data.batching import batch_indices, keyed_permutation
from afm_jax.errors import AfmError

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = WORKER.parent.parent


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    return env


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mesh_result() -> dict:
    """One 4-device worker run serves all mesh checks (JAX start-up and compiles paid once)."""
    proc = subprocess.run([sys.executable, str(WORKER), "mesh"], env=_env(4), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _last_json(proc.stdout)


def test_four_devices_seen(mesh_result):
    assert mesh_result["devices"] == 4


def test_sharded_statistics_equal_single_device(mesh_result):
    # 999-row batches over 4 devices: padded with weight-0 rows, which must count for nothing
    for key in ("stats", "stats_host_batches"):
        st = mesh_result[key]
        assert st["counts_equal"] and st["sites"] > 0
        assert st["cov"] < 1e-6 and st["mean"] < 1e-6, (key, st)


def test_data_parallel_step_equals_single_device_step(mesh_result):
    st = mesh_result["step"]
    assert st["batch_sharded"] and st["params_replicated"]
    assert st["loss_diff"] < 1e-6 and st["param_max_diff"] < 1e-6, st


def test_row_sharded_embeddings_score_identically(mesh_result):
    for layout, st in mesh_result["rowshard"].items():
        assert st["table_spec"] == "P('model', None)", layout
        model_axis = int(layout.split("x")[1])
        assert st["table_rows"] % model_axis == 0 and st["table_rows"] >= st["vocab_rows"]
        assert st["shard_rows"] == [st["table_rows"] // model_axis]
        assert st["max_diff"] < 1e-6, (layout, st)


def test_compressed_params_keep_a_valid_sharding(mesh_result):
    st = mesh_result["compressed"]
    assert st["has_proj"] and st["all_named"] and st["shards_fit"] and st["round_trip"]
    assert st["max_diff"] < 1e-6, st


def test_train_over_mesh_matches_and_saves_unpadded(mesh_result):
    st = mesh_result["train"]
    assert abs(st["valid_auc"] - st["ref_valid_auc"]) < 1e-4, st
    assert st["loaded_rows"] == 11  # the 11-row table was padded to 12 on the mesh, saved as 11


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_collect_statistics_across_both():
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), "process", str(port), str(i), "2"],
                              env=_env(2), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err[-3000:]
            outs.append(_last_json(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert sorted(o["process"] for o in outs) == [0, 1]
    for o in outs:
        assert o["processes"] == 2 and o["global_devices"] == 4 and o["local_devices"] == 2
        assert o["local_rows"] == 1600  # each process holds its half of the 3200 training rows
        for key in ("stats", "stats_global_batches"):
            st = o[key]
            assert st["counts_equal"] and st["cov"] < 1e-6 and st["mean"] < 1e-6, (key, st)
        # another row order than the file's (rows of both halves in each batch): rounding only
        assert o["stats_vs_file_order"]["counts_equal"] and o["stats_vs_file_order"]["cov"] < 1e-5


# ---------------------------------------------------------------------- in-process, one device

def test_keyed_permutation_is_a_permutation():
    for n in (1, 2, 7, 1000, 4097):
        perm = keyed_permutation(np.arange(n), n, seed=5)
        assert sorted(perm.tolist()) == list(range(n))
    assert not np.array_equal(keyed_permutation(np.arange(100), 100, 1),
                              keyed_permutation(np.arange(100), 100, 2))


def test_large_split_shuffle_needs_no_permutation(monkeypatch):
    import afm_jax.data.batching as batching
    monkeypatch.setattr(batching, "LARGE_SHUFFLE_ROWS", 10)
    seen = np.concatenate([idx[:real] for idx, real in batch_indices(103, 10, shuffle=True, seed=3)])
    assert sorted(seen.tolist()) == list(range(103))


def test_pad_batch_marks_padding_with_weight_zero():
    batch = {"cat": np.arange(6, dtype=np.int32).reshape(3, 2), "num": np.ones((3, 1), np.float32),
             "label": np.array([1, 0, 1], np.float32)}
    out = dist.pad_batch(batch, 4)
    assert out["cat"].shape == (4, 2) and out["weight"].tolist() == [1, 1, 1, 0]
    assert dist.padded_size(999, None) == 999


def test_process_rows_cover_every_row_once():
    rows = [dist.process_rows(10, i, 3) for i in range(3)]
    assert [(r.start, r.stop) for r in rows] == [(0, 3), (3, 6), (6, 10)]


def test_clear_errors():
    with pytest.raises(AfmError, match="local device"):
        dist.make_mesh(64)
    with pytest.raises(AfmError, match="does not divide"):
        dist.make_mesh(1, model_axis=2)
    with pytest.raises(AfmError, match="process_id"):
        dist.initialize_from_env("localhost:1234", 2, None)
    assert dist.initialize_from_env() is False or os.environ.get("JAX_COORDINATOR_ADDRESS")
