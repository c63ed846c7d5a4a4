"""Caching of compiled code: per-model compiled functions in process, XLA executables on disk.

Every in-process cache of the package is registered here, so that `clear_compiled` empties all
of them (`registered_caches` lists them with their sizes). No cache reads ambient state: each
key holds everything the cached function reads. A model's key is the model object itself (a
frozen Flax module: its class, `info`, `config` and `compute_dtype`, the precision of its
products), so a model at another precision (`models.with_precision`) never meets another's
compiled code. The caches and their keys:

  inference._scorer         (model, data shards of the mesh) -> the jitted scorer. Chunking
                            reads the backend (`default_chunk_rows`), fixed for a process.
  train._adam_step          (model, learning rate, embed L2, table optimizer, table learning
                            rate) -> the jitted train step (dense Adam or row-wise).
  compress.stats._update_fn (model, sites taken per row, sites counted by id, mesh) -> the
                            jitted per-batch statistics update (chunking as the scorer's).
  compress.stats sites      (model, params treedef with leaf shapes and dtypes, batch shapes)
                            -> the model's sites, their output dims and vectors per example.
  compress.afm eigen        (covariance shape, blake2b of its float64 bytes) -> eigenvectors
                            and eigenvalues (numpy, read-only).
  lab.train_bench flops     (jitted step, args treedef with leaf shapes and dtypes) -> FLOPs
                            of one step (registered when afm_jax.lab.train_bench is imported).

JAX's own tracing and compilation caches (module-level `jax.jit` functions such as
`rowwise._settle_tables`) key on their static arguments and avals; `clear_compiled` clears them
too (`jax.clear_caches`).
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

_REGISTRY: dict[str, tuple[Callable[[], None], Callable[[], int]]] = {}


def register(name: str, clear: Callable[[], None], size: Callable[[], int]) -> None:
    """Register a cache under `name` (e.g. "afm_jax.inference._scorer"): `clear_compiled`
    calls `clear`, `registered_caches` reports `size()` entries."""
    _REGISTRY[name] = (clear, size)


def registered_caches() -> dict[str, int]:
    """Every registered cache by name, with its number of entries."""
    return {name: size() for name, (_, size) in _REGISTRY.items()}


def clear_compiled() -> None:
    """Drop every registered cache and JAX's compilation caches. A long process that goes
    through many models (e.g. the paper table) calls this between models: each compiled
    executable holds memory mappings, and thousands of them exhaust the process's map limit."""
    import gc

    import jax

    for clear, _ in _REGISTRY.values():
        clear()
    jax.clear_caches()
    gc.collect()


def cache_per_model(maxsize: int = 32):
    """`functools.lru_cache` for functions of a model (and other hashable args), which falls
    back to an uncached call when an argument cannot be hashed (e.g. a model whose field info
    is a plain namespace): compiled functions are reused where possible, never required.
    Registered under the function's module and name."""

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
        register(f"{fn.__module__}.{fn.__qualname__}", cached.cache_clear,
                 lambda: cached.cache_info().currsize)
        return call

    return wrap


class KeyedCache:
    """A bounded least-recently-used cache of values computed from a hashable key, registered
    under `name`: `get(key, make)` returns the cached value or stores `make()`. A key that
    cannot be hashed is computed every time, never cached."""

    def __init__(self, name: str, maxsize: int):
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self.maxsize = maxsize
        register(name, self.clear, self.__len__)

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        try:
            hash(key)
        except TypeError:
            return make()
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        if len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


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
