"""Train every registered model on the real datasets; test AUC/logloss next to LR.

    python experiments/baseline.py [--datasets movielens,criteo,frappe] [--models ...] [--seeds 0]

Writes experiments/results/baseline.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from afm_jax.inference import count_params, evaluate, make_scorer
from afm_jax.models import REGISTRY, build_model
from afm_jax.train import TrainConfig, train
from common import RESULTS, command_line, load, machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="movielens,criteo,frappe")
    ap.add_argument("--models", default=",".join(REGISTRY))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "baseline"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for dname in args.datasets.split(","):
        ds = load(dname)
        print(f"{dname}: {ds.report['splits']} rows, {len(ds.info.cat_names)} cat + "
              f"{len(ds.info.num_names)} num fields")
        for mname in args.models.split(","):
            for seed in seeds:
                model = build_model(mname, ds.info)
                t0 = time.perf_counter()
                res = train(model, ds, TrainConfig(epochs=args.epochs, seed=seed))
                test = evaluate(make_scorer(model), res.params, ds.test)
                rows.append({"dataset": dname, "model": mname, "seed": seed,
                             "valid_auc": res.best_valid["auc"], "auc": test["auc"],
                             "logloss": test["logloss"], "test_rows": test["rows"],
                             "train_rows": len(ds.train), "params": count_params(res.params),
                             "epochs_run": len(res.history),
                             "seconds": time.perf_counter() - t0})
                print(f"  {mname} seed {seed}: test AUC {test['auc']:.4f} logloss "
                      f"{test['logloss']:.4f}")
    with open(args.out + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    lines = ["# Baselines: every model on the real data samples", "",
             f"Command: `{command_line()}`  ", f"Machine: {machine()}  ",
             f"Training: Adam 1e-3, batch 1024, up to {args.epochs} epochs, early stop on "
             "validation AUC (patience 1), embedding dim 16, MLP 400-400-400. Splits 8:1:1 "
             "(criteo, movielens: file/time order; frappe: seeded random). Criteo min-count 10, "
             "integers bucketized; MovieLens and Frappe min-count 1. Mean (std) over seeds "
             f"{seeds}.", ""]
    for dname in args.datasets.split(","):
        sub = [r for r in rows if r["dataset"] == dname]
        if not sub:
            continue
        lr_auc = np.mean([r["auc"] for r in sub if r["model"] == "lr"]) if any(
            r["model"] == "lr" for r in sub) else None
        lines += [f"## {dname} ({sub[0]['train_rows']:,} train / {sub[0]['test_rows']:,} test rows)",
                  "", "| model | test AUC | test logloss | valid AUC | params | epochs | seconds "
                  "| beats LR |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for mname in dict.fromkeys(r["model"] for r in sub):
            m = [r for r in sub if r["model"] == mname]
            auc = np.array([r["auc"] for r in m])
            ll = np.array([r["logloss"] for r in m])
            beats = "" if lr_auc is None or mname == "lr" else (
                "yes" if auc.mean() > lr_auc else "no")
            sd = lambda x: f" ({x.std():.4f})" if len(x) > 1 else ""  # noqa: E731
            lines.append(f"| {mname} | {auc.mean():.4f}{sd(auc)} | {ll.mean():.4f}{sd(ll)} | "
                         f"{np.mean([r['valid_auc'] for r in m]):.4f} | {m[0]['params']:,} | "
                         f"{m[0]['epochs_run']} | {np.mean([r['seconds'] for r in m]):.0f} | "
                         f"{beats} |")
        lines.append("")
    (RESULTS / "baseline.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
