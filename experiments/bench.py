"""Scoring benchmark: afm_jax original vs AFM forms vs plain PyTorch, against the matmul ceiling.

    python experiments/bench.py [--models deepfm,dcnv2] [--batch-sizes 1,64,1024,8192] [--no-torch]

Writes experiments/results/bench_<platform>.md and .json (bench_cpu.md on this machine).
Same as `afm-jax bench`.
"""

from __future__ import annotations

import sys

from afm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
