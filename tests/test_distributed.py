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

import jax
import numpy as np
import pytest

from afm_jax import distributed as dist
from afm_jax.data import EncodedSplit, iterate_batches
from afm_jax.data.batching import batch_indices, keyed_permutation, shard_batch
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


def test_mesh_batches_hold_the_host_batches_rows(mesh_result):
    st = mesh_result["batches"]
    assert st["batches"] == 4 and st["sharded_on_data"], st  # 3200 rows in batches of 999
    assert st["rows_equal"] and st["pad_weight_zero"], st


def test_sharded_statistics_equal_single_device(mesh_result):
    # 999-row batches over 4 devices: padded with weight-0 rows, which must count for nothing
    for key in ("stats", "stats_host_batches"):
        st = mesh_result[key]
        assert st["counts_equal"] and st["sites"] > 0
        # float32 sums in another order: within their rounding bound (worker.stats_diff)
        assert st["cov"] <= st["cov_tol"] and st["mean"] <= st["mean_tol"], (key, st)


def test_data_parallel_step_equals_single_device_step(mesh_result):
    st = mesh_result["step"]
    assert st["batch_sharded"] and st["params_replicated"] and st["shard_pads"]
    assert st["loss_diff"] <= st["loss_tol"], st
    # Adam's first step moves each param by about lr * sign(grad): rounding in the gradient's
    # all-reduce cannot change it (unless |grad| ~ Adam's eps 1e-8); what remains is the
    # rounding of params of magnitude <= ~1, a few float32 ulps
    assert st["param_max_diff"] < 1e-6, st


# Scores below are compared at 1e-6 absolute on probabilities in (0, 1): each row's score is
# the same per-row computation on every layout (no sum across rows; a row-sharded table's
# masked gather adds exact zeros), so they differ by at most a few float32 ulps of 1.


def test_row_sharded_embeddings_score_identically(mesh_result):
    for layout, st in mesh_result["rowshard"].items():
        assert st["table_spec"] == "P('model', None)", layout
        model_axis = int(layout.split("x")[1])
        assert st["table_rows"] % model_axis == 0 and st["table_rows"] >= st["vocab_rows"]
        assert st["shard_rows"] == [st["table_rows"] // model_axis]
        assert st["max_diff"] < 1e-6, (layout, st)


def test_packed_row_sharded_tables_score_identically_and_rowwise_steps_stay_sharded(mesh_result):
    for layout, st in mesh_result["packed"].items():
        assert st["table_spec"] == st["after_spec"] == st["slot_spec"] == "model", st
        assert st["max_diff"] < 1e-6, (layout, st)
        assert st["loss_diff"] <= st["loss_tol"] and st["param_max_diff"] < 1e-6, (layout, st)


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
        st = o["stats_global_batches"]
        assert st["counts_equal"] and st["cov"] <= st["cov_tol"] and st["mean"] <= st["mean_tol"], st
        assert o["batches"]["rows_equal"] and o["batches"]["pad_weight_zero"], o["batches"]
        # each process reads only its devices' half of every batch, not the whole split
        assert o["reads_own_rows_only"] and o["rows_read"] < o["rows"], o


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


def _split(n: int) -> EncodedSplit:
    return EncodedSplit(cat=np.arange(2 * n, dtype=np.int32).reshape(n, 2),
                        num=np.ones((n, 1), np.float32), label=(np.arange(n) % 2).astype(np.float32))


def test_last_batch_padded_with_weight_zero():
    last = list(iterate_batches(_split(7), 4, pad_last=True))[-1]
    assert last["cat"].shape == (4, 2) and last["weight"].tolist() == [1, 1, 1, 0]
    assert last["cat"][3].tolist() == last["cat"][0].tolist()  # a repeat of the first row
    assert dist.padded_size(999, None) == 999


def test_one_device_mesh_batches_equal_host_batches():
    mesh = dist.make_mesh(1)
    split = _split(10)
    for shuffle in (False, True):
        host = list(iterate_batches(split, 4, shuffle=shuffle, seed=2, pad_last=True))
        sharded = list(iterate_batches(split, 4, shuffle=shuffle, seed=2, mesh=mesh))
        assert len(host) == len(sharded) == 3
        for h, g in zip(host, sharded):
            assert set(g) == set(h) and all(isinstance(v, jax.Array) for v in g.values())
            assert all(np.array_equal(np.asarray(g[k]), h[k]) for k in h)


def test_shard_batch_keeps_the_batch_weights():
    mesh = dist.make_mesh(1)
    out = shard_batch(next(iterate_batches(_split(3), 4, pad_last=True)), mesh)
    assert np.asarray(out["weight"]).tolist() == [1, 1, 1, 0]
    again = shard_batch(out, mesh)  # already sharded: used as it is
    assert set(again) == set(out) and all(again[k] is out[k] for k in out)
    assert np.asarray(shard_batch({"cat": np.zeros((2, 1), np.int32)}, mesh)["weight"]).tolist() == [1, 1]


def test_clear_errors():
    with pytest.raises(AfmError, match="local device"):
        dist.make_mesh(64)
    with pytest.raises(AfmError, match="does not divide"):
        dist.make_mesh(1, model_axis=2)
    with pytest.raises(AfmError, match="process_id"):
        dist.initialize_from_env("localhost:1234", 2, None)
    assert dist.initialize_from_env() is False or os.environ.get("JAX_COORDINATOR_ADDRESS")
