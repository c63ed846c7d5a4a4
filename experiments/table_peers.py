"""Whole training epochs against table rows: afm_jax train() with row-wise and dense table
updates beside DeepCTR-Torch's fit, on the same synthetic rows (afm_jax/lab/table_peers.py).
Writes experiments/results/table_peers.md and .json (rewritten after every cell, so a cut-short
run keeps what it measured).

    python experiments/table_peers.py [--vocab 100000,1000000,10000000] [--batches 1024,4096]
        [--rows 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os

from common import RESULTS, command_line, machine, write_results
from tqdm import tqdm

from afm_jax.lab.table_peers import epochs, epochs_markdown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", default="100000,1000000,10000000",
                    help="total table rows over the 26 tables, comma-separated")
    ap.add_argument("--batches", default="1024,4096")
    ap.add_argument("--rows", type=int, default=100_000, help="training rows of the epoch")
    ap.add_argument("--valid-rows", type=int, default=4096,
                    help="rows of the validation pass train() runs after its epoch")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell")
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY of the cells' processes (torch's OpenMP threads), "
                         "unless already set; PASSIVE: its waiting threads sleep rather than "
                         "spin, which on a shared machine keeps a descheduled thread from "
                         "stalling every parallel region ('' for the runtime's default)")
    ap.add_argument("--no-peer", action="store_true", help="afm_jax contenders only")
    ap.add_argument("--note", default="", help="a sentence for the results")
    ap.add_argument("--out", default=str(RESULTS / "table_peers"))
    args = ap.parse_args()
    if args.omp_wait_policy:
        os.environ.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)
    todo = [(int(v), int(b)) for v in args.vocab.split(",") for b in args.batches.split(",")]
    rows = []
    for v, b in tqdm(todo, desc="cells"):
        rows.append(epochs(v, b, args.rows, args.rounds, args.valid_rows, args.torch_threads,
                           peer=not args.no_peer))
        write_results(args.out, rows, epochs_markdown(rows, command_line(), machine(),
                                                      args.note))


if __name__ == "__main__":
    main()
