"""The paper's table: 7 models x the real samples x 3 seeds, AFM against SVD, int8 and TT-Rec.

    python experiments/paper_table.py [--datasets movielens,frappe,avazu,avazu_partial,criteo]
        [--models deepfm,dcn,dcnv2,fibinet,nfm,autoint,gdcn] [--seeds 0,1,2]
        [--methods all|core] [--max-rows criteo=40000] [--data ../shared/data]
        [--out experiments/results]

Every dataset runs on its whole sample unless capped: `--max-rows criteo=40000`, or the dataset
name `criteo_40k`, runs the first 40,000 rows of the file as a dataset of its own (`criteo_40k`
cells and report section). `--methods core` runs the original, AFM dense/embed/both, SVD at the
same plans, int8 (alone, after AFM both, and float AFM at the bytes of each) and the AFM/SVD
budget sweep; it leaves out TT-Rec, the seed-code config, the fine-tunes and the calibration
sweep (`afm_jax.lab.paper_table.METHODS`).

Resumable: each finished (dataset, model, seed) is kept in experiments/results/paper_table_cells/
and skipped on the next run; a kept cell that lacks some method asked for gets only those rows
added (its original trained again with the same seed and checked to score as the stored one).
Cells of a capped dataset stored under the plain name are renamed first (criteo -> criteo_40k).
Writes experiments/results/paper_table.md/.json and paper_*.png.
Same as `afm-jax experiment paper-table`.
"""

from __future__ import annotations

import sys

from afm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", "paper-table", *sys.argv[1:]]))
