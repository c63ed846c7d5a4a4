"""Feeding that overlaps the step: a warm training epoch against its bare step (issue 15, part 3).

Inside one `train()` call (`afm_jax.lab.train_bench.epoch_vs_bare_step`): train's own epoch loop
with three ways of feeding it, against the same step over the same batches placed on the device
beforehand ("bare step"), on the first --max-rows training rows of the shared Criteo sample:
  - "thread prefetch": what train() does (`data.batching.prefetch`: a background thread cuts and
    places the next 2 batches while the step runs);
  - "grain": grain over one record per batch (a MapDataset of the epoch's batch indices, mapped
    to the cut and placed batch, `to_iter_dataset` with 1 read thread and a 2-batch buffer);
  - "no prefetch": batches cut and placed in the loop, one after the other;
  - "thread places (old)": the design before issue 21, a thread that cuts *and places* the
    batches (one device only: under a mesh it deadlocks the step's all-reduce).
--devices 1 4: each row on one device (no mesh) and on a 4-device "data" mesh, in one process;
on CPU, start it with XLA_FLAGS=--xla_force_host_platform_device_count=4. grain and the old
design run on one device only.
Writes experiments/results/feeding.md and .json. grain comes with `pip install -e ".[bench]"`.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python experiments/feeding.py
        [--models deepfm dcnv2] [--batch-sizes 1024 4096] [--devices 1 4] [--rounds 5]
        [--max-rows 50000]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json

import numpy as np
from common import RESULTS, command_line, load, machine

from afm_jax.data import batching
from afm_jax.distributed import make_mesh
from afm_jax.lab import train_bench
from afm_jax.models import build_model


@contextlib.contextmanager
def _patched(module, name: str, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


@contextlib.contextmanager
def no_prefetch():
    """train's loop with its batches cut and placed in line."""
    def inline(batches, size=2, *, place=None):
        return contextlib.nullcontext(map(place, batches) if place else batches)
    with _patched(batching, "prefetch", inline):
        yield


@contextlib.contextmanager
def grain_feeding():
    """train's loop fed by grain, one record per batch: iterate_batches is replaced by a marker
    that keeps its arguments, and prefetch by a grain pipeline over the same batch indices."""
    import grain

    class Spec:
        def __init__(self, split, batch_size, **kw):
            self.split, self.batch_size, self.kw = split, batch_size, kw

    def iterate(split, batch_size, **kw):
        return Spec(split, batch_size, **kw)

    def feed(spec, size=2, *, place=None):
        kw = spec.kw
        if kw.get("mesh") is not None:
            raise NotImplementedError("grain feeding variant: no mesh")
        arrays = {k: getattr(spec.split, k) for k in ("cat", "num", "label")}
        pad = kw.get("pad_last", False)
        order = list(batching.batch_indices(
            len(spec.split), spec.batch_size, shuffle=kw.get("shuffle", False),
            seed=kw.get("seed", 0), start_batch=kw.get("start_batch", 0),
            pad_to=spec.batch_size if pad else None))
        ds = grain.MapDataset.source(order).map(  # grain's threads cut; this thread places
            lambda t: batching._host_take(arrays, t[0], t[1] if pad else None, None))
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=size))
        return contextlib.nullcontext(map(place, it) if place else iter(it))

    with _patched(batching, "host_batches", iterate), _patched(batching, "prefetch", feed):
        yield


@contextlib.contextmanager
def thread_places():
    """The old design: the prefetch thread cuts and places (`to_device`) each batch."""
    threaded = batching.prefetch

    def old(batches, size=2, *, place=None):
        return threaded(map(batching.to_device, batches), size)

    # the thread's items are device arrays, which prefetch now refuses: let them through here
    with _patched(batching, "prefetch", old), _patched(batching, "_device_leaf", lambda item: None):
        yield


VARIANTS = {"thread prefetch": contextlib.nullcontext, "grain": grain_feeding,
            "no prefetch": no_prefetch, "thread places (old)": thread_places}
ONE_DEVICE_ONLY = ("grain", "thread places (old)")
if importlib.util.find_spec("grain") is None:   # an optional peer: measured where installed
    print("grain is not installed (pip install -e '.[bench]'): its column is left out")
    del VARIANTS["grain"]


def to_markdown(results: list[dict], command: str, machine_: str) -> str:
    lines = ["# Feeding: a warm epoch against its bare step", "",
             f"Command: `{command}`  ", f"Machine: {machine_}", "",
             "Inside one `train()` call: train's epoch loop (shuffle, cut, feed, loss checks; "
             "no validation) with each way of feeding, against the same step over the same "
             "batches already on the device. Rounds alternate the contenders (order rotated); "
             "ratio = the epoch's rows/s / that round's bare-step rows/s, median over rounds. "
             "*thread prefetch* is what `train()` uses.", "",
             "| model | devices | batch | bare step rows/s | " + " | ".join(
                 f"{k} rows/s | {k} / bare" for k in VARIANTS) + " |",
             "|---|---:|---:|---:|" + "---:|---:|" * len(VARIANTS)]
    for r in results:
        cells = [r["model"], str(r["devices"]), str(r["batch_size"]),
                 f"{np.median(r['rows_s']['bare step']):,.0f}"]
        for k in VARIANTS:
            if k in r["rows_s"]:
                cells += [f"{np.median(r['rows_s'][k]):,.0f}", f"{r['ratio_median'][k]:.1%}"]
            else:
                cells += ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["deepfm", "dcnv2"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1024, 4096])
    ap.add_argument("--devices", nargs="+", type=int, default=[1])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-rows", type=int, default=50_000)
    ap.add_argument("--out", default=str(RESULTS / "feeding"))
    args = ap.parse_args()
    ds = train_bench.in_memory(train_bench.subsample(load("criteo", progress=False),
                                                     args.max_rows))
    results = []
    for name in args.models:
        model = build_model(name, ds.info)
        for devices in args.devices:
            mesh = None if devices == 1 else make_mesh(devices)
            variants = {k: v for k, v in VARIANTS.items() if mesh is None or k not in ONE_DEVICE_ONLY}
            for bs in args.batch_sizes:
                r = train_bench.epoch_vs_bare_step(model, ds, batch_size=bs, rounds=args.rounds,
                                                   variants=variants, mesh=mesh)
                r.update(model=name, devices=devices)
                results.append(r)
                print(name, devices, bs, train_bench.format_epoch_vs_bare_step(r), flush=True)
    md = to_markdown(results, command_line(), machine())
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
