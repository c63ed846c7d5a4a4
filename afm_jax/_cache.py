"""Caching of per-model compiled functions."""

from __future__ import annotations


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
        return call

    return wrap
