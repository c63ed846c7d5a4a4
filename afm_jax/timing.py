"""One timing rule for the benchmarks: the median wall time of warm, completed calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def median_seconds(fn: Callable[..., Any], *args: Any, repeats: int = 5) -> float:
    """Median seconds of `repeats` calls of `fn(*args)`, each waited for to completion
    (`jax.block_until_ready`), after one untimed call (compile, first touch)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
