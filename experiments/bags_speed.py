"""What multi-valued fields cost (issue 22): DeepFM scorer and train-step rows/s on synthetic data
with 4 bag fields of mean length 1, 5 and 20 (Poisson lengths, max_len 4x the mean), against the
same data with those 4 fields single-valued (each bag cut to its first item: max_len 1, so the
model has the same field count and only the bag length differs). Rounds alternate the variants.

    python experiments/bags_speed.py [--rows 20000] [--batch-size 1024] [--rounds 5]
        [--out experiments/results/bags_speed]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import RESULTS, command_line, machine, write_results

from afm_jax.data import iterate_batches, synthetic_dataset
from afm_jax.data.synthetic import SyntheticBags
from afm_jax.inference import device_params, make_scorer
from afm_jax.models import build_model
from afm_jax.packing import pack
from afm_jax.train import init_params, make_train_step


def _variant(rows: int, mean_len: float, max_len: int):
    ds = synthetic_dataset(rows, seed=0, bags=SyntheticBags(fields=4, mean_len=mean_len,
                                                            max_len=max_len, vocab=1000))
    model = build_model("deepfm", ds.info)
    return ds, model


def _time(fn, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "bags_speed"))
    args = ap.parse_args()
    variants = {"single-valued (max_len 1)": (1.0, 1)}
    variants |= {f"bags, mean length {m}": (float(m), 4 * m) for m in (1, 5, 20)}
    fns = {}
    for name, (mean_len, max_len) in variants.items():
        ds, model = _variant(args.rows, mean_len, max_len)
        batch = jax.device_put(next(iterate_batches(ds.train, args.batch_size)))
        params = device_params(model, init_params(model, ds.info, 0))
        scorer = make_scorer(model)
        opt = optax.adam(1e-3)
        step = make_train_step(model, opt)
        state = {"p": jax.tree.map(jnp.copy, pack(model, init_params(model, ds.info, 0)))}
        state["o"] = opt.init(state["p"])

        def train_once(step=step, state=state, batch=batch):
            state["p"], state["o"], loss = step(state["p"], state["o"], batch)
            return loss

        fns[name] = (lambda s=scorer, p=params, b=batch: s(p, b), train_once,
                     float(np.mean(ds.train.bag_len["b0"])) if ds.train.bag_len else 1.0)
    rows = {n: {"score": [], "train": []} for n in fns}
    for fn_s, fn_t, _ in fns.values():   # warm: compile
        _time(fn_s, 2), _time(fn_t, 2)
    names = list(fns)
    for r in range(args.rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            rows[n]["score"].append(args.batch_size / _time(fns[n][0], 20))
            rows[n]["train"].append(args.batch_size / _time(fns[n][1], 10))
    base = names[0]
    results = []
    for n in names:
        res = {"variant": n, "mean_len": fns[n][2]}
        for k in ("score", "train"):
            res[f"{k}_rows_s"] = float(np.median(rows[n][k]))
            res[f"{k}_time_vs_single"] = float(np.median(
                [b / a for a, b in zip(rows[n][k], rows[base][k])]))
        results.append(res)
        print(res, flush=True)
    md = ["# Multi-valued fields: scorer and train-step cost", "", f"Command: `{command_line()}`  ",
          f"Machine: {machine()}", "",
          f"DeepFM on synthetic data (26 categorical + 4 bag + 13 numeric fields), batch "
          f"{args.batch_size}; time per row relative to the same fields single-valued (median of "
          f"per-round ratios, {args.rounds} rounds, variants alternating).", "",
          "| variant | mean items per bag | scorer rows/s | scorer time / single | train step rows/s | "
          "train time / single |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        md.append(f"| {r['variant']} | {r['mean_len']:.2f} | {r['score_rows_s']:,.0f} | "
                  f"{r['score_time_vs_single']:.2f}x | {r['train_rows_s']:,.0f} | "
                  f"{r['train_time_vs_single']:.2f}x |")
    write_results(args.out, results, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
