"""The dedupe of a row-wise step alone, four ways, at several batch sizes and table rows (issue
24): the batch's ids of DeepFM's 26 fields (`lab.table_scale` shapes: Criteo's proportions,
Zipf ids) -> unique table rows and each id's position in them. Writes
experiments/results/rowwise_dedupe.md and .json.

- `unique min(ids, rows)`: the former step, `jnp.unique(size=min(ids, rows))` over the packed
  table's ids, twice (packed table and first-order weights);
- `unique slots`: one `jnp.unique` of static size `rowwise.batch_slots` (shared by the tables);
- `mark [rows]`: sort-free per packed table: scatter the ids into a [rows] mask, cumsum it for
  the positions, compact to `batch_slots` slots (a pass over every row);
- `per field, sorted` / `per field, first readers` (`rowwise._dedupe_fields`, which
  `resolve_rows` runs once for both tables): fields with at most B rows skip the dedupe, the
  others are sorted per column, or deduped sort-free by a scatter-min of each row's first
  reader into [rows]; `as the step`: first readers up to `rowwise.SCAN_ROWS_PER_ID` rows an
  id of the batch, sorted above.

Interleaved rounds in one process; the ratio to the former step's within each round.

    python experiments/rowwise_dedupe.py [--vocab 100000,1000000,10000000] [--batches 4096,16384]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import RESULTS, command_line, machine, write_results

from afm_jax import rowwise
from afm_jax.lab.table_scale import vocab_sizes
from afm_jax.nn import first_order_rows


def variants(sizes):
    rows = int(sum(sizes))

    def packed_ids(cat):
        return first_order_rows(sizes, cat).reshape(-1)

    def unique_old(cat):
        flat = packed_ids(cat)
        out = []
        for _ in range(2):   # the former step deduped both tables' (equal) ids
            out.append(jnp.unique(flat, size=min(flat.size, rows), fill_value=rows,
                                  return_inverse=True))
        return out

    def unique_slots(cat):
        flat = packed_ids(cat)
        return jnp.unique(flat, size=rowwise.batch_slots(sizes, cat.shape[0]), fill_value=rows,
                          return_inverse=True)

    def mark(cat):
        flat = packed_ids(cat)
        hit = jnp.zeros((rows,), jnp.int32).at[flat].set(1)
        pos = jnp.cumsum(hit) - 1
        slots = rowwise.batch_slots(sizes, cat.shape[0])
        u = jnp.full((slots,), rows, jnp.int32).at[jnp.where(hit > 0, pos, slots)].set(
            jnp.arange(rows, dtype=jnp.int32), mode="drop")
        return u, pos[flat]

    def per_field(scan_rows):
        return lambda cat: rowwise._dedupe_fields(cat, tuple(sizes), scan_rows)

    return {"unique min(ids, rows)": unique_old, "unique slots": unique_slots,
            "mark [rows]": mark, "per field, sorted": per_field(0),
            "per field, first readers": per_field(2**62), "per field, as the step": per_field(None)}


def run(total: int, batch: int, rounds: int, reps: int) -> dict:
    sizes = vocab_sizes(total)
    rng = np.random.default_rng(0)
    cat = jnp.asarray(np.stack([np.minimum(rng.zipf(1.2, batch) - 1, v - 1) for v in sizes], 1)
                      .astype(np.int32))
    fns = {k: jax.jit(f) for k, f in variants(sizes).items()}
    for f in fns.values():
        jax.block_until_ready(f(cat))
    ms = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = []
            for _ in range(reps):
                t0 = time.perf_counter()
                jax.block_until_ready(f(cat))
                t.append(time.perf_counter() - t0)
            ms[k].append(1e3 * float(np.median(t)))
    return {"vocab_rows": total, "batch": batch, "ids": batch * 26,
            "slots": rowwise.batch_slots(sizes, batch), "round_ms": ms}


def to_markdown(rows, command, mach) -> str:
    lines = ["# Row-wise dedupe alone: four ways\n",
             f"`{command}` on {mach}; the machine was shared with other jobs, so the figures "
             "are ratios within interleaved rounds: time / the former step's (`unique min(ids, "
             "rows)`) time, median "
             "[min-max] over the rounds; ms = median of the rounds' medians.\n",
             "| rows | batch | ids | slots | " + " | ".join(
                 f"{k}" for k in rows[0]["round_ms"]) + " |",
             "|---:|---:|---:|---:|" + "---|" * len(rows[0]["round_ms"])]
    for r in rows:
        ref = np.asarray(r["round_ms"]["unique min(ids, rows)"])
        cells = []
        for v in r["round_ms"].values():
            q = np.asarray(v) / ref
            cells.append(f"{np.median(v):.1f} ms, {np.median(q):.2f}x [{q.min():.2f}-{q.max():.2f}]")
        lines.append(f"| {r['vocab_rows']:,} | {r['batch']} | {r['ids']:,} | {r['slots']:,} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", default="100000,1000000,10000000")
    ap.add_argument("--batches", default="1024,4096,16384")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "rowwise_dedupe"))
    args = ap.parse_args()
    rows = [run(int(v), int(b), args.rounds, args.reps)
            for b in args.batches.split(",") for v in args.vocab.split(",")]
    write_results(args.out, rows, to_markdown(rows, command_line(), machine()))


if __name__ == "__main__":
    main()
