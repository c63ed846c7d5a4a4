"""collect -> plan -> map -> fine-tune: the one call the CLI and users make to compress a model.

    res = compress_model(model, params, ds, "budget:0.25")
    small = res.params                  # same model, same scorer
    print(res.report.to_markdown())     # per-site ranks and parameter counts
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from afm_jax.compress.afm import compress
from afm_jax.compress.finetune import finetune
from afm_jax.compress.ranks import PlanReport, make_plan, plan_report
from afm_jax.compress.stats import collect_stats
from afm_jax.types import Params, Plan, Stats


class CompressionResult(NamedTuple):
    """What `compress_model` gives back.

    params: the compressed params (host arrays), for the same model and scorer as the original.
    stats: the per-site output statistics the map was computed from (`save_stats` writes them).
    plan: site -> rank. report: per-site ranks, parameter counts and variance kept.
    stats_seconds / compress_seconds: time of the statistics pass and of the map.
    finetune: the fine-tuning report (validation AUC/logloss before and after), or None.
    """

    params: Params
    stats: Stats
    plan: Plan
    report: PlanReport
    stats_seconds: float
    compress_seconds: float
    finetune: dict | None


def compress_model(model: Any, params: Params, dataset: Any, plan: str | Plan, *,
                   sites: Sequence[str] | None = None, activation: str | None = None,
                   finetune_steps: int = 0, stats_rows: int | None = None,
                   batch_size: int = 2048, progress: bool = True, mesh: Any = None,
                   shard_embeddings: bool = False) -> CompressionResult:
    """Statistics on `dataset.train`, a rank plan, the AFM map, and an optional fine-tune.

    plan: a spec ("rank:K", "energy:E", "budget:F", see `make_plan`) or a ready site -> rank
    dict. sites: site prefixes to compress (default all). activation: an activation between
    the factors (relu, gelu, silu, tanh), then worth `finetune_steps` > 0. stats_rows: calibrate
    on the first N training rows only. mesh: statistics and fine-tuning run over it (params
    host-side in, host-side out); the eigen-decompositions of the map run on the host.
    """
    from afm_jax import distributed
    from afm_jax.data import iterate_batches

    t0 = time.perf_counter()
    train = dataset.train
    n = len(train) if stats_rows is None else min(stats_rows, len(train))
    sub = type(train)(cat=train.cat[:n], num=train.num[:n], label=train.label[:n])
    stats = collect_stats(model, distributed.shard_params(params, mesh, shard_embeddings),
                          iterate_batches(sub, batch_size, mesh=mesh),
                          total=math.ceil(n / batch_size), progress=progress, mesh=mesh)
    t_stats = time.perf_counter() - t0
    rank_plan = make_plan(params, stats, plan, sites) if isinstance(plan, str) else dict(plan)
    report = plan_report(params, stats, rank_plan)
    t1 = time.perf_counter()
    new = compress(params, stats, rank_plan, model=model, activation=activation)
    t_compress = time.perf_counter() - t1
    ft = None
    if finetune_steps:
        new, ft = finetune(model, new, dataset, finetune_steps, progress=progress, mesh=mesh,
                           shard_embeddings=shard_embeddings)
        if mesh is not None:
            new = distributed.host_params(new, model.info)
    return CompressionResult(params=new, stats=stats, plan=rank_plan, report=report,
                             stats_seconds=t_stats, compress_seconds=t_compress, finetune=ft)
