"""Scoring benchmark: original vs AFM-compressed scorers, a plain PyTorch peer, the machine's ceiling.

Everything runs in one process on the same random valid input (ids drawn uniformly from each
field's vocabulary, never all zeros), so the figures are ratios measured side by side. PyTorch is
optional (`pip install afm-jax[bench]`); without it those columns are left out and the report says
so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from afm_jax.compress import collect_stats, compress, fixed_plan
from afm_jax.data import FeatureInfo
from afm_jax.inference import count_params, default_chunk_rows, logits_fn, make_scorer
from afm_jax.models import build_model

# 39 Criteo-like fields: a mix of small and large vocabularies (about 1.1M rows in all)
_VOCABS = (10, 50, 200, 1_000, 5_000, 20_000, 100_000)


def criteo_like_info(n_fields: int = 39) -> FeatureInfo:
    return FeatureInfo(cat_names=tuple(f"C{i + 1}" for i in range(n_fields)),
                       vocab_sizes=tuple(_VOCABS[i % len(_VOCABS)] for i in range(n_fields)),
                       num_names=())


def random_batch(info: FeatureInfo, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cat = np.stack([rng.integers(1, v, n) for v in info.vocab_sizes], 1).astype(np.int32)
    return {"cat": cat, "num": np.zeros((n, len(info.num_names)), np.float32)}


@dataclass
class Timing:
    median_s: float
    spread: float       # (p90 - p10) / median

    def rows_per_s(self, batch: int) -> float:
        return batch / self.median_s


def time_fn(fn: Callable[[], Any], repeats: int, warmup: int = 3, min_seconds: float = 0.2) -> Timing:
    """Median wall time of `fn()` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times, t_start = [], time.perf_counter()
    while len(times) < repeats or time.perf_counter() - t_start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50 * repeats:
            break
    t = np.asarray(times)
    med = float(np.median(t))
    return Timing(med, float((np.percentile(t, 90) - np.percentile(t, 10)) / med))


def matmul_ceiling(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large float32 matrix product with jax on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    t = time_fn(lambda: f(a, b).block_until_ready(), repeats)
    return 2.0 * n ** 3 / t.median_s


def compiled_cost(fn, *args, flop_fn=None) -> tuple[float, int]:
    """(FLOPs per call, peak bytes: arguments + outputs + temporaries) from XLA's analysis.

    flop_fn: the same function without loops, for counting (a loop's body is counted once).
    """
    lowered = jax.jit(fn).lower(*args)
    # FLOPs of the un-optimized HLO, lowered for the CPU whatever the device: they do not depend
    # on it, and a GPU backend's analysis misses the matrix products it hands to libraries
    # (and returned none at all on an H200 with jax 0.11)
    flops = float("nan")
    try:
        cpu = jax.jit(flop_fn or fn).trace(*args).lower(lowering_platforms=("cpu",))
        cost = cpu.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else {}
        flops = float((cost or {}).get("flops", float("nan")))
    except Exception:  # an older jax without trace/lowering_platforms
        pass
    compiled = lowered.compile()
    try:
        mem = compiled.memory_analysis()
        peak = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)
    except Exception:  # not every backend reports it
        peak = -1
    return flops, peak


# the AFM forms benchmarked: name -> (rank of every MLP / cross layer, rank of every embedding
# table or None to keep the tables full)
AFM_FORMS: dict[str, tuple[int, int | None]] = {
    "AFM dense r64": (64, None),
    "AFM dense r32": (32, None),
    "AFM dense r32 + emb r8": (32, 8),
}


def compressed_forms(model, params, info, calib_rows: int = 16_384) -> dict[str, Any]:
    """{"original": params, **{name: params of each form in AFM_FORMS}}. Statistics come from
    random valid rows (speed, not AUC)."""
    batches = [random_batch(info, 4096, seed=100 + i) for i in range(calib_rows // 4096)]
    stats = collect_stats(model, params, batches, progress=False)
    dense = [s for s in stats if s.startswith(("mlp/", "cross/"))]
    forms = {"original": params}
    for name, (dense_rank, embed_rank) in AFM_FORMS.items():
        plan = fixed_plan(params, stats, dense_rank, dense)
        if embed_rank is None:
            forms[name] = compress(params, stats, plan)
        else:  # with the model: the tables' projections fold into the first layer they feed
            plan = {**plan, **fixed_plan(params, stats, embed_rank, ["embed"])}
            forms[name] = compress(params, stats, plan, model=model)
    return forms


def _lively(params, seed: int = 0):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def run(models=("deepfm", "dcnv2"), batch_sizes=(1, 64, 1024, 8192), repeats: int = 20,
        use_torch: bool = True, progress: bool = True, info: FeatureInfo | None = None,
        torch_compile: bool = True,
        mlp: tuple[int, ...] = (400, 400, 400)) -> dict:
    """All measurements as a dict (rows of figures plus the machine's ceiling)."""
    info = criteo_like_info() if info is None else info
    device = jax.devices()[0]
    ceiling = matmul_ceiling()
    torch_peer = None
    if use_torch:
        try:
            from afm_jax.lab import bench_torch
            torch_peer = bench_torch
        except ImportError:
            torch_peer = None
    rows = []
    total = len(models) * 4 * len(batch_sizes)
    bar = tqdm(total=total, desc="bench", disable=not progress)
    for name in models:
        model = build_model(name, info, mlp=mlp)
        params = _lively(model.init(jax.random.key(0), jnp.zeros(len(info.cat_names), jnp.int32),
                                    jnp.zeros(0))["params"])
        forms = compressed_forms(model, params, info)
        scorer = make_scorer(model)
        logits, flat_logits = logits_fn(model, default_chunk_rows()), logits_fn(model)
        for form, p in forms.items():
            p = jax.device_put(p)
            torch_models = (torch_peer.build(name, info, p, compile=torch_compile)
                            if torch_peer else None)
            for bs in batch_sizes:
                batch = jax.device_put(random_batch(info, bs, seed=bs))
                t = time_fn(lambda s=scorer, p=p, b=batch: s(p, b).block_until_ready(), repeats)
                flops, peak = compiled_cost(logits, p, batch, flop_fn=flat_logits)
                row = {"model": name, "form": form, "batch": bs, "params": count_params(p),
                       "jax_rows_s": t.rows_per_s(bs), "jax_spread": t.spread,
                       "flops_per_row": flops / bs, "flop_rate": flops / t.median_s,
                       "ceiling_fraction": flops / t.median_s / ceiling, "peak_bytes": peak}
                if torch_models is not None:
                    row.update(torch_peer.measure(torch_models, batch, repeats, time_fn))
                if form == "original" and bs == max(batch_sizes):
                    row["stats_rows_s"] = _stats_rate(model, p, info, bs, repeats)
                rows.append(row)
                bar.update(1)
    bar.close()
    return {"device": f"{device.platform}: {device.device_kind}", "ceiling_flops": ceiling,
            "rows": rows, "torch": None if torch_peer is None else torch_peer.version()}


def _stats_rate(model, params, info, batch_size: int, repeats: int, n_batches: int = 16) -> float:
    """Rows/s of a whole statistics pass over `n_batches` device-resident batches (warm)."""
    batches = [jax.device_put(random_batch(info, batch_size, seed=7 + i))
               for i in range(n_batches)]
    collect_stats(model, params, batches[:1], progress=False)  # compile
    t = time_fn(lambda: collect_stats(model, params, batches, progress=False),
                max(3, repeats // 5), warmup=1)
    return n_batches * batch_size / t.median_s


def to_markdown(result: dict, command: str) -> str:
    rows = result["rows"]
    has_torch = result["torch"] is not None
    lines = [f"# Scoring benchmark ({result['device']})", "",
             f"Command: `{command}`  ",
             f"Matrix-product ceiling (float32, 2048^3, jax): "
             f"{result['ceiling_flops'] / 1e9:,.1f} GFLOP/s.  ",
             "Models: 39 fields x 16, MLP 400-400-400 (paper configuration); random valid ids. "
             "AFM forms: every MLP layer (DCNv2: and every cross layer) at rank 64 or 32; the "
             "last form also compresses every embedding to rank 8. Rows/s are medians of "
             "repeated timings after warm-up; spread = (p90 - p10) / median. "
             + (f"PyTorch {result['torch']}: the same models and params in plain torch, eager "
                "and torch.compile." if has_torch else "PyTorch not installed: no peer rows."),
             ""]
    header = ["model", "form", "batch", "params", "afm_jax rows/s (spread)", "vs original"]
    if has_torch:
        header += ["torch eager rows/s", "torch compiled rows/s", "jax / eager",
                   "jax / compiled"]
    header += ["GFLOP/s", "of ceiling", "peak MiB"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = {(r["model"], r["batch"]): r["jax_rows_s"] for r in rows if r["form"] == "original"}
    for r in rows:
        cells = [r["model"], r["form"], str(r["batch"]), f"{r['params']:,}",
                 f"{r['jax_rows_s']:,.0f} ({r['jax_spread']:.2f})",
                 f"{r['jax_rows_s'] / base[(r['model'], r['batch'])]:.2f}x"]
        if has_torch:
            eager, comp = r.get("torch_eager_rows_s", float("nan")), r.get(
                "torch_compiled_rows_s", float("nan"))
            num = lambda x, f: "-" if x != x else f.format(x)  # noqa: E731  (x != x: NaN)
            cells += [num(eager, "{:,.0f}"), num(comp, "{:,.0f}"),
                      num(r["jax_rows_s"] / eager, "{:.2f}x"),
                      num(r["jax_rows_s"] / comp, "{:.2f}x")]
        cells += [f"{r['flop_rate'] / 1e9:,.1f}", f"{r['ceiling_fraction']:.0%}",
                  f"{r['peak_bytes'] / 2**20:,.1f}" if r["peak_bytes"] >= 0 else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    stats = [r for r in rows if "stats_rows_s" in r]
    if stats:
        lines += ["", "Statistics pass (all sites, batch of the largest size) against the "
                  "original scorer:", ""]
        for r in stats:
            lines.append(f"- {r['model']}: {r['stats_rows_s']:,.0f} rows/s = "
                         f"{r['stats_rows_s'] / r['jax_rows_s']:.2f}x the scorer's "
                         f"{r['jax_rows_s']:,.0f} rows/s")
    return "\n".join(lines) + "\n"
