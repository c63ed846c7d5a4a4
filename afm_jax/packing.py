"""The packed layout of a model's field embeddings: `pack` and `unpack`, pure params -> params.

Per-field params (one table per field, "embed/<field>") are what statistics, plans, compression
and model directories speak. The packed form is what runs: every categorical table of one
width sits in one table "table_<w>" [sum of its fields' rows, w] with static per-field offsets,
and the projections of compressed fields of rank k are stacked in "proj_<k>" ({"kernel":
[G, k, d], "bias": [G, d]}), so a batch costs one gather per width and one batched product per
rank instead of one of each per field. Numeric fields' vectors are stacked in "numeric" [Fn, d];
TT-Rec fields keep their cores under "tt/<field>". The static part (which field sits where) is a
`forms.PackedLayout` stored at "embed/layout". int8 tables (afm_jax/quantize.py) pack into an
int8 "table_<w>" with their row scales in "scale_<w>" [N] (every field of one width int8, or
none: a group mixing them is refused).

    packed = pack(model, params)          # pure, jittable; idempotent on packed params
    assert unpack(model, packed) == params   (exactly, leaf by leaf)

References: jax-tpu-embedding's table stacking, TorchRec's fused embedding bag collection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from afm_jax.errors import CompressionError
from afm_jax.forms import (
    FieldSlot,
    PackedLayout,
    embedding_shape,
    is_int8,
    is_packed,
    table_form,
    table_width,
)

EMBED = "embed"


def _xp(leaves: list[Any]):
    """numpy for host arrays (stay on the host), jax.numpy as soon as one leaf is a jax array."""
    return jnp if any(isinstance(x, jax.Array) for x in leaves) else np


def _cat(xs: list[Any]) -> Any:
    return xs[0] if len(xs) == 1 else _xp(xs).concatenate(xs)


def _stack(xs: list[Any]) -> Any:
    return _xp(xs).stack(xs)


def layout_of(model, embed: Mapping[str, Any]) -> PackedLayout:
    """The packed layout of per-field "embed" params of `model` (fields in the model's order)."""
    info, dim = model.info, int(model.config.embed_dim)
    slots, next_row, next_proj = [], {}, {}
    for name, vocab in zip(info.cat_names, info.vocab_sizes):
        if name not in embed:
            raise CompressionError(f"params have no table for field {name!r} at embed/{name}")
        node = embed[name]
        form = table_form(node, dim)
        if form is None or form == "numeric":
            raise CompressionError(f"embed/{name}: not a field's table (keys {sorted(node)})")
        width = table_width(node)
        if form == "tt":
            slots.append(FieldSlot(name, "tt", width, rows=int(vocab)))
            continue
        rows = int(embedding_shape(node)[0])
        if rows < vocab:
            raise CompressionError(f"embed/{name}: table has {rows} rows, the field {vocab} ids")
        proj = -1
        if form == "compressed":
            proj = next_proj.get(width, 0)
            next_proj[width] = proj + 1
        slots.append(FieldSlot(name, "table", width, next_row.get(width, 0), int(vocab), proj))
        next_row[width] = next_row.get(width, 0) + int(vocab)
    return PackedLayout(tuple(slots), len(info.num_names), dim)


def pack(model, params: Mapping[str, Any]) -> dict:
    """Per-field params -> packed params (other subtrees shared as they are).

    Tables beyond the field's vocabulary (zero padding of a row-sharded table) are cut to it.
    Packed params come back unchanged, and params without "embed" (LR) too.
    """
    embed = params.get(EMBED) if isinstance(params, Mapping) else None
    if embed is None or is_packed(embed):
        return dict(params) if isinstance(params, Mapping) else params
    layout = layout_of(model, embed)
    out: dict[str, Any] = {"layout": layout}
    for w in layout.widths():
        members = [layout.fields[i] for i in layout.members(w)]
        int8 = [is_int8(embed[f.name]) for f in members]
        if any(int8) and not all(int8):
            raise CompressionError(f"tables of width {w} mix int8 and float storage "
                                   f"({[f.name for f in members]}); quantize all of them")
        if all(int8):
            out[f"table_{w}"] = _cat([embed[f.name]["embedding_q"][:f.rows] for f in members])
            out[f"scale_{w}"] = _cat([embed[f.name]["embedding_scale"][:f.rows]
                                      for f in members])
        else:
            out[f"table_{w}"] = _cat([embed[f.name]["embedding"][:f.rows] for f in members])
        projected = [layout.fields[i] for i in layout.projected(w)]
        if projected:
            out[f"proj_{w}"] = {k: _stack([embed[f.name]["proj"][k] for f in projected])
                                for k in ("kernel", "bias")}
    tt = {f.name: dict(embed[f.name]) for f in layout.fields if f.kind == "tt"}
    if tt:
        out["tt"] = tt
    if layout.num_fields:
        out["numeric"] = _stack([embed[n]["vector"] for n in model.info.num_names])
    new = dict(params)
    new[EMBED] = out
    return new


def unpack(model, params: Mapping[str, Any]) -> dict:
    """Packed params -> per-field params; the exact inverse of `pack` (per-field ones unchanged)."""
    embed = params.get(EMBED) if isinstance(params, Mapping) else None
    if embed is None or not is_packed(embed):
        return dict(params) if isinstance(params, Mapping) else params
    layout: PackedLayout = embed["layout"]
    out: dict[str, Any] = {}
    for f in layout.fields:
        if f.kind == "tt":
            out[f.name] = dict(embed["tt"][f.name])
            continue
        rows = slice(f.offset, f.offset + f.rows)
        if f"scale_{f.width}" in embed:
            node = {"embedding_q": embed[f"table_{f.width}"][rows],
                    "embedding_scale": embed[f"scale_{f.width}"][rows]}
        else:
            node = {"embedding": embed[f"table_{f.width}"][rows]}
        if f.proj >= 0:
            p = embed[f"proj_{f.width}"]
            node["proj"] = {"kernel": p["kernel"][f.proj], "bias": p["bias"][f.proj]}
        out[f.name] = node
    for j, n in enumerate(model.info.num_names):
        out[n] = {"vector": embed["numeric"][j]}
    new = dict(params)
    new[EMBED] = out
    return new


def _runs(positions: tuple[int, ...]) -> list[tuple[int, int]]:
    """Contiguous runs [start, stop) of ascending positions: (0,1,2,5,6) -> [(0,3), (5,7)]."""
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


def take_static(x: jax.Array, positions: tuple[int, ...], axis: int = 0) -> jax.Array:
    """x[positions] along `axis` for static positions, by slices (no gather op); taking all of
    x in order costs nothing."""
    axis = axis % x.ndim
    if positions == tuple(range(x.shape[axis])):
        return x
    parts = [jax.lax.slice_in_dim(x, a, b, axis=axis) for a, b in _runs(positions)]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


def _ids(layout: PackedLayout, cat: jax.Array) -> jax.Array:
    """Row of each field's id in its width's table: [..., Fc]; ids outside a field's vocabulary
    map to its reserved id 0 before the offset (JAX clamps out-of-range gathers silently, which
    would read another field's row)."""
    rows = np.array([f.rows for f in layout.fields], np.int32)
    offsets = np.array([f.offset for f in layout.fields], np.int32)
    from afm_jax.nn import in_vocab
    return in_vocab(cat, rows) + offsets


def gathered_rows(embed: Mapping[str, Any], cat) -> dict[int, jax.Array]:
    """The table rows a batch reads, per width: cat [B, Fc] (or resolved, as `lookup` takes
    it) -> {w: [B, G_w, w]}."""
    layout: PackedLayout = embed["layout"]
    ids = cat["embed"] if isinstance(cat, Mapping) else _ids(layout, cat)
    return {w: embed[f"table_{w}"][take_static(ids, layout.members(w), axis=-1)]
            for w in layout.widths()}


def rows_l2(embed: Mapping[str, Any], cat, weight=None) -> jax.Array:
    """Mean over the batch of the squared norm of the table rows each example reads (cat as
    `gathered_rows` takes it). weight [B] (0 for padding rows): the mean weighted by it, as
    `train.batch_loss` weights the loss, so a padded batch regularizes like the short one."""
    per_example = sum(((r * r).sum((-2, -1)) for r in gathered_rows(embed, cat).values()),
                      jnp.zeros(()))
    if weight is None:
        return jnp.mean(per_example)
    return (per_example * weight).sum() / jnp.maximum(weight.sum(), 1.0)


class Fields(list):
    """The F field vectors of one example (a list, as the per-field path gives), with
    `stacked` [F, d] built from whole blocks of the gathered rows when every field has the
    full width d (None otherwise): `models.base.stack` / `concat` take it as it is instead of
    slicing the rows apart and joining them again."""

    stacked: Any = None


def _stack_blocks(sources: list[tuple[Any, int]]) -> Any:
    """Rows [(array, row), ...] in order -> one [len, d] array, by whole slices of each array
    (consecutive rows of one array become one slice; one array in order costs nothing)."""
    pieces: list[tuple[Any, int, int]] = []
    for arr, row in sources:
        if pieces and pieces[-1][0] is arr and pieces[-1][2] == row:
            pieces[-1] = (arr, pieces[-1][1], row + 1)
        else:
            pieces.append((arr, row, row + 1))
    parts = [a if (b, e) == (0, a.shape[0]) else a[b:e] for a, b, e in pieces]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def lookup(embed: Mapping[str, Any], cat: jax.Array, num: jax.Array,
           compute: str | None = None) -> Fields:
    """One example's field vectors from packed params: cat int32[Fc], num float32[Fn] -> F
    vectors ([d], or [k] for folded fields), one gather per table width. cat may instead be
    {"raw": ids [Fc], "embed": rows [Fc]} with each field's row in its width's table resolved.
    compute: the precision of the grouped projections (`nn.einsum_products`).

    Ids outside a field's vocabulary map to its reserved id 0 before the offset (JAX clamps
    out-of-range gathers silently, which would read another field's row).
    """
    from afm_jax.nn import einsum_products, in_vocab, tt_row

    layout: PackedLayout = embed["layout"]
    n_cat = len(layout.fields)
    out: list[Any] = [None] * n_cat
    source: list[Any] = [None] * n_cat     # (array, row) each field's vector is a row of
    if isinstance(cat, Mapping):   # rows resolved by the caller (row-wise training, rowwise.py)
        ids, cat = cat["embed"], cat["raw"]
    elif n_cat:
        ids = _ids(layout, cat)
    for w in layout.widths():
        members = layout.members(w)
        rows = take_static(ids, members)
        got = embed[f"table_{w}"][rows]                                     # [G_w, w]
        if f"scale_{w}" in embed:   # int8 rows times their row scale
            scale = embed[f"scale_{w}"]
            got = got.astype(scale.dtype) * scale[rows][:, None]
        projected = layout.projected(w)
        if projected:
            pos = tuple(members.index(i) for i in projected)
            p = embed[f"proj_{w}"]
            y = einsum_products("gk,gkd->gd", take_static(got, pos), p["kernel"],
                                compute) + p["bias"]
            for n, i in enumerate(projected):
                out[i], source[i] = y[n], (y, n)
        for n, i in enumerate(members):
            if out[i] is None:
                out[i], source[i] = got[n], (got, n)
    for i, f in enumerate(layout.fields):
        if f.kind == "tt":
            cores = [embed["tt"][f.name][f"tt_{j}"] for j in range(3)]
            out[i] = tt_row(cores, in_vocab(cat[i], f.rows))
            source[i] = (out[i][None], 0)
    fields = Fields(out)
    if layout.num_fields:
        numeric = num[:, None] * embed["numeric"]
        fields += list(numeric)
        source += [(numeric, j) for j in range(layout.num_fields)]
    if all(np.shape(s[0])[-1] == layout.dim for s in source):
        fields.stacked = _stack_blocks(source)
    return fields
