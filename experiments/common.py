"""Shared pieces of the experiment scripts: where the real data is, and the datasets by name."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import jax

from afm_jax.lab.datasets import default_data_dir, load_real

ROOT = Path(__file__).resolve().parents[1]
DATA = default_data_dir()  # $AFM_JAX_DATA, else ../shared/data beside the repository
RESULTS = ROOT / "experiments" / "results"


def load(name: str, progress: bool = True):
    """The named real sample (afm_jax.lab.datasets: the table the paper table uses too)."""
    return load_real(name, DATA, progress=progress)


def command_line() -> str:
    """The command that ran this script, with XLA_FLAGS when set (e.g. forced host devices)."""
    flags = os.environ.get("XLA_FLAGS")
    env = f"XLA_FLAGS={flags} " if flags else ""
    return env + "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def machine() -> str:
    dev = jax.devices()[0]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"JAX {jax.__version__} on {dev.platform}")


def write_results(out: str, data, md: str) -> None:
    """`out`.json (the raw figures) and `out`.md (the report), and the report on stdout."""
    import json

    with open(out + ".json", "w") as f:
        json.dump(data, f, indent=1, default=str)
    with open(out + ".md", "w") as f:
        f.write(md)
    print(md)
