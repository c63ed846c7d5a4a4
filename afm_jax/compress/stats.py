"""Streaming output statistics of every compressible site: count, mean and covariance.

One pass over the data; per batch a jitted pure update merges the batch's centred moments into
the running ones (Chan, Golub & LeVeque), so a large output mean (1e3 with std 1) costs no
precision in float32, and memory does not depend on the number of rows.

Over a mesh every device keeps its own moments of its own rows for the whole pass (a
`shard_map` over "data"; no collective in the per-batch update) and the per-device moments are
merged once, on host in float64. A site that is a plain full-table lookup ("embed/<field>")
needs no per-row products: the pass counts each id, and its mean and covariance follow exactly
from the counts and the table.
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

from afm_jax._cache import KeyedCache, cache_per_model
from afm_jax.errors import CompressionError
from afm_jax.inference import chunked, default_chunk_rows, model_batch, to_chunks
from afm_jax.nn import SOW_COLLECTION, in_vocab
from afm_jax.pooling import model_inputs


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

    A site applied T times per example (per field, per head) gives [B * T, d]. A bag field's
    site "embed/<bag>" is its pooled output (one vector per example, `pooling.pool`).
    """

    def one(cat, num):
        _, state = model.apply({"params": params}, cat, num, mutable=[SOW_COLLECTION])
        return state.get(SOW_COLLECTION, {})

    sown = jax.vmap(one)(model_inputs(batch), batch["num"])
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
           np.shape(example_batch["cat"]), np.shape(example_batch["num"]),
           tuple((k, np.shape(v)) for k, v in example_batch.get("bags", {}).items()))
    return dict(_traced_sites(model, key, params, example_batch))


_SITES = KeyedCache("afm_jax.compress.stats.sites", 64)


def _traced_sites(model, key, params, example_batch) -> tuple[tuple[str, tuple[int, int]], ...]:
    """(site, (output dim, vectors per example)) pairs, cached on (model, key) (`list_sites`)."""

    def trace() -> tuple[tuple[str, tuple[int, int]], ...]:
        shapes = jax.eval_shape(partial(site_outputs, model), params, example_batch)
        b = int(np.shape(example_batch["cat"])[0])
        return tuple((k, (int(v.shape[-1]), int(v.shape[0]) // b)) for k, v in shapes.items())

    return _SITES.get((model, key), trace)


class _Counted(NamedTuple):
    """A full-table site ("embed/<field>", params {"embedding": [V, d]}) whose statistics come
    from id counts: its output is row `id` of the table, so mean = c E / n and
    cov = (E - mean)^T diag(c) (E - mean) / n for the counts c of each id."""

    site: str
    field: str
    column: int   # the field's column in batch["cat"]
    rows: int     # ids in [0, rows) look up their own row, every other id row 0 (as the model)
    offset: int   # where the field's counts start in the flat count vector


def _counted_sites(model, params, sites: Sequence[str],
                   per_example: Mapping[str, int]) -> tuple[_Counted, ...]:
    """The sites among `sites` that are plain full-table lookups (`forms.table_form` "full"),
    one output row per example; their counts lie end to end in one flat vector."""
    from afm_jax.forms import table_form

    info, embed = getattr(model, "info", None), params.get("embed")
    if info is None or not isinstance(embed, Mapping):
        return ()
    dim = getattr(getattr(model, "config", None), "embed_dim", None)
    columns = {n: i for i, n in enumerate(info.cat_names)}
    found, offset = [], 0
    for s in sites:
        head, _, field = s.partition("/")
        node = embed.get(field) if head == "embed" else None
        if field not in columns or per_example.get(s) != 1 or table_form(node, dim) != "full":
            continue
        i = columns[field]
        rows = min(int(np.shape(node["embedding"])[0]), int(info.vocab_sizes[i]))
        found.append(_Counted(s, field, i, rows, offset))
        offset += rows
    return tuple(found)


def _count_ids(counts: jax.Array, counted: tuple[_Counted, ...], batch) -> jax.Array:
    """Add a batch's ids to the flat counts [sum rows] (int32): one scatter-add for all counted
    fields; a row counts round(weight) times (0 for padding), an id outside a table as id 0."""
    cat = batch["cat"]
    w = batch.get("weight")
    times = jnp.ones(cat.shape[:1], jnp.int32) if w is None else jnp.round(w).astype(jnp.int32)
    idx = []
    for c in counted:
        ids = cat[:, c.column]
        idx.append(in_vocab(ids, c.rows) + c.offset)
    return counts.at[jnp.concatenate(idx)].add(jnp.tile(times, len(counted)), mode="drop")


def _rows_in(batch) -> jax.Array | int:
    """Real rows of a batch: all of them, or the (0/1) weights' sum."""
    w = batch.get("weight")
    return batch["cat"].shape[0] if w is None else jnp.round(w.sum()).astype(jnp.int32)


def bag_sites(model) -> dict[str, Any]:
    """Site "embed/<bag>" -> its `BagInfo`, for every multi-valued field of `model`: the pooled
    output of the bag (an empty bag's zero is no observation: its rows weigh 0)."""
    return {f"embed/{b.name}": b for b in getattr(getattr(model, "info", None), "bags", ())}


def _update(model, sites: tuple[str, ...], counted: tuple[_Counted, ...], carry, params, batch):
    """Merge one batch into the carry (per-site moments of `sites`, rows seen, id counts of the
    `counted` sites), on one device: with a mesh each device runs this on its own rows
    (`_update_fn`), so nothing crosses devices until the pass ends."""
    bags = bag_sites(model)

    def merge(carry, part):
        moments, rows = carry
        outs = site_outputs(model, params, part)
        w = part.get("weight")
        new = {}
        for s in sites:
            y = outs[s].astype(jnp.float32)
            ws = None if w is None else jnp.repeat(w, y.shape[0] // w.shape[0])
            if s in bags:   # the pooled vectors of non-empty bags only
                full = (part["bag_len"][bags[s].name] > 0).astype(jnp.float32)
                ws = full if ws is None else ws * full
            new[s] = merge_moments(moments[s], batch_moments(y, ws))
        return (new, rows + _rows_in(part)), None

    moments, rows, counts = carry
    if counted:
        counts = _count_ids(counts, counted, batch)
    if not sites:  # every requested site is counted by id: no forward pass at all
        return moments, rows + _rows_in(batch), counts
    n = batch["cat"].shape[0]
    chunk = default_chunk_rows()
    if not chunked(n, 1, chunk):
        moments, rows = merge((moments, rows), batch)[0]
        return moments, rows, counts
    # on a CPU, cache-sized chunks merged one after another (as in the scorer); rows padded
    # into the last chunk get weight 0
    if n % chunk and "weight" not in batch:
        batch = {**batch, "weight": jnp.ones((n,), jnp.float32)}
    parts = jax.tree.map(lambda x: to_chunks(x, 1, chunk), batch)
    moments, rows = jax.lax.scan(merge, (moments, rows), parts)[0]
    return moments, rows, counts


@cache_per_model(32)
def _update_fn(model, sites: tuple[str, ...], counted: tuple[_Counted, ...] = (), mesh=None):
    """The jitted per-batch update, cached so repeated passes over one model compile once.

    With a mesh, a `shard_map` over "data": every carry leaf has a leading device axis sharded
    over "data" and each device merges its own rows into its own slice, so the update holds no
    cross-device collective; `collect_stats` merges the slices once, at the end of the pass.
    Other mesh axes ("model": row-sharded tables) stay with the compiler."""
    from jax.sharding import PartitionSpec as P

    from afm_jax.distributed import DATA

    if mesh is None:
        return jax.jit(partial(_update, model, sites, counted), donate_argnums=(0,))

    def local(carry, params, batch):
        carry = jax.tree.map(lambda x: x[0], carry)
        carry = _update(model, sites, counted, carry, params, batch)
        return jax.tree.map(lambda x: x[None], carry)

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(DATA), P(), P(DATA)),
                           out_specs=P(DATA), axis_names=frozenset({DATA}))
    return jax.jit(mapped, donate_argnums=(0,))


def _initial_carry(dims: Mapping[str, int], sites: tuple[str, ...], count_rows: int, mesh=None):
    """Zero moments, rows and counts; with a mesh one slice per device on "data" (a leading
    axis of size data_size(mesh) on every leaf, each process placing its devices' slices)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from afm_jax.distributed import DATA, data_size, from_host

    lead = () if mesh is None else (data_size(mesh),)
    zeros = jnp.zeros if mesh is None else np.zeros
    moments = {s: Moments(zeros(lead, np.float32), zeros(lead + (dims[s],), np.float32),
                          zeros(lead + (dims[s], dims[s]), np.float32)) for s in sites}
    carry = (moments, zeros(lead, np.int32), zeros(lead + (count_rows,), np.int32))
    if mesh is None:
        return carry
    sharding = NamedSharding(mesh, P(DATA))
    return jax.tree.map(lambda x: from_host(x, sharding), carry)


def _merge_slices(m: Moments) -> tuple[float, np.ndarray, np.ndarray]:
    """Per-device moments (leading axis D) merged on host in float64: total n, mean, m2
    (the D-way form of Chan's merge: m2 = sum m2_i + sum n_i (mean_i - mean)(mean_i - mean)^T)."""
    n = np.asarray(m.n, np.float64).reshape(-1)
    means = np.asarray(m.mean, np.float64).reshape(n.size, -1)
    m2s = np.asarray(m.m2, np.float64).reshape(n.size, means.shape[1], means.shape[1])
    if n.size == 1:
        return float(n[0]), means[0], m2s[0]
    total = float(n.sum())
    mean = (n @ means) / total if total > 0 else np.zeros(means.shape[1])
    delta = means - mean
    m2 = m2s.sum(0) + (delta * n[:, None]).T @ delta
    return total, mean, m2


def _table_stats(table: np.ndarray, counts: np.ndarray, count: int) -> SiteStats:
    """Exact statistics of the rows of `table` [V, d] looked up counts [V] times (float64)."""
    c = np.asarray(counts, np.float64)
    n = float(c.sum())
    d = table.shape[1]
    if n == 0:
        return SiteStats(count=count, mean=np.zeros(d), cov=np.zeros((d, d)))
    used = np.flatnonzero(c)
    rows = np.asarray(table[used], np.float64)
    mean = c[used] @ rows / n
    dev = rows - mean
    return SiteStats(count=count, mean=mean, cov=(dev * c[used, None]).T @ dev / n)


class _Plan(NamedTuple):
    """What one statistics pass computes: the requested sites, those taken per row and those
    counted by id, and each site's output vectors per example."""

    sites: tuple[str, ...]
    by_rows: tuple[str, ...]
    counted: tuple[_Counted, ...]
    per_example: dict[str, int]


def _prepare(model, params, example_batch: Mapping[str, Any], sites: Sequence[str] | None,
             exact_tables: bool = True, mesh=None):
    """(jitted update, zero carry, plan) of a pass over per-field `params`; the update is
    `carry = update(carry, params, batch)` (batch sharded over "data" with a mesh)."""
    found = list_sites(model, params, model_batch(example_batch))
    dims = {s: d for s, (d, _) in found.items()}
    per_example = {s: t for s, (_, t) in found.items()}
    shared = [s for s, b in bag_sites(model).items() if b.shares is not None and s in dims]
    if sites is None:
        sites = tuple(s for s in dims if s not in shared)
    else:
        unknown = [s for s in sites if s not in dims]
        if unknown:
            raise CompressionError(f"unknown site(s) {unknown}; this model's sites are "
                                   f"{sorted(dims)}")
        sites = tuple(sites)
    asked = [s for s in shared if s in sites]
    if asked:
        raise CompressionError(f"site(s) {asked} read another field's table: their pooled "
                               "statistics are merged into that table's site (embed/<shared>)")
    sites = sites + tuple(s for s in shared if f"embed/{bag_sites(model)[s].shares}" in sites)
    counted = _counted_sites(model, params, sites, per_example) if exact_tables else ()
    by_rows = tuple(s for s in sites if s not in {c.site for c in counted})
    carry = _initial_carry(dims, by_rows, sum(c.rows for c in counted), mesh)
    update = _update_fn(model, by_rows, counted, mesh)
    return update, carry, _Plan(sites, by_rows, counted, per_example)


def collect_stats(model, params, batches: Iterable[Mapping[str, Any]],
                  sites: Sequence[str] | None = None, *, total: int | None = None,
                  progress: bool = True, mesh=None, exact_tables: bool = True) -> dict[str, SiteStats]:
    """One pass over `batches`; per site the count, mean and covariance of its output vectors.

    batches: iterable of {"cat": int32[B, Fc], "num": float32[B, Fn], ...}, optionally with
    "weight" [B] (rows of weight 0, e.g. padding, count for nothing); sites: names
    ("mlp/dense_0", "embed/C7"); None means every site. `total` sizes the progress bar.
    mesh: a `jax.sharding.Mesh` (see `afm_jax.distributed`): host batches are sharded on their
    batch axis over "data" (`data.batching.shard_batch`; batches from
    `iterate_batches(..., mesh=mesh)` are used as they are), params should be placed with
    `shard_params`; each device accumulates the moments of its own rows through the whole pass
    and the per-device moments are merged once at the end (float64, on host).
    exact_tables: sites that are plain full-table lookups ("embed/<field>", {"embedding":
    [V, d]}) take their statistics from per-id counts (a scatter-add per batch) and the table,
    exactly, instead of per-row products; False runs them through the per-row path as well.
    The pass runs at the model's precision (`model.compute_dtype`, float32 unless the model was
    made with another, `models.with_precision`); its compiled update is cached per model.
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
    update, carry, plan = _prepare(model, params, first, sites, exact_tables, mesh)
    keys = ("cat", "num", "weight", "bags", "bag_len")
    bar = tqdm(total=total, desc="statistics", unit="batch", disable=not progress, leave=False)
    for b in itertools.chain([first], it):
        b = {k: b[k] for k in keys if k in b}
        if mesh is not None:  # sharded with a "weight" (0 on the rows that pad it to the mesh)
            b = shard_batch(b, mesh)
        carry = update(carry, params, b)
        bar.update(1)
    bar.close()
    if mesh is None:
        carry = jax.tree.map(lambda x: np.asarray(x)[None], jax.device_get(carry))
    elif all(x.is_fully_addressable for x in jax.tree.leaves(carry)):
        carry = jax.tree.map(np.asarray, carry)
    else:  # across processes: one all-gather of the whole carry, not one per leaf
        from jax.experimental import multihost_utils
        carry = jax.tree.map(np.asarray, multihost_utils.process_allgather(carry, tiled=True))
    moments, rows, counts = carry
    rows = int(np.asarray(rows, np.int64).sum())
    # rows are examples; a site applied T times per example has T * rows output vectors
    out = {}
    for s in plan.by_rows:
        count = rows * plan.per_example[s]
        n, mean, m2 = _merge_slices(moments[s])
        if s in bag_sites(model):   # observations: the non-empty bags
            count = int(round(n))
        out[s] = SiteStats(count=count, mean=mean, cov=m2 / max(count, 1))
    if plan.counted:
        counts = np.asarray(counts, np.int64).sum(0)
        for c in plan.counted:
            table = params["embed"][c.field]["embedding"]
            table = distributed.fetch(table) if isinstance(table, jax.Array) else np.asarray(table)
            out[c.site] = _table_stats(table[:c.rows], counts[c.offset:c.offset + c.rows], rows)
    return merge_shared_tables(model, {s: out[s] for s in plan.sites})


def merge_stats(a: SiteStats, b: SiteStats) -> SiteStats:
    """The statistics of the union of two sets of observations (Chan's merge, float64)."""
    n = a.count + b.count
    if n == 0:
        return a
    frac = b.count / n
    delta = np.asarray(b.mean, np.float64) - np.asarray(a.mean, np.float64)
    mean = a.mean + delta * frac
    cov = (a.count * np.asarray(a.cov, np.float64) + b.count * np.asarray(b.cov, np.float64)) / n \
        + np.outer(delta, delta) * (a.count * frac / n)
    return SiteStats(count=n, mean=mean, cov=cov)


def merge_shared_tables(model, stats: dict[str, SiteStats]) -> dict[str, SiteStats]:
    """Fold the site of each bag that shares another field's table (a sequence reading its
    target's table, "embed/<bag>", with no params of its own) into the table's site
    "embed/<shared>": one set of statistics from both uses (the target's looked-up rows and
    the sequence's pooled vectors, every observation one count), so the table gets one
    projection (`compress.afm`); the bag's own site is dropped. Exact at full rank like any
    statistics; at lower rank the kept directions are those of both uses' outputs."""
    out = dict(stats)
    for site, b in bag_sites(model).items():
        if b.shares is None or site not in out:
            continue
        pooled = out.pop(site)
        target = f"embed/{b.shares}"
        if target in out:
            out[target] = merge_stats(out[target], pooled)
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
