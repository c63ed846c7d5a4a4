"""Statistics without collectives in the loop, and full tables counted by id (compress/stats.py).

The multi-device checks run this file as a worker in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (as tests/test_distributed.py does):

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/test_stats.py mesh
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


try:
    from tests.distributed_worker import rel, stats_diff
except ImportError:  # run as the mesh worker script, from tests/
    from distributed_worker import rel, stats_diff


def all_reduces(hlo: str) -> int:
    """all-reduce instructions in compiled HLO text (sync or async start)."""
    return len(re.findall(r"\ball-reduce(?:-start)?\(", hlo))


def odd_batches(info, n_batches: int, size: int, seed: int = 0) -> list[dict]:
    """Random batches with ids outside every table (negative and >= vocab: the model looks up
    row 0) and weight-0 padding rows whose ids and numbers must count for nothing."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        cat = np.stack([rng.integers(-3, v + 5, size) for v in info.vocab_sizes], 1).astype(np.int32)
        num = rng.normal(size=(size, len(info.num_names))).astype(np.float32)
        weight = (rng.uniform(size=size) < 0.8).astype(np.float32)
        out.append({"cat": cat, "num": num, "weight": weight})
    return out


# ------------------------------------------------------------------------ in process (1 device)

@pytest.fixture(scope="module")
def lively():
    from tests.helpers import INFO, lively_params, small_model
    model = small_model("deepfm")
    return model, lively_params(model, 2), INFO


def test_counted_table_statistics_equal_per_row_statistics(lively):
    from afm_jax.compress import collect_stats

    model, params, info = lively
    data = odd_batches(info, 3, 1500)  # 1500 rows: chunked scan with a padded last chunk
    exact = collect_stats(model, params, data, progress=False)
    rows = collect_stats(model, params, data, progress=False, exact_tables=False)
    embed = [s for s in rows if s.startswith("embed/")]
    assert len(embed) == len(info.cat_names)
    d = stats_diff(exact, rows, 1500, 3)
    assert d["same_sites"] and d["counts_equal"], d
    assert d["cov"] <= d["cov_tol"] and d["mean"] <= d["mean_tol"], d  # float32 rounding bound

    # against float64 numpy: the rows of weight > 0, ids outside the table looked up as id 0
    for i, (name, v) in enumerate(zip(info.cat_names, info.vocab_sizes)):
        table = np.asarray(params["embed"][name]["embedding"], np.float64)
        ids = np.concatenate([b["cat"][b["weight"] > 0, i] for b in data])
        y = table[np.where((ids >= 0) & (ids < v), ids, 0)]
        st = exact[f"embed/{name}"]
        assert st.count == len(y)
        assert rel(st.mean, y.mean(0)) < 1e-12
        assert rel(st.cov, np.cov(y.T, bias=True)) < 1e-10


def test_counted_sites_alone_need_no_forward_pass(lively):
    from afm_jax.compress import collect_stats

    model, params, info = lively
    data = odd_batches(info, 2, 700, seed=5)
    got = collect_stats(model, params, data, sites=["embed/b"], progress=False)
    ref = collect_stats(model, params, data, sites=["embed/b"], progress=False, exact_tables=False)
    assert list(got) == ["embed/b"]
    d = stats_diff(got, ref, 700, 2)
    assert d["counts_equal"] and d["cov"] <= d["cov_tol"] and d["mean"] <= d["mean_tol"], d


def test_only_full_tables_are_counted(lively):
    from afm_jax.compress import compress, make_plan
    from afm_jax.compress.stats import _prepare
    from tests.helpers import batches

    model, params, info = lively
    first = batches(1, 64)[0]
    _, _, plan = _prepare(model, params, first, None)
    assert {c.site for c in plan.counted} == {f"embed/{n}" for n in info.cat_names}
    assert "mlp/dense_0" in plan.by_rows and not any(s.startswith("embed/") for s in plan.by_rows)
    _, _, off = _prepare(model, params, first, None, exact_tables=False)
    assert off.counted == () and set(off.by_rows) == set(plan.sites)
    # a compressed table (projection after the lookup) goes through the per-row path
    from afm_jax.compress import collect_stats
    stats = collect_stats(model, params, batches(2, 256), progress=False)
    small = compress(params, stats, make_plan(params, stats, "rank:3"))
    _, _, plan = _prepare(model, small, first, None)
    assert plan.counted == ()


# ---------------------------------------------------------------- 4 devices, in a subprocess

def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    return env


@pytest.fixture(scope="module")
def mesh_result() -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "mesh"], env=_env(4),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_statistics_equal_single_device(mesh_result):
    assert mesh_result["devices"] == 4
    for key, st in mesh_result["stats"].items():
        assert st["same_sites"] and st["counts_equal"] and st["sites"] > 0, key
        # the same float32 sums in another order (4 devices' partial moments merged): within
        # their rounding bound (distributed_worker.stats_diff), not a fixed 1e-6
        assert st["cov"] <= st["cov_tol"] and st["mean"] <= st["mean_tol"], (key, st)


def test_per_batch_update_has_no_all_reduce(mesh_result):
    st = mesh_result["hlo"]
    assert st["update"] == 0, st
    # the count sees them: the same update jitted over the sharded batch without shard_map
    # (the compiler then reduces the moments across devices) has some
    assert st["without_shard_map"] > 0, st


def mesh_checks() -> dict:
    import jax

    import afm_jax
    from afm_jax import distributed as dist
    from afm_jax.compress import collect_stats
    from afm_jax.compress.stats import _prepare, _update_fn
    from afm_jax.data.batching import shard_batch
    from tests.distributed_worker import small_setup

    out: dict = {"devices": jax.device_count(), "stats": {}}
    ds, model, params = small_setup()
    four = dist.make_mesh(4)
    placed = dist.shard_params(params, four)
    for size in (999, 4100):  # padded over 4 devices; 1025 rows a device: a chunked scan
        for exact in (True, False):
            ref = collect_stats(model, params, afm_jax.iterate_batches(ds.train, size),
                                progress=False, exact_tables=exact)
            got = collect_stats(model, placed, afm_jax.iterate_batches(ds.train, size, mesh=four),
                                progress=False, mesh=four, exact_tables=exact)
            out["stats"][f"batch {size}, exact_tables={exact}"] = stats_diff(
                got, ref, size, -(-len(ds.train) // size))
    odd = odd_batches(ds.info, 3, 1001, seed=7)
    out["stats"]["odd ids, padding"] = stats_diff(
        collect_stats(model, placed, odd, progress=False, mesh=four),
        collect_stats(model, params, odd, progress=False, exact_tables=False), 1001, 3)
    # row-sharded tables ("model" axis left to the compiler inside the shard_map)
    mesh = dist.make_mesh(4, model_axis=2)
    out["stats"]["2x2, row-sharded tables"] = stats_diff(
        collect_stats(model, dist.shard_params(params, mesh, shard_embeddings=True),
                      afm_jax.iterate_batches(ds.train, 999, mesh=mesh), progress=False, mesh=mesh),
        collect_stats(model, params, afm_jax.iterate_batches(ds.train, 999), progress=False),
        999, -(-len(ds.train) // 999))

    # the compiled per-batch update on the 4-device mesh: 8192 rows, 2048 a device (a scan)
    batch = shard_batch(next(afm_jax.iterate_batches(ds.train, 8192, pad_last=True)), four)
    batch = {k: batch[k] for k in ("cat", "num", "weight")}
    update, carry, plan = _prepare(model, placed, batch, None, True, four)
    text = update.lower(carry, placed, batch).compile().as_text()
    plain = _update_fn(model, plan.by_rows, plan.counted, None)
    _, flat_carry, _ = _prepare(model, placed, batch, None, True, None)
    flat_carry = jax.device_put(flat_carry, dist.replicated(four))
    plain_text = plain.lower(flat_carry, placed, batch).compile().as_text()
    out["hlo"] = {"update": all_reduces(text), "without_shard_map": all_reduces(plain_text)}
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1:] != ["mesh"]:
        raise SystemExit("usage: python tests/test_stats.py mesh")
    print(json.dumps(mesh_checks()))
