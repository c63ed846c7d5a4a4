"""Array primitives under `nn`, `pooling` and `packing` (none of them imported here, so each of
those imports this at module level): ids kept inside a table, TT-Rec rows, products at a
model's precision, and the training loss (`batch_loss`, shared by `train` and `rowwise`). `nn`
re-exports every name."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax


def in_vocab(ids: jax.Array, rows) -> jax.Array:
    """`ids` with every id outside [0, rows) mapped to the reserved out-of-vocabulary id 0.

    JAX clamps out-of-bounds gathers silently, so an id beyond a table would score with its
    last row (or, in a packed table, another field's row): every lookup goes through this.
    rows: a number, or an array broadcasting against ids (one bound per field)."""
    return jnp.where((ids >= 0) & (ids < rows), ids, 0)


PRECISIONS = ("float32", "bfloat16", "int8")


def precision_key(compute_dtype) -> str | None:
    """The canonical, hashable form of a compute dtype, as modules hold it in their
    `compute_dtype` field: None for float32 (or None), "bfloat16" or "int8" (from a name or a
    dtype such as jnp.bfloat16). Raises ValueError for any other dtype."""
    if compute_dtype is None:
        return None
    name = jnp.dtype(compute_dtype).name
    if name not in PRECISIONS:
        raise ValueError(f"compute_dtype must be one of {', '.join(PRECISIONS)}, got {name}")
    return None if name == "float32" else name


def precision_name(compute_dtype) -> str:
    """"float32", "bfloat16" or "int8": the name of a compute dtype (None: float32)."""
    return precision_key(compute_dtype) or "float32"


def _float_products(compute: str | None) -> jnp.dtype | None:
    """The dtype float products take at precision `compute`: None for plain float32 (also
    for int8, which changes only the products of int8 kernels)."""
    key = precision_key(compute)
    return jnp.dtype(key) if key == "bfloat16" else None


def einsum_products(spec: str, x: jax.Array, w: jax.Array, compute: str | None = None) -> jax.Array:
    """`jnp.einsum(spec, x, w)` at precision `compute`, as `nn._matmul`."""
    low = _float_products(compute)
    if low is None:
        return jnp.einsum(spec, x, w)
    return jnp.einsum(spec, x.astype(low), w.astype(low), preferred_element_type=jnp.float32)


def tt_row(cores: Sequence[jax.Array], idx: jax.Array) -> jax.Array:
    """Row `idx` of a 3-core tensor-train table (TT-Rec): cores [v1,d1,r1], [v2,r1,d2,r2],
    [v3,r2,d3] -> [d1*d2*d3]. Row i = (i1, i2, i3) in mixed radix (v1, v2, v3)."""
    g0, g1, g2 = (jnp.asarray(c) for c in cores)
    v2, v3 = g1.shape[0], g2.shape[0]
    i1, rest = jnp.divmod(idx, v2 * v3)
    i2, i3 = jnp.divmod(rest, v3)
    out = jnp.einsum("ar,rbs,sc->abc", g0[i1], g1[i2], g2[i3])
    return out.reshape(-1)


def batch_loss(logits: jax.Array, batch) -> jax.Array:
    """Binary cross-entropy of logits [B] against batch["label"]; the mean weighted by
    batch["weight"] (0 for padding rows) where the batch has one."""
    per_row = optax.sigmoid_binary_cross_entropy(logits, batch["label"])
    if "weight" in batch:
        w = batch["weight"]
        return (per_row * w).sum() / jnp.maximum(w.sum(), 1.0)
    return per_row.mean()
