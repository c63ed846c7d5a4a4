"""Does timing torch in the same interleaved loop as JAX bias the peer ratio? (issue 24)

    python experiments/torch_interleave.py [--rounds 2] [--out experiments/results/torch_interleave]

DeepFM on the Criteo sample (the forms of compressed_speed.py: original and AFM dense r32), the
live JAX scorer and torch.compile on the same params, batch 1024 and 8192: each cell timed
(a) interleaved in one `time_interleaved` loop, as `afm-jax bench` does, and (b) each framework
alone in its own loop, one after the other; `rounds` times.
"""

from __future__ import annotations

import argparse
import os

import jax
from common import RESULTS, command_line, load, machine, write_results
from compressed_speed import _batch, _block, criteo_forms

from afm_jax.inference import make_scorer
from afm_jax.lab import bench_torch
from afm_jax.lab.bench import time_interleaved
from afm_jax.packing import pack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(RESULTS / "torch_interleave"))
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    ds = load("criteo", progress=False)
    model, host = criteo_forms("deepfm", ds)
    live = make_scorer(model)
    rows = []
    for form in ("original", "AFM dense r32"):
        p = jax.device_put(pack(model, host[form]))
        peer = bench_torch.build("deepfm", ds.info, host[form], compile=True)
        for bs in (1024, 8192):
            b = jax.device_put(_batch(ds.test, bs))
            fns = {"jax": _block(lambda p=p, b=b: live(p, b)),
                   "torch": bench_torch.callables(peer, b)["compiled"]}
            for rnd in range(args.rounds):
                both = time_interleaved(fns, args.repeats)
                alone = {k: time_interleaved({k: f}, args.repeats)[k] for k, f in fns.items()}
                rows.append({"form": form, "batch": bs, "round": rnd + 1,
                             **{f"{k} interleaved": bs / t.median_s for k, t in both.items()},
                             **{f"{k} alone": bs / t.median_s for k, t in alone.items()}})
    r = {"command": command_line(), "machine": machine(), "torch": bench_torch.version(),
         "load": (round(load0, 2), round(os.getloadavg()[0], 2)), "rows": rows}
    lines = ["# JAX beside torch.compile: one interleaved loop against separate loops", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}, torch {r['torch']}  ",
             f"Load average at start / end: {r['load'][0]} / {r['load'][1]}", "",
             "DeepFM, Criteo sample, MLP 400-400-400, random params; rows/s (medians of "
             "rounds). *interleaved*: JAX and torch.compile in one `time_interleaved` loop "
             "(as `afm-jax bench`); *alone*: each in its own loop.", "",
             "| form | batch | round | JAX interleaved | torch interleaved | JAX / torch "
             "interleaved | JAX alone | torch alone | JAX / torch alone |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for x in rows:
        lines.append(
            f"| {x['form']} | {x['batch']} | {x['round']} | {x['jax interleaved']:,.0f} | "
            f"{x['torch interleaved']:,.0f} | {x['jax interleaved'] / x['torch interleaved']:.2f}x"
            f" | {x['jax alone']:,.0f} | {x['torch alone']:,.0f} | "
            f"{x['jax alone'] / x['torch alone']:.2f}x |")
    j = [x["jax interleaved"] / x["jax alone"] for x in rows]
    t = [x["torch interleaved"] / x["torch alone"] for x in rows]
    lines += ["", f"JAX interleaved / alone: {min(j):.2f}-{max(j):.2f}x; torch interleaved / "
              f"alone: {min(t):.2f}-{max(t):.2f}x.", ""]
    write_results(args.out, r, "\n".join(lines))


if __name__ == "__main__":
    main()
