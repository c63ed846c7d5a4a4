"""Feeding that overlaps the step: a warm training epoch against its bare step (issue 15, part 3).

Inside one `train()` call (`afm_jax.lab.train_bench.epoch_vs_bare_step`): train's own epoch loop
with three ways of feeding it, against the same step over the same batches placed on the device
beforehand ("bare step"), on the first --max-rows training rows of the shared Criteo sample:
  - "thread prefetch": what train() does (`data.batching.prefetch`: a background thread cuts and
    places the next 2 batches while the step runs);
  - "grain": grain over one record per batch (a MapDataset of the epoch's batch indices, mapped
    to the cut and placed batch, `to_iter_dataset` with 1 read thread and a 2-batch buffer);
  - "no prefetch": batches cut and placed in the loop, one after the other.
Writes experiments/results/feeding.md and .json. grain comes with `pip install -e ".[bench]"`.

    python experiments/feeding.py [--models deepfm dcnv2] [--batch-sizes 1024 4096]
        [--rounds 5] [--max-rows 50000]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json

import numpy as np
from common import RESULTS, command_line, load, machine

import afm_jax.data as data_pkg
from afm_jax.data import batching
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
    def inline(batches, size=2, *, place=batching.to_device):
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

    def feed(spec, size=2, *, place=batching.to_device):
        kw = spec.kw
        if kw.get("mesh") is not None:
            raise NotImplementedError("grain feeding variant: no mesh")
        arrays = {k: getattr(spec.split, k) for k in ("cat", "num", "label")}
        pad = kw.get("pad_last", False)
        order = list(batching.batch_indices(
            len(spec.split), spec.batch_size, shuffle=kw.get("shuffle", False),
            seed=kw.get("seed", 0), start_batch=kw.get("start_batch", 0),
            pad_to=spec.batch_size if pad else None))
        ds = grain.MapDataset.source(order).map(
            lambda t: place(batching._take(arrays, t[0], t[1] if pad else None, None)))
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=size))
        return contextlib.nullcontext(iter(it))

    with _patched(data_pkg, "iterate_batches", iterate), _patched(batching, "prefetch", feed):
        yield


VARIANTS = {"thread prefetch": contextlib.nullcontext, "grain": grain_feeding,
            "no prefetch": no_prefetch}
if importlib.util.find_spec("grain") is None:   # an optional peer: measured where installed
    print("grain is not installed (pip install -e '.[bench]'): its row is left out")
    del VARIANTS["grain"]


def to_markdown(results: list[dict], command: str, machine_: str) -> str:
    lines = ["# Feeding: a warm epoch against its bare step", "",
             f"Command: `{command}`  ", f"Machine: {machine_}", "",
             "Inside one `train()` call: train's epoch loop (shuffle, cut, feed, loss checks; "
             "no validation) with each way of feeding, against the same step over the same "
             "batches already on the device. Rounds alternate the contenders (order rotated); "
             "ratio = the epoch's rows/s / that round's bare-step rows/s, median over rounds. "
             "*thread prefetch* is what `train()` uses.", "",
             "| model | batch | bare step rows/s | " + " | ".join(
                 f"{k} rows/s | {k} / bare" for k in VARIANTS) + " |",
             "|---|---:|---:|" + "---:|---:|" * len(VARIANTS)]
    for r in results:
        cells = [r["model"], str(r["batch_size"]), f"{np.median(r['rows_s']['bare step']):,.0f}"]
        for k in VARIANTS:
            cells += [f"{np.median(r['rows_s'][k]):,.0f}", f"{r['ratio_median'][k]:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["deepfm", "dcnv2"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1024, 4096])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-rows", type=int, default=50_000)
    ap.add_argument("--out", default=str(RESULTS / "feeding"))
    args = ap.parse_args()
    ds = train_bench.in_memory(train_bench.subsample(load("criteo", progress=False),
                                                     args.max_rows))
    results = []
    for name in args.models:
        model = build_model(name, ds.info)
        for bs in args.batch_sizes:
            r = train_bench.epoch_vs_bare_step(model, ds, batch_size=bs, rounds=args.rounds,
                                               variants=VARIANTS)
            r["model"] = name
            results.append(r)
            print(name, bs, train_bench.format_epoch_vs_bare_step(r), flush=True)
    md = to_markdown(results, command_line(), machine())
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
