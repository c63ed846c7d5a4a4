"""Worker of tests/test_distributed.py, run in a subprocess (device count and distributed set-up
must happen before JAX starts). Prints one JSON object on its last line.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/distributed_worker.py mesh
    python tests/distributed_worker.py process PORT INDEX COUNT   (jax.distributed, gloo)
"""

from __future__ import annotations

import json
import math
import sys
import tempfile

import numpy as np


def rel(a, b) -> float:
    """Relative difference in the Frobenius norm."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


EPS32 = float(np.finfo(np.float32).eps)


def f32_sum_bound(depth: int, scale: float = 1.0) -> float:
    """How far two float32 sums of the same terms may differ when added in different orders
    (another chunking, a tree all-reduce, a merge of per-device partial sums): each is within
    depth * eps * scale of the exact sum, where `scale` is the sum of the terms' magnitudes and
    `depth` the number of roundings a term goes through (about log2(rows) for a pairwise or
    tree sum, plus one per sequential merge; Higham, Accuracy and Stability, 4.2). Twice that."""
    return 2.0 * depth * EPS32 * scale


def moments_tolerance(stat, depth: int) -> tuple[float, float]:
    """Bounds on `rel` (relative Frobenius) of a site's mean and cov computed in another order.
    The sums behind cov are of y_i y_j, whose magnitudes are at most sqrt(m_ii m_jj) with
    m = E[y y^T] (Cauchy-Schwarz): so the scale relative to ||cov|| is ||sqrt(diag m) ...||
    / ||cov||, large when the mean is large next to the spread."""
    mean, cov = np.asarray(stat.mean, np.float64), np.asarray(stat.cov, np.float64)
    second = np.sqrt(np.diag(cov) + mean * mean)
    cov_scale = np.linalg.norm(np.outer(second, second)) / max(np.linalg.norm(cov), 1e-30)
    mean_scale = np.linalg.norm(second) / max(np.linalg.norm(mean), 1e-30)
    return f32_sum_bound(depth, mean_scale), f32_sum_bound(depth, cov_scale)


def stats_diff(got, ref, rows_per_batch: int = 4096, batches: int = 1) -> dict:
    """The largest relative differences of means and covariances over the sites, and their
    float32 rounding bounds ("mean_tol", "cov_tol") for sums over `batches` batches of
    `rows_per_batch` rows (a pairwise sum inside a batch, sequential merges across them)."""
    depth = math.ceil(math.log2(max(rows_per_batch, 2))) + batches + 2  # +2: device merges
    tols = [moments_tolerance(ref[s], depth) for s in ref]
    return {"cov": max(rel(got[s].cov, ref[s].cov) for s in ref),
            "mean": max(rel(got[s].mean, ref[s].mean) for s in ref),
            "mean_tol": min(t[0] for t in tols), "cov_tol": min(t[1] for t in tols),
            "counts_equal": all(got[s].count == ref[s].count for s in ref),
            "same_sites": sorted(got) == sorted(ref), "sites": len(ref)}


def small_setup():
    import afm_jax
    from afm_jax.train import init_params

    ds = afm_jax.synthetic_dataset(4000, seed=3, n_categorical=6, n_numeric=2,
                                   vocab_sizes=[10, 30, 50, 7, 100, 20])
    model = afm_jax.build_model("deepfm", ds.info, embed_dim=4, mlp=(16, 8))
    params = init_params(model, ds.info, 0)
    return ds, model, params


def mesh_checks() -> dict:
    import jax
    import optax

    import afm_jax
    from afm_jax import distributed as dist
    from afm_jax.checkpoint import load_model_dir
    from afm_jax.compress import collect_stats, compress, make_plan
    from afm_jax.data.batching import shard_batch
    from afm_jax.inference import make_scorer, predict
    from afm_jax.train import TrainConfig, make_train_step, train

    out: dict = {"devices": jax.device_count()}
    ds, model, params = small_setup()
    four = dist.make_mesh(4)

    # the one batch path: over a mesh the same rows as on the host, padded to 1000 at weight 0
    out["batches"] = same_batches(ds.train, 999, four)

    # statistics: 4-way sharded vs one device; 999 rows per batch does not divide over 4 devices
    ref = collect_stats(model, params, afm_jax.iterate_batches(ds.train, 999), progress=False)
    got = collect_stats(model, dist.shard_params(params, four),
                        afm_jax.iterate_batches(ds.train, 999, mesh=four), progress=False, mesh=four)
    out["stats"] = stats_diff(got, ref, 999, 4)  # 3200 training rows
    # host batches handed to collect_stats(mesh=...) are sharded there
    got = collect_stats(model, dist.shard_params(params, four),
                        afm_jax.iterate_batches(ds.train, 1000), progress=False, mesh=four)
    out["stats_host_batches"] = stats_diff(got, collect_stats(
        model, params, afm_jax.iterate_batches(ds.train, 1000), progress=False), 1000, 4)

    # one data-parallel Adam step equals the single-device step on the same global batch
    tx = optax.adam(1e-2)
    step = make_train_step(model, tx)
    batch = next(afm_jax.iterate_batches(ds.train, 1024, shuffle=True, seed=1, pad_last=True))
    p1, _, loss1 = step(jax.tree.map(np.array, params), tx.init(params), batch)
    sharded = dist.shard_params(params, four)
    p4, s4, loss4 = step(sharded, dist.place_like(tx.init(sharded), sharded),
                         shard_batch(batch, four))
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                                         p1, p4))
    out["step"] = {"loss_diff": abs(float(loss1) - float(loss4)), "param_max_diff": max(diffs),
                   # the loss: a mean of 1024 positive terms, tree-summed across the devices
                   "loss_tol": f32_sum_bound(math.ceil(math.log2(1024)) + 2, float(loss1)),
                   "params_replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(p4)),
                   "batch_sharded": shard_batch(batch, four)["cat"].sharding.spec[0] == "data",
                   # a host batch of 3 rows over 4 devices: one padding row at weight 0
                   "shard_pads": dist.fetch(shard_batch({k: v[:3] for k, v in batch.items()},
                                                        four)["weight"]).tolist() == [1, 1, 1, 0]}

    # a row-sharded embedding (tables padded to a multiple of the model axis) scores identically
    scores = predict(make_scorer(model), params, ds.test, 512)
    out["rowshard"] = {}
    for data, model_axis in ((2, 2), (1, 4)):
        mesh = dist.make_mesh(4, model_axis=model_axis)
        p = dist.shard_params(params, mesh, shard_embeddings=True)
        table = p["embed"]["c0"]["embedding"]
        got_scores = predict(make_scorer(model, mesh), p, ds.test, 500, mesh=mesh)
        out["rowshard"][f"{data}x{model_axis}"] = {
            "max_diff": float(np.abs(got_scores - scores).max()),
            "table_spec": str(table.sharding.spec), "table_rows": int(table.shape[0]),
            "vocab_rows": int(ds.info.vocab_sizes[0]),
            "shard_rows": sorted({int(s.data.shape[0]) for s in table.addressable_shards})}

    # packed tables (one per width) row-sharded over "model" score identically, and a row-wise
    # step keeps the tables and their Adam rows sharded and equals the single-device step
    from afm_jax import rowwise
    from afm_jax.packing import pack

    packed = pack(model, jax.tree.map(np.asarray, params))
    key = next(k for k in packed["embed"] if k.startswith("table_"))
    ref_p, _, ref_loss = rowwise.make_step(model, 1e-2)(
        jax.tree.map(jax.numpy.array, packed), rowwise.init(packed, 1e-2, "rowwise"), batch)
    out["packed"] = {}
    for data, model_axis in ((2, 2), (1, 4)):
        mesh = dist.make_mesh(4, model_axis=model_axis)
        p = dist.shard_params(packed, mesh, shard_embeddings=True)
        def rows_axis(x):  # the axis the rows are sharded over ("model"), None if replicated
            spec = tuple(x.sharding.spec) + (None,)
            return spec[0] if all(a is None for a in spec[1:]) else "columns too"

        spec = rows_axis(p["embed"][key])
        got_scores = predict(make_scorer(model, mesh), p, ds.test, 500, mesh=mesh)
        p2, s2, loss = rowwise.make_step(model, 1e-2)(p, rowwise.init(p, 1e-2, "rowwise"),
                                                      shard_batch(batch, mesh))
        host = dist.host_params(p2, model.info)
        out["packed"][f"{data}x{model_axis}"] = {
            "max_diff": float(np.abs(got_scores - scores).max()), "table_spec": spec,
            "after_spec": rows_axis(p2["embed"][key]),
            "slot_spec": rows_axis(s2.slots[f"embed/{key}"]["m"]),
            "loss_diff": abs(float(loss) - float(ref_loss)),
            "loss_tol": f32_sum_bound(math.ceil(math.log2(1024)) + 2, float(ref_loss)),
            "param_max_diff": max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                                  zip(jax.tree.leaves(host), jax.tree.leaves(ref_p), strict=True))}

    # the compressed pytree goes back on the mesh with a valid sharding and scores the same
    stats = collect_stats(model, params, afm_jax.iterate_batches(ds.train, 1000), progress=False)
    small = compress(params, stats, make_plan(params, stats, "rank:2"), model=model)
    small_scores = predict(make_scorer(model), small, ds.test, 512)
    mesh = dist.make_mesh(4, model_axis=2)
    placed = dist.shard_params(small, mesh, shard_embeddings=True)
    leaves = jax.tree.leaves(placed)
    out["compressed"] = {
        "has_proj": "proj" in small["embed"]["c0"] or any("u" in v for v in small.get("mlp", {}).values()),
        "all_named": all(isinstance(x.sharding, jax.sharding.NamedSharding) and x.sharding.mesh == mesh
                         for x in leaves),
        "shards_fit": all(x.sharding.shard_shape(x.shape) == x.addressable_shards[0].data.shape
                          for x in leaves),
        "max_diff": float(np.abs(predict(make_scorer(model, mesh), placed, ds.test, 500, mesh=mesh)
                                 - small_scores).max()),
        "round_trip": all(np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(dist.host_params(placed, model.info)), jax.tree.leaves(small)))}

    # train() over the mesh with sharded tables: the model directory holds unpadded params
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(epochs=1, batch_size=512)
        res = train(model, ds, cfg, out_dir=d, progress=False, mesh=mesh, shard_embeddings=True)
        ref_res = train(model, ds, cfg, progress=False)
        _, loaded, _ = load_model_dir(d)
        out["train"] = {"valid_auc": res.best_valid["auc"], "ref_valid_auc": ref_res.best_valid["auc"],
                        "loaded_rows": int(np.shape(loaded["embed"]["c0"]["embedding"])[0])}
    return out


def same_batches(split, batch_size: int, mesh) -> dict:
    """Shuffled batches over `mesh` against host batches (pad_last): same rows, same weights."""
    import afm_jax
    from afm_jax import distributed as dist

    host = afm_jax.iterate_batches(split, batch_size, shuffle=True, seed=1, pad_last=True)
    sharded = afm_jax.iterate_batches(split, batch_size, shuffle=True, seed=1, mesh=mesh)
    rows_equal, pad_weight_zero, count, specs = True, True, 0, set()
    for h, g in zip(host, sharded, strict=True):
        specs.add(g["cat"].sharding.spec[0])
        g = {k: dist.fetch(v) for k, v in g.items()}
        real = int(h["weight"].sum())
        rows_equal &= all(np.array_equal(g[k][:real], h[k][:real]) for k in h)
        pad_weight_zero &= bool(np.all(g["weight"][real:] == 0) and np.all(g["weight"][:real] == 1))
        count += 1
    return {"rows_equal": bool(rows_equal), "pad_weight_zero": pad_weight_zero, "batches": count,
            "sharded_on_data": specs == {"data"}}


class RecordingRows:
    """An array that records which rows are read from it (to see what a process reads)."""

    def __init__(self, array: np.ndarray):
        self.array, self.read = array, set()
        self.shape, self.ndim, self.dtype = array.shape, array.ndim, array.dtype

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key):
        self.read.update(np.arange(len(self.array))[key].tolist())
        return self.array[key]


def process_checks(port: int, index: int, count: int) -> dict:
    from afm_jax import distributed as dist

    dist.initialize_from_env(f"localhost:{port}", count, index)
    import jax

    import afm_jax
    from afm_jax.compress import collect_stats
    from afm_jax.data.batching import batch_indices

    ds, model, params = small_setup()
    ref = collect_stats(model, params, afm_jax.iterate_batches(ds.train, 1000), progress=False)
    mesh = dist.make_mesh()  # every device of every process
    # global batches read through make_array_from_callback (each process its devices' rows)
    got = collect_stats(model, dist.shard_params(params, mesh),
                        afm_jax.iterate_batches(ds.train, 1000, mesh=mesh), progress=False, mesh=mesh)
    # shuffled: the same rows and weights as one process's host batches (999 rows: padded)
    batches = same_batches(ds.train, 999, mesh)
    # each process reads only the rows of its own devices: its half of every batch's indices
    split = type(ds.train)(*(RecordingRows(getattr(ds.train, k)) for k in ("cat", "num", "label")))
    for _ in afm_jax.iterate_batches(split, 999, shuffle=True, seed=1, mesh=mesh):
        pass
    own, share = set(), 1000 // count  # 999 rows padded to 1000, split evenly over processes
    for idx, _ in batch_indices(len(split), 999, shuffle=True, seed=1, pad_to=1000):
        own.update(idx[index * share:(index + 1) * share].tolist())
    read = [getattr(split, k).read for k in ("cat", "num", "label")]
    return {"process": jax.process_index(), "processes": jax.process_count(),
            "global_devices": jax.device_count(), "local_devices": jax.local_device_count(),
            "stats_global_batches": stats_diff(got, ref, 1000, 4), "batches": batches,
            "reads_own_rows_only": all(r == own for r in read), "rows_read": len(read[0]),
            "rows": len(split)}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "mesh":
        result = mesh_checks()
    elif mode == "process":
        result = process_checks(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result))
