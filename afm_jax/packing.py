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
    BagSlot,
    FieldSlot,
    PackedLayout,
    embedding_shape,
    is_int8,
    is_packed,
    table_form,
    table_width,
)
from afm_jax.ops import einsum_products, in_vocab, tt_row
from afm_jax.pooling import (  # noqa: F401  (Fields, full_bag_rows re-exported)
    Fields,
    affine_projection,
    bag_mask,
    full_bag_rows,
    pool,
    real_columns,
    split_inputs,
)

EMBED = "embed"


def _xp(leaves: list[Any]):
    """numpy for host arrays (stay on the host), jax.numpy as soon as one leaf is a jax array."""
    return jnp if any(isinstance(x, jax.Array) for x in leaves) else np


def _cat(xs: list[Any]) -> Any:
    return xs[0] if len(xs) == 1 else _xp(xs).concatenate(xs)


def _stack(xs: list[Any]) -> Any:
    return _xp(xs).stack(xs)


def _table_slot(name: str, node: Any, vocab: int, dim: int, next_row: dict, next_proj: dict
                ) -> FieldSlot:
    """The slot of one table with rows of its own, appended to its width's table and
    projections (`next_row` / `next_proj` advance)."""
    form = table_form(node, dim)
    if form is None or form == "numeric":
        raise CompressionError(f"embed/{name}: not a field's table (keys {sorted(node)})")
    width = table_width(node)
    if form == "tt":
        return FieldSlot(name, "tt", width, rows=int(vocab))
    rows = int(embedding_shape(node)[0])
    if rows < vocab:
        raise CompressionError(f"embed/{name}: table has {rows} rows, the field {vocab} ids")
    proj = -1
    if form == "compressed":
        proj = next_proj.get(width, 0)
        next_proj[width] = proj + 1
    slot = FieldSlot(name, "table", width, next_row.get(width, 0), int(vocab), proj)
    next_row[width] = next_row.get(width, 0) + int(vocab)
    return slot


def layout_of(model, embed: Mapping[str, Any]) -> PackedLayout:
    """The packed layout of per-field "embed" params of `model` (fields in the model's order).

    Bags (`model.info.bags`) with a table of their own take rows after every categorical
    field's rows of their width (and projections after theirs), so a model without bags packs
    exactly as before; a bag sharing another field's table reads that field's slot."""
    info, dim = model.info, int(model.config.embed_dim)
    next_row: dict[int, int] = {}
    next_proj: dict[int, int] = {}

    def slot(name: str, vocab: int) -> FieldSlot:
        if name not in embed:
            raise CompressionError(f"params have no table for field {name!r} at embed/{name}")
        return _table_slot(name, embed[name], vocab, dim, next_row, next_proj)

    slots = tuple(slot(n, v) for n, v in zip(info.cat_names, info.vocab_sizes))
    bag_infos = tuple(getattr(info, "bags", ()))
    tables = {s.name: s for s in slots}
    for b in bag_infos:
        if b.shares is None:
            tables[b.name] = slot(b.name, b.vocab_size)
    bags = tuple(BagSlot(b.name, int(b.max_len), b.combiner, tables[b.shares or b.name], b.shares)
                 for b in bag_infos)
    return PackedLayout(slots, len(info.num_names), dim, bags)


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
    owned = layout.own_tables()
    for w in layout.widths():
        members = [f for f in owned if f.kind == "table" and f.width == w]
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
        projected = [f for f in members if f.proj >= 0]
        if projected:
            out[f"proj_{w}"] = {k: _stack([embed[f.name]["proj"][k] for f in projected])
                                for k in ("kernel", "bias")}
    tt = {f.name: dict(embed[f.name]) for f in owned if f.kind == "tt"}
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
    for f in layout.own_tables():
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


def _ids(layout: PackedLayout, cat: jax.Array, bags: Mapping[str, Any] | None = None) -> jax.Array:
    """Row of each id column (`PackedLayout.columns`) in its width's table: cat [..., Fc] and
    each bag's ids [..., L] -> [..., Fc + sum L]; ids outside a table's vocabulary map to its
    reserved id 0 before the offset (JAX clamps out-of-range gathers silently, which would read
    another field's row). Padding slots hold id 0: a valid row, masked when pooled."""
    columns = layout.columns()
    rows = np.array([f.rows for f in columns], np.int32)
    offsets = np.array([f.offset for f in columns], np.int32)
    if layout.bags:
        cat = jnp.concatenate([cat] + [bags[b.name].astype(cat.dtype) for b in layout.bags], -1)
    return in_vocab(cat, rows) + offsets


def resolved_ids(layout: PackedLayout, cat) -> jax.Array:
    """The packed row of every id column of a model input (`pooling.model_inputs`, or the
    resolved form of row-wise training, whose "embed" holds them already)."""
    if isinstance(cat, Mapping) and "embed" in cat:
        return cat["embed"]
    raw, bags, _ = split_inputs(cat, layout.bags)
    return _ids(layout, raw, bags)


def gathered_rows(embed: Mapping[str, Any], cat) -> dict[int, jax.Array]:
    """The table rows a batch reads, per width: a model input [B, ...] (`lookup`'s forms) ->
    {w: [B, G_w, w]}, padding slots of bags included (`rows_l2` masks them)."""
    layout: PackedLayout = embed["layout"]
    ids = resolved_ids(layout, cat)
    return {w: embed[f"table_{w}"][take_static(ids, layout.column_members(w), axis=-1)]
            for w in layout.widths()}


def _real_columns(layout: PackedLayout, cat, width: int) -> jax.Array | None:
    """[B, G_w] 1/0: which gathered columns of width `width` are real ids (bag padding 0);
    None when the layout has no bags (every column real)."""
    if not layout.bags:
        return None
    real = real_columns(len(layout.fields), layout.bags, split_inputs(cat)[2])
    return take_static(real.astype(jnp.float32), layout.column_members(width), axis=-1)


def rows_l2(embed: Mapping[str, Any], cat, weight=None) -> jax.Array:
    """Mean over the batch of the squared norm of the table rows each example reads (cat as
    `gathered_rows` takes it; a bag's items each count, its padding does not). weight [B] (0 for padding rows): the mean weighted by it, as
    `ops.batch_loss` weights the loss, so a padded batch regularizes like the short one."""
    layout: PackedLayout = embed["layout"]
    per_example = jnp.zeros(())
    for w, r in gathered_rows(embed, cat).items():
        real = _real_columns(layout, cat, w)   # a bag's padding slots read row 0: not read
        sq = (r * r).sum((-2, -1)) if real is None else ((r * r).sum(-1) * real).sum(-1)
        per_example = per_example + sq
    if weight is None:
        return jnp.mean(per_example)
    return (per_example * weight).sum() / jnp.maximum(weight.sum(), 1.0)


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


def lookup(embed: Mapping[str, Any], cat, num: jax.Array,
           compute: str | None = None) -> Fields:
    """One example's field vectors from packed params: cat int32[Fc], num float32[Fn] -> F
    vectors ([d], or [k] for folded fields), one gather per table width.

    cat may instead be a Mapping (`pooling.model_inputs`): {"raw": ids [Fc], "bags": {bag:
    ids [L]}, "bag_len": {bag: n}}, and in row-wise training (rowwise.py) "embed": the row of
    every id column (`PackedLayout.columns`) in its width's table, resolved. A bag's ids are
    gathered in the same one gather per width as the categorical ids, then pooled
    (`pooling.pool`). The vectors come in the order categorical fields, bags (the model's
    `info.bags` order), numeric fields; `Fields.bag_rows` holds each bag's unpooled rows.
    compute: the precision of the grouped projections (`nn.einsum_products`).

    Ids outside a field's vocabulary map to its reserved id 0 before the offset (JAX clamps
    out-of-range gathers silently, which would read another field's row).
    """
    layout: PackedLayout = embed["layout"]
    n_cat = len(layout.fields)
    columns = layout.columns()
    got_cols: list[Any] = [None] * len(columns)   # (gathered array, row) of each bag column
    out: list[Any] = [None] * n_cat
    source: list[Any] = [None] * n_cat     # (array, row) each field's vector is a row of
    raw, bag_ids, bag_len = split_inputs(cat, layout.bags)
    if columns:
        ids = resolved_ids(layout, cat)
    for w in layout.widths():
        members = layout.column_members(w)
        rows = take_static(ids, members)
        got = embed[f"table_{w}"][rows]                                     # [G_w, w]
        if f"scale_{w}" in embed:   # int8 rows times their row scale
            scale = embed[f"scale_{w}"][:, None]   # [N, 1]: rows of it, no reshape after
            got = got.astype(scale.dtype) * scale[rows]
        projected = tuple(i for i in layout.projected(w) if i < n_cat)
        if projected:
            pos = tuple(members.index(i) for i in projected)
            p = embed[f"proj_{w}"]
            kernel = take_static(p["kernel"], tuple(columns[i].proj for i in projected))
            bias = take_static(p["bias"], tuple(columns[i].proj for i in projected))
            y = einsum_products("gk,gkd->gd", take_static(got, pos), kernel, compute) + bias
            for n, i in enumerate(projected):
                out[i], source[i] = y[n], (y, n)
        for n, i in enumerate(members):
            if i < n_cat and out[i] is None:
                out[i], source[i] = got[n], (got, n)
            elif i >= n_cat:
                got_cols[i] = (got, n)
    for i, f in enumerate(layout.fields):
        if f.kind == "tt":
            cores = [embed["tt"][f.name][f"tt_{j}"] for j in range(3)]
            out[i] = tt_row(cores, in_vocab(raw[i], f.rows))
            source[i] = (out[i][None], 0)
    fields = Fields(out)
    for k, b in enumerate(layout.bags):
        rows_k = _bag_gathered(embed, layout, k, got_cols, bag_ids)
        project = _projection(embed, b.table, compute)
        pooled = pool(rows_k, bag_len[b.name], b.combiner, project)
        fields.append(pooled)
        source.append((pooled[None], 0))
        fields.bag_rows[b.name] = (rows_k, bag_mask(bag_len[b.name], b.max_len), project)
    if layout.num_fields:
        numeric = num[:, None] * embed["numeric"]
        fields += list(numeric)
        source += [(numeric, j) for j in range(layout.num_fields)]
    if all(np.shape(s[0])[-1] == layout.dim for s in source):
        fields.stacked = _stack_blocks(source)
    return fields


def _bag_gathered(embed, layout: PackedLayout, k: int, got_cols: list, bag_ids) -> jax.Array:
    """Bag k's gathered table rows [L, w] (before any projection): a slice of its width's
    gather (its columns are consecutive there), or its TT rows."""
    b = layout.bags[k]
    start, stop = layout.bag_columns(k)
    if b.table.kind == "tt":
        cores = [embed["tt"][b.table.name][f"tt_{j}"] for j in range(3)]
        ids = in_vocab(bag_ids[b.name], b.table.rows)
        return jax.vmap(lambda i: tt_row(cores, i))(ids)
    got, first = got_cols[start]
    return jax.lax.slice_in_dim(got, first, first + (stop - start), axis=0)


def _projection(embed, table: FieldSlot, compute: str | None):
    """The `pooling.Project` of a table slot's projection in "proj_<width>" (None: none)."""
    if table.kind != "table" or table.proj < 0:
        return None
    p = embed[f"proj_{table.width}"]
    proj = {"kernel": p["kernel"][table.proj], "bias": p["bias"][table.proj]}
    return affine_projection(proj, lambda x, w: einsum_products("...k,kd->...d", x, w, compute))


def bag_rows(embed: Mapping[str, Any], cat, name: str, compute: str | None = None
             ) -> tuple[jax.Array, jax.Array]:
    """The unpooled rows of bag `name` for one example, for models that attend over a sequence
    (DIN): (rows [L, d], each its table's full-width row (a compressed table's projection
    applied), and mask [L] bool, True for the bag's real items). Padding rows read id 0's row;
    mask them (their gradient is then exactly 0). Takes packed params and an input as `lookup`
    does; `Fields.bag_rows` (from `lookup` or `FieldEmbedding`) gives the same from the gather
    the other fields already made, which is what a model should use."""
    fields = lookup(embed, cat, jnp.zeros((embed["layout"].num_fields,)), compute)
    return full_bag_rows(fields, name)
