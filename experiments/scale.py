"""Scaling over devices and processes, and data larger than a memory limit.

1. rows/s of the statistics pass (`collect_stats`) and of training (the jitted Adam step fed by
   `iterate_batches(..., mesh=mesh)`) on 1, 2 and 4 host-platform devices, each in its own subprocess
   with XLA_FLAGS=--xla_force_host_platform_device_count=N, and in a two-process run
   (`jax.distributed` on localhost, gloo CPU collectives, one device per process);
2. a synthetic encoded dataset written to disk in chunks, ten times larger than a memory limit,
   then statistics, one training epoch and scoring of all of it in a process held under that
   limit (see `limit_note` below for what is enforced and what is measured).

Writes experiments/results/scale.md (and scale.json; --out names them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# ------------------------------------------------------------------------------------ the workers

def _setup(rows: int, seed: int = 0):
    import afm_jax
    from afm_jax.train import init_params

    ds = afm_jax.synthetic_dataset(rows, seed=seed)
    model = afm_jax.build_model("deepfm", ds.info, embed_dim=16, mlp=(256, 128))
    return ds, model, init_params(model, ds.info, 0)


def worker_throughput(args) -> dict:
    """rows/s of statistics and training over every device this process (or run) sees."""
    from afm_jax import distributed as dist

    multi = args.num_processes > 1
    if multi:
        dist.initialize_from_env(f"localhost:{args.port}", args.num_processes, args.process_id)
    import jax
    import optax

    from afm_jax.compress import collect_stats
    from afm_jax.data import iterate_batches
    from afm_jax.train import make_train_step

    ds, model, params = _setup(args.rows)
    mesh = dist.make_mesh()
    sharded = dist.shard_params(params, mesh)
    split = ds.train

    def stats_pass(rows: int) -> float:
        sub = type(split)(split.cat[:rows], split.num[:rows], split.label[:rows])
        dist.sync(f"stats {rows}")  # processes start the timed pass together
        t0 = time.perf_counter()
        collect_stats(model, sharded, iterate_batches(sub, args.stats_batch, mesh=mesh),
                      progress=False, mesh=mesh)
        return time.perf_counter() - t0

    stats_pass(args.stats_batch)  # compile
    t = stats_pass(args.timed_rows)
    stats_rate = args.timed_rows / t

    # train()'s own step on packed tables: dense Adam, or row-wise table updates
    from afm_jax import rowwise
    from afm_jax.packing import pack

    packed = dist.shard_params(pack(model, params), mesh)
    if args.table_optimizer == "dense":
        tx = optax.adam(1e-3)
        step = make_train_step(model, tx)
        p, s = packed, dist.place_like(tx.init(packed), packed)
    else:
        step = rowwise.make_step(model, 1e-3, args.table_optimizer)
        p, s = packed, jax.device_put(rowwise.init(packed, 1e-3, args.table_optimizer),
                                      dist.replicated(mesh))
    batches = iterate_batches(split, args.train_batch, shuffle=True, seed=1, mesh=mesh)
    p, s, loss = step(p, s, next(batches))  # compile
    loss.block_until_ready()
    n_steps = max(1, args.timed_rows // args.train_batch)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        p, s, loss = step(p, s, next(batches))
    float(loss)
    train_rate = n_steps * args.train_batch / (time.perf_counter() - t0)
    return {"devices": jax.device_count(), "processes": jax.process_count(),
            "process": jax.process_index(), "stats_rows_per_s": stats_rate,
            "train_rows_per_s": train_rate, "loss": float(loss)}


# ----------------------------------------------------------------- data larger than the limit

BIG_CAT, BIG_NUM, BIG_VOCAB = 32, 224, 1000


def big_row_bytes() -> int:
    return BIG_CAT * 4 + BIG_NUM * 4 + 4


def worker_write(args) -> dict:
    """Write train/valid/test .npy arrays of `args.rows` training rows in 1M-row chunks."""
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w_cat = rng.normal(0, 0.3, size=(BIG_CAT, BIG_VOCAB)).astype(np.float32)
    w_num = rng.normal(0, 0.1, size=BIG_NUM).astype(np.float32)
    sizes = {"train": args.rows, "valid": 50_000, "test": 50_000}
    t0 = time.perf_counter()
    for split, n in sizes.items():
        cat = np.lib.format.open_memmap(out / f"{split}_cat.npy", "w+", np.int32, (n, BIG_CAT))
        num = np.lib.format.open_memmap(out / f"{split}_num.npy", "w+", np.float32, (n, BIG_NUM))
        label = np.lib.format.open_memmap(out / f"{split}_label.npy", "w+", np.float32, (n,))
        for s in range(0, n, 1 << 20):
            e = min(n, s + (1 << 20))
            r = np.random.default_rng([1, s])
            c = np.minimum((r.pareto(1.2, (e - s, BIG_CAT)) * 20).astype(np.int32), BIG_VOCAB - 1)
            x = r.normal(size=(e - s, BIG_NUM)).astype(np.float32)
            logit = w_cat[np.arange(BIG_CAT), c].sum(1) + x @ w_num - 1.0
            cat[s:e], num[s:e] = c, x
            label[s:e] = (r.random(e - s) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        for a in (cat, num, label):
            a.flush()
        del cat, num, label
    return {"rows": args.rows, "bytes": sum(p.stat().st_size for p in out.glob("*.npy")),
            "seconds": time.perf_counter() - t0}


def _status() -> dict[str, int]:
    """This process's memory from /proc/self/status, in KiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmData", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0])
    return out


def worker_big(args) -> dict:
    """Statistics, one epoch of training and scoring over the memory-mapped files, under an
    RLIMIT_DATA hard limit and a watchdog on anonymous resident memory (RssAnon)."""
    limit_anon = int(args.anon_limit_mib) << 20
    resource.setrlimit(resource.RLIMIT_DATA, (int(args.data_limit_mib) << 20,) * 2)
    peak = {"RssAnon": 0, "RssFile": 0}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            st = _status()
            for k in peak:
                peak[k] = max(peak[k], st[k])
            if st["RssAnon"] << 10 > limit_anon:
                print(f"anonymous memory {st['RssAnon'] >> 10} MiB over the limit "
                      f"{args.anon_limit_mib} MiB: killed", file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    from types import SimpleNamespace

    import afm_jax
    from afm_jax.compress import collect_stats
    from afm_jax.data import EncodedSplit, FeatureInfo
    from afm_jax.data.dataset import _load_array
    from afm_jax.inference import device_params, make_scorer, predict
    from afm_jax.train import TrainConfig, init_params, train

    d = Path(args.dir)
    splits = {s: EncodedSplit(*(_load_array(d / f"{s}_{k}.npy") for k in ("cat", "num", "label")))
              for s in ("train", "valid", "test")}
    assert isinstance(splits["train"].cat, np.memmap)
    info = FeatureInfo(cat_names=tuple(f"c{i}" for i in range(BIG_CAT)),
                       vocab_sizes=(BIG_VOCAB,) * BIG_CAT,
                       num_names=tuple(f"n{i}" for i in range(BIG_NUM)))
    ds = SimpleNamespace(info=info, **splits)
    # logistic regression trains and scores (one gather per row: ~0.5M fat rows/s here); the
    # statistics pass runs DeepFM (embedding dim 2, MLP 8) on its "mlp/dense_0" site, whose 256
    # per-field embeddings make it the slow pass
    model = afm_jax.build_model("lr", info)
    deep = afm_jax.build_model("deepfm", info, embed_dim=2, mlp=(8,))
    n = len(ds.train)
    times = {}
    t0 = time.perf_counter()
    res = train(model, ds, TrainConfig(epochs=1, batch_size=8192), progress=False)
    times["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = collect_stats(deep, init_params(deep, info, 0), afm_jax.iterate_batches(ds.train, 8192),
                          sites=["mlp/dense_0"], progress=False)
    times["stats"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = np.lib.format.open_memmap(d / "scores.npy", "w+", np.float32, (n,))
    predict(make_scorer(model), device_params(model, res.params), ds.train, 8192, out=scores)
    scores.flush()
    times["score"] = time.perf_counter() - t0
    stop.set()
    return {"rows": n, "valid_auc": res.best_valid["auc"], "stats_count": stats["mlp/dense_0"].count,
            "scores_mean": float(np.mean(scores[: 1 << 20])), "seconds": times,
            "rows_per_s": {k: n / v for k, v in times.items()},
            "peak_rss_anon_mib": peak["RssAnon"] / 1024, "peak_rss_file_mib": peak["RssFile"] / 1024,
            "vm_data_mib": _status()["VmData"] / 1024}


# ------------------------------------------------------------------------------------ the driver

def _run(argv: list[str], devices: int = 1, timeout: int = 900) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


PINNED_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _two_processes(common: list[str], pinned: bool = False) -> list[dict]:
    """Two worker processes joined by jax.distributed. pinned: each process on a core of its
    own (sched_setaffinity) with XLA's CPU thread pool cut to one thread, as on hosts that each
    have their own cores; otherwise both processes spread their threads over all cores."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1"
               + (f" {PINNED_FLAGS}" if pinned else ""), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    cores = sorted(os.sched_getaffinity(0))

    def pin(i: int):
        return (lambda: os.sched_setaffinity(0, {cores[i % len(cores)]})) if pinned else None

    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", "throughput",
                               *common, "--port", str(port), "--num-processes", "2",
                               "--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, preexec_fn=pin(i))
             for i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"two-process worker failed:\n{err[-3000:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["throughput", "write", "big"])
    ap.add_argument("--rows", type=int, default=120_000, help="synthetic rows (throughput)")
    ap.add_argument("--timed-rows", type=int, default=65_536)
    ap.add_argument("--stats-batch", type=int, default=8192)
    ap.add_argument("--train-batch", type=int, default=4096)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--num-processes", type=int, default=1)
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--dir", help="where the big files go (default: a temporary folder, "
                    "removed at the end)")
    ap.add_argument("--anon-limit-mib", type=int, default=1024)
    ap.add_argument("--data-limit-mib", type=int, default=1536)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--out", help="writes OUT.md and OUT.json (default: "
                    "experiments/results/scale)")
    ap.add_argument("--table-optimizer", default="dense", choices=["dense", "rowwise"],
                    help="tables in the timed training steps (packed params either way)")
    args = ap.parse_args()
    if args.worker:
        fn = {"throughput": worker_throughput, "write": worker_write, "big": worker_big}[args.worker]
        print(json.dumps(fn(args)))
        return

    sys.path.insert(0, str(HERE))
    from common import RESULTS, command_line, machine

    common = ["--rows", str(args.rows), "--timed-rows", str(args.timed_rows),
              "--stats-batch", str(args.stats_batch), "--train-batch", str(args.train_batch),
              "--table-optimizer", args.table_optimizer]
    rows = []
    for devices in (1, 2, 4):
        r = _run(["--worker", "throughput", *common], devices)
        rows.append({"run": f"1 process, {devices} device(s)", **r})
        print(rows[-1], flush=True)
    two = _two_processes(common)
    rows.append({"run": "2 processes x 1 device (gloo)", **two[0]})
    print(rows[-1], flush=True)
    two = _two_processes(common, pinned=True)
    rows.append({"run": "2 processes x 1 device (gloo), a core and 1 XLA thread each", **two[0]})
    print(rows[-1], flush=True)

    big = None
    if not args.skip_big:
        limit = args.anon_limit_mib << 20
        target_rows = math.ceil(10 * limit / big_row_bytes())
        small_rows = target_rows // 10
        scratch = tempfile.TemporaryDirectory(prefix="afm_jax_scale-") if args.dir is None else None
        d = Path(args.dir or scratch.name)
        small = _run(["--worker", "write", "--rows", str(small_rows), "--dir", str(d / "small")])
        written = _run(["--worker", "write", "--rows", str(target_rows), "--dir", str(d / "big")])
        run_small = _run(["--worker", "big", "--dir", str(d / "small"), "--anon-limit-mib",
                          str(args.anon_limit_mib), "--data-limit-mib", str(args.data_limit_mib)])
        run_big = _run(["--worker", "big", "--dir", str(d / "big"), "--anon-limit-mib",
                        str(args.anon_limit_mib), "--data-limit-mib", str(args.data_limit_mib)],
                       timeout=1800)
        big = {"small_files": small, "big_files": written, "small": run_small, "big": run_big}
        print(big, flush=True)
        for sub in ("small", "big"):
            for p in (d / sub).glob("*.npy"):
                p.unlink()

    base = rows[0]
    lines = [
        "# Scaling over devices and processes; data larger than a memory limit",
        "",
        f"Command: `{command_line()}`",
        f"Machine: {machine()}",
        "",
        f"## Throughput (DeepFM, 16 fields x 16, MLP 256-128; synthetic rows; statistics batch "
        f"{args.stats_batch}, training batch {args.train_batch}, {args.timed_rows:,} timed rows "
        f"after a compile pass; training steps on packed tables, {args.table_optimizer} table "
        "updates)",
        "",
        "Each row is its own subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=N`; "
        "the two-process rows are two subprocesses joined by `jax.distributed.initialize` on "
        "localhost (gloo CPU collectives), one device each, global batches built from each "
        "process's own rows; in the last row each process is pinned to a core of its own "
        f"(`sched_setaffinity`) with `XLA_FLAGS={PINNED_FLAGS}`, as processes on separate "
        "hosts would each have their own cores, instead of both spreading XLA's thread pool "
        "over the same two cores.",
        "",
        "| run | devices | statistics rows/s | vs 1 device | training rows/s | vs 1 device |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['devices']} | {r['stats_rows_per_s']:,.0f} | "
                     f"{r['stats_rows_per_s'] / base['stats_rows_per_s']:.2f}x | "
                     f"{r['train_rows_per_s']:,.0f} | "
                     f"{r['train_rows_per_s'] / base['train_rows_per_s']:.2f}x |")
    lines += [
        "",
        f"What limits scaling here: this machine has {os.cpu_count()} physical cores, and the "
        "host-platform devices are not extra hardware: 2 or 4 fake devices share the same cores "
        "(and XLA's CPU thread pool already spreads one device's work over them), so adding "
        "devices adds partitioning and all-reduce work without adding compute. Ratios near or "
        "below 1 are the expected result on this machine; what the runs show is that the "
        "sharded paths are correct and that their overhead is bounded. The two-process run "
        "adds gloo's TCP all-reduces of every gradient; the statistics pass has none in its "
        "loop: each device keeps the moments of its own rows for the whole pass (`shard_map` "
        "over \"data\") and they are merged once at its end, and full-table embedding sites are "
        "counted by id instead of per-row products. Timings are noisy (another "
        "job shared the CPU); ratios are from one run of this script.",
    ]
    if big is not None:
        b, s = big["big"], big["small"]
        lines += [
            "",
            "## Data larger than the memory limit",
            "",
            f"Encoded arrays written to disk in 1M-row chunks: {BIG_CAT} categorical + {BIG_NUM} "
            f"numeric fields ({big_row_bytes()} bytes a row). The run loads them with "
            "`np.load(mmap_mode='r')` and does one training epoch (batch 8192; a split of under "
            "16M rows, as here, is shuffled with one materialized permutation, 8 bytes a row, "
            "~80 MiB of the peak; larger splits use a keyed permutation computed per batch), the statistics "
            "pass and scoring of every training row into a memory-mapped `.npy`. Logistic "
            "regression trains and scores (one gather per row, fast on these fat rows); the "
            "statistics pass runs DeepFM (embedding dim 2, MLP 8, fresh params) on its "
            "`mlp/dense_0` site: 256 per-field embeddings make it the slow pass. Times include "
            "compilation.",
            "",
            f"Limit enforced: `RLIMIT_DATA` = {args.data_limit_mib} MiB (hard; the process's "
            f"private data segments, VmData, ended at {b['vm_data_mib']:,.0f} MiB, mostly the "
            f"JAX/XLA runtime), and a watchdog thread "
            f"that kills the process when its anonymous resident memory (RssAnon) exceeds "
            f"{args.anon_limit_mib} MiB. `RLIMIT_AS` could not be used: it counts the "
            "memory-mapped files and JAX's reserved address space. File-backed pages of the "
            "mapped arrays (RssFile) are page cache the kernel can drop, and are reported "
            "separately. This machine has 23 GiB of RAM, so the files also stayed in its page "
            "cache: the run shows that the process's own memory does not grow with rows, not "
            "what a disk-bound run would take.",
            "",
            "| files | training rows | on disk | peak RssAnon | peak RssFile | train rows/s | statistics rows/s | scoring rows/s | valid AUC |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, w, r in (("1/10 size", big["small_files"], s), ("10x the limit", big["big_files"], b)):
            lines.append(f"| {name} | {r['rows']:,} | {w['bytes'] / 2**30:.2f} GiB | "
                         f"{r['peak_rss_anon_mib']:,.0f} MiB | {r['peak_rss_file_mib']:,.0f} MiB | "
                         f"{r['rows_per_s']['train']:,.0f} | {r['rows_per_s']['stats']:,.0f} | "
                         f"{r['rows_per_s']['score']:,.0f} | {r['valid_auc']:.4f} |")
        lines += [
            "",
            f"The run over {big['big_files']['bytes'] / 2**30:.1f} GiB of encoded arrays "
            f"({big['big_files']['bytes'] / (args.anon_limit_mib << 20):.1f}x the "
            f"{args.anon_limit_mib} MiB limit) completed with peak anonymous memory "
            f"{b['peak_rss_anon_mib']:,.0f} MiB, against {s['peak_rss_anon_mib']:,.0f} MiB for "
            "a tenth of the rows.",
        ]
    text = "\n".join(lines) + "\n"
    out = args.out or str(RESULTS / "scale")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text(text)
    Path(f"{out}.json").write_text(json.dumps({"command": command_line(), "throughput": rows,
                                                    "larger_than_memory": big}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
