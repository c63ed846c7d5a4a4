"""Pooling of multi-valued fields (bags): one example's gathered rows [L, w] -> one vector.

A bag is L padded ids with a length n (0 <= n <= L; the layout is in `afm_jax.data.splits`).
Items l < n are real, the rest padding, masked by `arange(L) < n` (never by an id: id 0 is a real
value, missing / out of vocabulary). The combiners:

    sum    sum_l<n rows_l
    mean   sum_l<n rows_l / max(n, 1)
    sqrtn  sum_l<n rows_l / sqrt(max(n, 1))
    max    max_l<n rows_l (elementwise)

An empty bag (n = 0) pools to zero for every combiner. Padding gets exactly zero gradient: the
linear combiners weight each row by its mask (0 for padding), max selects with `where`.

A compressed table ({embedding [V, k], proj {kernel [k, d], bias [d]}}) reconstructs each row
as `c_l K + b`. Pooling is linear for sum/mean/sqrtn, so the bag pools the k-wide rows first and
projects once: `(sum_l a_l c_l) K + (sum_l a_l) b` with the combiner's weights a_l, exactly the
pool of the reconstructed rows (the bias scaled by the weights' sum: n, 1 or sqrt(n), 0 for an
empty bag). max is not linear: its rows are projected first, then pooled.

Depends on nothing in afm_jax but the schema's names and errors, so `nn` and `packing` both
import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from afm_jax.data.schema import COMBINERS  # noqa: F401  (the schema's combiners, re-exported)
from afm_jax.errors import AfmError

# (x [..., k], scale [...]) -> x K + scale b: a compressed table's projection, the bias times
# `scale` (the pooled weights' sum). None: no projection.
Project = Callable[[jax.Array, jax.Array], jax.Array] | None


class Fields(list):
    """The F field vectors of one example (categorical fields, pooled bags, numeric fields),
    with `stacked` [F, d] built from whole blocks of the gathered rows when every field has
    the full width d (None otherwise): `models.base.stack` / `concat` take it as it is instead
    of slicing the rows apart and joining them again. `bag_rows`: bag -> (gathered rows
    [L, w], mask [L], projection or None), the unpooled rows (`full_bag_rows`)."""

    stacked: Any = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.bag_rows: dict[str, tuple] = {}


def bag_mask(length: jax.Array, max_len: int) -> jax.Array:
    """[L] bool: True for the bag's real items (l < length)."""
    return jnp.arange(max_len) < length


def bag_weights(length: jax.Array, max_len: int, combiner: str) -> jax.Array:
    """[L] float32 weights a_l of a linear combiner (0 on padding): the pooled vector is
    sum_l a_l rows_l."""
    mask = bag_mask(length, max_len).astype(jnp.float32)
    n = jnp.maximum(length, 1).astype(jnp.float32)
    if combiner == "sum":
        return mask
    if combiner == "mean":
        return mask / n
    if combiner == "sqrtn":
        return mask * jax.lax.rsqrt(n)
    raise ValueError(f"combiner must be one of {COMBINERS}, got {combiner!r}")


def pool(rows: jax.Array, length: jax.Array, combiner: str, project: Project = None) -> jax.Array:
    """Pool one bag's gathered rows [L, w] (or [L] scalars) with `length` real items -> [d]
    (or a scalar); `project` applies a compressed table's projection (see the module note)."""
    max_len = rows.shape[0]
    if combiner == "max":
        if project is not None:
            rows = project(rows, jnp.ones((max_len,), rows.dtype))
        mask = bag_mask(length, max_len).reshape((max_len,) + (1,) * (rows.ndim - 1))
        top = jnp.where(mask, rows, -jnp.inf).max(0)
        return jnp.where(length > 0, top, jnp.zeros_like(top))
    a = bag_weights(length, max_len, combiner)
    pooled = jnp.tensordot(a, rows.astype(jnp.float32), axes=1)
    return pooled if project is None else project(pooled, a.sum())


def affine_projection(proj: Any, product: Callable | None = None) -> Project:
    """The `Project` of a table's projection {kernel [k, d], bias [d]} (None: None).
    product(x, kernel): the matrix product at the model's precision (default x @ kernel)."""
    if proj is None:
        return None
    kernel, bias = proj["kernel"], proj["bias"]

    def project(x: jax.Array, scale: jax.Array) -> jax.Array:
        y = x @ kernel if product is None else product(x, kernel)
        return y + jnp.asarray(scale)[..., None] * bias

    return project


def model_inputs(batch: Mapping[str, Any]) -> Any:
    """What a model's `__call__` takes as its first argument, batched ([B, ...] leaves, to
    vmap over): the categorical ids batch["cat"] [B, Fc] as they are when the batch has no
    bags (so a single-valued model traces exactly as before), else {"raw": cat, "bags":
    {field: [B, L]}, "bag_len": {field: [B]}}."""
    if not batch.get("bags"):
        return batch["cat"]
    return {"raw": batch["cat"], "bags": dict(batch["bags"]), "bag_len": dict(batch["bag_len"])}


def example_input(info: Any) -> Any:
    """One example's model input of zeros for `info` (a `FeatureInfo`): ids [Fc], with every
    bag empty when it has bag fields (what `init` and shape checks trace)."""
    cat = jnp.zeros((len(info.cat_names),), jnp.int32)
    bags = tuple(getattr(info, "bags", ()))
    if not bags:
        return cat
    return {"raw": cat, "bags": {b.name: jnp.zeros((b.max_len,), jnp.int32) for b in bags},
            "bag_len": {b.name: jnp.zeros((), jnp.int32) for b in bags}}


def split_inputs(x: Any, bags: Sequence = ()) -> tuple[Any, dict, dict]:
    """(categorical ids, {bag: ids}, {bag: length}) of a model input (`model_inputs`, one
    example or a batch; row-wise training's resolved form has "raw" too). bags (anything with
    .name): the bag fields the caller reads; AfmError when the input lacks one."""
    raw, ids, lengths = (x["raw"], dict(x.get("bags", {})), dict(x.get("bag_len", {}))) \
        if isinstance(x, Mapping) else (x, {}, {})
    missing = [b.name for b in bags if b.name not in ids or b.name not in lengths]
    if missing:
        raise AfmError(f"the model reads bag fields {missing}: pass the batch's \"bags\" and "
                       "\"bag_len\" (pooling.model_inputs)")
    return raw, ids, lengths


def full_bag_rows(fields: Fields, name: str) -> tuple[jax.Array, jax.Array]:
    """(rows [L, d], mask [L]) of bag `name` from `Fields.bag_rows` (see `bag_rows`)."""
    rows, mask, project = fields.bag_rows[name]
    if project is not None:
        rows = project(rows, jnp.ones(rows.shape[:1], rows.dtype))
    return rows, mask


def real_columns(n_cat: int, bags: Sequence, bag_len: Mapping[str, Any]) -> jax.Array:
    """[..., n_cat + sum L] bool over the concatenated id columns (categorical ids, then each
    bag's L items, `bags` anything with .name and .max_len): False on bag padding."""
    lead = jnp.shape(bag_len[bags[0].name])
    parts = [jnp.ones(lead + (n_cat,), bool)]
    parts += [bag_mask(jnp.asarray(bag_len[b.name])[..., None], int(b.max_len)) for b in bags]
    return jnp.concatenate(parts, -1)
