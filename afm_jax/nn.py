"""Compressible building blocks. Every module takes ONE example; callers wrap it in `jax.vmap`.

`Linear` and `FieldEmbedding` read the *structure* of their params and compute accordingly, so
one model definition applies to original and AFM-compressed params alike:

Linear params (kernel layout `x @ W`):
  full        {"kernel": [in, out], "bias": [out]}
  factor pair {"u": {"kernel": [in, k], "bias": [k]}, "v": {"kernel": [k, out], "bias": [out]}}
  activation  {"u_relu": {...}, "v": {...}}: relu between the factors (any name in ACTIVATIONS)

(afm_jax/forms.py tells the forms apart; afm_jax/packing.py packs the tables.)

FieldEmbedding params, one entry per field (categorical fields first, then numeric):
  full table      {"embedding": [V, d]}
  compressed      {"embedding": [V, k], "proj": {"kernel": [k, d], "bias": [d]}}
  folded          {"embedding": [V, k]}           (projection folded into the next Linear)
  TT-Rec          {"tt_0": [v1, d1, r1], "tt_1": [v2, r1, d2, r2], "tt_2": [v3, r2, d3]}
                  (tensor-train cores, v1 v2 v3 >= V, d1 d2 d3 = d; see compress/ttrec.py)
  numeric field   {"vector": [d]}                 (output = value * vector)

Each site sows its output vector (before any activation) into the "afm_outputs" collection, so
`apply(..., mutable=["afm_outputs"])` exposes every site's output for the statistics pass.

Precision is a field, not ambient state: every module with products has `compute_dtype` (None:
float32, "bfloat16": bfloat16 inputs with float32 accumulation, "int8": int8 x int8 -> int32
for int8-stored kernels), which the model (`models.base.CTRModel.compute_dtype`) passes down.
A model's precision is part of the model object, so every cache keyed on the model keys on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from afm_jax import forms
from afm_jax.ops import (  # noqa: F401  (moved down a floor, re-exported)
    PRECISIONS,
    _float_products,
    einsum_products,
    in_vocab,
    precision_key,
    precision_name,
    tt_row,
)
from afm_jax.packing import lookup
from afm_jax.pooling import Fields, affine_projection, bag_mask, pool, split_inputs

SOW_COLLECTION = "afm_outputs"

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
}


def _sow_output(module: nn.Module, y: jax.Array) -> None:
    """Record a site's output vector; overwrites, so repeated calls keep the last value."""
    module.sow(SOW_COLLECTION, "out", y, init_fn=lambda: None, reduce_fn=lambda _, new: new)


def _stored_or_new(module: nn.Module, name: str, init: Callable, shape: tuple[int, ...]) -> jax.Array:
    """The stored param as it is (its shape may be a compressed one), or a new one at init."""
    if module.has_variable("params", name):
        return module.get_variable("params", name)
    return module.param(name, init, shape)


def _matmul(x: jax.Array, w: jax.Array, compute: str | None = None) -> jax.Array:
    """x @ w; at a float precision (bfloat16) both cast to it with a float32 result."""
    low = _float_products(compute)
    if low is None:
        return x @ w
    return jnp.matmul(x.astype(low), w.astype(low), preferred_element_type=jnp.float32)


def quantize_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Dynamic symmetric int8 along the last axis: x ~= q * scale, scale = max|x| / 127 per
    vector (1 for an all-zero one), |x - q * scale| <= scale / 2."""
    peak = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    scale = jnp.where(peak > 0, peak / 127.0, 1.0).astype(jnp.float32)
    q = jnp.clip(jnp.round(x / scale), -127, 127).astype(jnp.int8)
    return q, scale


def _int8_product(x: jax.Array, q: jax.Array) -> jax.Array:
    """x @ q for an int8 kernel q as an int8 x int8 -> int32 product: x is quantized per row
    (`quantize_rows`) and the int32 result scaled back (times the row's scale)."""
    xq, scale = quantize_rows(x)
    acc = jax.lax.dot_general(xq, q, (((x.ndim - 1,), (0,)), ((), ())),
                              preferred_element_type=jnp.int32)
    return acc.astype(jnp.float32) * scale


def _affine(p: dict, x: jax.Array, compute: str | None = None) -> jax.Array:
    """x @ W + b for a float kernel; for an int8 one (q, per-output-channel scale):
      - float32: x @ (q * scale) + b. The scale goes into the kernel's float cast, one pass
        over [in, out] values and none over the [batch, out] activations; in an exported ONNX
        graph q * scale is a constant that ONNX Runtime folds when it loads the file, so the
        layer runs as the float model's MatMul + Add.
      - bfloat16: (x @ q) * scale + b, q exact in bfloat16 (|q| <= 127), the scale applied to
        the float32 product.
      - "int8": int8 x int8 -> int32 (`_int8_product`), then * scale + b.

    compute (a module's `compute_dtype`): None or "float32": float32 products; "bfloat16":
    bfloat16 inputs, float32 accumulation; "int8": an int8 kernel takes an int8 x int8 ->
    int32 product, a float kernel a float32 one."""
    if "kernel_q" in p:
        key = precision_key(compute)
        if key == "int8":
            return _int8_product(x, p["kernel_q"]) * p["kernel_scale"] + p["bias"]
        if key is None:
            return x @ (p["kernel_q"].astype(jnp.float32) * p["kernel_scale"]) + p["bias"]
        return _matmul(x, p["kernel_q"].astype(x.dtype), compute) * p["kernel_scale"] + p["bias"]
    return _matmul(x, p["kernel"], compute) + p["bias"]


# a linear factor pair whose products cost at least the full layer's FLOPs runs slower than the
# full layer on a CPU (experiments/results/compressed_speed.md, one 400 -> 400 layer at batch
# 64 and 1024: rank 200 (1.00 of the FLOPs) took 1.05-1.06x the full layer's time; rank 160
# (0.80) 0.84-0.93x, and merging the r160 MLP pairs of DeepFM and DCNv2 was neutral,
# 0.91-1.09x), so `merge_costly_pairs` multiplies such pairs back into one kernel
MERGE_FLOP_FRACTION = 1.0


def merge_costly_pairs(params: Any, flop_fraction: float = MERGE_FLOP_FRACTION) -> Any:
    """params -> the same params with every linear factor pair (no activation between, float
    kernels) whose rank k costs `k (in + out) >= flop_fraction * in * out` multiplied back into
    one full layer: kernel U V, bias b_u V + b_v (in float64, then float32). The logits stay
    those of the pair up to float32 rounding; pairs with an activation, int8 pairs and cheap
    pairs stay as they are. A pure params -> params map, for scoring (apply before `pack`)."""
    def walk(node: Any) -> Any:
        if not isinstance(node, Mapping):
            return node
        if forms.linear_form(node) == "factor":
            u, v = node.get("u"), node["v"]
            if (u is not None and forms.linear_form(u) == "full" and "kernel" in u
                    and forms.linear_form(v) == "full" and "kernel" in v):
                (n_in, k), n_out = np.shape(u["kernel"]), np.shape(v["kernel"])[1]
                if k * (n_in + n_out) >= flop_fraction * n_in * n_out:
                    vk = np.asarray(v["kernel"], np.float64)
                    kernel = np.asarray(u["kernel"], np.float64) @ vk
                    bias = np.asarray(u["bias"], np.float64) @ vk + np.asarray(v["bias"], np.float64)
                    return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
            return dict(node)
        return {k: walk(x) for k, x in node.items()}

    return walk(params)


class Linear(nn.Module):
    """A Dense layer `y = x W + b` that also computes with an AFM factor pair.

    x: [in] -> y: [features]. The site's output is `y`, before any activation of the caller.
    compute_dtype: precision of its products (`_affine`): None (float32), "bfloat16" or
    "int8" (`precision_key`); the model passes its own down to every layer.
    """

    features: int
    compute_dtype: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mine = self.variables.get("params", {})
        if forms.linear_form(mine) == "factor":
            first = forms.first_factor_key(mine)
            h = _affine(mine[first], x, self.compute_dtype)
            act = forms.factor_activation(mine)
            if act is not None:
                h = ACTIVATIONS[act](h)
            y = _affine(mine["v"], h, self.compute_dtype)
        elif forms.is_int8(mine):
            y = _affine(mine, x, self.compute_dtype)
        else:
            kernel = _stored_or_new(self, "kernel", nn.initializers.lecun_normal(),
                                    (x.shape[-1], self.features))
            bias = _stored_or_new(self, "bias", nn.initializers.zeros, (self.features,))
            y = _affine({"kernel": kernel, "bias": bias}, x, self.compute_dtype)
        _sow_output(self, y)
        return y


class _Table(nn.Module):
    """One categorical field's table: id -> its row ([d], or [k] for a compressed table); a
    bag's ids [L] -> its rows [L, d] (or [L, k]).

    The projection of a compressed table is applied by FieldEmbedding, which batches the
    projections of all fields into one product; `record` sows the field's output in its scope.
    """

    vocab_size: int
    features: int

    @nn.compact
    def __call__(self, idx: jax.Array) -> jax.Array:
        if forms.table_form(self.variables.get("params", {})) == "tt":
            cores = [self.get_variable("params", k) for k in forms.TT_KEYS]
            ids = in_vocab(idx, self.vocab_size)
            if ids.ndim:   # a bag's ids [L]
                return jax.vmap(lambda i: tt_row(cores, i))(ids)
            return tt_row(cores, ids)
        if self.has_variable("params", "embedding_q"):   # int8 rows times their row scale
            q = self.get_variable("params", "embedding_q")
            scale = self.get_variable("params", "embedding_scale")
            i = in_vocab(idx, min(q.shape[0], self.vocab_size))
            return q[i].astype(scale.dtype) * scale[i][..., None]
        table = _stored_or_new(self, "embedding", nn.initializers.normal(1e-2),
                               (self.vocab_size, self.features))
        # JAX clamps out-of-bounds gathers silently: map ids outside the table to the
        # reserved out-of-vocabulary id 0 instead of scoring with the last row.
        rows = min(table.shape[0], self.vocab_size)  # rows beyond: padding of a sharded table
        return table[in_vocab(idx, rows)]

    def projection(self) -> dict | None:
        return self.get_variable("params", "proj") if self.has_variable("params", "proj") else None

    def record(self, y: jax.Array) -> None:
        _sow_output(self, y)


def project_fields(rows: list[jax.Array], projs: list[dict | None],
                   compute: str | None = None) -> list[jax.Array]:
    """Apply each field's projection {kernel [k, d], bias [d]} (None: none) to its row [k].

    Fields whose projections have the same shape share one batched product ("gk,gkd->gd")
    instead of one small product each; compute: the products' precision (`_affine`).
    """
    out = list(rows)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(projs):
        if p is not None:
            groups.setdefault(tuple(p["kernel"].shape), []).append(i)
    for idxs in groups.values():
        if len(idxs) == 1:
            out[idxs[0]] = _affine(projs[idxs[0]], rows[idxs[0]], compute)
            continue
        e = jnp.stack([rows[i] for i in idxs])
        w = jnp.stack([projs[i]["kernel"] for i in idxs])
        b = jnp.stack([projs[i]["bias"] for i in idxs])
        y = einsum_products("gk,gkd->gd", e, w, compute) + b
        for n, i in enumerate(idxs):
            out[i] = y[n]
    return out


class _NumericVector(nn.Module):
    """One dense numeric field: value -> value * v, v: [d]."""

    features: int

    @nn.compact
    def __call__(self, value: jax.Array) -> jax.Array:
        v = self.param("vector", nn.initializers.normal(1e-2), (self.features,))
        return value * v


class FieldEmbedding(nn.Module):
    """Embeds one example: cat int32[Fc], num float32[Fn] -> list of F = Fc + Fb + Fn vectors.

    Every field has its own table, named by the field, so sites are "embed/<field>". The list
    holds [d] vectors, or [k] vectors for fields whose projection was folded away.
    compute_dtype: precision of the projections of compressed tables (`Linear`'s).

    bags (`data.BagInfo`, the model's `info.bags`): multi-valued fields. cat is then the
    Mapping of `pooling.model_inputs` ({"raw": [Fc], "bags": {bag: [L]}, "bag_len": {bag: n}}).
    A bag with its own vocabulary has its own table "embed/<bag>"; a bag that `shares` another
    field reads that field's table. Each bag's rows are pooled by its combiner
    (`pooling.pool`) into one more field vector, sown at "embed/<bag>" (the pooled output).
    Order of the vectors: categorical fields, bags (in `bags` order), numeric fields.
    The result is a `pooling.Fields`, whose `bag_rows` hold each bag's unpooled rows (DIN).
    """

    cat_names: Sequence[str]
    vocab_sizes: Sequence[int]
    num_names: Sequence[str]
    features: int
    compute_dtype: str | None = None
    bags: Sequence = ()

    @nn.compact
    def __call__(self, cat, num: jax.Array) -> list[jax.Array]:
        if forms.is_packed(self.variables.get("params", {})):  # afm_jax/packing.py; sows no sites
            return lookup(self.variables["params"], cat, num, self.compute_dtype)
        raw, bag_ids, bag_len = split_inputs(cat, self.bags)
        tables = [_Table(v, self.features, name=n)
                  for n, v in zip(self.cat_names, self.vocab_sizes)]
        out = Fields(project_fields([t(raw[i]) for i, t in enumerate(tables)],
                                    [t.projection() for t in tables], self.compute_dtype))
        for t, y in zip(tables, out):
            t.record(y)
        by_name = dict(zip(self.cat_names, tables))
        for b in self.bags:
            if b.shares is None:
                by_name[b.name] = _Table(b.vocab_size, self.features, name=b.name)
        for b in self.bags:
            table = by_name[b.shares or b.name]
            rows = table(bag_ids[b.name])                                    # [L, w]
            project = affine_projection(table.projection(),
                                        lambda x, k: _matmul(x, k, self.compute_dtype))
            y = pool(rows, bag_len[b.name], b.combiner, project)
            if b.shares is None:
                table.record(y)
            else:   # no table of its own: the pooled output is sown at "embed/<bag>" all the same
                self.sow(SOW_COLLECTION, b.name, y, init_fn=lambda: None,
                         reduce_fn=lambda _, new: new)
            out.append(y)
            out.bag_rows[b.name] = (rows, bag_mask(bag_len[b.name], b.max_len), project)
        out += [_NumericVector(self.features, name=n)(num[i])
                for i, n in enumerate(self.num_names)]
        return out


def first_order_rows(vocab_sizes: Sequence[int], cat, bags: Sequence = (),
                     cat_names: Sequence[str] = ()) -> jax.Array:
    """Each field's id as a row of the first-order weights [sum V]: cat [..., Fc] -> [..., Fc].
    Ids outside a field's vocabulary map to its id 0 (JAX clamps out-of-range gathers).

    bags (`data.BagInfo`; cat_names the categorical fields' names, which bags may share): cat
    is then a model input (`pooling.model_inputs`) and the rows come for every id column,
    [..., Fc + sum L]: each bag's items in its table's rows (its own, after every categorical
    field's, or those of the field it shares)."""
    sizes = np.asarray(vocab_sizes, np.int32)
    offsets = (np.cumsum(sizes) - sizes).astype(np.int32)
    raw, bag_ids, _ = split_inputs(cat, bags)
    if not bags:
        return in_vocab(raw, sizes) + offsets
    tables = {n: (int(v), int(o)) for n, v, o in zip(cat_names, sizes, offsets)}
    end = int(sizes.sum())
    for b in bags:
        if b.shares is None:
            tables[b.name] = (int(b.vocab_size), end)
            end += int(b.vocab_size)
    parts = [in_vocab(raw, sizes) + offsets]
    for b in bags:
        rows, offset = tables[b.shares or b.name]
        parts.append(in_vocab(bag_ids[b.name], rows) + offset)
    return jnp.concatenate(parts, -1)


def first_order_size(vocab_sizes: Sequence[int], bags: Sequence = ()) -> int:
    """Rows of the first-order weights: every categorical field's ids, then every bag's with
    a vocabulary of its own."""
    return int(sum(vocab_sizes)) + sum(int(b.vocab_size) for b in bags if b.shares is None)


class FirstOrder(nn.Module):
    """Per-feature weights of logistic regression: sum_f w_f[id_f] + sum_j w_j x_j + b -> scalar.

    bags (`data.BagInfo`; cat_names the categorical fields' names): each bag adds its items'
    weights pooled by its combiner (`pooling.pool`, an empty bag 0); a bag with a vocabulary of
    its own has weights after every categorical field's, a shared one reads the field's."""

    vocab_sizes: Sequence[int]
    num_fields: int
    bags: Sequence = ()
    cat_names: Sequence[str] = ()

    @nn.compact
    def __call__(self, cat, num: jax.Array) -> jax.Array:
        # _stored_or_new: a row-sharded table may carry zero padding after the last id
        w = _stored_or_new(self, "weights", nn.initializers.zeros,
                           (first_order_size(self.vocab_sizes, self.bags),))
        if isinstance(cat, Mapping) and "linear" in cat:   # rows resolved by the caller (row-wise)
            idx = cat["linear"]
        else:
            idx = first_order_rows(self.vocab_sizes, cat, self.bags, self.cat_names)
        b = self.param("bias", nn.initializers.zeros, ())
        n_cat = len(self.vocab_sizes)
        vals = w[idx]
        out = (vals[:n_cat].sum() if self.bags else vals.sum()) + b
        start, lengths = n_cat, split_inputs(cat, self.bags)[2]
        for bag in self.bags:
            stop = start + int(bag.max_len)
            out = out + pool(vals[start:stop], lengths[bag.name], bag.combiner)
            start = stop
        if self.num_fields:  # no zero-size params: checkpoints cannot hold them
            out = out + num @ self.param("num_weights", nn.initializers.zeros, (self.num_fields,))
        return out


class MLP(nn.Module):
    """Stack of Linear + activation: [in] -> [hidden[-1]]. Layers are named dense_0, dense_1..."""

    hidden: Sequence[int]
    activation: str = "relu"
    compute_dtype: str | None = None   # every layer's precision (`Linear`)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, h in enumerate(self.hidden):
            x = ACTIVATIONS[self.activation](Linear(h, self.compute_dtype, name=f"dense_{i}")(x))
        return x


def fm_interaction(fields: jax.Array) -> jax.Array:
    """Second-order factorization machine term: fields [F, d] -> scalar."""
    s = fields.sum(0)
    return 0.5 * (s @ s - (fields * fields).sum())


class CrossNetV1(nn.Module):
    """DCN cross network: x_{l+1} = x0 (x_l . w_l) + b_l + x_l. x0: [D] -> [D]."""

    num_layers: int = 3

    @nn.compact
    def __call__(self, x0: jax.Array) -> jax.Array:
        x = x0
        for i in range(self.num_layers):
            w = self.param(f"w_{i}", nn.initializers.normal(1e-2), (x0.shape[-1],))
            b = self.param(f"b_{i}", nn.initializers.zeros, (x0.shape[-1],))
            x = x0 * (x @ w) + b + x
        return x


class CrossNetV2(nn.Module):
    """DCN-V2 cross network: x_{l+1} = x0 * (W_l x_l + b_l) + x_l, each W_l a Linear (a site)."""

    num_layers: int = 3
    compute_dtype: str | None = None   # the Linears' precision

    @nn.compact
    def __call__(self, x0: jax.Array) -> jax.Array:
        x = x0
        for i in range(self.num_layers):
            x = x0 * Linear(x0.shape[-1], self.compute_dtype, name=f"cross_{i}")(x) + x
        return x


def _upper_pairs(num_fields: int) -> tuple[jax.Array, jax.Array]:
    """Indices (i, j), i < j, of the F (F - 1) / 2 field pairs, in row-major order."""
    i, j = jnp.triu_indices(num_fields, k=1)
    return i.astype(jnp.int32), j.astype(jnp.int32)


def bi_interaction(fields: jax.Array) -> jax.Array:
    """NFM bi-interaction pooling: sum_{i<j} e_i * e_j. fields [F, d] -> [d]."""
    s = fields.sum(0)
    return 0.5 * (s * s - (fields * fields).sum(0))


def pairwise_inner_products(fields: jax.Array) -> jax.Array:
    """IPNN product signals <e_i, e_j>, i < j. fields [F, d] -> [F (F - 1) / 2]."""
    i, j = _upper_pairs(fields.shape[0])
    return (fields[i] * fields[j]).sum(-1)


class SENETLayer(nn.Module):
    """FiBiNET squeeze-excitation: field weights a = relu(W2 relu(W1 mean_d(E))); E [F, d] -> a E.

    The excitation's W1 ([F] -> [max(1, F // reduction_ratio)]) and W2 ([.] -> [F]) are the
    Linear sites "reduce" and "expand".
    """

    reduction_ratio: int = 3
    compute_dtype: str | None = None   # the Linears' precision

    @nn.compact
    def __call__(self, fields: jax.Array) -> jax.Array:
        num_fields = fields.shape[0]
        z = fields.mean(-1)
        a = jax.nn.relu(Linear(max(1, num_fields // self.reduction_ratio), self.compute_dtype,
                                name="reduce")(z))
        a = jax.nn.relu(Linear(num_fields, self.compute_dtype, name="expand")(a))
        return fields * a[:, None]


class BilinearInteraction(nn.Module):
    """FiBiNET bilinear interaction, "field_all" type: p_ij = (e_i W) * e_j for i < j.

    fields [F, d] -> [F (F - 1) / 2, d]. One W [d, d] is shared by all fields; it is the Linear
    site "weight", applied to the F field vectors (F output vectors per example).
    """

    compute_dtype: str | None = None   # the Linear's precision

    @nn.compact
    def __call__(self, fields: jax.Array) -> jax.Array:
        transformed = Linear(fields.shape[-1], self.compute_dtype, name="weight")(fields)
        i, j = _upper_pairs(fields.shape[0])
        return transformed[i] * fields[j]


class InteractingLayer(nn.Module):
    """AutoInt multi-head self-attention over fields, with a residual projection and relu.

    x [F, d_in] -> relu(concat_h softmax(Q_h K_h^T / sqrt(head_dim)) V_h + x W_res): [F, H * head_dim].
    Q, K, V and W_res are Linear sites "query", "key", "value", "residual" (F vectors each).
    """

    num_heads: int = 2
    head_dim: int = 32
    compute_dtype: str | None = None   # the Linears' precision

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = self.num_heads * self.head_dim
        split = lambda y: y.reshape(x.shape[0], self.num_heads, self.head_dim)  # noqa: E731
        q = split(Linear(width, self.compute_dtype, name="query")(x))
        k = split(Linear(width, self.compute_dtype, name="key")(x))
        v = split(Linear(width, self.compute_dtype, name="value")(x))
        scores = jnp.einsum("fhe,ghe->hfg", q, k) / jnp.sqrt(float(self.head_dim))
        attended = jnp.einsum("hfg,ghe->fhe", jax.nn.softmax(scores, axis=-1), v)
        residual = Linear(width, self.compute_dtype, name="residual")(x)
        return jax.nn.relu(attended.reshape(x.shape[0], width) + residual)


class GatedCrossNet(nn.Module):
    """GDCN gated cross network: c_{l+1} = c0 * (W_l c_l + b_l) * sigmoid(G_l c_l) + c_l.

    c0 [D] -> [D]. Each W_l and G_l is a Linear site, "cross_l" and "gate_l".
    """

    num_layers: int = 3
    compute_dtype: str | None = None   # the Linears' precision

    @nn.compact
    def __call__(self, x0: jax.Array) -> jax.Array:
        x = x0
        for i in range(self.num_layers):
            cross = Linear(x0.shape[-1], self.compute_dtype, name=f"cross_{i}")(x)
            gate = jax.nn.sigmoid(Linear(x0.shape[-1], self.compute_dtype, name=f"gate_{i}")(x))
            x = x0 * cross * gate + x
        return x


class CIN(nn.Module):
    """xDeepFM compressed interaction network: X0 [m, d] -> sum-pooled feature maps [sum H_k].

    X^k_h = sum_{i,j} W^{k,h}_{ij} (X^{k-1}_i * X0_j): per embedding dimension, the [H_{k-1} m]
    outer products go through the Linear site "conv_k" (the paper's 1x1 convolution), so each
    site has d output vectors of size H_k per example. Every layer's maps are sum-pooled over d
    and concatenated (the paper's formula, no split-half). `activation` None is the identity.
    """

    layer_sizes: Sequence[int] = (200, 200, 200)
    activation: str | None = None
    compute_dtype: str | None = None   # the Linears' precision

    @nn.compact
    def __call__(self, x0: jax.Array) -> jax.Array:
        x, pooled = x0, []
        for k, size in enumerate(self.layer_sizes):
            outer = jnp.einsum("hd,md->dhm", x, x0).reshape(x0.shape[1], -1)   # [d, H m]
            maps = Linear(size, self.compute_dtype, name=f"conv_{k}")(outer)                        # [d, H_k]
            if self.activation is not None:
                maps = ACTIVATIONS[self.activation](maps)
            x = maps.T                                                          # [H_k, d]
            pooled.append(x.sum(-1))
        return jnp.concatenate(pooled) if pooled else jnp.zeros((0,))
