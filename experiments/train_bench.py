"""Training-speed benchmark on the shared Criteo sample: a whole afm_jax epoch vs the bare jitted
step, DeepCTR-Torch and FuxiCTR (see afm_jax/lab/train_bench.py). Writes
experiments/results/train_bench.md and .json."""

from __future__ import annotations

import argparse
import json

from common import RESULTS, command_line, load, machine

from afm_jax.lab import train_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["deepfm", "dcnv2"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1024, 4096])
    ap.add_argument("--max-rows", type=int, default=None,
                    help="use only the first N training rows (deterministic)")
    ap.add_argument("--peers", nargs="*", default=["deepctr", "fuxictr"])
    ap.add_argument("--no-extras", action="store_true",
                    help="skip the collect_stats / finetune rates")
    ap.add_argument("--out", default=str(RESULTS / "train_bench"))
    args = ap.parse_args()
    ds = load("criteo", progress=False)
    result = train_bench.run(ds, models=args.models, batch_sizes=args.batch_sizes,
                             rounds=args.rounds, peers=args.peers, max_rows=args.max_rows,
                             extras=not args.no_extras)
    result["command"] = command_line()
    result["machine"] = machine()
    md = train_bench.to_markdown(result, result["command"], result["machine"])
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
