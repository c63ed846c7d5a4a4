"""Shared pieces of the experiment scripts: where the real data is, and the datasets by name."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AFM_JAX_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "experiments" / "results"

# name -> (data spec, load options)
DATASETS = {
    "criteo": (f"criteo:{DATA / 'criteo' / 'train.tsv'}", {"min_count": 10}),
    "movielens": (f"movielens:{DATA / 'movielens100k'}", {}),
    "frappe": (f"libfm:{DATA / 'frappe' / 'frappe.validation.libfm'},"
               f"{DATA / 'frappe' / 'frappe.test.libfm'}", {"split": "random", "seed": 0}),
    "avazu": (f"avazu:{DATA / 'avazu' / 'sample.csv'}", {"min_count": 2}),
}


def load(name: str, progress: bool = True):
    from afm_jax.data import load_dataset
    spec, options = DATASETS[name]
    return load_dataset(spec, progress=progress, **options)


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def machine() -> str:
    dev = jax.devices()[0]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"JAX {jax.__version__} on {dev.platform}")
