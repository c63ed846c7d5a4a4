"""Plots: each site's eigen-spectrum, and test logloss/AUC against rank for AFM and weight SVD.

    python experiments/spectrum.py [--datasets criteo,movielens] [--model deepfm] [--seed 0]

Writes experiments/results/spectrum_<dataset>_<model>.png and rank_sweep_<dataset>_<model>.png
and a table in experiments/results/rank_sweep.md.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from common import RESULTS, command_line, load, machine  # noqa: E402

from afm_jax.compress import collect_stats, compress, fixed_plan, plan_report, svd_compress, variance_kept  # noqa: E402
from afm_jax.data import iterate_batches  # noqa: E402
from afm_jax.inference import device_params, evaluate, make_scorer  # noqa: E402
from afm_jax.models import build_model  # noqa: E402
from afm_jax.train import TrainConfig, train  # noqa: E402

RANKS = (1, 2, 4, 8, 16, 32, 64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="criteo,movielens")
    ap.add_argument("--model", default="deepfm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS),
                    help="folder of rank_sweep.md and the spectrum_*/rank_sweep_* plots")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Rank sweep: AFM vs weight SVD on the MLP layers", "",
             f"Command: `{command_line()}`  ", f"Machine: {machine()}  ",
             f"Model {args.model}, seed {args.seed}, trained as in baseline.md; every MLP layer "
             "at the same rank (embeddings full). Test split.", ""]
    for dname in args.datasets.split(","):
        ds = load(dname, progress=False)
        model = build_model(args.model, ds.info)
        params = train(model, ds, TrainConfig(epochs=2, seed=args.seed), progress=False).params
        stats = collect_stats(model, params, iterate_batches(ds.train, 4096),
                              total=math.ceil(len(ds.train) / 4096), progress=False)
        scorer = make_scorer(model)
        base = evaluate(scorer, device_params(model, params), ds.test)

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for site, st in stats.items():
            if site.startswith("mlp/"):
                kept = variance_kept(st.cov)
                axes[0].plot(np.arange(len(kept)), kept, label=site)
        emb = np.array([variance_kept(st.cov) for s, st in stats.items()
                        if s.startswith("embed/")])
        if len(emb):
            r = np.arange(emb.shape[1])
            axes[1].fill_between(r, emb.min(0), emb.max(0), alpha=0.3, label="min-max over fields")
            axes[1].plot(r, np.median(emb, 0), label="median field")
        axes[0].set(xscale="symlog", xlabel="rank", ylabel="output variance kept",
                    title=f"{dname} {args.model}: MLP layers")
        axes[1].set(xlabel="rank", ylabel="output variance kept",
                    title=f"{dname}: {len(emb)} field embeddings")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"spectrum_{dname}_{args.model}.png", dpi=110)
        plt.close(fig)

        res = {"AFM": [], "SVD": []}
        for rank in RANKS:
            plan = fixed_plan(params, stats, rank, ["mlp"])
            ratio = plan_report(params, stats, plan).ratio
            for method, p in (("AFM", compress(params, stats, plan)),
                              ("SVD", svd_compress(params, plan))):
                r = evaluate(scorer, device_params(model, p), ds.test)
                res[method].append((rank, ratio, r["auc"], r["logloss"]))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for method, vals in res.items():
            v = np.array(vals)
            axes[0].plot(v[:, 0], v[:, 3], "o-", label=method)
            axes[1].plot(v[:, 0], v[:, 2], "o-", label=method)
        for ax, key, val in ((axes[0], "test logloss", base["logloss"]),
                             (axes[1], "test AUC", base["auc"])):
            ax.axhline(val, color="gray", ls="--", label="original")
            ax.set(xscale="log", xlabel="rank of every MLP layer", ylabel=key,
                   title=f"{dname} {args.model}")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"rank_sweep_{dname}_{args.model}.png", dpi=110)
        plt.close(fig)

        lines += [f"## {dname} (original: AUC {base['auc']:.4f}, logloss {base['logloss']:.4f})",
                  "", f"![spectra](spectrum_{dname}_{args.model}.png) "
                  f"![sweep](rank_sweep_{dname}_{args.model}.png)", "",
                  "| rank | MLP ratio | AFM AUC | SVD AUC | AFM logloss | SVD logloss |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for a, s in zip(res["AFM"], res["SVD"]):
            lines.append(f"| {a[0]} | {a[1]:.1f}x | {a[2]:.4f} | {s[2]:.4f} | {a[3]:.4f} | "
                         f"{s[3]:.4f} |")
        lines.append("")
        print("\n".join(lines[-len(RANKS) - 3:]), flush=True)
    (out / "rank_sweep.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
