"""Test AUC and logloss of DeepFM on the Criteo sample with row-wise vs dense table updates,
over seeds (8:1:1 in file order, min-count 10, 2 epochs). Writes
experiments/results/table_optimizer.md and .json.

    python experiments/table_optimizer.py [--seeds 0,1,2] [--optimizers rowwise,dense]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import RESULTS, command_line, load, machine, write_results
from tqdm import tqdm

from afm_jax.inference import device_params, evaluate, make_scorer
from afm_jax.models import build_model
from afm_jax.train import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--optimizers", default="rowwise,rowwise_adagrad,dense")
    ap.add_argument("--table-lrs", default="",
                    help="row-wise tables' learning rates to try as well, comma-separated")
    ap.add_argument("--out", default=str(RESULTS / "table_optimizer"))
    args = ap.parse_args()
    ds = load("criteo", progress=False)
    model = build_model("deepfm", ds.info)
    rows = []
    variants = [(o, None) for o in args.optimizers.split(",")]
    variants += [(o, float(lr)) for lr in args.table_lrs.split(",") if lr
                 for o in args.optimizers.split(",") if o != "dense"]
    todo = [(o, lr, int(s)) for o, lr in variants for s in args.seeds.split(",")]
    for opt, lr, seed in tqdm(todo, desc="runs"):
        t0 = time.perf_counter()
        res = train(model, ds, TrainConfig(seed=seed, table_optimizer=opt, table_learning_rate=lr),
                    progress=False)
        test = evaluate(make_scorer(model), device_params(model, res.params), ds.test)
        name = opt if lr is None else f"{opt}, tables lr {lr:g}"
        rows.append({"optimizer": name, "seed": seed, "auc": test["auc"],
                     "valid_auc": res.best_valid["auc"], "logloss": test["logloss"],
                     "seconds": time.perf_counter() - t0})
    lines = [f"# Row-wise vs dense table updates: Criteo sample DeepFM\n\n`{command_line()}` on "
             f"{machine()}. Test split, 2 epochs, batch 1024, Adam 1e-3 (row-wise Adagrad uses the "
             "same rate), min-count 10, 8:1:1 in file order.\n",
             "| tables | seeds | valid AUC mean | test AUC mean +- std | test logloss mean +- std "
             "| train s |",
             "|---|---:|---:|---:|---:|---:|"]
    for opt in dict.fromkeys(x["optimizer"] for x in rows):
        r = [x for x in rows if x["optimizer"] == opt]
        auc, ll = np.array([x["auc"] for x in r]), np.array([x["logloss"] for x in r])
        valid = np.mean([x["valid_auc"] for x in r])
        lines.append(f"| {opt} | {len(r)} | {valid:.4f} | "
                     f"{auc.mean():.4f} +- {auc.std(ddof=1) if len(r) > 1 else 0:.4f}"
                     f" | {ll.mean():.4f} +- {ll.std(ddof=1) if len(r) > 1 else 0:.4f} | "
                     f"{np.mean([x['seconds'] for x in r]):.0f} |")
    md = "\n".join(lines) + "\n"
    write_results(args.out, rows, md)


if __name__ == "__main__":
    main()
