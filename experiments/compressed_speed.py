"""Compressed products at the original's FLOP rate (issue 24, items 1 and 2): where the time of
the AFM scorers goes on a CPU, what each candidate fix buys, and torch.compile on the same forms.

    python experiments/compressed_speed.py [--batch-sizes 64,1024,8192] [--repeats 8]
        [--no-flags] [--no-torch] [--out experiments/results/compressed_speed]

Sections, every one timed in ONE process with its variants interleaved round after round
(`lab.bench.time_interleaved`), so the figures are ratios under the same load:

1. products alone: the MLP 624-400-400-400 (DeepFM's, 39 fields x 16) full and as rank-32 factor
   pairs, GFLOP/s; a rank sweep of one 400 -> 400 layer against the full layer (where a pair
   stops paying: `nn.merge_costly_pairs`).
2. the scorers on the Criteo sample (../shared/data, DeepFM and DCNv2, MLP 400-400-400, random
   params, AFM statistics from the sample's rows): original, AFM dense r64 / r32 /
   r32 + emb r8, AFM dense r32 + int8 (`quantize`), and a rank-160 form with its pairs merged
   back; the live scorer (`make_scorer`, packed, 1024-row chunks), the scorer without chunks and
   with 2048-row chunks, and torch.compile (and eager) running the same params.
3. where the time goes: per-fusion times of the compiled scorer (jax.profiler) at batch 1024
   for AFM dense r32 and AFM dense r32 + int8, grouped into gathers, products and the rest.
4. XLA CPU flags: each flag set in a subprocess (flags are read at start), the sets alternated
   twice; rows/s of the original and AFM dense r32 DeepFM scorers.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from common import RESULTS, command_line, load, machine, write_results

from afm_jax.compress import collect_stats, compress, fixed_plan
from afm_jax.inference import default_chunk_rows, logits_fn, make_scorer
from afm_jax.lab.bench import _lively, time_interleaved
from afm_jax.models import build_model
from afm_jax.nn import merge_costly_pairs
from afm_jax.packing import pack
from afm_jax.quantize import quantize

MLP = (400, 400, 400)
FORMS = {"AFM dense r64": 64, "AFM dense r32": 32, "AFM dense r32 + emb r8": 32,
         "AFM dense r160": 160}
FLAG_SETS = {
    "default": "",
    "ynn +eltwise": "--xla_cpu_experimental_ynn_fusion_type=+eltwise",
    "oneDNN": "--xla_cpu_use_onednn=true",
    "XNNPACK dots (ynn off)": "--xla_cpu_experimental_xnn_fusion_type=dot "
                              "--xla_cpu_experimental_ynn_fusion_type=-dot",
}


def _block(fn):
    return lambda: jax.block_until_ready(fn())


# ------------------------------------------------------------------------ 1. products alone

def products(batch_sizes, repeats: int) -> dict:
    rng = np.random.default_rng(0)

    def mk(*s):
        return jnp.asarray(rng.normal(size=s).astype(np.float32) * 0.05)

    dims = (624, *MLP)
    full = [(mk(a, b), mk(b)) for a, b in zip(dims[:-1], dims[1:])]
    pair = [(mk(a, 32), mk(32), mk(32, b), mk(b)) for a, b in zip(dims[:-1], dims[1:])]

    def run_full(x):
        for w, b in full:
            x = jax.nn.relu(x @ w + b)
        return x

    def run_pair(x):
        for u, c, v, b in pair:
            x = jax.nn.relu((x @ u + c) @ v + b)
        return x

    flops = {"full": sum(2 * a * b for a, b in zip(dims[:-1], dims[1:])),
             "r32 pair": sum(2 * 32 * (a + b) for a, b in zip(dims[:-1], dims[1:]))}
    jitted = {"full": jax.jit(run_full), "r32 pair": jax.jit(run_pair)}
    mlp = []
    for bs in batch_sizes:
        x = mk(bs, 624)
        fns = {k: _block(lambda f=f, x=x: f(x)) for k, f in jitted.items()}
        t = time_interleaved(fns, repeats)
        mlp += [{"batch": bs, "form": k, "ms": v.median_s * 1e3,
                 "gflops": bs * flops[k] / v.median_s / 1e9} for k, v in t.items()]
    w, b = mk(400, 400), mk(400)
    sweep_fns = {"full": jax.jit(lambda x: jax.nn.relu(x @ w + b))}
    for k in (32, 48, 64, 96, 128, 160, 200):
        u, c, v = mk(400, k), mk(k), mk(k, 400)
        sweep_fns[f"r{k}"] = jax.jit(lambda x, u=u, c=c, v=v: jax.nn.relu((x @ u + c) @ v + b))
    sweep = []
    for bs in (64, 1024):
        x = mk(bs, 400)
        t = time_interleaved({k: _block(lambda f=f, x=x: f(x)) for k, f in sweep_fns.items()},
                             repeats)
        base = t["full"].median_s
        sweep += [{"batch": bs, "form": k, "us": v.median_s * 1e6, "vs_full": v.median_s / base,
                   "flop_fraction": 1.0 if k == "full" else int(k[1:]) * 800 / 160_000}
                  for k, v in t.items()]
    return {"mlp": mlp, "sweep": sweep}


# ------------------------------------------------------------------- 2. scorers on Criteo

def _batch(split, n: int, start: int = 0) -> dict:
    idx = (np.arange(n) + start) % len(split)
    return {"cat": np.asarray(split.cat)[idx], "num": np.asarray(split.num)[idx]}


def criteo_forms(name: str, ds) -> tuple:
    """(model, per-field params by form name) on the Criteo sample's fields."""
    info = ds.info
    model = build_model(name, info, mlp=MLP)
    params = _lively(model.init(jax.random.key(0), jnp.zeros(len(info.cat_names), jnp.int32),
                                jnp.zeros(len(info.num_names)))["params"])
    stats = collect_stats(model, params, [jax.device_put(_batch(ds.train, 4096, 4096 * i))
                                          for i in range(4)], progress=False)
    dense = [s for s in stats if s.startswith(("mlp/", "cross/"))]
    out = {"original": params}
    for form, rank in FORMS.items():
        plan = fixed_plan(params, stats, rank, dense)
        if "emb" in form:
            plan = {**plan, **fixed_plan(params, stats, 8, ["embed"])}
            out[form] = compress(params, stats, plan, model=model)
        else:
            out[form] = compress(params, stats, plan)
    out["AFM dense r32 + int8"] = quantize(out["AFM dense r32"])
    out["AFM dense r160 merged"] = merge_costly_pairs(out["AFM dense r160"], 0.75)
    return model, jax.tree.map(np.asarray, out)


def _probs(logits):
    return jax.jit(lambda p, b: jax.nn.sigmoid(logits(p, b)))


def scorers(ds, models, batch_sizes, repeats: int, use_torch: bool, passes: int = 2) -> list[dict]:
    """Rows/s of every form's scorers per model and batch size. JAX and torch are timed in
    separate passes (each interleaving all forms and variants of its framework), the passes
    alternated `passes` times and the best pass kept: in one interleaved loop the idle
    threads of one framework's pool slow the other's next calls on 2 cores."""
    peer = None
    if use_torch:
        try:
            from afm_jax.lab import bench_torch as peer
        except ImportError:
            peer = None
    rows = []
    for name in models:
        model, forms = criteo_forms(name, ds)
        run = {"live": make_scorer(model), "no chunks": _probs(logits_fn(model)),
               "2048-row chunks": _probs(logits_fn(model, 2048))}
        packed = {f: jax.device_put(pack(model, h)) for f, h in forms.items()}
        peers = ({f: peer.build(name, ds.info, h, compile=True) for f, h in forms.items()
                  if "int8" not in f} if peer is not None else {})
        for bs in batch_sizes:
            batch = jax.device_put(_batch(ds.test, bs))
            chunks = default_chunk_rows() is not None and bs > default_chunk_rows()
            jax_fns = {(f, k): _block(lambda fn=fn, p=p, b=batch: fn(p, b))
                       for f, p in packed.items() for k, fn in run.items()
                       if k == "live" or chunks}
            torch_fns = {(f, f"torch {k}"): fn for f, m in peers.items()
                         for k, fn in peer.callables(m, batch).items()}
            best: dict[tuple, float] = {}
            for _ in range(passes):
                for fns in (jax_fns, torch_fns):
                    if fns:
                        for key, t in time_interleaved(fns, repeats).items():
                            best[key] = max(best.get(key, 0.0), bs / t.median_s)
            for f in forms:
                rows.append({"model": name, "form": f, "batch": bs,
                             **{f"{k} rows/s": v for (g, k), v in best.items() if g == f}})
    return rows


# -------------------------------------------------------------------- 3. where the time goes

def _kind(op: str) -> str:
    if "gather" in op:
        return "gathers"
    if op.startswith(("ynn_fusion", "dot", "xnn_fusion")) or "convolution" in op:
        return "products and reductions (ynn)"
    if op.startswith("wrapped_convert"):
        return "kernel int8 -> f32"
    return "elementwise (bias, relu, scales)"


def profile(ds, forms: tuple[str, ...] = ("AFM dense r32", "AFM dense r32 + int8"),
            batch: int = 1024, calls: int = 20) -> dict:
    model, host = criteo_forms("deepfm", ds)
    f = jax.jit(logits_fn(model))
    b = jax.device_put(_batch(ds.test, batch))
    out = {}
    for form in forms:
        p = jax.device_put(pack(model, host[form]))
        ops = set()
        for line in f.lower(p, b).compile().as_text().splitlines():
            if " = " in line and "fusion(" in line or " dot(" in line:
                ops.add(line.split("=")[0].strip().lstrip("%").replace("ROOT ", ""))
        for _ in range(3):
            jax.block_until_ready(f(p, b))
        with tempfile.TemporaryDirectory() as tmp:
            with jax.profiler.trace(tmp, create_perfetto_trace=True):
                for _ in range(calls):
                    jax.block_until_ready(f(p, b))
            path = glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)[0]
            events = json.load(gzip.open(path))["traceEvents"]
        per_op = collections.Counter()
        for e in events:
            if e.get("ph") == "X" and e.get("name") in ops:
                per_op[e["name"]] += e.get("dur", 0) / calls
        kinds = collections.Counter()
        for op, us in per_op.items():
            kinds[_kind(op)] += us
        out[form] = {"kinds": dict(kinds), "top": per_op.most_common(6)}
    return out


# ------------------------------------------------------------------------- 4. XLA CPU flags

_FLAG_CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import jax
from compressed_speed import _batch, _block, criteo_forms
from common import load
from afm_jax.inference import make_scorer
from afm_jax.lab.bench import time_interleaved
from afm_jax.packing import pack
ds = load("criteo", progress=False)
model, host = criteo_forms("deepfm", ds)
live = make_scorer(model)
out = {{}}
for bs in (1024, 8192):
    b = jax.device_put(_batch(ds.test, bs))
    fns = {{f: _block(lambda p=jax.device_put(pack(model, host[f])), b=b: live(p, b))
           for f in ("original", "AFM dense r32")}}
    out.update({{f"{{k}}|{{bs}}": bs / v.median_s for k, v in time_interleaved(fns, 5).items()}})
print(json.dumps(out))
"""


def flags(rounds: int = 2) -> dict:
    code = _FLAG_CHILD.format(here=os.path.dirname(os.path.abspath(__file__)))
    got: dict[str, list[dict]] = {k: [] for k in FLAG_SETS}
    for _ in range(rounds):
        for name, value in FLAG_SETS.items():
            env = {**os.environ, "XLA_FLAGS": value}
            proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode:
                got[name].append({"error": proc.stderr.strip().splitlines()[-1][:200]})
                continue
            got[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return got


# -------------------------------------------------------------------------------- report

def _f(x, fmt="{:,.0f}"):
    return "-" if x is None else fmt.format(x)


def to_markdown(r: dict) -> str:
    lines = ["# Compressed scorers on a CPU: where the time goes, what pays, torch.compile beside",
             "", f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
             f"ISA: {r['isa']}  ",
             f"Load average at start / end: {r['load'][0]} / {r['load'][1]} (2 cores shared "
             "with other jobs: read ratios within a table, not absolute figures across runs)",
             ""]
    p = r["products"]
    lines += ["## 1. The products alone", "",
              "MLP 624-400-400-400 with relu, full and as rank-32 factor pairs (bias after each "
              "factor), jitted, timed interleaved.", "",
              "| batch | form | ms | GFLOP/s | pair time / full time |", "|---|---|---:|---:|---:|"]
    by = {(x["batch"], x["form"]): x for x in p["mlp"]}
    for (bs, form), x in by.items():
        ratio = x["ms"] / by[(bs, "full")]["ms"]
        lines.append(f"| {bs} | {form} | {x['ms']:.3f} | {x['gflops']:.0f} | {ratio:.2f} |")
    lines += ["", "One layer 400 -> 400 (+ bias, relu) as a pair of rank k against the full "
              "layer: time / full time, and the pair's FLOPs as a fraction of the full layer's.",
              "", "| batch | " + " | ".join(x["form"] for x in p["sweep"] if x["batch"] == 64)
              + " |", "|---|" + "---:|" * sum(x["batch"] == 64 for x in p["sweep"])]
    for bs in (64, 1024):
        lines.append(f"| {bs} | " + " | ".join(
            f"{x['vs_full']:.2f}x ({x['flop_fraction']:.2f})" for x in p["sweep"]
            if x["batch"] == bs) + " |")
    lines += ["", "## 2. Scorers on the Criteo sample", "",
              "Criteo sample (`criteo/train.tsv`, min_count 10: 39 fields, 17,348 table rows), "
              "MLP 400-400-400, random params; AFM forms from statistics of 16,384 sample rows. "
              "*live*: `make_scorer(model)` on packed params (1024-row chunks on a CPU); "
              "*no chunks* / *2048-row chunks*: the same scorer with other chunk sizes; "
              "torch: `afm_jax.lab.bench_torch` on the same params (no int8 peer). "
              "*r160 merged*: `nn.merge_costly_pairs(params, flop_fraction=0.75)` on the r160 "
              "form (its 400 -> 400 pairs, 0.80 of the full FLOPs, merge; the default "
              "fraction 1.0 merges only pairs that cost more than the full layer).", ""]
    rows = r["scorers"]
    has = lambda k: any(k in x for x in rows)  # noqa: E731
    cols = [c for c in ("live rows/s", "no chunks rows/s", "2048-row chunks rows/s",
                        "torch eager rows/s", "torch compiled rows/s") if has(c)]
    head = ["model", "form", "batch", *cols, "live / original"]
    if has("torch compiled rows/s"):
        head.append("live / torch.compile")
    lines += ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    orig = {(x["model"], x["batch"]): x["live rows/s"] for x in rows if x["form"] == "original"}
    for x in rows:
        cells = [x["model"], x["form"], str(x["batch"])] + [_f(x.get(c)) for c in cols]
        cells.append(f"{x['live rows/s'] / orig[(x['model'], x['batch'])]:.2f}x")
        if has("torch compiled rows/s"):
            c = x.get("torch compiled rows/s")
            cells.append("-" if c is None else f"{x['live rows/s'] / c:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    if r.get("profile"):
        lines += ["", "## 3. Where the time goes (DeepFM, batch 1024, no chunks)", "",
                  "Microseconds per call of the compiled scorer's fusions (jax.profiler trace), "
                  "grouped.", "", "| form | " + " | ".join(
                      sorted({k for v in r["profile"].values() for k in v["kinds"]})) + " | top fusions |",
                  "|---|" + "---:|" * len({k for v in r["profile"].values() for k in v["kinds"]})
                  + "---|"]
        kinds = sorted({k for v in r["profile"].values() for k in v["kinds"]})
        for form, v in r["profile"].items():
            top = ", ".join(f"{op} {us:.0f}" for op, us in v["top"])
            lines.append(f"| {form} | " + " | ".join(
                f"{v['kinds'].get(k, 0):.0f}" for k in kinds) + f" | {top} |")
    if r.get("flags"):
        lines += ["", "## 4. XLA CPU flags (DeepFM on the Criteo sample, live scorer)", "",
                  "Each flag set in its own process, the sets alternated; rows/s per round "
                  "(round 1 / round 2).", "",
                  "| XLA_FLAGS | original b1024 | r32 b1024 | original b8192 | r32 b8192 |",
                  "|---|---:|---:|---:|---:|"]
        for name, runs in r["flags"].items():
            if any("error" in x for x in runs):
                lines.append(f"| {name} | " + " | ".join(["error"] * 4) + " |")
                continue
            lines.append(f"| {name} (`{FLAG_SETS[name] or 'none'}`) | "
                         + " | ".join(" / ".join(f"{x[k] / 1e3:.0f}k" for x in runs) for k in ("original|1024", "AFM dense r32|1024",
                                                        "original|8192", "AFM dense r32|8192"))
                         + " |")
    lines += ["", "## Findings", "", *findings(r), ""]
    return "\n".join(lines)


def _range(xs) -> str:
    xs = [x for x in xs if x == x]
    return "-" if not xs else f"{min(xs):.2f}-{max(xs):.2f}x"


def findings(r: dict) -> list[str]:
    """The report's findings, computed from the figures (so a rerun states its own)."""
    out = []
    if max(r["load"]) > (os.cpu_count() or 1):
        out.append(f"- **Load average {max(r['load'])} above the {os.cpu_count()} cores during "
                   "this run**: torch's thread pool stalls under contention far more than "
                   "JAX's (torch.compile fell to a few thousand rows/s in some cells), so the "
                   "live / torch.compile ratios of this run overstate JAX's lead; rerun on a "
                   "quiet machine for the peer comparison. The JAX-only ratios (forms, chunks, "
                   "int8, merged pairs: interleaved in one pass) hold.")
    mlp = {(x["batch"], x["form"]): x for x in r["products"]["mlp"]}
    eff = [mlp[(b, "r32 pair")]["gflops"] / mlp[(b, "full")]["gflops"]
           for b, f in mlp if f == "full"]
    out.append(f"- Products alone: the rank-32 MLP runs at {_range(eff)} the full MLP's GFLOP/s "
               "(skinny products and a second bias pass per layer), yet takes "
               f"{_range([mlp[(b, 'r32 pair')]['ms'] / mlp[(b, 'full')]['ms'] for b, f in mlp if f == 'full'])}"
               " of its time.")
    rows = r["scorers"]
    get = {(x["model"], x["form"], x["batch"]): x for x in rows}
    afm = ("AFM dense r64", "AFM dense r32", "AFM dense r32 + emb r8")
    for bs in sorted({x["batch"] for x in rows}):
        vs = [x["live rows/s"] / x["torch compiled rows/s"] for x in rows
              if x["batch"] == bs and x["form"] in afm and x.get("torch compiled rows/s")]
        orig = [x["live rows/s"] / x["torch compiled rows/s"] for x in rows
                if x["batch"] == bs and x["form"] == "original" and x.get("torch compiled rows/s")]
        r32 = [get[(m, "AFM dense r32", bs)]["live rows/s"] / get[(m, "original", bs)]["live rows/s"]
               for m in {x["model"] for x in rows}]
        out.append(f"- Batch {bs}: AFM forms (r64, r32, r32 + emb r8) live / torch.compile "
                   f"{_range(vs)}, originals {_range(orig)}; AFM dense r32 / original "
                   f"{_range(r32)}.")
    big = [x for x in rows if "no chunks rows/s" in x]
    if big:
        out.append("- Chunks at the largest batch: 1024-row chunks (the default) / no chunks "
                   f"{_range([x['live rows/s'] / x['no chunks rows/s'] for x in big])}; "
                   "2048-row chunks / 1024-row chunks "
                   f"{_range([x['2048-row chunks rows/s'] / x['live rows/s'] for x in big])}.")
    i8 = [get[(m, "AFM dense r32 + int8", b)]["live rows/s"] / get[(m, "AFM dense r32", b)]["live rows/s"]
          for (m, f, b) in get if f == "original"]
    out.append(f"- int8: AFM dense r32 + int8 / AFM dense r32 (float products) {_range(i8)}.")
    mg = [get[(m, "AFM dense r160 merged", b)]["live rows/s"] / get[(m, "AFM dense r160", b)]["live rows/s"]
          for (m, f, b) in get if f == "original"]
    out.append("- Merging pairs of 0.80 of the full FLOPs (`nn.merge_costly_pairs` at 0.75 on "
               f"r160): merged / pairs {_range(mg)}.")
    prof = r.get("profile") or {}
    if "AFM dense r32" in prof:
        k = prof["AFM dense r32"]["kinds"]
        out.append(f"- Profile, AFM dense r32 at batch 1024: gathers {k.get('gathers', 0):.0f} us "
                   f"of {sum(k.values()):.0f} us in fusions ({k.get('gathers', 0) / sum(k.values()):.0%}"
                   "): the embedding gather does not shrink with the rank"
                   + (" and is the largest single fusion of the compressed scorer."
                      if "gather" in prof["AFM dense r32"]["top"][0][0] else "."))
    if "AFM dense r32 + int8" in prof:
        k = prof["AFM dense r32 + int8"]["kinds"]
        out.append("- Profile, AFM dense r32 + int8: the elementwise fusions take "
                   f"{k.get('elementwise (bias, relu, scales)', 0):.0f} us (float: "
                   f"{prof.get('AFM dense r32', {}).get('kinds', {}).get('elementwise (bias, relu, scales)', 0):.0f}"
                   " us): int8 rows converted and multiplied by their row scale, once per "
                   "consumer (DeepFM: the FM term and the MLP). The row scale varies per example "
                   "and field, so it folds into no kernel; the kernels' per-channel scales "
                   "already ride in the bias pass (no pass of their own).")
    if r.get("flags"):
        base = [x for x in r["flags"]["default"] if "error" not in x]
        for name, runs in r["flags"].items():
            ok = [x for x in runs if "error" not in x]
            if name == "default" or not ok or not base:
                continue
            ratios = [np.mean([x[k] for x in ok]) / np.mean([x[k] for x in base]) for k in ok[0]]
            out.append(f"- XLA flags, {name} / default: {_range(ratios)} over the four cells.")
    return out


def _isa() -> str:
    try:
        flags_ = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "unknown"
    return ", ".join(f"{f} {'yes' if f in flags_ else 'no'}"
                     for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="64,1024,8192")
    ap.add_argument("--models", default="deepfm,dcnv2")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--no-flags", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "compressed_speed"))
    args = ap.parse_args()
    bss = tuple(int(b) for b in args.batch_sizes.split(","))
    load0 = os.getloadavg()[0]
    ds = load("criteo", progress=False)
    r = {"command": command_line(), "machine": machine(), "isa": _isa()}
    r["products"] = products(bss, args.repeats)
    r["scorers"] = scorers(ds, args.models.split(","), bss, args.repeats, not args.no_torch)
    r["profile"] = profile(ds)
    r["flags"] = None if args.no_flags else flags()
    r["load"] = (round(load0, 2), round(os.getloadavg()[0], 2))
    write_results(args.out, r, to_markdown(r))


if __name__ == "__main__":
    main()
