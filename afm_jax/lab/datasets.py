"""The real data samples the experiments and the paper table run on, by name: one table for both.

Each entry is (data spec, load options) for `afm_jax.data.load_dataset`. The samples live in one
folder (`criteo/`, `avazu/`, `frappe/`, `movielens100k/`): by default `$AFM_JAX_DATA`, else
`../shared/data` beside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    """`$AFM_JAX_DATA` when set, else `<repo>/../shared/data`."""
    env = os.environ.get("AFM_JAX_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def real_datasets(data_dir: str | Path | None = None) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (data spec, load options) for the real samples under `data_dir` (default above).

    Options: Criteo keeps values seen >= 10 times, both Avazu samples >= 2 times; Frappe's two
    libfm files are pooled and split at random (seed 0); MovieLens-100k uses its defaults.
    """
    d = Path(data_dir) if data_dir is not None else default_data_dir()
    return {
        "movielens": (f"movielens:{d / 'movielens100k'}", {}),
        "frappe": (f"libfm:{d / 'frappe' / 'frappe.validation.libfm'},"
                   f"{d / 'frappe' / 'frappe.test.libfm'}", {"split": "random", "seed": 0}),
        "avazu": (f"avazu:{d / 'avazu' / 'sample.csv'}", {"min_count": 2}),
        "avazu_partial": (f"avazu:{d / 'avazu' / 'random15k_partial.csv'}", {"min_count": 2}),
        "criteo": (f"criteo:{d / 'criteo' / 'train.tsv'}", {"min_count": 10}),
    }


def load_real(name: str, data_dir: str | Path | None = None, **kwargs: Any):
    """`load_dataset` on the named sample with its options; kwargs (e.g. max_rows, progress)
    pass through."""
    from afm_jax.data import load_dataset
    from afm_jax.errors import AfmError

    known = real_datasets(data_dir)
    if name not in known:
        raise AfmError(f"unknown dataset {name!r}; choose from {sorted(known)}")
    spec, options = known[name]
    return load_dataset(spec, **options, **kwargs)
