"""Published baselines in the same params form as AFM, so the same scorer runs them.

Weight SVD: truncate each Linear's kernel W = A S B^T to rank k, `{A S, 0}` then `{B^T, b}`;
each embedding table E to `A S` with the projection `{B^T, 0}`. It approximates the weights, not
the outputs the data actually produces -- the difference AFM is about.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from afm_jax import forms
from afm_jax.compress.afm import _like, get_path, set_path
from afm_jax.errors import CompressionError
from afm_jax.types import Params, Plan


def _truncated_svd(w: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(left [m, k] scaled by singular values, right [k, n]) with sign-fixed factors."""
    a, s, bt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
    if not 0 <= rank <= s.size:
        raise CompressionError(f"rank {rank} is outside [0, {s.size}] for a {w.shape} matrix")
    a, s, bt = a[:, :rank], s[:rank], bt[:rank]
    signs = np.sign(bt[np.arange(rank), np.argmax(np.abs(bt), axis=1)])
    signs[signs == 0] = 1.0
    return a * (s * signs), bt * signs[:, None]


def svd_linear(layer: Mapping[str, Any], rank: int) -> Params:
    """`{kernel W, bias b}` -> `{"u": {A S, 0}, "v": {B^T, b}}` (rank-k truncated SVD of W)."""
    left, right = _truncated_svd(layer["kernel"], rank)
    return {"u": {"kernel": _like(left, layer["kernel"]),
                  "bias": np.zeros((rank,), np.asarray(layer["bias"]).dtype)},
            "v": {"kernel": _like(right, layer["kernel"]), "bias": np.asarray(layer["bias"])}}


def svd_embedding(table: Mapping[str, Any], rank: int) -> Params:
    """`{embedding E}` -> `{embedding A S, proj {B^T, 0}}`."""
    e = table["embedding"]
    left, right = _truncated_svd(e, rank)
    return {"embedding": _like(left, e),
            "proj": {"kernel": _like(right, e), "bias": np.zeros((np.shape(e)[1],),
                                                                 np.asarray(e).dtype)}}


def svd_compress(params: Params, plan: Plan) -> Params:
    """Weight SVD at the ranks of an AFM plan (site -> rank; None keeps the site full)."""
    out: dict = dict(params)
    for site, rank in plan.items():
        if rank is None:
            continue
        node = get_path(params, site)
        if forms.linear_form(node) == "full":
            out = set_path(out, site, svd_linear(node, rank))
        elif forms.table_form(node) == "full":
            out = set_path(out, site, svd_embedding(node, rank))
        else:
            raise CompressionError(f"site {site!r} is neither a Linear nor an embedding table")
    return out
