"""Whole training epochs against table rows: afm_jax `train()` with row-wise and dense table
updates beside DeepCTR-Torch's `fit`, on the same synthetic rows.

The rows are table_scale's (`vocab_sizes`: Criteo-proportioned vocabularies over 26
categorical fields, `synthetic_rows`: Zipf ids); only the categorical fields, because the peer
(`train_bench._deepctr`) feeds categorical fields alone. DeepFM, embeddings 16, MLP 400-400-400,
Adam, one epoch at the same batch. Per (table rows, batch) one fresh process holds every
contender and runs them in `rounds` rounds, alternating, the order rotated each round; rows/s =
training rows / wall seconds of the whole call:

- ``afm_jax rowwise`` / ``afm_jax dense``: ``train(model, ds, TrainConfig(epochs=1,
  batch_size=B, table_optimizer=...))``: params init and packing, the epoch, and the
  end-of-epoch validation pass train() always runs (on a small `valid_rows` split) included;
  each warmed once beforehand on two batches (its step and scorer compiled), as is the peer;
- ``DeepCTR-Torch fit``: ``model.fit(x, y, batch_size=B, epochs=1)`` (no validation; the
  model built before the clock), torch on `torch_threads` threads.
"""

from __future__ import annotations

import os
import time

import numpy as np

from afm_jax.lab.table_scale import _subprocess, synthetic_rows, vocab_sizes

CONTENDERS = ("afm_jax rowwise", "afm_jax dense", "DeepCTR-Torch fit")


def synthetic_table_dataset(total: int, rows: int, valid_rows: int = 4096, seed: int = 0):
    """A `Dataset` of `rows` training and `valid_rows` validation (and test) rows of
    `synthetic_rows` over `vocab_sizes(total)`, categorical fields only."""
    from afm_jax.data import FeatureInfo
    from afm_jax.data.splits import Dataset, EncodedSplit

    sizes = vocab_sizes(total)
    info = FeatureInfo(cat_names=tuple(f"C{i}" for i in range(len(sizes))),
                       vocab_sizes=tuple(sizes))
    rng = np.random.default_rng(seed)

    def split(n):
        cat, _, label = synthetic_rows(sizes, n, rng, num_fields=0)
        return EncodedSplit(cat, np.zeros((n, 0), np.float32), label)

    valid = split(valid_rows)
    return Dataset("table_peers", info, split(rows), valid, valid, None,
                   {"total_rows": total, "train_rows": rows})


def _epochs_worker(total: int, batch: int, rows: int, rounds: int, valid_rows: int = 4096,
                   torch_threads: int = 2, embed_dim: int = 16, mlp=(400, 400, 400),
                   peer: bool = True) -> dict:
    """Every contender in this one process (see the module docstring); rows/s of each round."""
    import jax

    from afm_jax.lab.train_bench import _deepctr, peer_versions, subsample
    from afm_jax.models import build_model
    from afm_jax.train import TrainConfig, train

    ds = synthetic_table_dataset(total, rows, valid_rows)
    model = build_model("deepfm", ds.info, embed_dim=embed_dim, mlp=tuple(mlp))

    def afm(optimizer):
        def go(data, seed):
            res = train(model, data, TrainConfig(epochs=1, batch_size=batch, seed=seed,
                                                 table_optimizer=optimizer), progress=False)
            jax.block_until_ready(res.params)
        return go

    fns = {"afm_jax rowwise": afm("rowwise"), "afm_jax dense": afm("dense")}
    versions = peer_versions() if peer else {}
    if versions.get("deepctr"):
        import torch
        torch.set_num_threads(torch_threads)
        fns["DeepCTR-Torch fit"] = lambda data, seed: _deepctr("deepfm", data, batch, seed,
                                                               embed_dim, mlp)
    warm = subsample(ds, 2 * batch)
    for fn in fns.values():   # compile the step and the scorer; the peer's first-call costs
        fn(warm, 0)
    names = list(fns)
    rows_s: dict[str, list[float]] = {k: [] for k in names}
    load: list[float] = []   # the machine's 1-minute load average after each round
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[k](ds, r)
            rows_s[k].append(rows / (time.perf_counter() - t0))
        load.append(os.getloadavg()[0])
    return {"vocab_rows": int(sum(ds.info.vocab_sizes)), "batch": batch, "train_rows": rows,
            "valid_rows": valid_rows, "rounds": rounds, "torch_threads": torch_threads,
            "versions": versions, "rows_s": rows_s, "load": load,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "median": {k: float(np.median(v)) for k, v in rows_s.items()}}


def epochs(total: int, batch: int, rows: int, rounds: int = 3, valid_rows: int = 4096,
           torch_threads: int = 2, embed_dim: int = 16, mlp=(400, 400, 400),
           peer: bool = True) -> dict:
    """`_epochs_worker` in a fresh subprocess; an error becomes a row with it."""
    return _subprocess(f"_epochs_worker({total}, {batch}, {rows}, {rounds}, {valid_rows}, "
                       f"{torch_threads}, {embed_dim}, {tuple(mlp)!r}, {peer})",
                       {"vocab_rows": total, "batch": batch}, module=__name__)


def ratios(row: dict, a: str, b: str) -> np.ndarray:
    """Per round, `a`'s rows/s over `b`'s (the same round: the same load on both)."""
    return np.asarray(row["rows_s"][a]) / np.asarray(row["rows_s"][b])


def epochs_markdown(rows: list[dict], command: str, machine: str, note: str = "") -> str:
    """The table: per (table rows, batch) each contender's median rows/s and the per-round
    ratios row-wise / dense and row-wise / DeepCTR-Torch (median [min-max])."""
    first = next((r for r in rows if "error" not in r), {})
    v = first.get("versions", {})
    peer = (f"torch {v.get('torch')} on {first.get('torch_threads')} threads "
            f"(OMP_WAIT_POLICY={first.get('omp_wait_policy') or 'unset'}), DeepCTR-Torch "
            f"{v.get('deepctr')}" if v.get("deepctr") else "DeepCTR-Torch not installed")
    lines = ["# Whole training epochs against table rows, beside DeepCTR-Torch\n",
             f"Command: `{command}`\n",
             f"On {machine}, load average {os.getloadavg()[0]:.1f} at the end; {peer}. "
             f"{first.get('train_rows', 0):,} training rows (synthetic: table_scale's 26 "
             "categorical fields in Criteo's proportions, Zipf ids; no numeric fields, since "
             "the peer's setup, `train_bench._deepctr`, feeds categorical fields only), DeepFM, "
             "embeddings 16, MLP 400-400-400, Adam, one epoch. Per (table rows, batch) one "
             "process holds all contenders and runs them in rounds, alternating, order rotated "
             f"each round ({first.get('rounds', 0)} rounds); rows/s = training rows / wall "
             "seconds of the whole call, median over the rounds; ratios are per round (the "
             "same load on both), median [min-max].\n",
             "- *row-wise*, *dense*: `train(model, ds, TrainConfig(epochs=1, batch_size=B, "
             "table_optimizer=...))`, the whole call: params init and packing, the epoch, and "
             f"the validation pass train() runs after each epoch (on {first.get('valid_rows', 0):,} "
             "rows); step and scorer compiled in an untimed warm-up call (two batches), which "
             "every contender gets.",
             "- *DeepCTR-Torch*: DeepFM `fit(x, y, batch_size=B, epochs=1)`, no validation; "
             "the model (its tables' init) built before the clock. Its embeddings are dense "
             "(`sparse=False`), so its Adam updates every table row each step."
             + (f"\n\n{note}" if note else "") + "\n",
             "| table rows | batch | row-wise rows/s | dense rows/s | DeepCTR-Torch rows/s | "
             "row-wise / dense | row-wise / DeepCTR-Torch | dense / DeepCTR-Torch |",
             "|---:|---:|---:|---:|---:|---|---|---|"]

    def cell(r, a, b):
        if a not in r["rows_s"] or b not in r["rows_s"]:
            return "-"
        q = ratios(r, a, b)
        return f"{np.median(q):.2f}x [{q.min():.2f}-{q.max():.2f}]"

    for r in rows:
        if "error" in r:
            lines.append(f"| {r['vocab_rows']:,} | {r['batch']} | failed: {r['error'][-120:]} "
                         "| | | | | |")
            continue
        med = r["median"]
        peer_s = f"{med[CONTENDERS[2]]:,.0f}" if CONTENDERS[2] in med else "-"
        lines.append(f"| {r['vocab_rows']:,} | {r['batch']} | {med[CONTENDERS[0]]:,.0f} | "
                     f"{med[CONTENDERS[1]]:,.0f} | {peer_s} | "
                     f"{cell(r, CONTENDERS[0], CONTENDERS[1])} | "
                     f"{cell(r, CONTENDERS[0], CONTENDERS[2])} | "
                     f"{cell(r, CONTENDERS[1], CONTENDERS[2])} |")
    return "\n".join(lines) + "\n"
