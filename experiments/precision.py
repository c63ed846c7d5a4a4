"""Scoring precision on this machine (issue 16, part 2): float32 vs bfloat16 Linear products
(float32 accumulation). Prints the CPU's bf16/int8 ISA flags, the jitted `jnp.dot` rate for
8192x400x400, DeepFM scorer rows/s at batch 8192, and the Criteo-sample DeepFM test AUC and
logloss at both precisions (trained with `afm-jax train`, scored with `afm-jax evaluate
--precision`). Writes experiments/results/precision.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import RESULTS, command_line, machine

ISA_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni")


def isa_flags() -> dict[str, bool]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {f: False for f in ISA_FLAGS}
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    return {f: f in flags for f in ISA_FLAGS}


def median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def dot_rates(repeats: int) -> dict:
    """GFLOP/s of a jitted [8192, 400] @ [400, 400]: float32, and bf16 inputs (cast outside
    the timed call) with float32 accumulation."""
    m, k, n = 8192, 400, 400
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, n)), jnp.float32)
    f32 = jax.jit(jnp.dot)
    low = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    flops = 2 * m * k * n
    out = {}
    for name, fn, args in (("float32", f32, (x, w)), ("bfloat16", low, (xb, wb))):
        s = median_seconds(fn, *args, repeats=repeats)
        out[name] = {"seconds": s, "gflops": flops / s / 1e9}
    return out


def deepfm_rates(batch: int, repeats: int) -> dict:
    """Rows/s of the jitted DeepFM scorer (26 categorical + 13 numeric fields, 16 wide, MLP
    400-400-400, random params, packed) at float32 and bfloat16."""
    from afm_jax.data import FeatureInfo
    from afm_jax.inference import make_scorer, packed_for
    from afm_jax.models import build_model
    from afm_jax.train import init_params

    info = FeatureInfo(cat_names=tuple(f"C{i}" for i in range(1, 27)),
                       vocab_sizes=(10_000,) * 26, num_names=tuple(f"I{i}" for i in range(1, 14)))
    model = build_model("deepfm", info, embed_dim=16, mlp=(400, 400, 400))
    params = init_params(model, info, 0)
    rng = np.random.default_rng(0)
    batch_ = jax.device_put({
        "cat": rng.integers(0, 10_000, (batch, 26)).astype(np.int32),
        "num": rng.normal(size=(batch, 13)).astype(np.float32)})
    out = {}
    for name, dtype in (("float32", None), ("bfloat16", jnp.bfloat16)):
        scorer = make_scorer(model, compute_dtype=dtype)
        p = jax.device_put(packed_for(scorer, params))
        s = median_seconds(scorer, p, batch_, repeats=repeats)
        out[name] = {"seconds": s, "rows_per_s": batch / s}
    return out


def afm_jax(*args: str) -> dict:
    cmd = [sys.executable, "-m", "afm_jax.cli", *args, "--json", "--no-progress"]
    print("$", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def criteo_quality(data: str, model_dir: str, train: bool) -> dict:
    if train or not Path(model_dir, "model.json").is_file():
        afm_jax("train", "--data", f"criteo:{data}", "--model", "deepfm", "--out", model_dir)
    return {p: afm_jax("evaluate", "--model-dir", model_dir, "--split", "test",
                       "--precision", p) for p in ("float32", "bfloat16")}


def to_markdown(r: dict) -> str:
    lines = ["# Scoring precision: float32 vs bfloat16 Linear products", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
             f"Load average at start: {r['load']:.2f}", "",
             "ISA flags (/proc/cpuinfo): " + ", ".join(
                 f"{f} {'yes' if v else 'no'}" for f, v in r["isa"].items()), "",
             "bfloat16 here means the inputs of every Linear product (`nn._affine`) are cast to "
             "bfloat16 and the product accumulates in float32; tables, biases, interactions and "
             "activations stay float32 (`make_scorer(model, compute_dtype=jnp.bfloat16)`, "
             "`afm-jax evaluate|score|export --precision bfloat16`).", "",
             "## Jitted jnp.dot, [8192, 400] @ [400, 400]", "",
             "| inputs | ms | GFLOP/s |", "|---|---:|---:|"]
    for k, v in r["dot"].items():
        lines.append(f"| {k}{' (cast before the call, f32 acc)' if k != 'float32' else ''} | "
                     f"{v['seconds'] * 1e3:.2f} | {v['gflops']:.1f} |")
    d = r["dot"]
    lines += ["", f"bf16 / f32 speed: {d['float32']['seconds'] / d['bfloat16']['seconds']:.2f}x",
              "", f"## DeepFM scorer (39 fields x 16, MLP 400-400-400, random params), "
              f"batch {r['batch']}", "", "| precision | ms / batch | rows/s |", "|---|---:|---:|"]
    for k, v in r["deepfm"].items():
        lines.append(f"| {k} | {v['seconds'] * 1e3:.1f} | {v['rows_per_s']:,.0f} |")
    f = r["deepfm"]
    lines += ["", f"bf16 / f32 speed: {f['float32']['seconds'] / f['bfloat16']['seconds']:.2f}x"]
    if r.get("criteo"):
        lines += ["", "## Criteo sample, DeepFM (default config), test split", "",
                  f"Model: `afm-jax train --data criteo:{r['data']} --model deepfm --out "
                  f"{r['model_dir']} --no-progress`; scored with `afm-jax evaluate --model-dir "
                  f"{r['model_dir']} --split test --precision P`.", "",
                  "| precision | AUC | logloss | rows |", "|---|---:|---:|---:|"]
        for k, v in r["criteo"].items():
            lines.append(f"| {k} | {v['auc']:.6f} | {v['logloss']:.6f} | {v['rows']:,} |")
        c = r["criteo"]
        lines += ["", f"bf16 - f32: AUC {c['bfloat16']['auc'] - c['float32']['auc']:+.2e}, "
                      f"logloss {c['bfloat16']['logloss'] - c['float32']['logloss']:+.2e}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--data", default="/work/shared/data/criteo/train.tsv")
    ap.add_argument("--model-dir", default="/tmp/p/deepfm")
    ap.add_argument("--retrain", action="store_true", help="train even if the model dir exists")
    ap.add_argument("--no-criteo", action="store_true", help="leave out the Criteo AUC/logloss")
    ap.add_argument("--max-load", type=float, default=3.0,
                    help="refuse to time when the 1-minute load average is above this")
    ap.add_argument("--out", default=str(RESULTS / "precision.md"))
    args = ap.parse_args()
    load = os.getloadavg()[0]
    if load >= args.max_load:
        sys.exit(f"load average {load:.2f} >= {args.max_load}: timings would not mean much")
    r = {"command": command_line(), "machine": machine(), "load": load, "isa": isa_flags(),
         "batch": args.batch}
    print("ISA flags:", r["isa"], flush=True)
    r["dot"] = dot_rates(args.repeats)
    print("dot:", r["dot"], flush=True)
    r["deepfm"] = deepfm_rates(args.batch, max(5, args.repeats // 2))
    print("deepfm:", r["deepfm"], flush=True)
    if not args.no_criteo:
        r["data"], r["model_dir"] = args.data, args.model_dir
        r["criteo"] = criteo_quality(args.data, args.model_dir, args.retrain)
    md = to_markdown(r)
    Path(args.out).write_text(md)
    print(md)


if __name__ == "__main__":
    main()
