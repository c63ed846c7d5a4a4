"""Train every registered model on the real datasets; test AUC/logloss next to LR.

    python experiments/baseline.py [--datasets movielens,criteo,frappe] [--models ...] [--seeds 0]

Writes OUT.md and OUT.json (--out, default experiments/results/baseline).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import RESULTS, command_line, load, machine

from afm_jax.inference import count_params, device_params, evaluate, make_scorer
from afm_jax.models import REGISTRY, build_model
from afm_jax.train import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="movielens,criteo,frappe")
    ap.add_argument("--models", default=",".join(REGISTRY))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "baseline"))
    ap.add_argument("--skip", default="", help="dataset:model pairs to leave out, e.g. "
                    "criteo:xdeepfm")
    args = ap.parse_args()
    skip = {tuple(p.split(":")) for p in args.skip.split(",") if p}
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for dname in args.datasets.split(","):
        ds = load(dname)
        print(f"{dname}: {ds.report['splits']} rows, {len(ds.info.cat_names)} cat + "
              f"{len(ds.info.num_names)} num fields")
        for mname in args.models.split(","):
            if (dname, mname) in skip:
                continue
            for seed in seeds:
                model = build_model(mname, ds.info)
                t0 = time.perf_counter()
                res = train(model, ds, TrainConfig(epochs=args.epochs, seed=seed))
                test = evaluate(make_scorer(model), device_params(model, res.params), ds.test)
                rows.append({"dataset": dname, "model": mname, "seed": seed,
                             "command": command_line(),
                             "valid_auc": res.best_valid["auc"], "auc": test["auc"],
                             "logloss": test["logloss"], "test_rows": test["rows"],
                             "train_rows": len(ds.train), "params": count_params(res.params),
                             "epochs_run": len(res.history),
                             "seconds": time.perf_counter() - t0})
                print(f"  {mname} seed {seed}: test AUC {test['auc']:.4f} logloss "
                      f"{test['logloss']:.4f}")
    # merge with earlier runs: rows of the (dataset, model) pairs run now replace older ones
    path = Path(args.out + ".json")
    done = {(r["dataset"], r["model"]) for r in rows}
    if path.exists():
        rows = [r for r in json.loads(path.read_text())
                if (r["dataset"], r["model"]) not in done] + rows
    path.write_text(json.dumps(rows, indent=1))
    commands = sorted({r.get("command", "python experiments/baseline.py") for r in rows})
    lines = ["# Baselines: every model on the real data samples", "",
             "Commands (rows merged across runs; each row's command is in baseline.json): "
             + ", ".join(f"`{c}`" for c in commands) + "  ", f"Machine: {machine()}  ",
             f"Training: Adam 1e-3, batch 1024, up to {args.epochs} epochs, early stop on "
             "validation AUC (patience 1), embedding dim 16, MLP 400-400-400. Splits 8:1:1 "
             "(criteo, movielens: file/time order; frappe: seeded random). Criteo min-count 10, "
             "integers bucketized; MovieLens and Frappe min-count 1. Mean (std) over seeds "
             f"{sorted({r['seed'] for r in rows})}.", ""]
    order = {m: i for i, m in enumerate(REGISTRY)}
    rows.sort(key=lambda r: order.get(r["model"], 99))
    for dname in dict.fromkeys(r["dataset"] for r in rows):
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
    Path(args.out + ".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
