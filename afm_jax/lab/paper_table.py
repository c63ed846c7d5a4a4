"""The paper's table on real data: every model x dataset x seed, AFM against its baselines.

One cell = (dataset, model, seed): train the original, then evaluate on the test split
  - the original, and the original fine-tuned for the same extra steps as the activation variant;
  - AFM on the dense layers only, on the embeddings only, on both (parameter budget per group);
  - AFM with a ReLU between the factors (started at linear AFM), fine-tuned;
  - weight SVD at exactly the ranks of each AFM plan;
  - TT-Rec: tensor-train tables for the large tables, at AFM's per-table parameter count,
    trained from scratch like the original;
  - the seed code's released configuration (first FC kept, FC2/FC3 rank 64, embeddings 16 -> 2);
  - a calibration-size sweep (statistics from the first 1k/10k/100k/all training rows, ranks
    fixed to the main plan's) and a budget sweep of AFM and SVD (for the AUC-vs-params plot).
Each cell is written to `<out>/paper_table_cells/<dataset>__<model>__s<seed>.json` as soon as it is done,
so an interrupted run resumes where it stopped; the report is rebuilt from all cells.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from afm_jax._cache import clear_compiled
from afm_jax.compress import (
    collect_stats,
    compress,
    finetune,
    fixed_plan,
    make_plan,
    svd_compress,
    variance_kept,
)
from afm_jax.compress.afm import get_path
from afm_jax.compress.ranks import site_shapes
from afm_jax.compress.ttrec import tt_plan_like, tt_tables
from afm_jax.data import iterate_batches, load_dataset
from afm_jax.errors import AfmError, CompressionError
from afm_jax.inference import count_params, evaluate, make_scorer, throughput
from afm_jax.lab.datasets import real_datasets
from afm_jax.models import build_model
from afm_jax.train import TrainConfig, init_params, train

MODELS = ("deepfm", "dcn", "dcnv2", "fibinet", "nfm", "autoint", "gdcn")
BUDGET = 0.25                        # main plans keep 1/4 of each group's parameters
SWEEP = (0.05, 0.1, 0.25, 0.5)       # budgets of the AUC-vs-params curves
CALIBRATION_ROWS = (1_000, 10_000, 100_000)
TT_MIN_ROWS = 500                    # TT-Rec replaces tables with at least this many rows
STATS_BATCH = 4096


def _split_head(split, n: int):
    return type(split)(cat=split.cat[:n], num=split.num[:n], label=split.label[:n])


def _stats(model, params, split, n: int | None = None):
    split = split if n is None else _split_head(split, n)
    return collect_stats(model, params, iterate_batches(split, STATS_BATCH),
                         total=math.ceil(len(split) / STATS_BATCH), progress=False)


def site_groups(stats) -> dict[str, list[str]]:
    """'dense': every Linear site but the 1-output head; 'embed': the categorical tables."""
    embed = [s for s in stats if s.startswith("embed/")]
    dense = [s for s in stats if not s.startswith("embed/") and s != "out"]
    return {"dense": dense, "embed": embed, "both": dense + embed}


def compressible_params(params, sites) -> int:
    """Parameters held at the compressible sites (whatever form each site has now)."""
    total = 0
    for s in sites:
        try:
            total += count_params(get_path(params, s))
        except (KeyError, TypeError):
            pass
    return total


def run_cell(ds, dname: str, mname: str, seed: int, *, epochs: int = 2,
             finetune_steps: int | None = None) -> dict:
    """Everything for one (dataset, model, seed); returns a JSON-able dict."""
    cfg = TrainConfig(epochs=epochs, seed=seed)
    model = build_model(mname, ds.info)
    scorer = make_scorer(model)
    t0 = time.perf_counter()
    res = train(model, ds, cfg, progress=False)
    train_s = time.perf_counter() - t0
    params = res.params
    t0 = time.perf_counter()
    stats = _stats(model, params, ds.train)
    stats_s = time.perf_counter() - t0
    groups = site_groups(stats)
    sites = groups["both"]
    comp0 = compressible_params(params, sites)
    rows: list[dict] = []

    def add(method: str, plan: str, p, *, rate: bool = False, **extra) -> dict:
        r = evaluate(scorer, p, ds.test)
        comp = compressible_params(p, sites)
        row = {"method": method, "plan": plan, "auc": r["auc"], "logloss": r["logloss"],
               "params": count_params(p), "compressible": comp, "ratio": comp0 / max(comp, 1),
               "rows_per_s": throughput(scorer, p, ds.test) if rate else None, **extra}
        rows.append(row)
        return row

    add("original", "-", params, rate=True, train_seconds=train_s)
    plans: dict[str, dict] = {}
    for g, group in groups.items():
        try:
            plans[g] = make_plan(params, stats, f"budget:{BUDGET}", group)
        except CompressionError as e:
            rows.append({"method": "AFM", "plan": g, "skipped": str(e)})
            continue
        t0 = time.perf_counter()
        afm = compress(params, stats, plans[g], model=model)
        map_s = time.perf_counter() - t0
        add("AFM", g, afm, rate=g == "both", stats_seconds=stats_s, map_seconds=map_s,
            ranks=plans[g])
        add("SVD", g, svd_compress(params, plans[g]), rate=g == "both")
        del afm

    # the seed code's released configuration
    seed_ranks = {s: 64 for s in ("mlp/dense_1", "mlp/dense_2") if s in stats}
    seed_ranks.update({s: 2 for s in groups["embed"]})
    seed_plan = fixed_plan(params, stats, seed_ranks)
    add("AFM", "seed code config", compress(params, stats, seed_plan, model=model), rate=True,
        ranks=seed_plan)

    # TT-Rec at AFM's per-table parameter count (embedding plan), trained from scratch
    if "embed" in plans:
        shapes = site_shapes(params, stats, groups["embed"])
        budgets = {s: shapes[s].params_at(r) for s, r in plans["embed"].items()}
        tt_ranks = tt_plan_like(params, budgets, min_rows=TT_MIN_ROWS)
        if tt_ranks:
            p0 = tt_tables(init_params(model, ds.info, seed), tt_ranks, seed=seed)
            t0 = time.perf_counter()
            tt = train(model, ds, cfg, params=p0, progress=False)
            add("TT-Rec", "embed", tt.params, rate=True, tt_ranks=tt_ranks,
                train_seconds=time.perf_counter() - t0)
        else:
            rows.append({"method": "TT-Rec", "plan": "embed",
                         "skipped": f"no table has >= {TT_MIN_ROWS} rows"})

    # activation variant + fine-tune, against the original fine-tuned the same way
    steps = finetune_steps or min(200, max(20, math.ceil(0.5 * len(ds.train) / cfg.batch_size)))
    if "both" in plans:
        for method, p in (("original + fine-tune", params),
                          ("AFM relu + fine-tune", compress(params, stats, plans["both"],
                                                            model=model, activation="relu"))):
            start = evaluate(scorer, p, ds.test)
            tuned, _ = finetune(model, p, ds, steps, trainable="all", seed=seed, progress=False)
            add(method, "-" if method.startswith("original") else "both", tuned,
                auc_start=start["auc"], logloss_start=start["logloss"], steps=steps)

        # calibration size: ranks fixed to the main plan, directions from the first n rows
        for n in CALIBRATION_ROWS:
            if n >= len(ds.train):
                break
            st_n = _stats(model, params, ds.train, n)
            add("AFM calibration", f"{n} rows", compress(params, st_n, plans["both"], model=model),
                calib_rows=n)
        add("AFM calibration", "all rows", compress(params, stats, plans["both"], model=model),
            calib_rows=len(ds.train))

        # budget sweep for the AUC-vs-params curves
        for b in SWEEP:
            try:
                plan = plans["both"] if b == BUDGET else make_plan(params, stats, f"budget:{b}",
                                                                  sites)
            except CompressionError:
                continue
            add("AFM sweep", f"budget {b}", compress(params, stats, plan, model=model), budget=b)
            add("SVD sweep", f"budget {b}", svd_compress(params, plan), budget=b)

    spectra = {s: variance_kept(st.cov).tolist() for s, st in stats.items() if s in sites}
    return {"dataset": dname, "model": mname, "seed": seed, "train_rows": len(ds.train),
            "test_rows": len(ds.test), "epochs_run": len(res.history),
            "valid_auc": res.best_valid["auc"], "finetune_steps": steps, "rows": rows,
            "spectra": spectra if seed == 0 else None}


def run(data_dir: str | Path | None, out_dir: str | Path, *,
        datasets: tuple[str, ...] | None = None, models: tuple[str, ...] = MODELS,
        seeds: tuple[int, ...] = (0, 1, 2), max_rows: dict[str, int] | None = None,
        epochs: int = 2, command: str = "", progress: bool = True,
        log: Callable[[str], None] = print) -> Path:
    """Run every missing cell, then write paper_table.md/.json and the plots; returns the .md.

    data_dir: the folder of the real samples (None: `lab.datasets.default_data_dir()`).
    """
    out = Path(out_dir)
    cells_dir = out / "paper_table_cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    known = real_datasets(data_dir)
    datasets = tuple(datasets or known)
    unknown = [d for d in datasets if d not in known]
    if unknown:
        raise AfmError(f"unknown dataset(s) {unknown}; choose from {sorted(known)}")
    max_rows = max_rows or {}
    todo = [(d, m, s) for d in datasets for m in models for s in seeds
            if not (cells_dir / f"{d}__{m}__s{s}.json").exists()]
    bar = tqdm(total=len(todo), desc="paper table", disable=not progress)
    loaded: dict[str, Any] = {}
    previous = None
    for d, m, s in todo:
        if (d, m) != previous:  # seeds of one model share compiled code; other models do not
            clear_compiled()
            previous = (d, m)
        if d not in loaded:
            spec, opts = known[d]
            loaded = {d: load_dataset(spec, max_rows=max_rows.get(d), progress=False, **opts)}
        bar.set_postfix_str(f"{d} {m} seed {s}")
        t0 = time.perf_counter()
        cell = run_cell(loaded[d], d, m, s, epochs=epochs)
        cell.update(seconds=time.perf_counter() - t0, max_rows=max_rows.get(d), command=command)
        path = cells_dir / f"{d}__{m}__s{s}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cell, indent=1))
        tmp.replace(path)
        log(f"{d} {m} seed {s}: {cell['seconds']:.0f}s")
        bar.update(1)
    bar.close()
    return report(out, command=command)


# ---------------------------------------------------------------- report


def load_cells(out_dir: str | Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(out_dir, "paper_table_cells").glob("*.json"))]


MAIN_ROWS = [("original", "-"), ("AFM", "dense"), ("AFM", "embed"), ("AFM", "both"),
             ("SVD", "dense"), ("SVD", "embed"), ("SVD", "both"), ("TT-Rec", "embed"),
             ("AFM", "seed code config"), ("original + fine-tune", "-"),
             ("AFM relu + fine-tune", "both")]


def _paired(cells: list[dict], key: tuple[str, str], ref: tuple[str, str], metric: str):
    """Per-seed differences key - ref of `metric` over the cells that have both."""
    out = []
    for c in cells:
        rows = {(r["method"], r["plan"]): r for r in c["rows"] if "skipped" not in r}
        if key in rows and ref in rows:
            out.append(rows[key][metric] - rows[ref][metric])
    return np.array(out)


def _beyond_spread(d: np.ndarray) -> bool:
    """A paired difference is called real when its mean exceeds twice its standard error."""
    return len(d) > 1 and abs(d.mean()) > 2 * d.std(ddof=1) / math.sqrt(len(d))


def _fmt(x: np.ndarray, digits: int = 4) -> str:
    return f"{x.mean():.{digits}f}" + (f" ({x.std(ddof=1):.{digits}f})" if len(x) > 1 else "")


def machine_line() -> str:
    import os
    import platform
    dev = jax.devices()[0]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"JAX {jax.__version__} on {dev.platform}")


def summarize(cells: list[dict], command: str = "") -> tuple[str, dict]:
    lines = ["# The paper's table on the real samples", "",
             f"Command: `{command or 'python experiments/paper_table.py'}`  ",
             f"Machine: {machine_line()}  ",
             f"Each cell: the model trained as in baseline.md (Adam 1e-3, batch 1024, up to 2 "
             "epochs, early stop on validation AUC, embedding dim 16, MLP 400-400-400), then "
             "every method evaluated on the test split. Mean (std) over seeds. *Compressible* = "
             "the parameters of the dense sites (every Linear but the 1-output head: MLP, "
             "cross, attention, SENET/bilinear layers) and of the categorical embedding tables; "
             "*ratio* = the original's compressible parameters / the method's. "
             f"AFM plans: parameter budget {BUDGET} of each group (dense, embed, both), ranks "
             "by variance kept per parameter; SVD at exactly the same per-site ranks. "
             f"TT-Rec: 3-core tensor trains for the tables with >= {TT_MIN_ROWS} rows, TT rank "
             "per table = the largest whose cores fit in AFM's compressed table + projection "
             "(embed plan), trained from scratch like the original; smaller tables stay full. "
             "Seed code config: first FC kept, FC2/FC3 rank 64, embeddings rank 2. The "
             "fine-tuned rows train all params for the same steps (half an epoch, at most 200) "
             "at Adam 1e-4; `AFM relu` starts exactly at linear AFM (first factor's bias shifted "
             "below the calibration range). `dAUC`, `dLL`: paired per-seed difference to the "
             "original; `*` marks a difference whose mean exceeds twice its standard error "
             "(beyond the seed spread). rows/s: the jitted scorer on one 8192-row batch, same "
             "process; `stats s` = the statistics pass over all training rows, `map s` = the "
             "AFM map.", ""]
    summary = {"cells": len(cells), "pairs": []}
    by_ds: dict[str, list[dict]] = {}
    for c in cells:
        by_ds.setdefault(c["dataset"], []).append(c)
    meets, total_pairs = [], 0
    for dname, dcells in by_ds.items():
        c0 = dcells[0]
        sub = f", first {c0['max_rows']:,} rows of the file" if c0.get("max_rows") else ""
        lines += [f"## {dname} ({c0['train_rows']:,} train / {c0['test_rows']:,} test rows{sub})",
                  "", "| model | method | ratio | params | test AUC | dAUC | test logloss | dLL "
                  "| rows/s | stats s | map s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        models = list(dict.fromkeys(c["model"] for c in dcells))
        for mname in models:
            mc = [c for c in dcells if c["model"] == mname]
            for key in MAIN_ROWS:
                rs = [r for c in mc for r in c["rows"]
                      if (r["method"], r["plan"]) == key and "skipped" not in r]
                if not rs:
                    continue
                auc = np.array([r["auc"] for r in rs])
                ll = np.array([r["logloss"] for r in rs])
                ref = ("original + fine-tune", "-") if "fine-tune" in key[0] else ("original", "-")
                da, dl = _paired(mc, key, ref, "auc"), _paired(mc, key, ref, "logloss")
                star = lambda d: "*" if _beyond_spread(d) else ""  # noqa: E731
                rate = [r["rows_per_s"] for r in rs if r.get("rows_per_s")]
                st = [r["stats_seconds"] for r in rs if "stats_seconds" in r]
                mp = [r["map_seconds"] for r in rs if "map_seconds" in r]
                name = key[0] if key[1] == "-" else f"{key[0]} {key[1]}"
                lines.append(
                    f"| {mname} | {name} | {np.mean([r['ratio'] for r in rs]):.2f}x | "
                    f"{int(np.mean([r['params'] for r in rs])):,} | {_fmt(auc)} | "
                    + (f"{da.mean():+.4f}{star(da)}" if key != ref else "") + f" | {_fmt(ll)} | "
                    + (f"{dl.mean():+.4f}{star(dl)}" if key != ref else "") + " | "
                    + (f"{np.mean(rate):,.0f}" if rate else "") + " | "
                    + (f"{np.mean(st):.1f}" if st else "") + " | "
                    + (f"{np.mean(mp):.2f}" if mp else "") + " |")
            both = [r for c in mc for r in c["rows"] if (r["method"], r["plan"]) == ("AFM", "both")]
            if both:
                total_pairs += 1
                d_auc = _paired(mc, ("AFM", "both"), ("original", "-"), "auc")
                ratio = float(np.mean([r["ratio"] for r in both]))
                ok = ratio >= 3.0 and d_auc.mean() >= -0.0005
                vs_svd = _paired(mc, ("AFM", "both"), ("SVD", "both"), "logloss")
                summary["pairs"].append({"dataset": dname, "model": mname, "ratio": ratio,
                                         "dauc": float(d_auc.mean()), "meets": bool(ok),
                                         "seeds": len(d_auc),
                                         "afm_minus_svd_logloss": float(vs_svd.mean()),
                                         "afm_vs_svd_beyond_spread": _beyond_spread(vs_svd)})
                meets.append(ok)
        lines.append("")
        # calibration sweep
        lines += [f"Calibration size ({dname}): test AUC of AFM both (ranks of the main plan) with "
                  "statistics from the first N training rows; dAUC to the original.", "",
                  "| model | " + " | ".join(
                      p for p in dict.fromkeys(r["plan"] for c in dcells for r in c["rows"]
                                               if r["method"] == "AFM calibration")) + " |"]
        plans = list(dict.fromkeys(r["plan"] for c in dcells for r in c["rows"]
                                   if r["method"] == "AFM calibration"))
        lines.append("|---|" + "---:|" * len(plans))
        for mname in models:
            mc = [c for c in dcells if c["model"] == mname]
            cells_txt = []
            for p in plans:
                d = _paired(mc, ("AFM calibration", p), ("original", "-"), "auc")
                aucs = [r["auc"] for c in mc for r in c["rows"]
                        if (r["method"], r["plan"]) == ("AFM calibration", p)]
                cells_txt.append(f"{np.mean(aucs):.4f} ({d.mean():+.4f})" if aucs else "")
            lines.append(f"| {mname} | " + " | ".join(cells_txt) + " |")
        lines.append("")
    summary["meets"] = int(sum(meets))
    summary["pairs_total"] = total_pairs
    lines += ["## Acceptance", "",
              f"AFM on both groups reaches >= 3x fewer compressible parameters with mean test AUC "
              f">= the original's - 0.0005 on {sum(meets)} of {total_pairs} (model, dataset) "
              "pairs:", ""]
    for p in summary["pairs"]:
        lines.append(f"- {p['dataset']} / {p['model']}: ratio {p['ratio']:.2f}x, dAUC "
                     f"{p['dauc']:+.4f} over {p['seeds']} seed(s) -> "
                     + ("meets" if p["meets"] else "falls short")
                     + f"; AFM - SVD logloss {p['afm_minus_svd_logloss']:+.4f}"
                     + (" (beyond spread)" if p["afm_vs_svd_beyond_spread"] else ""))
    return "\n".join(lines) + "\n", summary


def _panels(plt, n: int):
    """A figure with n panels, at most 4 a row; unused panels hidden."""
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.1 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(plt, fig, title: str, path: Path) -> Path:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(cells: list[dict], out_dir: Path) -> list[Path]:
    """AUC against parameters per dataset (one panel per model), and eigen-spectra."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    by_ds: dict[str, list[dict]] = {}
    for c in cells:
        by_ds.setdefault(c["dataset"], []).append(c)
    for dname, dcells in by_ds.items():
        models = list(dict.fromkeys(c["model"] for c in dcells))
        fig, axes = _panels(plt, len(models))
        for ax, mname in zip(axes, models):
            mc = [c for c in dcells if c["model"] == mname]
            for method, style in (("AFM sweep", "o-"), ("SVD sweep", "s--")):
                pts: dict[str, list] = {}
                for c in mc:
                    for r in c["rows"]:
                        if r["method"] == method:
                            pts.setdefault(r["plan"], []).append((r["compressible"], r["auc"]))
                xs = sorted((np.mean([p[0] for p in v]), np.mean([p[1] for p in v]))
                            for v in pts.values())
                if xs:
                    ax.plot(*zip(*xs), style, label=method.split()[0], ms=4)
            for method, plan, marker in (("original", "-", "k*"), ("TT-Rec", "embed", "r^"),
                                         ("AFM", "seed code config", "gD")):
                rs = [r for c in mc for r in c["rows"]
                      if (r["method"], r["plan"]) == (method, plan) and "skipped" not in r]
                if rs:
                    ax.plot(np.mean([r["compressible"] for r in rs]),
                            np.mean([r["auc"] for r in rs]), marker, ms=8,
                            label=method if plan != "seed code config" else "seed config")
            # zoom on the compressed forms; a point far below (TT-Rec) is named at the bottom
            ys = [y for line in ax.get_lines() if line.get_label() != "TT-Rec"
                  for y in line.get_ydata()]
            lo, hi = min(ys), max(ys)
            pad = max(0.25 * (hi - lo), 0.001)
            ax.set_ylim(lo - pad, hi + pad)
            for line in ax.get_lines():
                if line.get_label() == "TT-Rec" and line.get_ydata()[0] < lo - pad:
                    ax.annotate(f"TT-Rec {line.get_ydata()[0]:.4f} (below)",
                                (line.get_xdata()[0], lo - pad), xytext=(0, 8),
                                textcoords="offset points", ha="right", fontsize=7, color="r",
                                arrowprops={"arrowstyle": "->", "color": "r"})
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(mname, fontsize=9)
            ax.set_xlabel("compressible params", fontsize=8)
            ax.set_ylabel("test AUC (mean over seeds)", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0].legend(fontsize=7)
        paths.append(_save(plt, fig, f"{dname}: test AUC against compressible parameters",
                           out_dir / f"paper_auc_vs_params_{dname}.png"))

        fig, axes = _panels(plt, len(models))
        for ax, mname in zip(axes, models):
            c = next((c for c in dcells if c["model"] == mname and c.get("spectra")), None)
            if c is None:
                continue
            for site, kept in c["spectra"].items():
                emb = site.startswith("embed/")
                ax.plot(np.arange(1, len(kept)), kept[1:], color="0.7" if emb else None,
                        lw=0.8 if emb else 1.5, label=None if emb else site)
            ax.set_xscale("log")
            ax.set_ylim(0, 1.01)
            ax.set_title(f"{mname} (grey: embedding tables)", fontsize=8)
            ax.set_xlabel("rank k", fontsize=8)
            ax.set_ylabel("output variance kept", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=5)
        paths.append(_save(plt, fig, f"{dname}: eigen-spectrum of each site (seed 0)",
                           out_dir / f"paper_spectra_{dname}.png"))
    return paths


def report(out_dir: str | Path, command: str = "") -> Path:
    out = Path(out_dir)
    cells = load_cells(out)
    text, summary = summarize(cells, command)
    (out / "paper_table.md").write_text(text)
    (out / "paper_table.json").write_text(json.dumps(
        {"summary": summary, "cells": [{k: v for k, v in c.items() if k != "spectra"}
                                       for c in cells]}, indent=1, default=float))
    plot(cells, out)
    return out / "paper_table.md"
