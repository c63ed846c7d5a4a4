"""Why int8 tables do not make the scorer faster on this CPU (issue 24, item 2): gather time
against row width and table rows, float32 rows against int8 rows with a per-row scale
(`quantize`'s format).

    python experiments/int8_rows.py [--widths 4,8,16,32,64,128] [--rows 400000]
        [--rounds 30] [--out experiments/results/int8_rows]

One batch of 1024 rows x 39 fields of random ids into a table of --rows rows (400,000: far
larger than the caches, as a real table is; 17,348: the Criteo sample's vocabulary, which the
caches hold), per table size and row width, five jitted programs timed in one loop, round after
round (the ratios are within a round):

  float gather   table[ids]                                   f32 rows
  int8 gather    q[ids], scale[ids]                           int8 rows + their f32 scales
  int8 rows      q[ids] * scale[ids]                          the f32 rows the readers take
  float scorer   the gathered rows into DeepFM's two readers: the FM sums and the first layer
                 ([B, 39 * w] @ [39 * w, 64])
  int8 scorer    the same on q[ids] * scale[ids] (what `packing.lookup` does for int8 tables)

A row of w float32 values spans w / 16 cache lines, an int8 row w / 64: where both fit in one
line (w <= 16) a random row costs one memory access either way, so int8 saves the bytes but not
the time, and its convert-and-scale pass (made once per reader) is extra work.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from common import RESULTS, command_line, machine, write_results

from afm_jax.lab.bench import time_interleaved
from afm_jax.quantize import quantize

ROWS, BATCH, FIELDS, HIDDEN = 400_000, 1024, 39, 64


def _readers(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """DeepFM's readers of the field vectors x [B, F, w]: FM pairwise sum and the first layer."""
    fm = jnp.sum(jnp.sum(x, 1) ** 2, -1) - jnp.sum(x * x, (1, 2))
    return fm + jnp.sum(jax.nn.relu(x.reshape(x.shape[0], -1) @ kernel), -1)


@jax.jit
def float_gather(table, ids):
    return table[ids]


@jax.jit
def int8_gather(q, scale, ids):
    return q[ids], scale[ids]


@jax.jit
def int8_rows(q, scale, ids):
    return q[ids].astype(jnp.float32) * scale[ids][..., None]


@jax.jit
def float_scorer(table, kernel, ids):
    return _readers(table[ids], kernel)


@jax.jit
def int8_scorer(q, scale, kernel, ids):
    return _readers(int8_rows(q, scale, ids), kernel)   # inlined into this program


def measure(width: int, rounds: int, rows: int = ROWS) -> dict:
    rng = np.random.default_rng(width)
    table = rng.standard_normal((rows, width), dtype=np.float32) * 0.05
    packed = quantize({"embed": {"f": {"embedding": table}}})["embed"]["f"]
    q, scale = jax.device_put(packed["embedding_q"]), jax.device_put(packed["embedding_scale"])
    table = jax.device_put(table)
    kernel = jax.device_put(rng.standard_normal((FIELDS * width, HIDDEN), dtype=np.float32))
    ids = jax.device_put(rng.integers(0, rows, (BATCH, FIELDS), dtype=np.int32))
    got = np.asarray(int8_scorer(q, scale, kernel, ids))
    want = np.asarray(float_scorer(table, kernel, ids))
    fns = {"float gather": lambda: jax.block_until_ready(float_gather(table, ids)),
           "int8 gather": lambda: jax.block_until_ready(int8_gather(q, scale, ids)),
           "int8 rows": lambda: jax.block_until_ready(int8_rows(q, scale, ids)),
           "float scorer": lambda: jax.block_until_ready(float_scorer(table, kernel, ids)),
           "int8 scorer": lambda: jax.block_until_ready(int8_scorer(q, scale, kernel, ids))}
    per_round = {k: [] for k in fns}
    for _ in range(rounds):   # one-round loops: the ratios are taken within each round
        for k, t in time_interleaved(fns, 1, min_block_s=0.02, min_seconds=0.0).items():
            per_round[k].append(t.median_s)
    med = {k: float(np.median(v)) for k, v in per_round.items()}

    def ratio(a: str, b: str) -> list[float]:
        r = np.asarray(per_round[b]) / np.asarray(per_round[a])   # > 1: a faster than b
        return [float(np.median(r)), float(np.min(r)), float(np.max(r))]

    return {"rows": rows, "width": width, "us": {k: v * 1e6 for k, v in med.items()},
            "float_bytes_per_row": 4 * width, "int8_bytes_per_row": width + 4,
            "gather_int8_vs_float": ratio("int8 gather", "float gather"),
            "rows_int8_vs_float": ratio("int8 rows", "float gather"),
            "scorer_int8_vs_float": ratio("int8 scorer", "float scorer"),
            "max_abs_diff": float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-9))}


def _findings(rows: list[dict]) -> list[str]:
    """What the table says, from its numbers: narrow rows (width <= 16, AFM's ranks and the
    usual embedding widths) against wide ones (width >= 64)."""
    def span(key: str, keep) -> str:
        got = [x[key][0] for x in rows if keep(x["width"])]
        return f"{min(got):.2f}-{max(got):.2f}x" if got else "-"
    narrow, wide = (lambda w: w <= 16), (lambda w: w >= 64)
    out = [f"- Rows of width <= 16 (speed against the float gather, > 1: int8 faster): the "
           f"int8 gather {span('gather_int8_vs_float', narrow)}, the int8 rows times their "
           f"scale {span('rows_int8_vs_float', narrow)}, over the table sizes above: XLA's CPU "
           "gather "
           "costs per element gathered (an index computation and a copy each), not per "
           "byte, so a quarter of the bytes buys nothing, and the readers need float32 rows, "
           "whose conversion writes as many bytes as the float gather does. DeepFM's readers "
           f"on top: int8 / float {span('scorer_int8_vs_float', narrow)}."]
    if any(wide(x["width"]) for x in rows):
        out.append(f"- Rows of width >= 64: int8 gather {span('gather_int8_vs_float', wide)}, "
                   f"int8 rows times scale {span('rows_int8_vs_float', wide)}, DeepFM's readers "
                   f"{span('scorer_int8_vs_float', wide)}: a float32 row spans 4+ cache lines, "
                   "and the bytes decide.")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="4,8,16,32,64,128")
    ap.add_argument("--rows", default=str(ROWS), help="table rows, comma-separated")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", default=str(RESULTS / "int8_rows"))
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    rows = [measure(int(w), args.rounds, int(n)) for n in args.rows.split(",")
            for w in args.widths.split(",")]
    r = {"command": command_line(), "machine": machine(),
         "load": (round(load0, 2), round(os.getloadavg()[0], 2)), "rows": rows}
    fmt = lambda x: f"{x[0]:.2f}x [{x[1]:.2f}-{x[2]:.2f}]"   # noqa: E731
    lines = ["# int8 table rows against float32 rows: gather and DeepFM's readers", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
             f"Load average at start / end: {r['load'][0]} / {r['load'][1]}", "",
             f"{BATCH:,} rows x {FIELDS} fields of random ids into a table of *table rows* "
             "rows; microseconds per call (median of rounds) and *int8 / float* = float time / "
             "int8 time within each round (> 1: int8 faster), median [min-max]. *gather*: the "
             "rows alone (int8: rows and their scales); *int8 rows*: the int8 rows times their "
             "scale, the float32 rows a reader takes (against the float gather); *scorer*: "
             "the rows into the FM sums "
             f"and a [{FIELDS} * w, {HIDDEN}] first layer (int8: times the row scale, as "
             "`packing.lookup` does).", "",
             "| table rows | width | bytes/row f32 / int8 | float gather us | int8 gather us | "
             "int8 / float gather | int8 rows us | int8 rows / float gather | float scorer us | "
             "int8 scorer us | int8 / float scorer |",
             "|---:|---:|---|---:|---:|---|---:|---|---:|---:|---|"]
    for x in rows:
        u = x["us"]
        lines.append(f"| {x['rows']:,} | {x['width']} | {x['float_bytes_per_row']} / "
                     f"{x['int8_bytes_per_row']} | {u['float gather']:,.0f} | "
                     f"{u['int8 gather']:,.0f} | {fmt(x['gather_int8_vs_float'])} | "
                     f"{u['int8 rows']:,.0f} | {fmt(x['rows_int8_vs_float'])} | "
                     f"{u['float scorer']:,.0f} | "
                     f"{u['int8 scorer']:,.0f} | {fmt(x['scorer_int8_vs_float'])} |")
    lines += ["", *_findings(rows)]
    write_results(args.out, r, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
