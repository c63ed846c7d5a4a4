"""Ranks padded for ONNX Runtime (issue 23): what `afm-jax export --pad-ranks N` and
`--max-ranks N|auto` cost in bytes and buy in ONNX Runtime's nodes and speed against the original,
on the Criteo sample.

ONNX Runtime pays per node at small batches, and the packed layout gathers and projects once per
table width: a budget plan spreads the fields over many ranks (many widths, many nodes).
`compress.pad_ranks(params, N)` pads each compressed table's rank up to a multiple of N (zero
columns, exact scores) in the params, so the file grows. `--max-ranks N` pads them so that at most
N distinct ranks remain, choosing the ranks that add the fewest bytes (`compress.merged_ranks`;
`auto`, export's default: the fewest ranks whose padding at most doubles the model's bytes), in
the graph: the file holds the tables as compressed, and ONNX Runtime pads and packs them when it
loads the file, so only its memory grows.

For each model (DeepFM, DCNv2 by default; trained `--epochs` on the shared Criteo sample, 8:1:1
in file order, min-count 10) and two forms (AFM at a 25 % parameter budget, and AFM at a 10 %
budget + int8), with every rank, padded to each multiple in `--multiples` and merged to each rank
count in `--max-ranks`: the ids file's bytes, the bytes ONNX Runtime holds once it has loaded it,
the nodes it runs (after its optimizations at load), and ONNX Runtime (2 intra-op threads) rows/s
against ONNX Runtime on the original at each batch size: every session of a model timed in each
round, in turn, the ratio per round, its median and quartiles over `--rounds` rounds.

    python experiments/onnx_pad.py [--models deepfm dcnv2] [--epochs 2] [--multiples 4]
        [--max-ranks 1 2 3 auto]
        [--batch-sizes 1 64 1024] [--rounds 15] [--out experiments/results/onnx_pad]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort
from common import RESULTS, command_line, load, machine, write_results

from afm_jax import compress_model, quantize, train
from afm_jax.compress import pad_ranks
from afm_jax.lab.bench import ort_session
from afm_jax.models import build_model
from afm_jax.onnx_export import initializer_bytes, runtime_graph, to_onnx
from afm_jax.train import TrainConfig

CALL_ROWS = 3000   # rows scored per session per round (at least 3 calls)
PAD = ", pad "     # a padded form's name: "<form>, pad x<multiple>" or "<form>, pad <N> ranks"


def _form_and_pad(name: str) -> tuple[str, str]:
    """"AFM 25%, pad x4" -> ("AFM 25%", "x4"); an unpadded form's pad is ""."""
    form, _, pad = name.partition(PAD)
    return form, pad


def _ratios(sessions: dict, split, batch_sizes, rounds: int) -> dict:
    """{batch: {form: [median, q25, q75] of (original's time / form's time) per round}}."""
    out = {}
    for bs in batch_sizes:
        feed = {"cat": np.ascontiguousarray(split.cat[:bs]), "num": np.ascontiguousarray(split.num[:bs])}
        calls = max(3, CALL_ROWS // bs)
        per_round: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(rounds):
            took = {}
            for k, s in sessions.items():
                t = time.perf_counter()
                for _ in range(calls):
                    s.run(["score"], feed)
                took[k] = (time.perf_counter() - t) / calls
            for k in sessions:
                per_round[k].append(took["original"] / took[k])
        out[bs] = {k: [float(np.median(v)), float(np.percentile(v, 25)), float(np.percentile(v, 75))]
                   for k, v in per_round.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["deepfm", "dcnv2"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--multiples", nargs="*", type=int, default=[4])
    ap.add_argument("--max-ranks", nargs="*", default=["1", "2", "3", "auto"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 1024])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=str(RESULTS / "onnx_pad"))
    args = ap.parse_args()
    ds = load("criteo", progress=False)
    load0 = os.getloadavg()[0]
    rows = []
    for name in args.models:
        model = build_model(name, ds.info)
        params = train(model, ds, TrainConfig(epochs=args.epochs), progress=False).params
        bases = {"AFM 25%": compress_model(model, params, ds, "budget:0.25", progress=False).params,
                 "AFM 10% + int8": quantize(compress_model(model, params, ds, "budget:0.1",
                                                           progress=False).params)}
        protos = {"original": to_onnx(model, params)}
        for form, p in bases.items():
            protos[form] = to_onnx(model, p)
            for m in args.multiples:
                protos[f"{form}{PAD}x{m}"] = to_onnx(model, pad_ranks(p, m))
            for n in args.max_ranks:
                n = n if n == "auto" else int(n)
                key = f"{form}{PAD}{n} ranks" if n != "auto" else f"{form}{PAD}auto"
                protos[key] = to_onnx(model, p, max_ranks=n)
        graphs = {k: runtime_graph(v) for k, v in protos.items()}   # as ORT holds it once loaded
        loaded = {k: initializer_bytes(g) for k, g in graphs.items()}
        speed = _ratios({k: ort_session(v) for k, v in protos.items()}, ds.test, args.batch_sizes,
                        args.rounds)
        size = {k: len(v.SerializeToString()) for k, v in protos.items()}
        for k in protos:
            base = _form_and_pad(k)[0]
            rows.append({"model": name, "form": k, "nodes": len(graphs[k].graph.node), "bytes": size[k],
                         "bytes_vs_unpadded": size[k] / size[base], "loaded": loaded[k],
                         "loaded_vs_unpadded": loaded[k] / loaded[base],
                         "original_over_bytes": size["original"] / size[k],
                         "speed": {b: speed[b][k] for b in args.batch_sizes}})
            print(name, k, rows[-1]["nodes"], size[k], loaded[k],
                  {b: round(speed[b][k][0], 2) for b in speed}, flush=True)
    r = {"command": command_line(), "machine": machine(), "onnxruntime": ort.__version__,
         "load": (round(load0, 2), round(os.getloadavg()[0], 2)), "rows": rows}
    write_results(args.out, r, to_markdown(r, args.batch_sizes))


def to_markdown(r: dict, batch_sizes) -> str:
    fmt = lambda x: f"{x[0]:.2f}x [{x[1]:.2f}-{x[2]:.2f}]"   # noqa: E731
    lines = ["# Ranks padded for ONNX Runtime: bytes and nodes against speed", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}; ONNX Runtime "
             f"{r['onnxruntime']}, 2 intra-op threads  ",
             f"Load average at start / end: {r['load'][0]} / {r['load'][1]}", "",
             "The ids graph (`--no-raw-inputs`) of each form, its compressed tables' ranks "
             "padded (*pad*): xN, in the params, up to a multiple of N (`afm-jax export "
             "--pad-ranks N`, `compress.pad_ranks`: the file grows); N ranks, in the graph, to "
             "at most N distinct ranks, those that add the fewest bytes (`--max-ranks N`, "
             "`compress.merged_ranks`); auto, in the graph, the fewest ranks whose padding at "
             "most doubles the model's bytes (`--max-ranks auto`, export's default for ONNX); - "
             "= every rank (`--max-ranks 0`). *file*: the ids file's bytes, and over the "
             "unpadded form's; *loaded*: the initializers' bytes ONNX Runtime holds once it has "
             "loaded the file (`onnx_export.loaded_bytes`: padded tables, int8 kernels cast to "
             "float32), and over the unpadded form's; *nodes*: those it runs after its optimizations "
             "at load; *original / file*: the original's ids file over this one (the size goal "
             "of issue 23 is 12x for AFM + int8). Speed: ONNX Runtime on the form against ONNX "
             "Runtime on the original, original time / form time per round, median [quartiles] "
             "(> 1: the form is faster).", "",
             "| model | form | pad | nodes | file | vs unpadded | loaded | vs unpadded | "
             "original / file | " + " | ".join(f"batch {b}" for b in batch_sizes) + " |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---|" * len(batch_sizes)]
    for x in r["rows"]:
        form, pad = _form_and_pad(x["form"])
        lines.append(f"| {x['model']} | {form} | {pad or '-'} | {x['nodes']} | {x['bytes']:,} | "
                     f"{x['bytes_vs_unpadded']:.3f} | {x['loaded']:,} | {x['loaded_vs_unpadded']:.3f} | "
                     f"{x['original_over_bytes']:.1f}x | "
                     + " | ".join(fmt(x["speed"][b]) for b in batch_sizes) + " |")
    lines += ["", *_findings(r["rows"], batch_sizes)]
    return "\n".join(lines) + "\n"


def _findings(rows: list[dict], batch_sizes) -> list[str]:
    """Per model and form: the padding of fewest bytes once loaded (the memory ONNX Runtime
    holds; a merge in the graph leaves the file as it is) at >= 1.0x the original at every batch
    in at least 3 of 4 rounds (its lower quartile), and the fastest one at batch 1."""
    out = []
    for model in dict.fromkeys(x["model"] for x in rows):
        for base in ("AFM 25%", "AFM 10% + int8"):
            group = [x for x in rows if x["model"] == model and _form_and_pad(x["form"])[0] == base]
            ok = [x for x in group if all(x["speed"][b][1] >= 1.0 for b in batch_sizes)]
            if ok:
                x = min(ok, key=lambda r: (r["loaded"], r["bytes"]))
                out.append(f"- {model}, {base}: {_form_and_pad(x['form'])[1] or 'unpadded'} "
                           f"is the least memory at >= 1.0x the original at every batch in "
                           f"3 of 4 rounds "
                           f"({x['nodes']} nodes, {x['bytes_vs_unpadded']:.3f}x the unpadded "
                           f"file, {x['original_over_bytes']:.1f}x smaller than the original's; "
                           f"{x['loaded_vs_unpadded']:.3f}x the unpadded bytes once loaded).")
            else:
                out.append(f"- {model}, {base}: no padding measured reaches 1.0x the original at "
                           "every batch in 3 of 4 rounds.")
            b1 = min(batch_sizes)
            x = max(group, key=lambda r: r["speed"][b1][0])
            out.append(f"  Fastest at batch {b1}: {_form_and_pad(x['form'])[1] or 'unpadded'}, "
                       f"{x['speed'][b1][0]:.2f}x [{x['speed'][b1][1]:.2f}-{x['speed'][b1][2]:.2f}] "
                       f"({x['nodes']} nodes).")
    return out


if __name__ == "__main__":
    main()
