"""Caching of compiled code: per-model compiled functions in process, XLA executables on disk."""

from __future__ import annotations

import os
from pathlib import Path

_CACHES: list = []


def clear_compiled() -> None:
    """Drop every cached per-model function and JAX's compilation caches. A long process that
    goes through many models (e.g. the paper table) calls this between models: each compiled
    executable holds memory mappings, and thousands of them exhaust the process's map limit."""
    import gc

    import jax

    for clear in _CACHES:
        clear()
    jax.clear_caches()
    gc.collect()


def cache_per_model(maxsize: int = 32):
    """`functools.lru_cache` for functions of a model (and other hashable args), which falls
    back to an uncached call when an argument cannot be hashed (e.g. a model whose field info
    is a plain namespace): compiled functions are reused where possible, never required."""
    import functools

    def wrap(fn):
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(*args):
            try:
                hash(args)
            except TypeError:
                return fn(*args)
            return cached(*args)

        call.cache_clear = cached.cache_clear
        _CACHES.append(cached.cache_clear)
        return call

    return wrap


def enable_compile_cache(cache_root: str | os.PathLike | None = None) -> Path:
    """Keep XLA executables in JAX's persistent compilation cache under `cache_root/jax_compile`.

    cache_root: the project's cache root (default ~/.cache/afm_jax, as for encoded data). A
    second run of the same command then loads its jitted steps from disk instead of compiling
    them. JAX by default only writes executables that took over a second to compile, which
    leaves out most of a CLI run's CPU programs; this writes every one, and small ones are
    cheap to read back. Returns the cache directory.
    """
    import jax

    if cache_root is None:
        from afm_jax.data.dataset import default_cache_root
        cache_root = default_cache_root()
    path = Path(cache_root).expanduser() / "jax_compile"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
