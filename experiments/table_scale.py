"""Train-step time and peak memory against vocabulary rows, row-wise vs dense table updates
(afm_jax/lab/table_scale.py). Writes experiments/results/table_scale.md and .json.

    python experiments/table_scale.py [--vocab 17000,1000000,10000000] [--steps 30]
"""

from __future__ import annotations

import argparse

from common import RESULTS, command_line, machine, write_results
from tqdm import tqdm

from afm_jax.lab.table_scale import measure, to_markdown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", default="17000,1000000,10000000",
                    help="total vocabulary rows over the 26 tables, comma-separated")
    ap.add_argument("--optimizers", default="rowwise,rowwise_adagrad,dense")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=str(RESULTS / "table_scale"))
    args = ap.parse_args()
    todo = [(int(v), o) for v in args.vocab.split(",") for o in args.optimizers.split(",")]
    rows = [measure(v, o, args.steps) for v, o in tqdm(todo, desc="configurations")]
    md = to_markdown(rows, command_line(), machine())
    write_results(args.out, rows, md)


if __name__ == "__main__":
    main()
