"""Caching of per-model compiled functions."""

from __future__ import annotations

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
