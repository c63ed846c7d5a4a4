"""The paper's table: 7 models x the real samples x 3 seeds, AFM against SVD and TT-Rec.

    python experiments/paper_table.py [--datasets movielens,frappe,avazu,avazu_partial,criteo]
        [--models deepfm,dcn,dcnv2,fibinet,nfm,autoint,gdcn] [--seeds 0,1,2]
        [--max-rows criteo=40000] [--data ../shared/data] [--out experiments/results]

Resumable: each finished (dataset, model, seed) is kept in experiments/results/paper_table_cells/ and skipped
on the next run. Writes experiments/results/paper_table.md/.json and paper_*.png.
Same as `afm-jax experiment paper-table`.
"""

from __future__ import annotations

import sys

from afm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", "paper-table", *sys.argv[1:]]))
