"""Streaming output statistics of every compressible site: count, mean and covariance.

One pass over the data; per batch a jitted pure update merges the batch's centred moments into
the running ones (Chan, Golub & LeVeque), so a large output mean (1e3 with std 1) costs no
precision in float32, and memory does not depend on the number of rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from afm_jax._cache import cache_per_model
from afm_jax.errors import CompressionError
from afm_jax.inference import chunked, default_chunk_rows, to_chunks
from afm_jax.nn import SOW_COLLECTION


class SiteStats(NamedTuple):
    """Statistics of one site's output vectors y: [d] over `count` rows (float64, on host)."""

    count: int
    mean: np.ndarray   # [d]
    cov: np.ndarray    # [d, d], population covariance E[(y - mean)(y - mean)^T]


class Moments(NamedTuple):
    """Running moments of one site on device: rows, mean [d], centred sum of squares [d, d]."""

    n: jax.Array
    mean: jax.Array
    m2: jax.Array


def batch_moments(y: jax.Array, weight: jax.Array | None = None) -> Moments:
    """Moments of a batch y: [B, d], centred on the batch mean before squaring.

    weight: [B] row weights (0 for padding rows, which then count for nothing)."""
    if weight is None:
        n = jnp.asarray(y.shape[0], jnp.float32)
        mean = y.mean(0)
        c = y - mean
        m2 = jnp.matmul(c.T, c, precision=jax.lax.Precision.HIGHEST)
        return Moments(n, mean, m2)
    w = weight.astype(jnp.float32)
    n = w.sum()
    mean = jnp.matmul(w, y, precision=jax.lax.Precision.HIGHEST) / jnp.maximum(n, 1.0)
    # a second, centred pass corrects the mean's rounding (sums split across devices add up in
    # another order than on one device; this keeps both within float32 rounding of the mean)
    mean = mean + jnp.matmul(w, y - mean, precision=jax.lax.Precision.HIGHEST) / jnp.maximum(n, 1.0)
    c = y - mean
    m2 = jnp.matmul((c * w[:, None]).T, c, precision=jax.lax.Precision.HIGHEST)
    return Moments(n, mean, m2)


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Chan et al.'s pairwise merge of two sets of centred moments (exact in exact arithmetic)."""
    n = a.n + b.n
    frac = jnp.where(n > 0, b.n / jnp.maximum(n, 1.0), 0.0)
    delta = b.mean - a.mean
    mean = a.mean + delta * frac
    m2 = a.m2 + b.m2 + jnp.outer(delta, delta) * (a.n * frac)
    return Moments(n, mean, m2)


def site_outputs(model, params, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Every site's output vectors for a batch: {"mlp/dense_0": [B, d], "embed/C1": [B, d], ...}.

    A site applied T times per example (per field, per head) gives [B * T, d].
    """

    def one(cat, num):
        _, state = model.apply({"params": params}, cat, num, mutable=[SOW_COLLECTION])
        return state.get(SOW_COLLECTION, {})

    sown = jax.vmap(one)(batch["cat"], batch["num"])
    flat = jax.tree_util.tree_flatten_with_path(sown)[0]
    out = {}
    for path, leaf in flat:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        if keys and keys[-1] == "out":
            keys = keys[:-1]
        # a Linear applied to several vectors per example (attention heads, CIN rows) gives one
        # output vector per application: each is a row of the statistics
        out["/".join(keys)] = leaf.reshape(-1, leaf.shape[-1])
    return out


def list_sites(model, params, example_batch: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Site name -> (output dim, output vectors per example), by tracing the model once.

    Cached on the model and the shapes of params and batch, so repeated passes do not retrace.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    key = (treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves),
           np.shape(example_batch["cat"]), np.shape(example_batch["num"]))
    return dict(_traced_sites(model, key, params, example_batch))


_SITE_CACHE: dict = {}


def _traced_sites(model, key, params, example_batch) -> tuple[tuple[str, tuple[int, int]], ...]:
    full_key = (model, key)
    try:
        hash(full_key)
    except TypeError:  # a model that cannot be hashed: trace every time
        full_key = None
    if full_key is None or full_key not in _SITE_CACHE:
        if len(_SITE_CACHE) > 64:
            _SITE_CACHE.clear()
        shapes = jax.eval_shape(partial(site_outputs, model), params, example_batch)
        b = int(np.shape(example_batch["cat"])[0])
        found = tuple((k, (int(v.shape[-1]), int(v.shape[0]) // b)) for k, v in shapes.items())
        if full_key is None:
            return found
        _SITE_CACHE[full_key] = found
    return _SITE_CACHE[full_key]


def _update(model, sites: tuple[str, ...], shards: int, carry: tuple[dict[str, Moments], jax.Array],
            params, batch):
    """Merge one batch into (per-site moments, rows seen). With `shards` devices on the batch
    axis, the chunks of the CPU scan (`inference.to_chunks`) take rows from every device's part
    of the batch, so each scan step stays sharded and the compiler reduces its moments across
    devices."""

    def merge(carry, part):
        moments, rows = carry
        outs = site_outputs(model, params, part)
        w = part.get("weight")
        new = {}
        for s in sites:
            y = outs[s].astype(jnp.float32)
            ws = None if w is None else jnp.repeat(w, y.shape[0] // w.shape[0])
            new[s] = merge_moments(moments[s], batch_moments(y, ws))
        seen = part["cat"].shape[0] if w is None else jnp.round(w.sum()).astype(jnp.int32)
        return (new, rows + seen), None

    n = batch["cat"].shape[0]
    chunk = default_chunk_rows()
    if not chunked(n, shards, chunk):
        return merge(carry, batch)[0]
    # on a CPU, cache-sized chunks merged one after another (as in the scorer), each with rows
    # from every device's block; rows padded into the last chunk get weight 0
    if (n // shards) % chunk and "weight" not in batch:
        batch = {**batch, "weight": jnp.ones((n,), jnp.float32)}
    return jax.lax.scan(merge, carry, jax.tree.map(lambda x: to_chunks(x, shards, chunk), batch))[0]


@cache_per_model(32)
def _update_fn(model, sites: tuple[str, ...], shards: int = 1):
    """The jitted per-batch update, cached so repeated passes over one model compile once."""
    return jax.jit(partial(_update, model, sites, shards), donate_argnums=(0,))


def collect_stats(model, params, batches: Iterable[Mapping[str, Any]],
                  sites: Sequence[str] | None = None, *, total: int | None = None,
                  progress: bool = True, mesh=None) -> dict[str, SiteStats]:
    """One pass over `batches`; per site the count, mean and covariance of its output vectors.

    batches: iterable of {"cat": int32[B, Fc], "num": float32[B, Fn], ...}, optionally with
    "weight" [B] (rows of weight 0, e.g. padding, count for nothing); sites: names
    ("mlp/dense_0", "embed/C7"); None means every site. `total` sizes the progress bar.
    mesh: a `jax.sharding.Mesh` (see `afm_jax.distributed`): host batches are sharded on their
    batch axis over "data" (`data.batching.shard_batch`; batches from
    `iterate_batches(..., mesh=mesh)` are used as they are), params should be placed with
    `shard_params`; the compiler reduces the moments across devices and processes.
    """
    from afm_jax import distributed
    from afm_jax.data.batching import shard_batch
    from afm_jax.packing import unpack

    params = unpack(model, params)   # sites are per-field paths: statistics run per field
    it = iter(batches)
    try:
        first = next(it)
    except StopIteration:
        raise CompressionError("collect_stats got no batches: pass at least one row") from None
    found = list_sites(model, params, {"cat": first["cat"], "num": first["num"]})
    dims = {s: d for s, (d, _) in found.items()}
    per_example = {s: t for s, (_, t) in found.items()}
    if sites is None:
        sites = tuple(dims)
    else:
        unknown = [s for s in sites if s not in dims]
        if unknown:
            raise CompressionError(f"unknown site(s) {unknown}; this model's sites are "
                                   f"{sorted(dims)}")
        sites = tuple(sites)
    moments = {s: Moments(jnp.zeros((), jnp.float32), jnp.zeros((dims[s],), jnp.float32),
                          jnp.zeros((dims[s], dims[s]), jnp.float32)) for s in sites}
    carry = (moments, jnp.zeros((), jnp.int32))
    if mesh is not None:
        carry = jax.device_put(carry, distributed.replicated(mesh))
    update = _update_fn(model, sites, distributed.data_size(mesh))
    keys = ("cat", "num", "weight")
    bar = tqdm(total=total, desc="statistics", unit="batch", disable=not progress, leave=False)
    for b in itertools.chain([first], it):
        b = {k: b[k] for k in keys if k in b}
        if mesh is not None:  # always weighted: the weighted update's centred second pass
            b = shard_batch(b, mesh)  # keeps the mean exact across devices
        carry = update(carry, params, b)
        bar.update(1)
    bar.close()
    moments, rows = jax.device_get(carry) if mesh is None else jax.tree.map(distributed.fetch, carry)
    # rows are examples; a site applied T times per example has T * rows output vectors
    counts = {s: int(rows) * per_example[s] for s in sites}
    out = {}
    for s, m in moments.items():
        out[s] = SiteStats(count=counts[s], mean=np.asarray(m.mean, np.float64),
                           cov=np.asarray(m.m2, np.float64) / max(counts[s], 1))
    return out


def save_stats(path: str | Path, stats: Mapping[str, SiteStats]) -> None:
    """Write statistics as a plain .npz (arrays only; loaded with allow_pickle=False)."""
    arrays = {}
    for s, st in stats.items():
        arrays[f"{s}::count"] = np.asarray(st.count, np.int64)
        arrays[f"{s}::mean"] = st.mean
        arrays[f"{s}::cov"] = st.cov
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_stats(path: str | Path) -> dict[str, SiteStats]:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CompressionError(f"{path}: not a statistics file ({e})") from e
    with data:
        sites = sorted({k.rsplit("::", 1)[0] for k in data.files})
        try:
            return {s: SiteStats(int(data[f"{s}::count"]), data[f"{s}::mean"], data[f"{s}::cov"])
                    for s in sites}
        except KeyError as e:
            raise CompressionError(f"{path}: site entry {e} missing; file is damaged") from e
