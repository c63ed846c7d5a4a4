"""One JAX persistent compilation cache for the whole test session.

The two pytest-xdist workers and the subprocesses tests start (CLI runs, mesh workers) compile
many of the same functions at the same shapes; with a cache they share, each is compiled once.
The cache lives in a fresh temporary folder that the session removes at its end, so no run
reads code compiled by another. Set JAX_COMPILATION_CACHE_DIR yourself to keep one.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_ENV = "JAX_COMPILATION_CACHE_DIR"
_made: list[str] = []


def pytest_configure(config) -> None:
    # the controller runs first; the workers and subprocesses inherit its environment
    if os.environ.get(_ENV):
        return
    path = tempfile.mkdtemp(prefix="afm_jax_tests_jax_cache_")
    _made.append(path)
    os.environ.update({_ENV: path, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"})


def pytest_unconfigure(config) -> None:
    for path in _made:
        shutil.rmtree(path, ignore_errors=True)
