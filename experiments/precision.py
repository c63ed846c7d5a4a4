"""Scoring precision on this machine (issue 16, part 2): float32, bfloat16 (float32
accumulation) and int8 (int8 x int8 -> int32, for int8-stored kernels) products.

Prints the CPU's bf16/int8 ISA flags and the jitted `jnp.dot` rate of 8192x400x400 at each
precision. Then, on the Criteo-sample DeepFM (`afm-jax train`), every form -- the original,
`afm-jax quantize` (int8 alone), `afm-jax compress --plan P` (AFM) and `compress --plan P --int8`
(AFM + int8), for each plan P -- at every precision it can take: test AUC and logloss (`afm-jax
evaluate --precision`), and rows/s of the jitted scorer on the first `--batch` test rows, every
(form, precision) timed interleaved in one process. Writes experiments/results/precision.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import DATA, RESULTS, command_line, machine

from afm_jax.timing import median_seconds

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


def dot_rates(repeats: int) -> dict:
    """G(FL)OP/s of a jitted [8192, 400] @ [400, 400]: float32, bf16 inputs with float32
    accumulation, int8 inputs with int32 accumulation (inputs cast outside the timed call)."""
    m, k, n = 8192, 400, 400
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, n)), jnp.float32)
    f32 = jax.jit(jnp.dot)
    low = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    i8 = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.int32))
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    xi, wi = jnp.clip(x * 30, -127, 127).astype(jnp.int8), jnp.clip(w * 30, -127, 127).astype(jnp.int8)
    flops = 2 * m * k * n
    out = {}
    for name, fn, args in (("float32", f32, (x, w)), ("bfloat16", low, (xb, wb)),
                           ("int8", i8, (xi, wi))):
        s = median_seconds(fn, *args, repeats=repeats)
        out[name] = {"seconds": s, "gflops": flops / s / 1e9}
    return out


def precisions_of(model_dir: str) -> tuple[str, ...]:
    """float32 and bfloat16 for every form; int8 products only where kernels are int8."""
    from afm_jax.checkpoint import load_model_dir

    _, params, _ = load_model_dir(model_dir)
    int8 = any(getattr(path[-1], "key", None) == "kernel_q"
               for path, _ in jax.tree_util.tree_leaves_with_path(params))
    return ("float32", "bfloat16", "int8") if int8 else ("float32", "bfloat16")


def scorer_rates(forms: dict[str, str], data: str, batch: int, repeats: int) -> dict:
    """rows/s of each (form, precision) on the first `batch` test rows, timed interleaved:
    every round times each combination once, the median over rounds is kept."""
    from afm_jax.checkpoint import load_model_dir
    from afm_jax.inference import count_bytes, device_params, make_scorer

    combos = {}
    for form, d in forms.items():
        model, params, meta = load_model_dir(d)
        for prec in precisions_of(d):
            scorer = make_scorer(model, compute_dtype=prec)
            combos[(form, prec)] = (scorer, device_params(model, params), count_bytes(params))
    test = _test_batch(forms["original"], data, batch)
    times: dict = {k: [] for k in combos}
    for scorer, p, _ in combos.values():   # compile and warm
        jax.block_until_ready(scorer(p, test))
    for _ in range(repeats):
        for k, (scorer, p, _) in combos.items():
            t0 = time.perf_counter()
            jax.block_until_ready(scorer(p, test))
            times[k].append(time.perf_counter() - t0)
    return {f"{f}|{prec}": {"seconds": float(np.median(times[(f, prec)])),
                           "rows_per_s": batch / float(np.median(times[(f, prec)])),
                           "bytes": combos[(f, prec)][2]}
            for f, prec in combos}


def _test_batch(model_dir: str, data: str, batch: int) -> dict:
    """The first `batch` rows of the test split, encoded with the model directory's encoder
    (the whole test split repeated when it has fewer rows)."""
    from afm_jax.checkpoint import load_encoder
    from afm_jax.data import load_dataset

    ds = load_dataset(f"criteo:{data}", min_count=10, encoder=load_encoder(model_dir),
                      progress=False)
    reps = -(-batch // len(ds.test))
    cat = np.concatenate([ds.test.cat] * reps)[:batch]
    num = np.concatenate([ds.test.num] * reps)[:batch]
    return jax.device_put({"cat": cat, "num": num})


def afm_jax(*args: str) -> dict:
    cmd = [sys.executable, "-m", "afm_jax.cli", *args, "--json", "--no-progress"]
    print("$", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def criteo_forms(data: str, model_dir: str, plans: tuple[str, ...], train: bool) -> dict:
    """form name -> model directory: the trained original, int8 alone, AFM and AFM + int8 per
    plan (made once; --retrain remakes them all)."""
    base = Path(model_dir)
    forms = {"original": str(base)}
    if train or not Path(base, "model.json").is_file():
        afm_jax("train", "--data", f"criteo:{data}", "--model", "deepfm", "--out", str(base),
                "--overwrite")
        train = True
    made = {"int8": ("quantize", "--model-dir", str(base))}
    for plan in plans:
        tag = plan.replace(":", "_")
        made[f"AFM {plan}"] = ("compress", "--model-dir", str(base), "--data",
                               f"criteo:{data}", "--plan", plan)
        made[f"AFM {plan} + int8"] = (*made[f"AFM {plan}"], "--int8")
        for name, suffix in ((f"AFM {plan}", tag), (f"AFM {plan} + int8", f"{tag}_int8")):
            forms[name] = str(base.parent / f"{base.name}_{suffix}")
    forms["int8"] = str(base.parent / f"{base.name}_int8")
    for name, cmd in made.items():
        if train or not Path(forms[name], "model.json").is_file():
            afm_jax(*cmd, "--out", forms[name], "--overwrite")
    return {k: forms[k] for k in ["original", "int8", *[f for f in forms if f.startswith("AFM")]]}


def criteo_quality(forms: dict[str, str]) -> dict:
    return {f"{form}|{p}": afm_jax("evaluate", "--model-dir", d, "--split", "test",
                                   "--precision", p)
            for form, d in forms.items() for p in precisions_of(d)}


def to_markdown(r: dict) -> str:
    lines = ["# Scoring precision: float32, bfloat16 and int8 products", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
             f"Load average at start: {r['load']:.2f}", "",
             "ISA flags (/proc/cpuinfo): " + ", ".join(
                 f"{f} {'yes' if v else 'no'}" for f, v in r["isa"].items()), "",
             "Precisions (`make_scorer(model, compute_dtype=...)`, `afm-jax evaluate|score|export "
             "--precision P`): *bfloat16*: the inputs of every Linear product (`nn._affine`, and "
             "the grouped embedding projections) are cast to bfloat16 and the product accumulates "
             "in float32; *int8*: the products of int8-stored kernels (`afm-jax quantize`, "
             "`compress --int8`) run int8 x int8 -> int32 on activations quantized per row on the "
             "fly, other products stay float32. Tables, biases, interactions and activations stay "
             "float32 in all three. At float32 an int8 kernel's scale goes into its float cast "
             "(x @ (q * scale)); at bfloat16 the cast kernel is multiplied and its scale applied "
             "to the product.", "",
             "## Jitted jnp.dot, [8192, 400] @ [400, 400]", "",
             "| inputs | ms | G(FL)OP/s | vs float32 |", "|---|---:|---:|---:|"]
    d = r["dot"]
    for k, v in d.items():
        lines.append(f"| {k} | {v['seconds'] * 1e3:.2f} | {v['gflops']:.1f} | "
                     f"{d['float32']['seconds'] / v['seconds']:.2f}x |")
    if r.get("rates"):
        rates, qual = r["rates"], r.get("quality", {})
        base = rates["original|float32"]
        lines += ["", f"## Criteo sample, DeepFM: every form at every precision, batch {r['batch']}",
                  "", f"Original: `afm-jax train --data criteo:{r['data']} --model deepfm --out "
                  f"{r['model_dir']}`; int8 alone: `afm-jax quantize`; AFM: `afm-jax compress "
                  "--plan P` (+ `--int8`). AUC and logloss on the test split (`afm-jax evaluate "
                  "--split test --precision P`); rows/s: the jitted scorer on the first "
                  f"{r['batch']} test rows, median of {r['repeats']} rounds, all combinations "
                  "interleaved in one process. *bytes*: the params as stored.", "",
                  "| form | precision | bytes | vs original | rows/s | vs f32 original | "
                  "test AUC | dAUC | test logloss | dLL |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        q0 = qual.get("original|float32")
        for k, v in rates.items():
            form, prec = k.split("|")
            q = qual.get(k)
            cells = ["", "", "", ""]
            if q:
                cells = [f"{q['auc']:.4f}", f"{q['auc'] - q0['auc']:+.4f}" if q0 else "",
                         f"{q['logloss']:.4f}", f"{q['logloss'] - q0['logloss']:+.4f}" if q0 else ""]
            lines.append(f"| {form} | {prec} | {v['bytes']:,} | "
                         f"{base['bytes'] / v['bytes']:.2f}x | {v['rows_per_s']:,.0f} | "
                         f"{v['rows_per_s'] / base['rows_per_s']:.2f}x | " + " | ".join(cells) + " |")
        best = max(rates, key=lambda k: rates[k]["rows_per_s"])
        lines += ["", f"Fastest: {best.replace('|', ' at ')}, "
                      f"{rates[best]['rows_per_s'] / base['rows_per_s']:.2f}x the float32 original."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--data", default=str(DATA / "criteo" / "train.tsv"),
                    help="the Criteo sample (default: ../shared/data beside the repository, "
                    "or $AFM_JAX_DATA)")
    ap.add_argument("--model-dir", help="the original's model directory, the other forms "
                    "beside it, kept for the next run (default: a temporary folder)")
    ap.add_argument("--retrain", action="store_true", help="train even if the model dir exists")
    ap.add_argument("--plans", default="budget:0.25,budget:0.1",
                    help="comma-separated AFM plans (afm-jax compress --plan)")
    ap.add_argument("--no-criteo", action="store_true", help="only the jnp.dot rates")
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
    if not args.no_criteo:
        scratch = tempfile.TemporaryDirectory(prefix="afm_jax_precision-")
        model_dir = args.model_dir or str(Path(scratch.name) / "deepfm")
        r["data"], r["model_dir"], r["repeats"] = args.data, model_dir, args.repeats
        forms = criteo_forms(args.data, model_dir, tuple(args.plans.split(",")), args.retrain)
        r["quality"] = criteo_quality(forms)
        r["rates"] = scorer_rates(forms, args.data, args.batch, args.repeats)
        print("rates:", r["rates"], flush=True)
    md = to_markdown(r)
    Path(args.out).write_text(md)
    print(md)


if __name__ == "__main__":
    main()
