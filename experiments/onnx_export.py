"""ONNX export on the Criteo sample (issue 23): file sizes per form, operators, test AUC in ONNX
Runtime against the JAX scorer, and rows/s and per-call latency of both, in one run.

For each model (DeepFM, DCNv2 by default; trained `--epochs` on the shared Criteo sample, 8:1:1
in file order, min-count 10) and each form (original, AFM at a 25 % parameter budget, int8, AFM +
int8, AFM at a 10 % budget + int8; the AFM forms with their tables' ranks merged in the graph
as `afm-jax export --format onnx` writes them by default (`--max-ranks auto`: the file holds the
tables as compressed, and ONNX Runtime pads and packs them when it loads the file), and two of
them also with every rank, as `--max-ranks 0` writes them; JAX and torch.compile score the params
as compressed, which the merge leaves unchanged in every score, and which XLA runs faster
unmerged at large batches): the ONNX file that takes ids (`--no-raw-inputs`) and the one with
the encoder in the graph
(raw values in), the `.ort` file of the ids graph and its operator count, the nodes ONNX
Runtime runs and the bytes it holds once it has loaded the file; test AUC of ONNX
Runtime on the encoded test split against the JAX scorer's; rows/s of ONNX Runtime (2 intra-op
threads), the JAX live scorer (packed params on the device) and the exported JAX scorer at each
batch size, the JAX scorers in rounds alternating them, then the ORT sessions (the form's and
the original's) in rounds of their own, then, where torch is installed, torch.compile of the same
float params (`afm_jax.lab.bench_torch`) in a pass of its own; p50 / p99 per-call latency at
batch 1 and 64.

    python experiments/onnx_export.py [--models deepfm dcnv2] [--epochs 2]
        [--batch-sizes 1 64 1024 8192] [--rounds 3] [--out experiments/results/onnx_export]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import onnxruntime as ort
from common import RESULTS, command_line, load, machine, write_results

from afm_jax import compress_model, make_scorer, quantize, train
from afm_jax.inference import count_bytes, device_params, evaluate, export, load_exported
from afm_jax.lab.bench import ort_session
from afm_jax.metrics import auc
from afm_jax.models import build_model
from afm_jax.onnx_export import MAX_RANKS, _to_ort, initializer_bytes, runtime_graph, to_onnx
from afm_jax.train import TrainConfig
from afm_jax.transforms import bucketized_fields


def _rows(split, n: int) -> dict:
    idx = np.arange(n) % len(split)
    return {"cat": np.ascontiguousarray(split.cat[idx]), "num": np.ascontiguousarray(split.num[idx])}


def _torch_peer(name: str, info, params):
    """torch.compile of the same float params (afm_jax.lab.bench_torch), or None: torch not
    installed, a model without a peer, or an int8 form (the peer has no int8 path)."""
    try:
        from afm_jax.lab import bench_torch
    except ImportError:
        return None
    if name not in bench_torch.PEERS or any(str(np.asarray(x).dtype) == "int8"
                                            for x in jax.tree_util.tree_leaves(params)):
        return None
    return bench_torch.build(name, info, params, compile=True)


def _exported(model, params):
    """The `jax.export` artifact of the same params, loaded (`load_exported`)."""
    with tempfile.TemporaryDirectory() as tmp:
        export(model, params, Path(tmp) / "x")
        return load_exported(Path(tmp) / "x")


def _noop(scorer):
    """A jitted function taking the scorer's arguments (packed params, batch) and returning
    zeros of the scores' shape: what a call costs before any scoring work."""
    import jax.numpy as jnp
    return jax.jit(lambda params, batch: jnp.zeros(batch["cat"].shape[:1], jnp.float32))


def _times(call, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return times


def _speed(session, scorer, placed, split, batch_sizes, rounds: int, peer=None,
           exported=None, reference=None) -> dict:
    """Per batch size: rows/s and per-call p50/p99 of ONNX Runtime, the JAX live scorer, the
    exported JAX scorer (`load_exported`), ONNX Runtime on the model's original (`reference`,
    for the paired ratio "ort_vs_original": the median over rounds of the two sessions' rows/s
    within a round) and, at batch <= 64, a JAX no-op call with the live scorer's arguments. The
    JAX runners alternate in rounds of their own, then the ORT sessions in theirs (ORT's idle
    threads slow JAX calls timed in one loop with them, as `afm_jax.lab.bench` notes); then
    torch.compile (`peer`) on its own."""
    out = {}
    noop = _noop(scorer)
    for bs in batch_sizes:
        batch = _rows(split, bs)
        calls = max(3, min(400, 20_000 // bs))
        jb = jax.device_put(batch)
        runners = {"ort": lambda batch=batch: session.run(["score"], batch),
                   "jax": lambda jb=jb: scorer(placed, jb).block_until_ready()}
        if reference is not None:
            runners["ort_original"] = lambda batch=batch: reference.run(["score"], batch)
        if exported is not None:
            runners["exported"] = lambda batch=batch: exported(batch["cat"], batch["num"]).block_until_ready()
        if bs <= 64:   # the same jitted call doing no work: JAX's dispatch floor
            runners["jax_noop"] = lambda jb=jb: noop(placed, jb).block_until_ready()
        for fn in runners.values():                  # warm
            fn()
        per = {name: [] for name in runners}
        for group in ([k for k in runners if not k.startswith("ort")],
                      [k for k in runners if k.startswith("ort")]):
            for r in range(rounds):
                for name in group[:: 1 if r % 2 == 0 else -1]:
                    per[name].append(_times(runners[name], calls))
        res = {}
        for name, rs in per.items():
            rows_s = [bs / float(np.median(t)) for t in rs]   # per-call median: robust to stalls
            flat = np.concatenate(rs)
            res[name] = {"rows_s": float(np.median(rows_s)), "p50_ms": float(np.percentile(flat, 50) * 1e3),
                         "p99_ms": float(np.percentile(flat, 99) * 1e3)}
        res["ratio"] = res["ort"]["rows_s"] / res["jax"]["rows_s"]
        if reference is not None:   # paired within each round: both sessions under one load
            res["ort_vs_original"] = float(np.median([np.median(o) / np.median(f) for f, o in
                                                      zip(per["ort"], per["ort_original"])]))
        out[bs] = res
    if peer is not None:
        # in a pass of its own: torch's threads slow JAX timed in one loop with them
        # (experiments/torch_interleave.py)
        from afm_jax.lab import bench_torch
        for bs in batch_sizes:
            call = bench_torch.callables(peer, _rows(split, bs)).get("compiled")
            if call is None:
                continue
            calls = max(3, min(400, 20_000 // bs))
            rows_s = [bs / float(np.median(_times(call, calls))) for _ in range(rounds)]
            res = out[bs]
            res["torch"] = {"rows_s": float(np.median(rows_s))}
            best = max(res[k]["rows_s"] for k in ("ort", "jax", "exported") if k in res)
            res["best_vs_torch"] = best / res["torch"]["rows_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["deepfm", "dcnv2"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 1024, 8192])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "onnx_export"))
    args = ap.parse_args()
    ds = load("criteo", progress=False)
    bucketize = bucketized_fields({"spec": "criteo:x"})
    results = []
    for name in args.models:
        model = build_model(name, ds.info)
        params = train(model, ds, TrainConfig(epochs=args.epochs), progress=False).params
        afm = compress_model(model, params, ds, "budget:0.25", progress=False).params
        afm10 = compress_model(model, params, ds, "budget:0.1", progress=False).params
        # form -> (its params, the ranks of its ONNX file: merged as export does by default)
        forms = {"original": params, "AFM 25%": afm, "AFM 25%, every rank": afm,
                 "int8": quantize(params), "AFM 25% + int8": quantize(afm),
                 "AFM 10% + int8": quantize(afm10), "AFM 10% + int8, every rank": quantize(afm10)}
        forms = {k: (p, None if k.endswith("every rank") else MAX_RANKS) for k, p in forms.items()}
        original_session = None
        for form, (p, max_ranks) in forms.items():
            ids = to_onnx(model, p, max_ranks=max_ranks)
            raw = to_onnx(model, p, encoder=ds.encoder, bucketize=bucketize, max_ranks=max_ranks)
            with tempfile.TemporaryDirectory() as tmp:
                f = Path(tmp) / "model.onnx"
                f.write_bytes(ids.SerializeToString())
                ort_info = _to_ort(f)
            loaded = runtime_graph(ids)   # as ONNX Runtime holds it once loaded
            session = ort_session(ids)
            original_session = original_session or session
            scorer = make_scorer(model)
            placed = device_params(model, p)
            jax_auc = evaluate(scorer, placed, ds.test)["auc"]
            onnx_scores = np.concatenate([session.run(["score"], _rows_slice(ds.test, i, 8192))[0]
                                          for i in range(0, len(ds.test), 8192)])
            row = {"model": name, "form": form, "stored_bytes": int(count_bytes(p)),
                   "onnx_ids_bytes": len(ids.SerializeToString()),
                   "onnx_raw_bytes": len(raw.SerializeToString()), "ort_bytes": ort_info["bytes"],
                   "operators": ort_info["operators"], "nodes": len(loaded.graph.node),
                   "loaded_bytes": initializer_bytes(loaded),
                   "auc_jax": float(jax_auc), "auc_onnx": float(auc(np.asarray(ds.test.label), onnx_scores)),
                   "speed": _speed(session, scorer, placed, ds.test, args.batch_sizes, args.rounds,
                                   _torch_peer(name, ds.info, p), _exported(model, p),
                                   None if form == "original" else original_session)}
            results.append(row)
            print(name, form, {k: v for k, v in row.items() if k not in ("operators", "speed")}, flush=True)
    write_results(args.out, results, to_markdown(results, args.batch_sizes))


def _rows_slice(split, start: int, size: int) -> dict:
    return {"cat": np.ascontiguousarray(split.cat[start:start + size]),
            "num": np.ascontiguousarray(split.num[start:start + size])}


def _speed_table(results: list[dict], batch_sizes, caption: str, columns: list[str],
                 cells) -> list[str]:
    """A markdown table after `caption`: per batch size b the `columns`, one row per model and
    form with `cells(speed at batch b, result row, b)`."""
    head = " | ".join(f"batch {b}: " + " | ".join(columns) for b in batch_sizes)
    return (["", caption, "", f"| model | form | {head} |",
             "|---|---|" + "---:|" * (len(columns) * len(batch_sizes))]
            + [f"| {r['model']} | {r['form']} | "
               + " | ".join(c for b in batch_sizes for c in cells(r["speed"][b], r, b)) + " |"
               for r in results])


def to_markdown(results: list[dict], batch_sizes) -> str:
    lines = ["# ONNX export: sizes, operators, AUC and speed beside the JAX scorer", "",
             f"Command: `{command_line()}`  ", f"Machine: {machine()}; ONNX Runtime "
             f"{ort.__version__}, 2 intra-op threads", "",
             "Forms of DeepFM/DCNv2 trained on the Criteo sample. *ids* file: the scorer alone "
             "(`--no-raw-inputs`); *raw* file: the encoder in the graph (vocabularies as "
             "LabelEncoder tables); *.ort*: ONNX Runtime's format of the ids file; *loaded*: the "
             "initializers' bytes of the graph ONNX Runtime runs once it has loaded the ids file "
             "(`onnx_export.loaded_bytes`: its load-time folding pads the merged ranks, "
             "`compress.rank_plan`, and casts int8 kernels to float32; not counted: the copies "
             "its GEMMs pre-pack weights into); "
             "*nodes*: those ONNX Runtime runs after its optimizations at load. AUC on the test "
             "split (the same encoded rows for both runtimes).", "",
             "| model | form | stored bytes | ids .onnx | vs original ids | raw .onnx | vs original "
             "raw | .ort | loaded | nodes | operator types | test AUC JAX | test AUC ORT |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    orig = {r["model"]: r for r in results if r["form"] == "original"}
    for r in results:
        n_ops = sum(len(line.split(";")[2].split(",")) for line in r["operators"])
        o = orig[r["model"]]
        lines.append(f"| {r['model']} | {r['form']} | {r['stored_bytes']:,} | {r['onnx_ids_bytes']:,} | "
                     f"1/{o['onnx_ids_bytes'] / r['onnx_ids_bytes']:.1f} | {r['onnx_raw_bytes']:,} | "
                     f"1/{o['onnx_raw_bytes'] / r['onnx_raw_bytes']:.1f} | {r['ort_bytes']:,} | "
                     f"{r['loaded_bytes']:,} | {r['nodes']} | {n_ops} | {r['auc_jax']:.4f} | {r['auc_onnx']:.4f} |")
    lines += _speed_table(
        results, batch_sizes, "Rows/s (batch size / the median call of a round; median of rounds, "
        "the JAX scorers alternating in one pass, ONNX Runtime's sessions in the next) of the JAX "
        "live scorer, the exported JAX scorer (`load_exported`) and ONNX Runtime, and ORT / JAX "
        "live:",
        ["JAX", "exported", "ORT", "ORT/JAX"], lambda s, r, b: [
            f"{s['jax']['rows_s']:,.0f}",
            f"{s['exported']['rows_s']:,.0f}" if "exported" in s else "-",
            f"{s['ort']['rows_s']:,.0f}", f"{s['ratio']:.2f}x"])
    lines += _speed_table(
        results, batch_sizes, "ONNX Runtime on each form / ONNX Runtime on the model's original "
        "(both sessions timed in the same rounds; the median of the per-round ratios), and the "
        "faster of {JAX live, JAX exported, ORT} / torch.compile on the same params "
        "(torch.compile: rows/s; - where torch is absent or the form is int8, which the torch "
        "peer has no path for):",
        ["ORT/ORT orig", "torch.compile", "best/torch"], lambda s, r, b: [
            f"{s.get('ort_vs_original', 1.0):.2f}x",
            f"{s['torch']['rows_s']:,.0f}" if "torch" in s else "-",
            f"{s['best_vs_torch']:.2f}x" if "best_vs_torch" in s else "-"])
    small = [b for b in batch_sizes if b <= 64]
    if small:
        lines += _speed_table(
            results, small, "Per-call latency, p50 / p99 in ms:", ["JAX", "ORT", "JAX no-op call"],
            lambda s, r, b: [f"{s[k]['p50_ms']:.3f} / {s[k]['p99_ms']:.3f}"
                             for k in ("jax", "ort", "jax_noop")])
        lines += ["", "*JAX no-op call*: a jitted function taking the same packed params and batch "
                  "and returning zeros, timed the same way: the part of a JAX call that is "
                  "dispatch (argument flattening and checks, launch, transfer back) rather than "
                  "scoring."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
