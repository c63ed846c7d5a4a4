"""collect -> plan -> map -> fine-tune: the one call the CLI and users make to compress a model.

    res = compress_model(model, params, ds, "budget:0.25")
    small = res.params                  # same model, same scorer
    print(res.report.to_markdown())     # per-site ranks and parameter counts

    res = compress_model(model, params, ds, "auc-drop:0.0005")   # smallest plan within target
    print(res.search.to_markdown())     # the budgets tried on validation
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from afm_jax.compress.afm import compress
from afm_jax.compress.finetune import finetune
from afm_jax.compress.plan_spec import parse_plan
from afm_jax.compress.ranks import PlanReport, make_plan, plan_report
from afm_jax.compress.search import (
    SearchResult,
    bytes_plan,
    fit_bytes,
    search_plan,
)
from afm_jax.compress.stats import collect_stats
from afm_jax.errors import CompressionError
from afm_jax.inference import count_bytes
from afm_jax.types import Params, Plan, Stats

DEFAULT_CALIBRATION_ROWS = 100_000


class CompressionResult(NamedTuple):
    """What `compress_model` gives back.

    params: the compressed params (host arrays), for the same model and scorer as the original.
    stats: the per-site output statistics the map was computed from (`save_stats` writes them).
    plan: site -> rank. report: per-site ranks, parameter counts and variance kept.
    stats_seconds / compress_seconds: time of the statistics pass and of the map.
    finetune: the fine-tuning report (validation AUC/logloss before and after), or None.
    search: for a quality-target plan ("auc-drop:D", ...), the budgets tried on validation and
    the one chosen (`SearchResult.to_markdown()` is the trace); None otherwise.
    calibration_rows: the training rows the statistics were collected on.
    """

    params: Params
    stats: Stats
    plan: Plan
    report: PlanReport
    stats_seconds: float
    compress_seconds: float
    finetune: dict | None
    search: SearchResult | None = None
    calibration_rows: int = 0


def calibration_indices(n: int, rows: int | None, seed: int = 0) -> np.ndarray | None:
    """Sorted row indices of an even sample of `rows` of `n` rows; None for all rows.

    One row drawn (seeded) from each of `rows` equal strata of [0, n): the sample covers the
    whole split, is reproducible, and cannot alias with a period in the data as a fixed stride
    could. None when rows is None or >= n.
    """
    if rows is None or rows >= n:
        return None
    if rows < 1:
        raise CompressionError(f"calibration rows must be >= 1 (or None for all), got {rows}")
    bounds = (np.arange(rows + 1, dtype=np.int64) * n) // rows
    width = np.diff(bounds)
    jitter = np.random.default_rng(seed).random(rows)
    return bounds[:-1] + np.minimum((jitter * width).astype(np.int64), width - 1)


def calibration_split(train: Any, calibration_rows: int | None,
                      stats_rows: int | None = None) -> Any:
    """The training rows the statistics pass reads: an even sample, or the first `stats_rows`."""
    if stats_rows is not None:
        n = min(stats_rows, len(train))
        if n == len(train):
            return train
        return type(train)(cat=train.cat[:n], num=train.num[:n], label=train.label[:n])
    idx = calibration_indices(len(train), calibration_rows)
    if idx is None:
        return train
    return type(train)(cat=np.asarray(train.cat[idx]), num=np.asarray(train.num[idx]),
                       label=np.asarray(train.label[idx]))


def compress_model(model: Any, params: Params, dataset: Any, plan: str | Plan, *,
                   sites: Sequence[str] | None = None, activation: str | None = None,
                   finetune_steps: int = 0,
                   calibration_rows: int | None = DEFAULT_CALIBRATION_ROWS,
                   stats_rows: int | None = None, batch_size: int = 2048,
                   progress: bool = True, mesh: Any = None,
                   shard_embeddings: bool = False, int8: bool = False) -> CompressionResult:
    """Statistics on `dataset.train`, a rank plan, the AFM map, and an optional fine-tune.

    plan: a spec ("rank:K", "energy:E", "budget:F", see `make_plan`; "bytes:N", the whole
    model in N bytes of float32; "auc-drop:D", "logloss-rise:L" or both comma-separated, the
    smallest budget whose `dataset.valid` AUC drops at most D and logloss rises at most L, see
    `search.search_plan`) or a ready site -> rank dict. sites: site prefixes to compress
    (default all). activation: an activation between the factors (relu, gelu, silu, tanh), then
    worth `finetune_steps` > 0 (a quality search scores the map before fine-tuning).
    calibration_rows: statistics on an even sample of this many training rows (None: all), so
    the pass does not grow with the training set. stats_rows (deprecated): the first N rows
    instead, as before; not with calibration_rows. mesh: statistics, scoring and fine-tuning
    run over it (params host-side in, host-side out); the eigen-decompositions run on the host.
    int8: store the result as int8 (`quantize`, after any fine-tune); "bytes:N" then fits the
    int8 model in N bytes (`search.fit_bytes` on the measured size), and a quality search
    scores the int8 candidates.
    """
    from afm_jax import distributed
    from afm_jax.data import iterate_batches

    def stored(p: Params) -> Params:
        """The params as they will be stored: int8 with `int8`."""
        if not int8:
            return p
        from afm_jax.quantize import quantize
        return quantize(jax.tree.map(np.asarray, p))

    # every plan string is checked before the statistics pass (minutes on real data)
    parsed = parse_plan(plan) if isinstance(plan, str) else None
    target = parsed.target if parsed is not None and parsed.kind == "quality" else None
    n_bytes = int(parsed.value) if parsed is not None and parsed.kind == "bytes" else None
    if activation is not None:
        from afm_jax.nn import ACTIVATIONS
        if activation not in ACTIVATIONS:
            raise CompressionError(f"unknown activation {activation!r}; choose one of "
                                   f"{sorted(ACTIVATIONS)}")
    if stats_rows is not None and calibration_rows not in (None, DEFAULT_CALIBRATION_ROWS):
        raise CompressionError("give calibration_rows (an even sample) or the deprecated "
                               "stats_rows (the first N rows), not both")
    t0 = time.perf_counter()
    sub = calibration_split(dataset.train, calibration_rows, stats_rows)
    stats = collect_stats(model, distributed.shard_params(params, mesh, shard_embeddings),
                          iterate_batches(sub, batch_size, mesh=mesh),
                          total=-(-len(sub) // batch_size), progress=progress, mesh=mesh)
    t_stats = time.perf_counter() - t0
    found = None
    if target is not None:
        from afm_jax.inference import device_params, evaluate, make_scorer
        scorer = make_scorer(model, mesh)

        def score(candidate: Plan) -> dict:
            p = stored(compress(params, stats, candidate, model=model, activation=activation))
            return evaluate(scorer, device_params(model, p, mesh, shard_embeddings),
                            dataset.valid, mesh=mesh)

        found = search_plan(params, stats, target, score, sites)
        rank_plan = found.plan
    elif n_bytes is not None and int8:
        rank_plan, _ = fit_bytes(
            params, stats, n_bytes, sites,
            lambda plan: compress(params, stats, plan, model=model, activation=activation),
            lambda p: count_bytes(stored(p)))
    elif n_bytes is not None:
        rank_plan = bytes_plan(params, stats, n_bytes, sites)
    elif isinstance(plan, str):
        rank_plan = make_plan(params, stats, plan, sites)
    else:
        rank_plan = dict(plan)
    report = plan_report(params, stats, rank_plan)
    t1 = time.perf_counter()
    new = compress(params, stats, rank_plan, model=model, activation=activation)
    t_compress = time.perf_counter() - t1
    ft = None
    if finetune_steps:
        tuned = finetune(model, new, dataset, finetune_steps, progress=progress, mesh=mesh,
                         shard_embeddings=shard_embeddings)
        new, ft = tuned.params, tuned.report
        if mesh is not None:
            new = distributed.host_params(new, model.info)
    return CompressionResult(params=stored(new), stats=stats, plan=rank_plan, report=report,
                             stats_seconds=t_stats, compress_seconds=t_compress, finetune=ft,
                             search=found, calibration_rows=len(sub))

