"""Train-step time and peak memory against vocabulary rows, row-wise vs dense table updates
(afm_jax/lab/table_scale.py). Writes experiments/results/table_scale.md and .json.

Step times: per (vocabulary rows, batch) one process times row-wise and dense Adam in
interleaved rounds; the row-wise step at --across table sizes, in one process per batch. Peak
memory: per (rows, optimizer) a process of its own, at batch 1024
(--memory-vocab; empty for none).

    python experiments/table_scale.py [--vocab 17000,1000000,10000000] [--batches 1024,4096]
"""

from __future__ import annotations

import argparse

from common import RESULTS, command_line, machine, write_results
from tqdm import tqdm

from afm_jax.lab.table_scale import across, across_markdown, measure, timing, timing_markdown, to_markdown


def _peers() -> str:
    """What the table says of peers: it runs none; where they are."""
    return (" No peer runs here: whole `train()` epochs beside DeepCTR-Torch's `fit` at 100k, 1M "
            "and 10M table rows, batch 1024 and 4096, on the same synthetic rows are in "
            "table_peers.md (`python experiments/table_peers.py`).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", default="17000,1000000,10000000",
                    help="total vocabulary rows over the 26 tables, comma-separated")
    ap.add_argument("--batches", default="1024,4096", help="batch sizes of the step times")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per optimizer and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--across", default="1000000,10000000",
                    help="table rows of the row-wise step timed against each other in one "
                         "process, per batch (empty for none)")
    ap.add_argument("--memory-vocab", default="17000,1000000,10000000",
                    help="vocabulary rows of the peak-memory table (own process each)")
    ap.add_argument("--memory-steps", type=int, default=30)
    ap.add_argument("--optimizers", default="rowwise,dense",
                    help="table optimizers of the peak-memory table")
    ap.add_argument("--note", default="", help="a sentence for the step-time table")
    ap.add_argument("--out", default=str(RESULTS / "table_scale"))
    args = ap.parse_args()
    todo = [(int(v), int(b)) for b in args.batches.split(",") for v in args.vocab.split(",")]
    times = [timing(v, b, steps=args.steps, rounds=args.rounds)
             for v, b in tqdm(todo, desc="step times")]
    grow = [across([int(v) for v in args.across.split(",")], int(b), steps=args.steps,
                   rounds=args.rounds) for b in tqdm(args.batches.split(","), desc="across")
            ] if args.across else []
    mem_todo = [(int(v), o) for v in args.memory_vocab.split(",") if v
                for o in args.optimizers.split(",")]
    mem = [measure(v, o, args.memory_steps) for v, o in tqdm(mem_todo, desc="peak memory")]
    md = ("# Train step against vocabulary rows\n\n"
          + timing_markdown(times, command_line(), machine(), args.note + _peers()))
    if grow:
        md += "\n" + across_markdown(grow)
    if mem:
        md += "\n" + to_markdown(mem, command_line(), machine(), title="## Peak memory")
    write_results(args.out, {"step_times": times, "across": grow, "memory": mem}, md)


if __name__ == "__main__":
    main()
