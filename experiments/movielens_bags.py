"""MovieLens-100k with multi-valued inputs (issue 22): does a user's history help, does DIN help,
and does AFM keep it? Test AUC and logloss over seeds.

Variants (time-ordered 8:1:1 split, 2 epochs, seeds 0..N-1):
  - DeepFM, first genre: today's reader (`genre` = the first genre flag set);
  - DeepFM, genres: every genre as a multi-valued field (mean-pooled);
  - DeepFM, genres + history: plus the movies the user rated strictly earlier (most recent
    first, max 20), a sequence sharing the `movie` table, mean-pooled;
  - DIN, genres + history: target attention of the movie over the history.
Each trained model is then compressed with AFM at `--plan` (default budget:0.3, about 3.3x fewer
compressible params) and scored again (no fine-tune).

    python experiments/movielens_bags.py [--seeds 3] [--plan budget:0.3] [--out experiments/results/movielens_bags]
"""

from __future__ import annotations

import argparse

import numpy as np
from common import DATA, RESULTS, command_line, machine, write_results

from afm_jax import compress_model
from afm_jax.data import load_dataset
from afm_jax.data.readers import MOVIELENS_BAG_SCHEMA, MOVIELENS_FIELDS
from afm_jax.data.schema import BagSpec, Schema
from afm_jax.inference import count_params, device_params, evaluate, make_scorer
from afm_jax.models import build_model
from afm_jax.train import TrainConfig, train

GENRES = Schema(label="label", categorical=tuple(f for f in MOVIELENS_FIELDS if f != "genre"),
                bags=(BagSpec("genres", max_len=6, combiner="mean"),))
VARIANTS = {  # name: (model, schema)
    "DeepFM, first genre": ("deepfm", None),
    "DeepFM, genres": ("deepfm", GENRES),
    "DeepFM, genres + history": ("deepfm", MOVIELENS_BAG_SCHEMA),
    "DIN, genres + history": ("din", MOVIELENS_BAG_SCHEMA),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--plan", default="budget:0.3")
    ap.add_argument("--out", default=str(RESULTS / "movielens_bags"))
    args = ap.parse_args()
    spec = f"movielens:{DATA / 'movielens100k'}"
    rows = []
    for name, (model_name, schema) in VARIANTS.items():
        ds = load_dataset(spec, schema=schema, progress=False)
        model = build_model(model_name, ds.info)
        scorer = make_scorer(model)
        for seed in range(args.seeds):
            params = train(model, ds, TrainConfig(epochs=args.epochs, seed=seed), progress=False).params
            test = evaluate(scorer, device_params(model, params), ds.test)
            small = compress_model(model, params, ds, args.plan, progress=False).params
            ctest = evaluate(scorer, device_params(model, small), ds.test)
            row = {"variant": name, "seed": seed, "auc": test["auc"], "logloss": test["logloss"],
                   "afm_auc": ctest["auc"], "afm_logloss": ctest["logloss"],
                   "params": count_params(params), "afm_params": count_params(small)}
            rows.append(row)
            print(row, flush=True)
    write_results(args.out, rows, to_markdown(rows, args))


def to_markdown(rows: list[dict], args) -> str:
    def ms(v):
        return f"{np.mean(v):.4f} ± {np.std(v):.4f}"

    lines = ["# MovieLens-100k with genres and history: DeepFM and DIN, and AFM on them", "",
             f"Command: `{command_line()}`  ", f"Machine: {machine()}", "",
             f"Time-ordered 8:1:1 split, {args.epochs} epochs, seeds 0..{args.seeds - 1}; mean ± std "
             f"over seeds. AFM: `{args.plan}` on the trained model, no fine-tune.", "",
             "| variant | params | test AUC | test logloss | AFM params | AFM test AUC | AFM test logloss |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in VARIANTS:
        r = [x for x in rows if x["variant"] == name]
        lines.append(f"| {name} | {r[0]['params']:,} | {ms([x['auc'] for x in r])} | "
                     f"{ms([x['logloss'] for x in r])} | {r[0]['afm_params']:,} | "
                     f"{ms([x['afm_auc'] for x in r])} | {ms([x['afm_logloss'] for x in r])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
