"""The paper's table on real data: every model x dataset x seed, AFM against its baselines.

One cell = (dataset, model, seed): train the original, then evaluate on the test split the rows
of each method group asked for (`METHODS`; `run(methods="core")` runs `CORE_METHODS`):
  - afm: AFM on the dense layers only, on the embeddings only, on both (parameter budget per group);
  - svd: weight SVD at exactly the ranks of each AFM plan;
  - int8: the original in int8 (`quantize`), AFM both + int8, and float AFM both at the bytes of
    each of those two (the equal-bytes comparisons);
  - sweep: a budget sweep of AFM and SVD (for the AUC-vs-size plots);
  - seed_config: the seed code's released configuration (first FC kept, FC2/FC3 rank 64,
    embeddings 16 -> 2);
  - ttrec: tensor-train tables for the large tables, at AFM's per-table parameter count,
    trained from scratch like the original;
  - finetune: the original, and AFM with a ReLU between the factors (started at linear AFM),
    each fine-tuned for the same steps;
  - calibration: statistics from the first 1k/10k/100k/all training rows, ranks fixed to the
    main plan's.
Every row holds its test AUC and logloss, parameter counts and the stored bytes of the whole
model (`count_bytes`). Each cell is written to
`<out>/paper_table_cells/<dataset>__<model>__s<seed>.json` as soon as it is done, so an
interrupted run resumes where it stopped; a cell that lacks some of the method groups asked for
is completed: the original is trained again with the same seed, checked to score exactly as
the stored one, and the missing rows are merged in. A dataset capped to its first N rows is a
dataset of its own, `<name>_<N/1000>k` (e.g. `criteo_40k`). The report is rebuilt from all cells.
"""

from __future__ import annotations

import json
import math
import re
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
from afm_jax.compress.search import BYTES_PER_PARAM, fit_bytes
from afm_jax.compress.ttrec import tt_plan_like, tt_tables
from afm_jax.data import iterate_batches, load_dataset
from afm_jax.errors import AfmError, CompressionError
from afm_jax.inference import (
    count_bytes,
    count_params,
    device_params,
    evaluate,
    make_scorer,
    throughput,
)
from afm_jax.lab.datasets import real_datasets
from afm_jax.models import build_model
from afm_jax.quantize import quantize
from afm_jax.train import TrainConfig, init_params, train

MODELS = ("deepfm", "dcn", "dcnv2", "fibinet", "nfm", "autoint", "gdcn")
BUDGET = 0.25                        # main plans keep 1/4 of each group's parameters
SWEEP = (0.05, 0.1, 0.25, 0.5)       # budgets of the AUC-vs-params curves
CALIBRATION_ROWS = (1_000, 10_000, 100_000)
TT_MIN_ROWS = 500                    # TT-Rec replaces tables with at least this many rows
STATS_BATCH = 4096

# method groups a cell can hold; "core" leaves out the ones that train (TT-Rec, fine-tunes),
# collect more statistics (calibration) or only reproduce the seed code
METHODS = ("afm", "svd", "int8", "sweep", "seed_config", "ttrec", "finetune", "calibration")
CORE_METHODS = ("afm", "svd", "int8", "sweep")
METHOD_SETS = {"all": METHODS, "core": CORE_METHODS}
# the int8 rows: (method, plan) keys
ORIGINAL = ("original", "-")
INT8 = ("int8", "-")
AFM_INT8 = ("AFM + int8", "both")
AFM_AT_AFM_INT8 = ("AFM", "both, bytes of AFM + int8")
# the goal's size: AFM both + int8 at the largest budget storing in 1/GOAL_RATIO of the
# original's bytes, and float AFM both at those same bytes
AFM_INT8_GOAL = ("AFM + int8", "both, 1/14 bytes")
AFM_AT_GOAL = ("AFM", "both, 1/14 bytes")
AFM_AT_INT8 = ("AFM", "both, bytes of int8")
MATCH_TOL = 1e-6     # a retrained original must score within this of the stored one to merge


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


def resolve_methods(methods: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """"all", "core" or a sequence of group names (`METHODS`) -> the groups, in METHODS order."""
    if isinstance(methods, str):
        if methods not in METHOD_SETS:
            raise AfmError(f"methods {methods!r}: use one of {sorted(METHOD_SETS)} or a list of "
                           f"groups from {list(METHODS)}")
        return METHOD_SETS[methods]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise AfmError(f"unknown method group(s) {bad}; choose from {list(METHODS)}")
    return tuple(m for m in METHODS if m in methods)


def afm_at_bytes(params, stats, sites, n_bytes: int, model, *, int8: bool = False,
                 rel_tol: float = 1e-3, max_tries: int = 12):
    """AFM over `sites` with the largest budget plan whose whole model stores in at most
    `n_bytes` bytes (`count_bytes` of the compressed params; with `int8`, of the compressed
    params after `quantize`), by `search.fit_bytes`. Returns (plan, params), the params float
    (quantize them for int8). Raises CompressionError when no plan fits.
    """
    def size(p) -> int:
        return count_bytes(quantize(p) if int8 else p)

    return fit_bytes(params, stats, n_bytes, sites,
                     lambda plan: compress(params, stats, plan, model=model), size,
                     rel_tolerance=rel_tol, max_tries=max_tries)


def run_cell(ds, dname: str, mname: str, seed: int, *, epochs: int = 2,
             finetune_steps: int | None = None,
             methods: str | tuple[str, ...] = "all") -> dict:
    """The rows of the method groups `methods` ("all", "core" or group names from `METHODS`)
    for one (dataset, model, seed), after the original's; returns a JSON-able dict."""
    methods = resolve_methods(methods)
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
    bytes0 = count_bytes(params)
    rows: list[dict] = []

    def add(method: str, plan: str, p, *, rate: bool = False, **extra) -> dict:
        placed = device_params(model, p)   # packed once, as the scorer runs fastest
        r = evaluate(scorer, placed, ds.test)
        comp, nbytes = compressible_params(p, sites), count_bytes(p)
        row = {"method": method, "plan": plan, "auc": r["auc"], "logloss": r["logloss"],
               "params": count_params(p), "compressible": comp, "ratio": comp0 / max(comp, 1),
               "bytes": nbytes, "bytes_ratio": bytes0 / max(nbytes, 1),
               "rows_per_s": throughput(scorer, placed, ds.test) if rate else None, **extra}
        rows.append(row)
        return row

    def skip(method: str, plan: str, why: str) -> None:
        rows.append({"method": method, "plan": plan, "skipped": why})

    add(*ORIGINAL, params, rate=True, train_seconds=train_s)
    plans: dict[str, dict] = {}
    afm_both = None
    for g, group in groups.items():
        try:
            plans[g] = make_plan(params, stats, f"budget:{BUDGET}", group)
        except CompressionError as e:
            if "afm" in methods:
                skip("AFM", g, str(e))
            continue
        if "afm" in methods or (g == "both" and "int8" in methods):
            t0 = time.perf_counter()
            afm = compress(params, stats, plans[g], model=model)
            map_s = time.perf_counter() - t0
            if "afm" in methods:
                add("AFM", g, afm, rate=g == "both", stats_seconds=stats_s, map_seconds=map_s,
                    ranks=plans[g])
            if g == "both":
                afm_both = afm
            del afm
        if "svd" in methods:
            add("SVD", g, svd_compress(params, plans[g]), rate=g == "both")

    # int8 storage: alone, after AFM both, and float AFM at the bytes of each
    if "int8" in methods:
        int8 = add(*INT8, quantize(params), rate=True)
        targets = [(AFM_AT_INT8, int8)]
        if afm_both is not None:
            targets.insert(0, (AFM_AT_AFM_INT8,
                               add(*AFM_INT8, quantize(afm_both), rate=True, ranks=plans["both"])))
        else:
            skip(*AFM_INT8, "no AFM both plan")
            skip(*AFM_AT_AFM_INT8, "no AFM both plan")
        goal_bytes = int(bytes0 // GOAL_RATIO)
        targets += [(AFM_INT8_GOAL, {"bytes": goal_bytes}, True),
                    (AFM_AT_GOAL, {"bytes": goal_bytes}, False)]
        for key, target, *q in targets:
            int8_form = bool(q and q[0])
            try:
                t0 = time.perf_counter()
                plan, afm = afm_at_bytes(params, stats, sites, target["bytes"], model,
                                         int8=int8_form)
            except CompressionError as e:
                skip(*key, str(e))
                continue
            add(*key, quantize(afm) if int8_form else afm, ranks=plan,
                bytes_target=target["bytes"], search_seconds=time.perf_counter() - t0,
                rate=int8_form)
            del afm
    del afm_both

    # the seed code's released configuration
    if "seed_config" in methods:
        seed_ranks = {s: 64 for s in ("mlp/dense_1", "mlp/dense_2") if s in stats}
        seed_ranks.update({s: 2 for s in groups["embed"]})
        seed_plan = fixed_plan(params, stats, seed_ranks)
        add("AFM", "seed code config", compress(params, stats, seed_plan, model=model),
            rate=True, ranks=seed_plan)

    # TT-Rec at AFM's per-table parameter count (embedding plan), trained from scratch
    if "ttrec" in methods and "embed" in plans:
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
            skip("TT-Rec", "embed", f"no table has >= {TT_MIN_ROWS} rows")

    # activation variant + fine-tune, against the original fine-tuned the same way
    steps = None
    if "finetune" in methods and "both" in plans:
        steps = finetune_steps or min(200, max(20, math.ceil(0.5 * len(ds.train)
                                                             / cfg.batch_size)))
        for method, p in (("original + fine-tune", params),
                          ("AFM relu + fine-tune", compress(params, stats, plans["both"],
                                                            model=model, activation="relu"))):
            start = evaluate(scorer, device_params(model, p), ds.test)
            tuned = finetune(model, p, ds, steps, trainable="all", seed=seed, progress=False).params
            add(method, "-" if method.startswith("original") else "both", tuned,
                auc_start=start["auc"], logloss_start=start["logloss"], steps=steps)

    # calibration size: ranks fixed to the main plan, directions from the first n rows
    if "calibration" in methods and "both" in plans:
        for n in CALIBRATION_ROWS:
            if n >= len(ds.train):
                break
            st_n = _stats(model, params, ds.train, n)
            add("AFM calibration", f"{n} rows", compress(params, st_n, plans["both"], model=model),
                calib_rows=n)
        add("AFM calibration", "all rows", compress(params, stats, plans["both"], model=model),
            calib_rows=len(ds.train))

    # budget sweep for the AUC-vs-size curves
    if "sweep" in methods and "both" in plans:
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
            "valid_auc": res.best_valid["auc"], "finetune_steps": steps,
            "methods": list(methods), "rows": rows, "spectra": spectra if seed == 0 else None}


# ---------------------------------------------------------------- cells on disk


def cell_methods(cell: dict) -> tuple[str, ...]:
    """The method groups a cell holds: its "methods" field, or for a cell written before that
    field, the groups its rows show (such cells ran every group but int8)."""
    if "methods" in cell:
        return resolve_methods(cell["methods"])
    keys = {(r["method"], r["plan"]) for r in cell["rows"]}
    names = {k[0] for k in keys}
    has = {"afm": any(k in keys for k in (("AFM", "dense"), ("AFM", "embed"), ("AFM", "both"))),
           "svd": "SVD" in names, "int8": INT8 in keys, "sweep": "AFM sweep" in names,
           "seed_config": ("AFM", "seed code config") in keys, "ttrec": "TT-Rec" in names,
           "finetune": any(n.endswith("fine-tune") for n in names),
           "calibration": "AFM calibration" in names}
    return tuple(m for m in METHODS if has[m])


def merge_cell(old: dict, new: dict, path: Path) -> dict:
    """`old` (the cell stored at `path`) with the rows of `new` (a run of the groups it lacked,
    same dataset, model and seed) added; the original's row stays the stored one.

    Raises AfmError naming `path` when the retrained original does not score as the stored one
    (test AUC and logloss within MATCH_TOL, same train/test rows): the new rows would then
    belong to another model, so nothing is merged.
    """
    o_old = next((r for r in old["rows"] if (r["method"], r["plan"]) == ORIGINAL), None)
    o_new = next(r for r in new["rows"] if (r["method"], r["plan"]) == ORIGINAL)
    why = []
    if o_old is None:
        why.append("the stored cell has no original row")
    else:
        for k in ("auc", "logloss"):
            if not abs(o_new[k] - o_old[k]) <= MATCH_TOL:
                why.append(f"test {k} {o_new[k]:.8f} retrained vs {o_old[k]:.8f} stored")
    for k in ("dataset", "model", "seed", "train_rows", "test_rows"):
        if new.get(k) != old.get(k):
            why.append(f"{k} {new.get(k)!r} now vs {old.get(k)!r} stored")
    if why:
        raise AfmError(
            f"{path}: cannot add {new['methods']} to this cell: the original trained again "
            f"does not match the stored one ({'; '.join(why)}). The code or data changed since "
            "the cell was written; move the file away to recompute the whole cell.")
    # the old methods are all float32: their stored bytes are 4 per parameter
    float32 = o_new["bytes"] == BYTES_PER_PARAM * o_new["params"]
    rows = []
    for r in old["rows"]:
        if float32 and "skipped" not in r and "bytes" not in r and "params" in r:
            r = {**r, "bytes": BYTES_PER_PARAM * r["params"]}
            r["bytes_ratio"] = o_new["bytes"] / max(r["bytes"], 1)
        rows.append(r)
    rows += [r for r in new["rows"] if (r["method"], r["plan"]) != ORIGINAL]
    merged = {**old, "rows": rows,
              "methods": list(resolve_methods(set(cell_methods(old)) | set(new["methods"])))}
    if new.get("finetune_steps") is not None:
        merged["finetune_steps"] = new["finetune_steps"]
    merged["merges"] = [*old.get("merges", []),
                        {"methods": new["methods"], "seconds": new.get("seconds"),
                         "command": new.get("command"),
                         "original_auc_diff": o_new["auc"] - o_old["auc"],
                         "original_logloss_diff": o_new["logloss"] - o_old["logloss"]}]
    return merged


def capped_name(dataset: str, max_rows: int | None) -> str:
    """The name of a dataset capped to its first `max_rows` rows: criteo, 40000 -> criteo_40k
    (no cap: the name itself)."""
    if not max_rows:
        return dataset
    return f"{dataset}_{max_rows // 1000}k" if max_rows % 1000 == 0 else f"{dataset}_{max_rows}"


def resolve_dataset(name: str, known, max_rows: dict[str, int]) -> tuple[str, str, int | None]:
    """A dataset asked for -> (cell name, real sample, row cap). "criteo_40k" is the first 40,000
    rows of "criteo"; a plain name takes its cap from `max_rows` and is renamed by it."""
    if name in known:
        cap = max_rows.get(name)
        return capped_name(name, cap), name, cap
    m = re.fullmatch(r"(.+)_(\d+)(k?)", name)
    if m and m[1] in known and int(m[2]) > 0:
        cap = int(m[2]) * (1000 if m[3] else 1)
        return capped_name(m[1], cap), m[1], cap
    raise AfmError(f"unknown dataset {name!r}; choose from {sorted(known)}, or NAME_Nk for the "
                   "first N thousand rows of one")


def _write(path: Path, cell: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cell, indent=1))
    tmp.replace(path)


def migrate_capped_cells(cells_dir: str | Path, log: Callable[[str], None] = print) -> list[str]:
    """Rename cells of a row-capped dataset written under the plain name (e.g. a `criteo` cell
    with max_rows 40000) to the capped name (`criteo_40k`, file name and "dataset" field).
    Returns the new file names; raises AfmError if one exists already."""
    moved = []
    for path in sorted(Path(cells_dir).glob("*.json")):
        cell = json.loads(path.read_text())
        suffix = capped_name("", cell.get("max_rows"))
        if not suffix or cell["dataset"].endswith(suffix):
            continue
        name = cell["dataset"] + suffix
        target = path.with_name(f"{name}__{cell['model']}__s{cell['seed']}.json")
        if target.exists():
            raise AfmError(f"cannot rename {path.name} to {target.name}: that file exists")
        _write(target, {**cell, "dataset": name, "renamed_from": cell["dataset"]})
        path.unlink()
        moved.append(target.name)
        log(f"renamed {path.name} -> {target.name} (first {cell['max_rows']:,} rows)")
    return moved


def run(data_dir: str | Path | None, out_dir: str | Path, *,
        datasets: tuple[str, ...] | None = None, models: tuple[str, ...] = MODELS,
        seeds: tuple[int, ...] = (0, 1, 2), max_rows: dict[str, int] | None = None,
        epochs: int = 2, methods: str | tuple[str, ...] = "all", command: str = "",
        progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Run every missing cell, complete the cells that lack a method group asked for, then
    write paper_table.md/.json and the plots; returns the .md.

    data_dir: the folder of the real samples (None: `lab.datasets.default_data_dir()`).
    datasets: names of `real_datasets` (default: all, whole samples), or NAME_Nk for the first
    N thousand rows of one; max_rows caps a plain name the same way (cells named NAME_Nk).
    methods: "all", "core" (`CORE_METHODS`) or group names from `METHODS`.
    """
    out = Path(out_dir)
    cells_dir = out / "paper_table_cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    known = real_datasets(data_dir)
    max_rows = max_rows or {}
    wanted = resolve_methods(methods)
    resolved = [resolve_dataset(d, known, max_rows) for d in (datasets or tuple(known))]
    migrate_capped_cells(cells_dir, log)
    todo = []
    for name, base, cap in resolved:
        for m in models:
            for s in seeds:
                path = cells_dir / f"{name}__{m}__s{s}.json"
                old = json.loads(path.read_text()) if path.exists() else None
                if old is not None and old.get("max_rows") != cap:
                    raise AfmError(f"{path}: stored with max_rows {old.get('max_rows')}, but "
                                   f"{name} means {cap}; move the file away or rename it")
                missing = [g for g in wanted if old is None or g not in cell_methods(old)]
                if missing:
                    todo.append((name, base, cap, m, s, missing, old, path))
    bar = tqdm(total=len(todo), desc="paper table", disable=not progress)
    loaded: dict[str, Any] = {}
    previous = None
    for name, base, cap, m, s, missing, old, path in todo:
        if (name, m) != previous:  # seeds of one model share compiled code; other models do not
            clear_compiled()
            previous = (name, m)
        if name not in loaded:
            spec, opts = known[base]
            loaded = {name: load_dataset(spec, max_rows=cap, progress=False, **opts)}
        bar.set_postfix_str(f"{name} {m} seed {s}")
        t0 = time.perf_counter()
        cell = run_cell(loaded[name], name, m, s, epochs=epochs, methods=tuple(missing))
        cell.update(seconds=time.perf_counter() - t0, max_rows=cap, command=command)
        if old is not None:
            cell = merge_cell(old, cell, path)
        _write(path, cell)
        log(f"{name} {m} seed {s}: {time.perf_counter() - t0:.0f}s"
            + (f" (added {', '.join(missing)})" if old is not None else ""))
        bar.update(1)
    bar.close()
    return report(out, command=command)


# ---------------------------------------------------------------- report


def load_cells(out_dir: str | Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(out_dir, "paper_table_cells").glob("*.json"))]


MAIN_ROWS = [ORIGINAL, ("AFM", "dense"), ("AFM", "embed"), ("AFM", "both"),
             ("SVD", "dense"), ("SVD", "embed"), ("SVD", "both"), INT8, AFM_INT8,
             AFM_AT_AFM_INT8, AFM_AT_INT8, AFM_INT8_GOAL, AFM_AT_GOAL, ("TT-Rec", "embed"),
             ("AFM", "seed code config"), ("original + fine-tune", "-"),
             ("AFM relu + fine-tune", "both")]

# the goal of AFM both + int8: bytes ratio, test AUC and logloss against the original
GOAL_DATASETS = ("movielens", "frappe", "criteo")
GOAL_RATIO = 14.0
GOAL_DAUC = -0.0005
GOAL_DLL = 0.001
GOAL_MODELS = 4


def _rows(cells: list[dict], key: tuple[str, str]) -> list[dict]:
    return [r for c in cells for r in c["rows"]
            if (r["method"], r["plan"]) == key and "skipped" not in r]


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


def _diff(d: np.ndarray) -> str:
    return f"{d.mean():+.4f}" + ("*" if _beyond_spread(d) else "") if len(d) else ""


def machine_line() -> str:
    import os
    import platform
    dev = jax.devices()[0]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"JAX {jax.__version__} on {dev.platform}")


def _beats(cells: list[dict], key, ref) -> dict | None:
    """Paired AUC and logloss differences key - ref; beats = higher mean AUC and lower mean
    logloss. None when no cell has both rows."""
    da, dl = _paired(cells, key, ref, "auc"), _paired(cells, key, ref, "logloss")
    if not len(da):
        return None
    return {"dauc": float(da.mean()), "dll": float(dl.mean()), "seeds": len(da),
            "beats": bool(da.mean() > 0 and dl.mean() < 0),
            "beyond_spread": bool(_beyond_spread(da) or _beyond_spread(dl))}


def goals(cells: list[dict]) -> dict:
    """The AFM both + int8 goal per dataset of GOAL_DATASETS and model, from the cells that hold
    its rows (others are left out): AFM + int8 at 1/GOAL_RATIO of the original's bytes
    (`AFM_INT8_GOAL`), its bytes ratio, paired dAUC and dLL to the original, pass flags, and
    the comparisons with int8 alone and with float AFM at the same bytes (`AFM_AT_GOAL`)."""
    out: dict[str, Any] = {"datasets": {}}
    for d in GOAL_DATASETS:
        dc = [c for c in cells if c["dataset"] == d]
        per_model = []
        for m in dict.fromkeys(c["model"] for c in dc):
            mc = [c for c in dc if c["model"] == m]
            rs = [r for r in _rows(mc, AFM_INT8_GOAL) if "bytes_ratio" in r]
            if not rs:
                why = [r["skipped"] for c in mc for r in c["rows"]
                       if (r["method"], r["plan"]) == AFM_INT8_GOAL and "skipped" in r]
                if why:   # no plan fits 1/GOAL_RATIO of the bytes: a fail, with the reason
                    per_model.append({"model": m, "seeds": len(why), "skipped": why[0],
                                      "passes": False, "vs_int8": None,
                                      "vs_afm_equal_bytes": None})
                continue
            ratio = float(np.mean([r["bytes_ratio"] for r in rs]))
            da = _paired(mc, AFM_INT8_GOAL, ORIGINAL, "auc")
            dl = _paired(mc, AFM_INT8_GOAL, ORIGINAL, "logloss")
            ok = {"ratio_ok": ratio >= GOAL_RATIO, "dauc_ok": bool(da.mean() >= GOAL_DAUC),
                  "dll_ok": bool(dl.mean() <= GOAL_DLL)}
            per_model.append({
                "model": m, "seeds": len(da), "bytes_ratio": ratio, "dauc": float(da.mean()),
                "dll": float(dl.mean()), **ok, "passes": all(ok.values()),
                "vs_int8": _beats(mc, AFM_INT8_GOAL, INT8),
                "vs_afm_equal_bytes": _beats(mc, AFM_INT8_GOAL, AFM_AT_GOAL),
                "int8_vs_afm_equal_bytes": _beats(mc, INT8, AFM_AT_INT8)})
        passing = sum(p["passes"] for p in per_model)
        out["datasets"][d] = {
            "models": per_model, "passing": passing, "met": passing >= GOAL_MODELS,
            "beats_int8": sum(bool(p["vs_int8"] and p["vs_int8"]["beats"]) for p in per_model),
            "beats_afm_equal_bytes": sum(bool(p["vs_afm_equal_bytes"]
                                              and p["vs_afm_equal_bytes"]["beats"])
                                         for p in per_model)}
    out["met"] = all(v["met"] for v in out["datasets"].values())
    return out


def _goal_lines(g: dict) -> list[str]:
    def vs(b: dict | None) -> str:
        if b is None:
            return ""
        return (f"{b['dauc']:+.4f} / {b['dll']:+.4f}" + (" beats" if b["beats"] else "")
                + (" *" if b["beyond_spread"] else ""))

    lines = ["## Goals: AFM both + int8", "",
             f"Goal: AFM both + int8 stores >= {GOAL_RATIO:g}x fewer bytes than the float32 "
             f"original (whole model; the row `{' '.join(AFM_INT8_GOAL)}`: the largest AFM "
             f"budget whose int8 model fits), with test AUC >= the original's {GOAL_DAUC:+g} and "
             f"logloss <= the original's {GOAL_DLL:+g} (paired per seed, mean), on "
             f"{', '.join(GOAL_DATASETS)} (the whole samples) for at least {GOAL_MODELS} of "
             f"the {len(MODELS)} models; and it beats int8 alone and float AFM at equal bytes "
             "(float AFM at the same bytes: `" + " ".join(AFM_AT_GOAL) + "`; higher mean test AUC "
             "and lower mean logloss). Only cells with these rows count. Comparison columns: "
             "dAUC / dLL of the first minus the second, paired per seed; `*`: one of them "
             "beyond the seed spread. *no plan fits*: not even rank 1 at every site stores in "
             "1/14 of the original's bytes (e.g. attention layers outside the compressible "
             "sites); it counts as a fail.", ""]
    for d, v in g["datasets"].items():
        lines.append(f"### {d}")
        lines.append("")
        if not v["models"]:
            lines += [f"No {d} cell has the AFM + int8 rows yet.", ""]
            continue
        lines += ["| model | seeds | bytes ratio | dAUC | dLL | passes | AFM+int8 vs int8 "
                  "| AFM+int8 vs AFM at its bytes | int8 vs AFM at int8's bytes |",
                  "|---|---:|---:|---:|---:|---|---|---|---|"]
        for p in v["models"]:
            if "skipped" in p:
                lines.append(f"| {p['model']} | {p['seeds']} | no plan fits: {p['skipped']} "
                             "| | | no | | | |")
                continue
            fails = [name for name, k in (("bytes", "ratio_ok"), ("AUC", "dauc_ok"),
                                          ("logloss", "dll_ok")) if not p[k]]
            lines.append(f"| {p['model']} | {p['seeds']} | {p['bytes_ratio']:.2f}x | "
                         f"{p['dauc']:+.4f} | {p['dll']:+.4f} | "
                         + ("yes" if p["passes"] else "no (" + ", ".join(fails) + ")")
                         + f" | {vs(p['vs_int8'])} | {vs(p['vs_afm_equal_bytes'])} | "
                         f"{vs(p['int8_vs_afm_equal_bytes'])} |")
        n = len(v["models"])
        lines += ["", f"{d}: {v['passing']} of {n} models pass (goal: >= {GOAL_MODELS} of "
                  f"{len(MODELS)}) -> {'met' if v['met'] else 'not met'}; AFM + int8 beats int8 "
                  f"alone on {v['beats_int8']} of {n}, float AFM at equal bytes on "
                  f"{v['beats_afm_equal_bytes']} of {n}.", ""]
    lines += [f"Size and quality goal met on all of {', '.join(GOAL_DATASETS)}: "
              + ("yes" if g["met"] else "no"), ""]
    return lines


def summarize(cells: list[dict], command: str = "") -> tuple[str, dict]:
    lines = ["# The paper's table on the real samples", "",
             f"Command: `{command or 'python experiments/paper_table.py'}`  ",
             f"Machine: {machine_line()}  ",
             f"Each cell: the model trained as in baseline.md (Adam 1e-3, batch 1024, up to 2 "
             "epochs, early stop on validation AUC, embedding dim 16, MLP 400-400-400), then "
             "every method evaluated on the test split. Mean (std) over seeds. *Compressible* = "
             "the parameters of the dense sites (every Linear but the 1-output head: MLP, "
             "cross, attention, SENET/bilinear layers) and of the categorical embedding tables; "
             "*ratio* = the original's compressible parameters / the method's (values counted, "
             "int8 scales included). *bytes* = the stored bytes of the whole model's params "
             "(`count_bytes`: 4 per float32 value, 1 per int8 value, with the float scales, "
             "biases, projections and every non-compressible parameter); *bytes ratio* = the "
             "original's bytes / the method's, whole model (not only the compressible sites); "
             "rows of cells written before the bytes were recorded have them filled in as 4 x "
             "params when the cell gained the int8 rows (every older method is float32), else "
             "blank. "
             f"AFM plans: parameter budget {BUDGET} of each group (dense, embed, both), ranks "
             "by variance kept per parameter; SVD at exactly the same per-site ranks. "
             "int8: symmetric int8 with float32 scales per output channel / table row "
             "(`quantize`) of the original; AFM + int8: of AFM both; `AFM both, bytes of X`: "
             "float AFM on both groups at the largest budget plan whose model stores in at "
             "most X's bytes. "
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
             "AFM map. A section capped to the first N rows of the file is its own dataset "
             "(`criteo_40k`); the goals count only the whole samples.", ""]
    summary: dict[str, Any] = {"cells": len(cells), "pairs": []}
    by_ds: dict[str, list[dict]] = {}
    for c in cells:
        by_ds.setdefault(c["dataset"], []).append(c)
    meets, total_pairs = [], 0
    for dname, dcells in by_ds.items():
        c0 = dcells[0]
        sub = f", first {c0['max_rows']:,} rows of the file" if c0.get("max_rows") else ""
        groups = sorted({g for c in dcells for g in cell_methods(c)}, key=METHODS.index)
        lines += [f"## {dname} ({c0['train_rows']:,} train / {c0['test_rows']:,} test rows{sub})",
                  "", f"Method groups: {', '.join(groups)}.", "",
                  "| model | method | ratio | params | bytes | bytes ratio | test AUC | dAUC "
                  "| test logloss | dLL | rows/s | stats s | map s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        models = list(dict.fromkeys(c["model"] for c in dcells))
        for mname in models:
            mc = [c for c in dcells if c["model"] == mname]
            for key in MAIN_ROWS:
                rs = _rows(mc, key)
                if not rs:
                    continue
                auc = np.array([r["auc"] for r in rs])
                ll = np.array([r["logloss"] for r in rs])
                ref = ("original + fine-tune", "-") if "fine-tune" in key[0] else ORIGINAL
                da, dl = _paired(mc, key, ref, "auc"), _paired(mc, key, ref, "logloss")
                rate = [r["rows_per_s"] for r in rs if r.get("rows_per_s")]
                st = [r["stats_seconds"] for r in rs if "stats_seconds" in r]
                mp = [r["map_seconds"] for r in rs if "map_seconds" in r]
                nb = [r["bytes"] for r in rs if "bytes" in r]
                br = [r["bytes_ratio"] for r in rs if "bytes_ratio" in r]
                name = key[0] if key[1] == "-" else f"{key[0]} {key[1]}"
                lines.append(
                    f"| {mname} | {name} | {np.mean([r['ratio'] for r in rs]):.2f}x | "
                    f"{int(np.mean([r['params'] for r in rs])):,} | "
                    + (f"{int(np.mean(nb)):,}" if nb else "") + " | "
                    + (f"{np.mean(br):.2f}x" if br else "") + f" | {_fmt(auc)} | "
                    + (_diff(da) if key != ref else "") + f" | {_fmt(ll)} | "
                    + (_diff(dl) if key != ref else "") + " | "
                    + (f"{np.mean(rate):,.0f}" if rate else "") + " | "
                    + (f"{np.mean(st):.1f}" if st else "") + " | "
                    + (f"{np.mean(mp):.2f}" if mp else "") + " |")
            both = _rows(mc, ("AFM", "both"))
            if both:
                total_pairs += 1
                d_auc = _paired(mc, ("AFM", "both"), ORIGINAL, "auc")
                ratio = float(np.mean([r["ratio"] for r in both]))
                ok = ratio >= 3.0 and d_auc.mean() >= -0.0005
                vs_svd = _paired(mc, ("AFM", "both"), ("SVD", "both"), "logloss")
                summary["pairs"].append({"dataset": dname, "model": mname, "ratio": ratio,
                                         "dauc": float(d_auc.mean()), "meets": bool(ok),
                                         "seeds": len(d_auc),
                                         "afm_minus_svd_logloss": float(vs_svd.mean())
                                         if len(vs_svd) else None,
                                         "afm_vs_svd_beyond_spread": _beyond_spread(vs_svd)})
                meets.append(ok)
        lines.append("")
        # calibration sweep
        plans = list(dict.fromkeys(r["plan"] for c in dcells for r in c["rows"]
                                   if r["method"] == "AFM calibration"))
        if plans:
            lines += [f"Calibration size ({dname}): test AUC of AFM both (ranks of the main "
                      "plan) with statistics from the first N training rows; dAUC to the "
                      "original.", "", "| model | " + " | ".join(plans) + " |",
                      "|---|" + "---:|" * len(plans)]
            for mname in models:
                mc = [c for c in dcells if c["model"] == mname]
                cells_txt = []
                for p in plans:
                    d = _paired(mc, ("AFM calibration", p), ORIGINAL, "auc")
                    aucs = [r["auc"] for r in _rows(mc, ("AFM calibration", p))]
                    cells_txt.append(f"{np.mean(aucs):.4f} ({d.mean():+.4f})" if aucs else "")
                lines.append(f"| {mname} | " + " | ".join(cells_txt) + " |")
            lines.append("")
    summary["meets"] = int(sum(meets))
    summary["pairs_total"] = total_pairs
    summary["goals"] = goals(cells)
    lines += _goal_lines(summary["goals"])
    lines += ["## Acceptance", "",
              f"AFM on both groups reaches >= 3x fewer compressible parameters with mean test AUC "
              f">= the original's - 0.0005 on {sum(meets)} of {total_pairs} (model, dataset) "
              "pairs:", ""]
    for p in summary["pairs"]:
        svd = p["afm_minus_svd_logloss"]
        lines.append(f"- {p['dataset']} / {p['model']}: ratio {p['ratio']:.2f}x, dAUC "
                     f"{p['dauc']:+.4f} over {p['seeds']} seed(s) -> "
                     + ("meets" if p["meets"] else "falls short")
                     + (f"; AFM - SVD logloss {svd:+.4f}" if svd is not None else "")
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


def _spread(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _size_panel(ax, mc: list[dict], x: str, series, points) -> None:
    """One model's test AUC against `x` (a row field): each series (method, fmt, label) a line
    through its plans, each point ((method, plan), fmt, label) a marker; every point at the
    mean over seeds with error bars of the std over seeds. The y range zooms on all but
    TT-Rec, which is named at the bottom when it falls below."""
    ys, below = [], []
    for method, fmt, label in series:
        pts: dict[str, list] = {}
        for c in mc:
            for r in c["rows"]:
                if r["method"] == method and "skipped" not in r and x in r:
                    pts.setdefault(r["plan"], []).append((r[x], r["auc"]))
        xs = sorted((np.mean([p[0] for p in v]), np.mean([p[1] for p in v]),
                     _spread([p[1] for p in v])) for v in pts.values())
        if xs:
            px, py, pe = zip(*xs)
            ax.errorbar(px, py, yerr=pe, fmt=fmt, label=label, ms=4, capsize=2, lw=1)
            ys += [y + s for y, s in zip(py, pe)] + [y - s for y, s in zip(py, pe)]
    for key, fmt, label in points:
        rs = [r for r in _rows(mc, key) if x in r]
        if not rs:
            continue
        px, py = float(np.mean([r[x] for r in rs])), float(np.mean([r["auc"] for r in rs]))
        pe = _spread([r["auc"] for r in rs])
        ax.errorbar([px], [py], yerr=[pe], fmt=fmt, ms=7, capsize=2, label=label)
        if key[0] == "TT-Rec":
            below.append((px, py))
        else:
            ys += [py - pe, py + pe]
    if not ys:
        return
    lo, hi = min(ys), max(ys)
    pad = max(0.25 * (hi - lo), 0.001)
    ax.set_ylim(lo - pad, hi + pad)
    for px, py in below:
        if py < lo - pad:
            ax.annotate(f"TT-Rec {py:.4f} (below)", (px, lo - pad), xytext=(0, 8),
                        textcoords="offset points", ha="right", fontsize=7, color="r",
                        arrowprops={"arrowstyle": "->", "color": "r"})


def plot(cells: list[dict], out_dir: Path) -> list[Path]:
    """Per dataset (one panel per model): test AUC against compressible parameters, against the
    bytes ratio (with the int8 rows, when the cells hold bytes), and the eigen-spectra. Points
    are means over seeds with error bars of the std over seeds."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    by_ds: dict[str, list[dict]] = {}
    for c in cells:
        by_ds.setdefault(c["dataset"], []).append(c)
    sweeps = (("AFM sweep", "o-", "AFM"), ("SVD sweep", "s--", "SVD"))
    for dname, dcells in by_ds.items():
        models = list(dict.fromkeys(c["model"] for c in dcells))
        figures = [("compressible", "compressible params", (
            (ORIGINAL, "k*", "original"), (("TT-Rec", "embed"), "r^", "TT-Rec"),
            (("AFM", "seed code config"), "gD", "seed config")),
            "test AUC against compressible parameters", f"paper_auc_vs_params_{dname}.png")]
        if any(r.get("bytes_ratio") for c in dcells for r in c["rows"]
               if (r["method"], r["plan"]) == INT8):
            figures.append(("bytes_ratio", "bytes ratio (original / method, whole model)", (
                (ORIGINAL, "k*", "original"), (INT8, "mv", "int8"),
                (AFM_INT8, "rP", "AFM + int8"),
                (AFM_AT_AFM_INT8, "cX", "AFM at AFM+int8 bytes"),
                (AFM_AT_INT8, "yd", "AFM at int8 bytes"),
                (AFM_INT8_GOAL, "rs", "AFM + int8 at 1/14 bytes"),
                (AFM_AT_GOAL, "bs", "AFM at 1/14 bytes")),
                "test AUC against the bytes ratio", f"paper_auc_vs_bytes_{dname}.png"))
        for x, xlabel, points, title, fname in figures:
            fig, axes = _panels(plt, len(models))
            for ax, mname in zip(axes, models):
                _size_panel(ax, [c for c in dcells if c["model"] == mname], x, sweeps, points)
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                ax.set_title(mname, fontsize=9)
                ax.set_xlabel(xlabel, fontsize=8)
                ax.set_ylabel("test AUC (mean, std over seeds)", fontsize=8)
                ax.tick_params(labelsize=7)
            labelled: dict = {}   # every series of any panel, once (a panel may lack some)
            for ax in axes:
                for h, lab in zip(*ax.get_legend_handles_labels()):
                    labelled.setdefault(lab, h)
            axes[0].legend(list(labelled.values()), list(labelled), fontsize=6)
            paths.append(_save(plt, fig, f"{dname}: {title}", out_dir / fname))

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
