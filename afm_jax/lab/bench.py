"""Scoring benchmark: original vs AFM-compressed scorers, per-field vs packed params, the exported
and bound scorers, a plain PyTorch peer, the machine's ceiling.

Everything runs in one process on the same random valid input (ids drawn uniformly from each
field's vocabulary, never all zeros), and the scorers of one cell (model, form, batch size) are
timed interleaved, round after round, so the figures are ratios measured side by side under the
same load. Each form is scored four ways ("layouts"):

  per-field   `make_scorer(model)(params, batch)` with one table per field (the params that
              statistics, plans and model directories speak)
  packed      the same scorer with `packing.pack(model, params)` (what `predict` runs)
  bound       `inference.bind_scorer(model, params)(batch)` (packed, placed once)
  exported    `inference.load_exported(export(model, params, tmp))(cat, num)`

ONNX Runtime (the `[onnx]` extra) scores each form's `to_onnx` graph (ids in, 2 intra-op
threads) in a pass of its own after the JAX scorers, as does the torch peer.

Compiled op counts (gathers, fusions, executed ops in the compiled HLO) are a proxy for the
layout that does not depend on timing. PyTorch is optional (`pip install afm-jax[bench]`);
without it those columns are left out and the report says so.
"""

from __future__ import annotations

import os
import platform
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from afm_jax.compress import collect_stats, compress, fixed_plan
from afm_jax.data import FeatureInfo
from afm_jax.inference import (
    bind_scorer,
    count_params,
    default_chunk_rows,
    export,
    load_exported,
    logits_fn,
    make_scorer,
)
from afm_jax.models import build_model
from afm_jax.onnx_export import to_onnx
from afm_jax.packing import pack

# 39 Criteo-like fields: a mix of small and large vocabularies (about 1.1M rows in all)
_VOCABS = (10, 50, 200, 1_000, 5_000, 20_000, 100_000)

LAYOUTS = ("per-field", "packed", "bound", "exported")
DISPATCH_BATCHES = (1, 64)


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


def _timing(times: list[float]) -> Timing:
    t = np.asarray(times)
    med = float(np.median(t))
    return Timing(med, float((np.percentile(t, 90) - np.percentile(t, 10)) / med))


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
    return _timing(times)


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2,
                     min_block_s: float = 0.002, min_seconds: float = 0.2) -> dict[str, Timing]:
    """Per-call median wall time of each `fn()` (each must block until its result is ready),
    timed round-robin: every round runs each function once in a block of calls (enough calls
    to last `min_block_s`), so a change of the machine's load hits all of them alike.

    At least `repeats` rounds, and more until each function has run `min_seconds` in all (up to
    10 * repeats rounds). Spread is that of the per-round per-call times.
    """
    block: dict[str, int] = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-7)
        block[name] = max(1, min(1000, int(min_block_s / once)))
    times: dict[str, list[float]] = {n: [] for n in fns}
    spent = dict.fromkeys(fns, 0.0)
    rounds = 0
    while rounds < repeats or (min(spent.values()) < min_seconds and rounds < 10 * repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(block[name]):
                fn()
            dt = time.perf_counter() - t0
            spent[name] += dt
            times[name].append(dt / block[name])
        rounds += 1
    return {n: _timing(t) for n, t in times.items()}


def matmul_ceiling(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large float32 matrix product with jax on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    t = time_fn(lambda: f(a, b).block_until_ready(), repeats)
    return 2.0 * n ** 3 / t.median_s


_INSTR = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = .*? ([a-z][a-z\-]*)\(", re.M)
_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", re.M)
_INLINED = re.compile(r"(?:calls|to_apply)=%?([\w.\-]+)")
_FREE = {"parameter", "constant", "bitcast", "get-tuple-element", "tuple"}


def hlo_counts(text: str) -> dict[str, int]:
    """Op counts of a compiled HLO module's text (`jax.jit(f).lower(...).compile().as_text()`):
    gathers (anywhere, fused or not), fusions (fusion ops the runtime launches) and ops (every
    instruction of the computations the runtime steps through: the entry and loop bodies, not
    the insides of fusions and reductions; parameters, constants, bitcasts and tuple plumbing
    left out). A proxy for a layout's cost that does not depend on timing."""
    inlined = set(_INLINED.findall(text))
    counts = {"gathers": 0, "fusions": 0, "ops": 0}
    heads = list(_COMP.finditer(text))
    for i, head in enumerate(heads):
        body = text[head.end():heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        ops = _INSTR.findall(body)
        counts["gathers"] += sum(op == "gather" for op in ops)
        if head.group(1) in inlined:
            continue
        counts["fusions"] += sum(op == "fusion" for op in ops)
        counts["ops"] += sum(op not in _FREE for op in ops)
    return counts


def compiled_cost(fn, *args, flop_fn=None) -> dict[str, float]:
    """{"flops": per call, "peak_bytes": arguments + outputs + temporaries, and `hlo_counts`}
    from XLA's analysis of `jax.jit(fn)` on `args`.

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
    return {"flops": flops, "peak_bytes": peak, **hlo_counts(compiled.as_text())}


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


def machine() -> str:
    """The machine in words: processor, cores, OS, jax version."""
    proc = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            proc = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                        proc)
    except OSError:
        pass
    return (f"{proc}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"python {platform.python_version()}, jax {jax.__version__}")


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on every OS
        return []


def _max_rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) if a.size else 0.0


def run(models=("deepfm", "dcnv2"), batch_sizes=(1, 64, 1024, 8192), repeats: int = 20,
        use_torch: bool = True, progress: bool = True, info: FeatureInfo | None = None,
        torch_compile: bool = True,
        mlp: tuple[int, ...] = (400, 400, 400), use_onnx: bool = True) -> dict:
    """All measurements as a dict: "rows" (one per model, form, layout and batch size; the torch
    peer's figures, measured once per model, form and batch size, sit in each of its rows),
    "dispatch" (per-call times at batch 1 and 64), the machine, its load and its ceiling."""
    info = criteo_like_info() if info is None else info
    least = min(0.2, 0.02 * repeats)   # seconds a function runs in all; a smoke run (1) a tenth
    device = jax.devices()[0]
    load_start = _load()
    ceiling = matmul_ceiling()
    torch_peer = None
    if use_torch:
        try:
            from afm_jax.lab import bench_torch
            torch_peer = bench_torch
        except ImportError:
            torch_peer = None
    ort = _ort() if use_onnx else None
    rows, dispatch = [], []
    total = len(models) * (1 + len(AFM_FORMS)) * len(batch_sizes)
    bar = tqdm(total=total, desc="bench", disable=not progress)
    for name in models:
        model = build_model(name, info, mlp=mlp)
        params = _lively(model.init(jax.random.key(0), jnp.zeros(len(info.cat_names), jnp.int32),
                                    jnp.zeros(0))["params"])
        forms = compressed_forms(model, params, info)
        scorer = make_scorer(model)
        logits, flat_logits = logits_fn(model, default_chunk_rows()), logits_fn(model)
        for form, host in forms.items():
            layouts = {"per-field": jax.device_put(host),
                       "packed": jax.device_put(pack(model, host))}
            bound = bind_scorer(model, host)
            with tempfile.TemporaryDirectory() as tmp:
                exported = load_exported(export(model, host, Path(tmp) / "export"))
            torch_models = (torch_peer.build(name, info, host, compile=torch_compile)
                            if torch_peer else None)
            session = ort_session(to_onnx(model, host)) if ort else None
            for bs in batch_sizes:
                batch = jax.device_put(random_batch(info, bs, seed=bs))
                live = np.asarray(scorer(layouts["packed"], batch))
                agree = {"per-field": _max_rel_diff(scorer(layouts["per-field"], batch), live),
                         "packed": 0.0, "bound": _max_rel_diff(bound(batch), live),
                         "exported": _max_rel_diff(exported(batch["cat"], batch["num"]), live)}
                fns = {lay: (lambda s=scorer, p=p, b=batch: s(p, b).block_until_ready())
                       for lay, p in layouts.items()}
                fns["bound"] = lambda f=bound, b=batch: f(b).block_until_ready()
                fns["exported"] = lambda f=exported, b=batch: f(b["cat"], b["num"]).block_until_ready()
                t = time_interleaved(fns, repeats, min_seconds=least)
                if torch_models is not None:
                    # torch in a pass of its own: its idle threads slow JAX calls timed in
                    # one loop with it (experiments/results/torch_interleave.md)
                    t.update(time_interleaved({f"torch_{k}": f for k, f in torch_peer.callables(
                        torch_models, batch).items()}, repeats, min_seconds=least))
                if session is not None:   # its spinning threads, too, would slow JAX's calls
                    feeds = {"cat": np.asarray(batch["cat"]), "num": np.asarray(batch["num"])}
                    agree["ort"] = _max_rel_diff(session.run(["score"], feeds)[0], live)
                    t.update(time_interleaved(
                        {"ort": lambda s=session, f=feeds: s.run(["score"], f)}, repeats,
                        min_seconds=least))
                costs = {lay: compiled_cost(logits, p, batch, flop_fn=flat_logits)
                         for lay, p in layouts.items()}
                peer = {}
                for k in ("torch_eager", "torch_compiled", "ort"):
                    if k in t:
                        peer[f"{k}_rows_s"] = t[k].rows_per_s(bs)
                        peer[f"{k}_spread"] = t[k].spread
                for lay in LAYOUTS:
                    c = costs.get(lay, costs["packed"])   # bound and exported run packed params
                    row = {"model": name, "form": form, "layout": lay, "batch": bs,
                           "params": count_params(host), "jax_rows_s": t[lay].rows_per_s(bs),
                           "jax_spread": t[lay].spread, "max_rel_diff_vs_packed": agree[lay],
                           "flops_per_row": c["flops"] / bs,
                           "flop_rate": c["flops"] / t[lay].median_s,
                           "ceiling_fraction": c["flops"] / t[lay].median_s / ceiling,
                           "peak_bytes": c["peak_bytes"], "gathers": c["gathers"],
                           "fusions": c["fusions"], "ops": c["ops"],
                           "load": _load(), **peer}
                    if "ort" in agree:
                        row["ort_max_rel_diff"] = agree["ort"]
                    if form == "original" and lay == "packed" and bs == max(batch_sizes):
                        row["stats_rows_s"] = _stats_rate(model, host, info, bs, repeats)
                    rows.append(row)
                if bs in DISPATCH_BATCHES:
                    dispatch.append({"model": name, "form": form, "batch": bs,
                                     **dispatch_costs(scorer, layouts, bound, logits, batch,
                                                      repeats)})
                bar.update(1)
    bar.close()
    return {"device": f"{device.platform}: {device.device_kind}", "machine": machine(),
            "load_start": load_start, "load_end": _load(), "ceiling_flops": ceiling,
            "rows": rows, "dispatch": dispatch,
            "torch": None if torch_peer is None else torch_peer.version(),
            "onnxruntime": None if ort is None else ort.__version__}


def _ort():
    """onnxruntime, or None where the [onnx] extra is absent."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def ort_session(proto, threads: int = 2):
    """An ONNX Runtime CPU session of an ONNX model proto with `threads` intra-op threads (2:
    every benchmark's setting, the cores of the machines they ran on)."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(proto.SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])


def dispatch_costs(scorer, layouts: dict[str, Any], bound, logits, batch, repeats: int) -> dict:
    """Per-call seconds of the live scorer with per-field and packed params, `bind_scorer`, an
    ahead-of-time compiled call (`jax.jit(f).lower(...).compile()`) with the params as a pytree
    and as a flat list of leaves, and a trivial program (one output row per input row) taking
    the same params, per layout: the dispatch floor. Timed interleaved; plus the params leaves
    each call passes."""
    packed = layouts["packed"]
    leaves, treedef = jax.tree_util.tree_flatten(packed)

    def probs(params, b):
        return jax.nn.sigmoid(logits(params, b))

    def probs_flat(flat, cat, num):
        return probs(jax.tree_util.tree_unflatten(treedef, flat), {"cat": cat, "num": num})

    def floor(params, b):   # reads one leaf, so every leaf is still an input of the call
        first = jax.tree_util.tree_leaves(params)[0]
        return b["cat"][:, 0].astype(jnp.float32) + 0.0 * first.reshape(-1)[0]

    aot = jax.jit(probs).lower(packed, batch).compile()
    aot_flat = jax.jit(probs_flat).lower(leaves, batch["cat"], batch["num"]).compile()
    floor_jit = jax.jit(floor)
    cat, num = batch["cat"], batch["num"]
    fns = {"per-field": lambda: scorer(layouts["per-field"], batch).block_until_ready(),
           "packed": lambda: scorer(packed, batch).block_until_ready(),
           "bound": lambda: bound(batch).block_until_ready(),
           "aot": lambda: aot(packed, batch).block_until_ready(),
           "aot_flat": lambda: aot_flat(leaves, cat, num).block_until_ready(),
           "floor_per-field": lambda: floor_jit(layouts["per-field"], batch).block_until_ready(),
           "floor_packed": lambda: floor_jit(packed, batch).block_until_ready()}
    # at least 30 rounds and 0.3 s a function from repeats=3 on (the sub-0.1 ms calls need
    # them); a smoke run (repeats 1, the tests) takes a tenth of that
    t = time_interleaved(fns, max(repeats, min(30, 10 * repeats)), min_block_s=0.005,
                         min_seconds=min(0.3, 0.1 * repeats))
    out = {f"{k}_s": v.median_s for k, v in t.items()}
    out.update({f"{k}_spread": v.spread for k, v in t.items()})
    out["leaves_per-field"] = len(jax.tree_util.tree_leaves(layouts["per-field"]))
    out["leaves_packed"] = len(leaves)
    return out


def _stats_rate(model, params, info, batch_size: int, repeats: int, n_batches: int = 16) -> float:
    """Rows/s of a whole statistics pass over `n_batches` device-resident batches (warm)."""
    batches = [jax.device_put(random_batch(info, batch_size, seed=7 + i))
               for i in range(n_batches)]
    collect_stats(model, params, batches[:1], progress=False)  # compile
    t = time_fn(lambda: collect_stats(model, params, batches, progress=False),
                max(3, repeats // 5), warmup=1)
    return n_batches * batch_size / t.median_s


# ---------------------------------------------------------------------------------- report

def _num(x: float, fmt: str) -> str:
    return "-" if x is None or x != x else fmt.format(x)   # x != x: NaN


def _index(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["model"], r["form"], r["layout"], r["batch"]): r for r in rows}


def goals(result: dict) -> list[tuple[str, bool | None, str]]:
    """The scoring goals of issue 17, each as (goal, met (None: not measured), figures).
    "jax" is the live scorer with packed params (what `predict` runs)."""
    rows = [r for r in result["rows"] if r.get("layout", "packed") == "packed"]
    by = {(r["model"], r["form"], r["batch"]): r for r in rows}
    out: list[tuple[str, bool | None, str]] = []

    def vs_compiled(select, floor: float, title: str) -> None:
        cells = [r for r in rows if select(r) and "torch_compiled_rows_s" in r]
        if not cells:
            out.append((title, None, "torch.compile not measured"))
            return
        ratios = [(r["jax_rows_s"] / r["torch_compiled_rows_s"], r) for r in cells]
        bad = [(x, r) for x, r in ratios if x < floor]
        worst = min(ratios, key=lambda xr: xr[0])
        figs = (f"min {worst[0]:.2f}x ({worst[1]['model']}, {worst[1]['form']}, batch "
                f"{worst[1]['batch']})")
        if bad:
            figs += "; below: " + ", ".join(f"{r['model']} {r['form']} b{r['batch']} {x:.2f}x"
                                            for x, r in bad)
        out.append((title, not bad, figs))

    vs_compiled(lambda r: r["form"] != "original" and r["batch"] in (1024, 8192), 1.0,
                "every AFM form >= 1.0x torch.compile at batch 1024 and 8192")
    vs_compiled(lambda r: r["form"] == "original" and r["batch"] in (1024, 8192), 1.2,
                "originals >= 1.2x torch.compile at batch 1024 and 8192")
    vs_compiled(lambda r: r["batch"] == 64, 1.0, "every form >= 1.0x torch.compile at batch 64")
    def at_least(title: str, ratios: list, floor: float, below: str = "below") -> None:
        """(title, every ratio >= floor, the cells below it or the minimum), when measured."""
        if not ratios:
            return
        bad = [(x, r) for x, r in ratios if x < floor]
        figs = ", ".join(f"{r['model']} {r['form']} b{r['batch']} {x:.2f}x" for x, r in bad)
        out.append((title, not bad, f"{below}: {figs}" if bad else
                    f"min {min(x for x, _ in ratios):.2f}x"))

    at_least("compressed forms (rank 32) >= 3x the original's rows/s",
             [(r["jax_rows_s"] / by[(r["model"], "original", r["batch"])]["jax_rows_s"], r)
              for r in rows if "r32" in r["form"] and (r["model"], "original", r["batch"]) in by],
             3.0)
    ort = [r for r in rows if "ort_rows_s" in r]
    base = {(r["model"], r["batch"]): r["ort_rows_s"] for r in ort if r["form"] == "original"}
    at_least("ONNX Runtime on every compressed form >= ONNX Runtime on the original, every batch",
             [(r["ort_rows_s"] / base[(r["model"], r["batch"])], r) for r in ort
              if r["form"] != "original" and (r["model"], r["batch"]) in base], 1.0)
    at_least("the faster of {JAX live, ONNX Runtime} >= 1.0x torch.compile, every form and batch",
             [(max(r["jax_rows_s"], r["ort_rows_s"]) / r["torch_compiled_rows_s"], r)
              for r in ort if "torch_compiled_rows_s" in r], 1.0)
    idx = _index(result["rows"])
    at_least("exported scorer within 10 % of the live one at every batch size",
             [(r["jax_rows_s"] / idx[(r["model"], r["form"], "packed", r["batch"])]["jax_rows_s"], r)
              for r in result["rows"] if r.get("layout") == "exported"], 0.9, "below 0.90x")
    return out


def to_markdown(result: dict, command: str) -> str:
    rows = result["rows"]
    has_torch = result["torch"] is not None
    idx = _index(rows)
    load = lambda xs: " / ".join(f"{x:.2f}" for x in xs) if xs else "n/a"  # noqa: E731
    lines = [f"# Scoring benchmark ({result['device']})", "",
             f"Command: `{command}`  ",
             f"Machine: {result.get('machine', '?')}  ",
             f"Load average (1 / 5 / 15 min): {load(result.get('load_start', []))} at the start, "
             f"{load(result.get('load_end', []))} at the end (other jobs share the machine: "
             "compare within a row, not across runs)  ",
             f"Matrix-product ceiling (float32, 2048^3, jax): "
             f"{result['ceiling_flops'] / 1e9:,.1f} GFLOP/s.", "",
             "Models: 39 fields x 16, MLP 400-400-400 (paper configuration); random valid ids. "
             "AFM forms: every MLP layer (DCNv2: and every cross layer) at rank 64 or 32; the "
             "last form also compresses every embedding to rank 8 (folded into the first layer). "
             "Layouts: *per-field* = `make_scorer(model)(params, batch)` with one table per "
             "field; *packed* = the same scorer on `pack(model, params)` (what `predict` runs; "
             "the *live* scorer below); *bound* = `bind_scorer(model, params)(batch)`; "
             "*exported* = `load_exported(export(model, params, dir))(cat, num)`. "
             "All scorers of one row are timed interleaved, round after round, and the torch "
             "peer right after them in a loop of its own (in one loop with torch, JAX ran "
             "0.51-0.87x its own speed: torch_interleave.md); rows/s are medians of the rounds after warm-up, spread = (p90 - p10) / "
             "median. Gathers / fusions / ops: counts in the compiled HLO (per-field -> packed; "
             "ops = instructions the runtime steps through, outside fusions), which do not "
             "depend on timing. "
             + (f"PyTorch {result['torch']}: the same models and params in plain torch, eager "
                "and torch.compile. " if has_torch else "PyTorch not installed: no peer rows. ")
             + (f"ONNX Runtime {result['onnxruntime']} (CPU, 2 intra-op threads): the form's "
                "`to_onnx` graph (ids in), timed in a loop of its own like torch."
                if result.get("onnxruntime") else "onnxruntime not installed: no ORT columns."),
             ""]
    verdicts = goals(result)
    if verdicts:
        lines += ["## Goals", ""]
        for title, met, figs in verdicts:
            mark = "not measured" if met is None else ("met" if met else "**missed**")
            lines.append(f"- {title}: {mark} ({figs})")
        lines.append("")
    header = ["form", "batch", "params", "per-field rows/s", "packed rows/s (spread)",
              "packed / per-field", "bound rows/s", "bound / live", "exported rows/s",
              "exported / live"]
    if has_torch:
        header += ["torch eager rows/s", "torch.compile rows/s", "live / eager",
                   "live / compile"]
    has_ort = any("ort_rows_s" in r for r in rows)
    if has_ort:
        header += ["ORT rows/s", "ORT / live", "ORT / ORT original"]
    header += ["vs original", "gathers", "fusions", "ops", "GFLOP/s (live)", "peak MiB"]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += [f"## {model}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        keys = [k for k in idx if k[0] == model and k[2] == "packed"]
        for _, form, _, bs in keys:
            get = {lay: idx.get((model, form, lay, bs)) for lay in LAYOUTS}
            live, pf = get["packed"], get["per-field"]
            orig = idx[(model, "original", "packed", bs)]
            rate = {lay: r["jax_rows_s"] if r else float("nan") for lay, r in get.items()}.get
            cells = [form, str(bs), f"{live['params']:,}", _num(rate("per-field"), "{:,.0f}"),
                     f"{live['jax_rows_s']:,.0f} ({live['jax_spread']:.2f})",
                     _num(live["jax_rows_s"] / rate("per-field"), "{:.2f}x"),
                     _num(rate("bound"), "{:,.0f}"),
                     _num(rate("bound") / live["jax_rows_s"], "{:.2f}x"),
                     _num(rate("exported"), "{:,.0f}"),
                     _num(rate("exported") / live["jax_rows_s"], "{:.2f}x")]
            if has_torch:
                eager = live.get("torch_eager_rows_s", float("nan"))
                comp = live.get("torch_compiled_rows_s", float("nan"))
                cells += [_num(eager, "{:,.0f}"), _num(comp, "{:,.0f}"),
                          _num(live["jax_rows_s"] / eager, "{:.2f}x"),
                          _num(live["jax_rows_s"] / comp, "{:.2f}x")]
            if has_ort:
                o = live.get("ort_rows_s", float("nan"))
                cells += [_num(o, "{:,.0f}"), _num(o / live["jax_rows_s"], "{:.2f}x"),
                          _num(o / orig.get("ort_rows_s", float("nan")), "{:.2f}x")]
            pair = {k: f"{pf[k]} -> {live[k]}" if pf else str(live[k])
                    for k in ("gathers", "fusions", "ops")}
            cells += [f"{live['jax_rows_s'] / orig['jax_rows_s']:.2f}x", pair["gathers"],
                      pair["fusions"], pair["ops"], f"{live['flop_rate'] / 1e9:,.1f}",
                      f"{live['peak_bytes'] / 2**20:,.1f}" if live["peak_bytes"] >= 0 else "-"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    disp = result.get("dispatch", [])
    if disp:
        kinds = ["per-field", "packed", "bound", "aot", "aot_flat", "floor_per-field",
                 "floor_packed"]
        lines += ["## Dispatch at small batches", "",
                  "Per-call microseconds, timed interleaved: the live scorer with per-field and "
                  "packed params, `bind_scorer`, an ahead-of-time compiled call "
                  "(`jax.jit(f).lower(packed, batch).compile()`) with the params as a pytree "
                  "(aot) and as a flat list of leaves (aot flat), and the dispatch floor: a "
                  "trivial jitted program taking the same params (per-field / packed). Leaves: "
                  "params arrays passed per call (per-field / packed).", "",
                  "| model | form | batch | leaves | " + " | ".join(
                      k.replace("_", " ") + " us" for k in kinds) + " | aot flat / packed |",
                  "|" + "---|" * (len(kinds) + 5)]
        for d in disp:
            lines.append(
                f"| {d['model']} | {d['form']} | {d['batch']} | {d['leaves_per-field']} / "
                f"{d['leaves_packed']} | "
                + " | ".join(f"{d[k + '_s'] * 1e6:,.0f}" for k in kinds)
                + f" | {d['aot_flat_s'] / d['packed_s']:.2f}x |")
        lines.append("")
    stats = [r for r in rows if "stats_rows_s" in r]
    if stats:
        lines += ["Statistics pass (all sites, batch of the largest size) against the "
                  "original scorer (live, packed):", ""]
        for r in stats:
            lines.append(f"- {r['model']}: {r['stats_rows_s']:,.0f} rows/s = "
                         f"{r['stats_rows_s'] / r['jax_rows_s']:.2f}x the scorer's "
                         f"{r['jax_rows_s']:,.0f} rows/s")
    return "\n".join(lines) + "\n"
