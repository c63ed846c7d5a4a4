"""What a params form is: the one place that tells them apart; everything else asks it.

Linear (a Dense site; kernel layout `x @ W`):
  full         {"kernel": [in, out], "bias": [out]}
  factor pair  {"u": {"kernel": [in, k], "bias": [k]}, "v": {"kernel": [k, out], "bias": [out]}}
  activation   {"u_relu": {...}, "v": {...}}: an activation (any in nn.ACTIVATIONS) between them

One field of FieldEmbedding ("embed/<field>"):
  full table   {"embedding": [V, d]}
  compressed   {"embedding": [V, k], "proj": {"kernel": [k, d], "bias": [d]}}
  folded       {"embedding": [V, k]}, k < d (the projection lives in the next Linear)
  TT-Rec       {"tt_0": [v1, d1, r1], "tt_1": [v2, r1, d2, r2], "tt_2": [v3, r2, d3]}
  numeric      {"vector": [d]}

Packed ("embed" as a whole, see afm_jax/packing.py): {"layout": PackedLayout, "table_<w>": ...}.

int8 storage (afm_jax/quantize.py), symmetric with float32 scales, the same forms otherwise:
  Linear       {"kernel_q": int8 [in, out], "kernel_scale": f32 [out], "bias": [out]}: "full"
               (also as either factor of a pair)
  table        {"embedding_q": int8 [V, k], "embedding_scale": f32 [V]} (+ "proj", which stays
               float): "full", "folded" or "compressed" as the float table would be
  packed       an int8 "table_<w>" [N, w] with "scale_<w>" [N] beside it
`is_int8` tells them apart; `kernel_of` / `embedding_of` give the (dequantized) float values and
`kernel_shape` / `embedding_shape` the shapes without dequantizing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

ACTIVATION_PREFIX = "u_"
TT_KEYS = ("tt_0", "tt_1", "tt_2")
FACTOR_KEYS = ("u", "v", "proj")   # subtrees that only AFM (or SVD) creates
INT8_LINEAR_KEYS = frozenset({"kernel_q", "kernel_scale", "bias"})
INT8_TABLE_KEYS = frozenset({"embedding_q", "embedding_scale"})


def _is_dict(node: Any) -> bool:
    return isinstance(node, Mapping)


# ----------------------------------------------------------------------------------- Linear

def is_int8(node: Any) -> bool:
    """An int8-stored Linear ({"kernel_q", "kernel_scale", "bias"}) or table ("embedding_q")."""
    return _is_dict(node) and ("kernel_q" in node or "embedding_q" in node)


def kernel_shape(node: Mapping[str, Any]) -> tuple[int, ...]:
    """[in, out] of a full Linear, float or int8."""
    return tuple(np.shape(node["kernel_q"] if "kernel_q" in node else node["kernel"]))


def kernel_of(node: Mapping[str, Any]) -> Any:
    """The float kernel of a full Linear: as stored, or int8 values times per-column scales."""
    if "kernel_q" in node:
        return np.asarray(node["kernel_q"], np.float32) * np.asarray(node["kernel_scale"])
    return node["kernel"]


def embedding_shape(node: Mapping[str, Any]) -> tuple[int, ...]:
    """[V, k] of a row table (full, compressed or folded), float or int8."""
    return tuple(np.shape(node["embedding_q"] if "embedding_q" in node else node["embedding"]))


def embedding_of(node: Mapping[str, Any]) -> Any:
    """The float rows of a row table: as stored, or int8 values times per-row scales."""
    if "embedding_q" in node:
        return (np.asarray(node["embedding_q"], np.float32)
                * np.asarray(node["embedding_scale"])[:, None])
    return node["embedding"]


def first_factor_key(node: Mapping[str, Any]) -> str | None:
    """"u" or "u_<activation>" of a factor pair; None for anything else."""
    if not _is_dict(node) or "v" not in node:
        return None
    return next((k for k in node if k == "u" or k.startswith(ACTIVATION_PREFIX)), None)


def linear_form(node: Any) -> str | None:
    """"full", "factor" (pair, optionally with an activation) or None (not a Linear)."""
    if not _is_dict(node):
        return None
    if set(node) == {"kernel", "bias"} or set(node) == INT8_LINEAR_KEYS:
        return "full"
    key = first_factor_key(node)
    return "factor" if key is not None and set(node) == {key, "v"} else None


def factor_activation(node: Mapping[str, Any]) -> str | None:
    """The activation between the factors of a pair (None: linear pair)."""
    key = first_factor_key(node)
    return None if key in (None, "u") else key[len(ACTIVATION_PREFIX):]


# ---------------------------------------------------------------------------------- tables

def table_form(node: Any, dim: int | None = None) -> str | None:
    """"full", "compressed", "folded", "tt", "numeric" or None (not a field's params).

    dim: the model's embedding dim, which tells a folded table (fewer columns, no projection)
    from a full one; without it such a table counts as "full".
    """
    if not _is_dict(node):
        return None
    keys = set(node)
    if keys == set(TT_KEYS):
        return "tt"
    if keys == {"vector"}:
        return "numeric"
    if keys == {"embedding", "proj"} or keys == INT8_TABLE_KEYS | {"proj"}:
        return "compressed"
    if (keys == {"embedding"} and np.ndim(node["embedding"]) == 2) or keys == INT8_TABLE_KEYS:
        return "folded" if dim is not None and embedding_shape(node)[1] != dim else "full"
    return None


def is_row_table(node: Any) -> bool:
    """A table looked up by id with one row per id: full, compressed or folded."""
    return table_form(node) in ("full", "compressed", "folded")


def table_width(node: Mapping[str, Any]) -> int:
    """Columns of the rows a lookup returns (before any projection)."""
    form = table_form(node)
    if form in ("full", "compressed", "folded"):
        return int(embedding_shape(node)[1])
    if form == "numeric":
        return int(np.shape(node["vector"])[0])
    if form == "tt":
        d1, d2, d3 = (np.shape(node["tt_0"])[1], np.shape(node["tt_1"])[2],
                      np.shape(node["tt_2"])[2])
        return int(d1 * d2 * d3)
    raise ValueError(f"not a field's params: keys {sorted(node)}")


def output_width(node: Mapping[str, Any]) -> int:
    """Width of a field's output vector: d for full/compressed/TT/numeric, k for folded."""
    if table_form(node) == "compressed":
        return int(np.shape(node["proj"]["kernel"])[1])
    return table_width(node)


def is_compressed_site(node: Any) -> bool:
    """A site AFM (or SVD) has already mapped: a factor pair or a compressed/folded table."""
    return linear_form(node) == "factor" or table_form(node) == "compressed"


@dataclass(frozen=True)
class FieldSlot:
    """Where one categorical field sits in a packed "embed".

    kind "table": rows [offset, offset + rows) of "table_<width>"; `proj` is the field's index
    in the stacked projections "proj_<width>" (-1: none, a full or folded table). kind "tt":
    its TT cores stay whole under "tt/<name>".
    """

    name: str
    kind: str
    width: int
    offset: int = 0
    rows: int = 0
    proj: int = -1


@dataclass(frozen=True)
class BagSlot:
    """Where the rows of one multi-valued field sit in a packed "embed", and how it pools.

    `table` is the slot of the table it reads: its own (`shares` None: rows appended after the
    categorical fields' rows of its width, and its projection after theirs in "proj_<width>"),
    or the slot of the field it shares (a categorical field or another bag), which it reads
    without a table of its own. Its `max_len` ids are columns Fc + (the bags before it's
    max_len) .. of the concatenated ids (`PackedLayout.columns`).
    """

    name: str
    max_len: int
    combiner: str
    table: FieldSlot
    shares: str | None = None


@jax.tree_util.register_static
@dataclass(frozen=True)
class PackedLayout:
    """The static part of a packed "embed" (no arrays: a leafless pytree node, so jit treats it
    as part of the params' structure and recompiles for another layout). `fields` follows the
    model's categorical field order; `num_fields` numeric vectors are stacked in "numeric";
    `bags` the multi-valued fields (`BagSlot`, `FeatureInfo.bags` order; empty without them,
    which leaves the layout of single-valued models as it always was)."""

    fields: tuple[FieldSlot, ...]
    num_fields: int
    dim: int
    bags: tuple[BagSlot, ...] = ()

    def columns(self) -> tuple[FieldSlot, ...]:
        """The table slot each id column reads: the Fc categorical fields, then every bag's
        max_len items (the concatenated ids a packed lookup gathers)."""
        return self.fields + tuple(s for b in self.bags for s in (b.table,) * b.max_len)

    def bag_columns(self, k: int) -> tuple[int, int]:
        """[start, stop) of bag k's columns in `columns()`."""
        start = len(self.fields) + sum(b.max_len for b in self.bags[:k])
        return start, start + self.bags[k].max_len

    def own_tables(self) -> tuple[FieldSlot, ...]:
        """Every table slot with rows of its own: the categorical fields, then the bags that
        share no other field's table."""
        return self.fields + tuple(b.table for b in self.bags if b.shares is None)

    def column_members(self, width: int) -> tuple[int, ...]:
        """Column indices (`columns()`) whose rows live in "table_<width>"; `members` when the
        layout has no bags."""
        return tuple(i for i, f in enumerate(self.columns())
                     if f.kind == "table" and f.width == width)

    def widths(self) -> tuple[int, ...]:
        """Widths of the packed tables, ascending."""
        return tuple(sorted({f.width for f in self.own_tables() if f.kind == "table"}))

    def members(self, width: int) -> tuple[int, ...]:
        """Field indices (in field order) whose rows live in "table_<width>"."""
        return tuple(i for i, f in enumerate(self.fields) if f.kind == "table" and f.width == width)

    def projected(self, width: int) -> tuple[int, ...]:
        """Field indices in "proj_<width>" order (field order)."""
        return tuple(i for i, f in enumerate(self.fields)
                     if f.kind == "table" and f.width == width and f.proj >= 0)


def is_packed(embed: Any) -> bool:
    """Whether FieldEmbedding params ("embed") are in the packed layout."""
    return _is_dict(embed) and "layout" in embed


def is_table_leaf(keys: list[str], leaf: Any) -> bool:
    """Leaves whose rows are ids, which may be row-sharded and padded: a field's "embedding",
    a packed "table_<w>", and the first-order weights "linear/weights"."""
    nd = np.ndim(leaf)
    last = keys[-1] if keys else ""
    return ((last == "embedding" or last.startswith("table_")) and nd == 2) or \
        (keys[-2:] == ["linear", "weights"] and nd == 1)


def trainable_labels(params: Any, embed_dim: int | None = None) -> Any:
    """A pytree of "train"/"freeze": "train" inside factor pairs and compressed or folded
    tables (what fine-tuning a compressed model moves), "freeze" elsewhere.

    embed_dim: the model's embedding dim, which tells a folded table (no projection left, but
    compressed all the same) from a full one. In a packed "embed", the groups narrower than
    embed_dim and every stacked projection train.
    """
    def narrow(x: Any) -> bool:
        return embed_dim is not None and np.ndim(x) == 2 and np.shape(x)[1] != embed_dim

    def label(node: Any, inside: bool) -> Any:
        if isinstance(node, PackedLayout):
            return node  # no leaves: keeps the labels' structure equal to the params'
        if _is_dict(node):
            if is_packed(node):
                return {k: label(v, inside or k.startswith("proj_")
                                 or (k.startswith("table_") and narrow(v)))
                        for k, v in node.items()}
            here = inside or table_form(node, embed_dim) in ("compressed", "folded")
            return {k: label(v, here or k in FACTOR_KEYS or k.startswith(ACTIVATION_PREFIX))
                    for k, v in node.items()}
        return "train" if inside else "freeze"

    return label(params, False)
