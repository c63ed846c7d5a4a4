"""int8 storage: `quantize(params) -> params` and its inverse `dequantize`, pure params -> params.

Symmetric int8 with float32 scales, q = round(x / scale) in [-127, 127], scale = max|x| / 127
(1 for an all-zero row or column, whose values stay 0):

  Linear kernels (full, and both factors of a pair): per output channel,
      {"kernel": [in, out], "bias"} -> {"kernel_q": int8 [in, out], "kernel_scale": f32 [out],
                                        "bias"}  (bias stays float)
  row tables (full, folded and compressed "embed/<field>"; packed "embed/table_<w>"): per row,
      {"embedding": [V, k]} -> {"embedding_q": int8 [V, k], "embedding_scale": f32 [V]}
      "table_<w>": [N, w]   -> "table_<w>": int8 [N, w], "scale_<w>": f32 [N]

Stays float (small, or no row to share a scale): projections of compressed tables ("proj",
packed "proj_<w>"), biases, TT-Rec cores, numeric vectors, first-order weights, cross-network
vectors. Composes after `compress` or on the original params; `nn` and `packing` read the int8
forms (`forms.is_int8`) and score them as they are, dequantizing inside the jitted scorer.

    q = quantize(params)
    np.abs(dequantize(q)["embed"]["a"]["embedding"] - e) <= scale / 2   per row
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from afm_jax import forms
from afm_jax.errors import CompressionError

QMAX = 127


def _quantize(x: Any, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """x -> (int8 q, float32 scale) with the scale shared along `axis` (reduced away)."""
    x = np.asarray(x, np.float64)
    peak = np.abs(x).max(axis=axis) if x.size else np.zeros(np.delete(x.shape, axis))
    scale = np.where(peak > 0, peak / QMAX, 1.0).astype(np.float32)
    q = np.rint(x / np.expand_dims(scale.astype(np.float64), axis))
    return np.clip(q, -QMAX, QMAX).astype(np.int8), scale


def smaller_as_int8(shape: tuple[int, ...], axis: int) -> bool:
    """Whether an array of `shape` stores in fewer bytes as int8 with a float32 scale per
    index of the other axis (scales reduced along `axis`) than as float32: not for a width-1
    table row or a 1-input kernel, where the scale costs as much as the values save."""
    n = int(np.prod(shape))
    return n + 4 * (n // max(int(shape[axis]), 1)) < 4 * n


def quantize(params: Any, bits: int = 8) -> Any:
    """params (per-field or packed, original or compressed) -> the same params with int8
    kernels and table rows (see the module docstring); already-int8 sites stay as they are,
    and so do arrays that int8 would not make smaller (`smaller_as_int8`: rank-1 tables,
    1-input kernels)."""
    if bits != 8:
        raise CompressionError(f"quantize: only bits=8 is supported, got {bits}")

    def walk(node: Any) -> Any:
        if not isinstance(node, Mapping) or forms.is_int8(node):
            return node
        if forms.is_packed(node):
            out = dict(node)
            for key, value in node.items():
                w = key[len("table_"):] if key.startswith("table_") else None
                if (w is not None and f"scale_{w}" not in node
                        and smaller_as_int8(np.shape(value), axis=1)):
                    out[key], out[f"scale_{w}"] = _quantize(value, axis=1)
            return out
        if forms.linear_form(node) == "full":
            if not smaller_as_int8(np.shape(node["kernel"]), axis=0):
                return node
            q, scale = _quantize(node["kernel"], axis=0)
            return {"kernel_q": q, "kernel_scale": scale, "bias": node["bias"]}
        if forms.linear_form(node) == "factor":
            return {k: walk(v) for k, v in node.items()}
        if forms.table_form(node) in ("full", "compressed", "folded"):
            if not smaller_as_int8(np.shape(node["embedding"]), axis=1):
                return node
            q, scale = _quantize(node["embedding"], axis=1)
            out = {"embedding_q": q, "embedding_scale": scale}
            if "proj" in node:
                out["proj"] = node["proj"]
            return out
        if forms.table_form(node) in ("tt", "numeric"):
            return node
        return {k: walk(v) for k, v in node.items()}

    return walk(params)


def dequantize(params: Any) -> Any:
    """The exact inverse of the storage format: every int8 site back to float32 values
    q * scale in its float form (float sites unchanged)."""
    def walk(node: Any) -> Any:
        if not isinstance(node, Mapping):
            return node
        if forms.is_packed(node):
            out = {k: v for k, v in node.items() if not k.startswith("scale_")}
            for key in node:
                if key.startswith("scale_"):
                    w = key[len("scale_"):]
                    out[f"table_{w}"] = forms.embedding_of(
                        {"embedding_q": node[f"table_{w}"], "embedding_scale": node[key]})
            return out
        if forms.is_int8(node) and "kernel_q" in node:
            return {"kernel": forms.kernel_of(node), "bias": node["bias"]}
        if forms.is_int8(node):
            out = {"embedding": forms.embedding_of(node)}
            if "proj" in node:
                out["proj"] = node["proj"]
            return out
        return {k: walk(v) for k, v in node.items()}

    return walk(params)

