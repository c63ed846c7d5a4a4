"""AFM against weight SVD on real data, DeepFM and DCNv2, over seeds.

    python experiments/afm.py [--datasets movielens,criteo] [--models deepfm,dcnv2] [--seeds 0,1,2]

Per (dataset, model, seed): train the original, collect statistics on the training split, then
for each plan evaluate AFM and weight SVD at the same ranks on the test split. Writes
experiments/results/afm.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from common import RESULTS, command_line, load, machine

from afm_jax.compress import (
    collect_stats,
    compress,
    finetune,
    fixed_plan,
    make_plan,
    plan_report,
    svd_compress,
)
from afm_jax.data import iterate_batches
from afm_jax.inference import count_params, device_params, evaluate, make_scorer, throughput
from afm_jax.models import build_model
from afm_jax.train import TrainConfig, train

SITES = ["mlp", "embed"]
PLANS = {  # name -> (plan spec, sites)
    "budget 0.30 (mlp+embed)": ("budget:0.30", SITES),
    "mlp rank 8": ("rank:8", ["mlp"]),
    "embed rank 2": ("rank:2", ["embed"]),
    "mlp rank 8 + embed rank 2": (None, None),
}


def plan_for(name, params, stats):
    spec, sites = PLANS[name]
    if spec is not None:
        return make_plan(params, stats, spec, sites)
    return {**fixed_plan(params, stats, 8, ["mlp"]), **fixed_plan(params, stats, 2, ["embed"])}


def run_one(ds, dname, mname, seed, finetune_steps):
    model = build_model(mname, ds.info)
    res = train(model, ds, TrainConfig(epochs=2, seed=seed), progress=False)
    params = res.params
    scorer = make_scorer(model)
    placed = device_params(model, params)   # packed once: the layout the scorer runs fastest
    base = evaluate(scorer, placed, ds.test)
    rate0 = throughput(scorer, placed, ds.test)
    t0 = time.perf_counter()
    stats = collect_stats(model, params, iterate_batches(ds.train, 4096),
                          total=math.ceil(len(ds.train) / 4096), progress=False)
    t_stats = time.perf_counter() - t0
    rows = [{"dataset": dname, "model": mname, "seed": seed, "method": "original",
             "plan": "-", "auc": base["auc"], "logloss": base["logloss"],
             "params": count_params(params), "ratio": 1.0, "rows_per_s": rate0}]
    for pname in PLANS:
        plan = plan_for(pname, params, stats)
        rep = plan_report(params, stats, plan)
        t1 = time.perf_counter()
        afm = compress(params, stats, plan, model=model)
        t_map = time.perf_counter() - t1
        svd = svd_compress(params, plan)
        for method, p in (("AFM", afm), ("SVD", svd)):
            placed = device_params(model, p)
            r = evaluate(scorer, placed, ds.test)
            rows.append({"dataset": dname, "model": mname, "seed": seed, "method": method,
                         "plan": pname, "auc": r["auc"], "logloss": r["logloss"],
                         "params": count_params(p), "ratio": rep.ratio,
                         "site_params_before": rep.params_before,
                         "site_params_after": rep.params_after,
                         "rows_per_s": throughput(scorer, placed, ds.test),
                         "stats_seconds": t_stats, "map_seconds": t_map})
    if finetune_steps:
        pname = "mlp rank 8"
        plan = plan_for(pname, params, stats)
        rep = plan_report(params, stats, plan)
        for method, p, trainable in (
                ("original + fine-tune", params, "all"),
                ("AFM + fine-tune", compress(params, stats, plan), "all"),
                ("AFM relu + fine-tune", compress(params, stats, plan, activation="relu"), "all")):
            start = evaluate(scorer, device_params(model, p), ds.test)
            tuned = finetune(model, p, ds, finetune_steps, trainable=trainable, seed=seed,
                             progress=False)
            r = evaluate(scorer, device_params(model, tuned.params), ds.test)
            rows.append({"dataset": dname, "model": mname, "seed": seed, "method": method,
                         "plan": "-" if method.startswith("original") else pname,
                         "auc": r["auc"], "logloss": r["logloss"], "auc_start": start["auc"],
                         "logloss_start": start["logloss"], "params": count_params(tuned.params),
                         "ratio": 1.0 if method.startswith("original") else rep.ratio,
                         "rows_per_s": float("nan")})
    return rows


def summarize(rows, args):
    lines = ["# AFM vs weight SVD on real data", "",
             f"Command: `{command_line()}`  ", f"Machine: {machine()}  ",
             "Each model trained as in baseline.md (Adam 1e-3, batch 1024, 2 epochs, early stop "
             "on validation AUC). Statistics over the whole training split. `ratio` = "
             "parameters of the compressed sites before / after (MLP and embedding sites in "
             "the plan; DCNv2's cross layers and the output layer are left full). Mean (std) "
             f"over seeds {args.seeds}. `dAUC`/`dLL` = compressed minus original, per seed, "
             "then averaged; `AFM-SVD` compares the two at the same ranks.", ""]
    for dname in dict.fromkeys(r["dataset"] for r in rows):
        for mname in dict.fromkeys(r["model"] for r in rows if r["dataset"] == dname):
            sub = [r for r in rows if r["dataset"] == dname and r["model"] == mname]
            seeds = sorted({r["seed"] for r in sub})
            orig = {r["seed"]: r for r in sub if r["method"] == "original"}
            lines += [f"## {dname} / {mname}", "",
                      "| method | plan | site ratio | params | test AUC | dAUC | test logloss "
                      "| dLL | rows/s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
            keys = list(dict.fromkeys((r["method"], r["plan"]) for r in sub))
            for method, plan in keys:
                m = [r for r in sub if (r["method"], r["plan"]) == (method, plan)]
                auc = np.array([r["auc"] for r in m])
                ll = np.array([r["logloss"] for r in m])
                dauc = np.array([r["auc"] - orig[r["seed"]]["auc"] for r in m])
                dll = np.array([r["logloss"] - orig[r["seed"]]["logloss"] for r in m])
                sd = lambda x: f" ({x.std():.4f})" if len(x) > 1 else ""  # noqa: E731
                rate = np.nanmean([r["rows_per_s"] for r in m])
                lines.append(
                    f"| {method} | {plan} | {np.mean([r['ratio'] for r in m]):.2f}x | "
                    f"{m[0]['params']:,} | {auc.mean():.4f}{sd(auc)} | {dauc.mean():+.4f}"
                    f"{sd(dauc)} | {ll.mean():.4f}{sd(ll)} | {dll.mean():+.4f}{sd(dll)} | "
                    + ("-" if math.isnan(rate) else f"{rate:,.0f}") + " |")
            # AFM minus SVD at the same ranks, per seed
            lines += ["", "AFM minus SVD at the same ranks (per-seed differences: mean, min, max):",
                      ""]
            for pname in PLANS:
                a = {r["seed"]: r for r in sub if r["method"] == "AFM" and r["plan"] == pname}
                s = {r["seed"]: r for r in sub if r["method"] == "SVD" and r["plan"] == pname}
                if not a:
                    continue
                da = np.array([a[k]["auc"] - s[k]["auc"] for k in seeds])
                dl = np.array([a[k]["logloss"] - s[k]["logloss"] for k in seeds])
                lines.append(f"- {pname}: AUC {da.mean():+.4f} [{da.min():+.4f}, "
                             f"{da.max():+.4f}], logloss {dl.mean():+.4f} [{dl.min():+.4f}, "
                             f"{dl.max():+.4f}]")
            st = [r for r in sub if r["method"] == "AFM"]
            lines += ["", f"Statistics pass {np.mean([r['stats_seconds'] for r in st]):.1f}s, "
                      f"AFM map {np.mean([r['map_seconds'] for r in st]):.2f}s per plan.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="movielens,criteo")
    ap.add_argument("--models", default="deepfm,dcnv2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--finetune-steps", type=int, default=200)
    ap.add_argument("--out", default=str(RESULTS / "afm"),
                    help="writes OUT.json (after every cell) and OUT.md")
    args = ap.parse_args()
    rows = []
    for dname in args.datasets.split(","):
        ds = load(dname, progress=False)
        for mname in args.models.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                t0 = time.perf_counter()
                rows += run_one(ds, dname, mname, seed, args.finetune_steps)
                print(f"{dname} {mname} seed {seed}: {time.perf_counter() - t0:.0f}s", flush=True)
                with open(f"{args.out}.json", "w") as f:
                    json.dump(rows, f, indent=1)
    text = summarize(rows, args)
    Path(f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
