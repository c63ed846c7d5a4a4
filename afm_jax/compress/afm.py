"""Atomic Feature Mimicking: pure params -> params maps over Flax params pytrees.

A site's output y (a Linear's pre-activation output, or one field's embedding) is replaced by
its projection on the top-k principal directions U [d, k] of its output covariance:
`y -> U U^T (y - mu) + mu`. For `y = x W + b` that is two layers, `{W U, b U}` then
`{U^T, mu - mu U U^T}`; for a table E it is `(E - mu) U` then the projection `{U^T, mu}`.
All math runs in float64 numpy on the small d x d covariance; results take the params' dtype.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from afm_jax import forms
from afm_jax._cache import KeyedCache
from afm_jax.compress.stats import SiteStats
from afm_jax.errors import CompressionError
from afm_jax.nn import ACTIVATIONS
from afm_jax.types import Params, Plan, Stats


def principal_directions(cov: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-`rank` eigenvectors U [d, rank] (descending eigenvalue) and their eigenvalues.

    Each eigenvector's sign is fixed (largest-magnitude entry positive) so the compressed params
    are reproducible.
    """
    cov = np.asarray(cov, np.float64)
    d = cov.shape[0]
    if not 0 <= rank <= d:
        raise CompressionError(f"rank {rank} is outside [0, {d}] for a {d}-dim output")
    evecs, evals = _eigen(cov)
    return evecs[:, :rank].copy(), evals[:rank].copy()


_EIGEN_SIZE = 256
_EIGEN = KeyedCache("afm_jax.compress.afm.eigen", _EIGEN_SIZE)


def _eigen(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All eigenvectors (descending eigenvalue, signs fixed) and eigenvalues (>= 0) of `cov`,
    remembered by content for the last _EIGEN_SIZE matrices: a plan search maps the same
    statistics many times, and eigh dominated each map."""
    key = (cov.shape, hashlib.blake2b(np.ascontiguousarray(cov).tobytes(), digest_size=16).digest())

    def decompose() -> tuple[np.ndarray, np.ndarray]:
        evals, evecs = np.linalg.eigh((cov + cov.T) / 2.0)
        evals, evecs = evals[::-1], evecs[:, ::-1]
        idx = np.argmax(np.abs(evecs), axis=0)
        signs = np.sign(evecs[idx, np.arange(evecs.shape[1])])
        signs[signs == 0] = 1.0
        out = (evecs * signs, np.maximum(evals, 0.0))
        for a in out:
            a.flags.writeable = False
        return out

    return _EIGEN.get(key, decompose)


def variance_kept(cov: np.ndarray) -> np.ndarray:
    """Fraction of the output variance kept at rank 0..d: [d + 1], ascending to 1."""
    evals = np.clip(np.linalg.eigvalsh(np.asarray(cov, np.float64))[::-1], 0.0, None)
    total = evals.sum()
    cum = np.concatenate([[0.0], np.cumsum(evals)])
    return cum / total if total > 0 else np.ones_like(cum)


def _like(x: np.ndarray, ref: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.asarray(ref).dtype)


def afm_linear(layer: Mapping[str, Any], stats: SiteStats, rank: int, *,
               activation: str | None = None, shift_std: float = 4.0) -> Params:
    """`{kernel W [in, out], bias b}` -> factor pair `{"u": {W U, b U}, "v": {U^T, mu - mu U U^T}}`.

    With `activation` (e.g. "relu"), the first factor becomes "u_<activation>" and its bias is
    shifted to `t = mu U - shift_std * sqrt(eigenvalue)` below the calibration range, the shift
    added back through the second factor's bias: for rows within `shift_std` standard deviations
    the layer starts exactly at linear AFM; fine-tuning then trains from there.
    """
    if "kernel" not in layer:
        raise CompressionError(f"afm_linear needs a full layer {{kernel, bias}}, got keys "
                               f"{sorted(layer)}")
    w = np.asarray(layer["kernel"], np.float64)
    b = np.asarray(layer["bias"], np.float64)
    mu = np.asarray(stats.mean, np.float64)
    if mu.shape != b.shape:
        raise CompressionError(f"statistics of dim {mu.shape[0]} do not fit a layer with "
                               f"{b.shape[0]} outputs")
    u, evals = principal_directions(stats.cov, rank)
    b1 = b @ u
    b2 = mu - (mu @ u) @ u.T
    first = "u"
    if activation is not None:
        if activation not in ACTIVATIONS:
            raise CompressionError(f"unknown activation {activation!r}; "
                                   f"choose one of {sorted(ACTIVATIONS)}")
        shift = mu @ u - shift_std * np.sqrt(evals)
        b1, b2, first = b1 - shift, b2 + shift @ u.T, f"u_{activation}"
    return {first: {"kernel": _like(w @ u, layer["kernel"]), "bias": _like(b1, layer["bias"])},
            "v": {"kernel": _like(u.T, layer["kernel"]), "bias": _like(b2, layer["bias"])}}


def afm_embedding(table: Mapping[str, Any], stats: SiteStats, rank: int) -> Params:
    """`{embedding E [V, d]}` -> `{embedding (E - mu) U [V, k], proj {U^T [k, d], mu [d]}}`."""
    if forms.table_form(table) != "full":
        raise CompressionError(f"afm_embedding needs a full table, got keys {sorted(table)}")
    e = np.asarray(table["embedding"], np.float64)
    mu = np.asarray(stats.mean, np.float64)
    u, _ = principal_directions(stats.cov, rank)
    ref = table["embedding"]
    return {"embedding": _like((e - mu) @ u, ref),
            "proj": {"kernel": _like(u.T, ref), "bias": _like(mu, ref)}}


def get_path(tree: Mapping[str, Any], site: str) -> Any:
    node: Any = tree
    for key in site.split("/"):
        if not isinstance(node, Mapping) or key not in node:
            raise CompressionError(f"site {site!r} is not in the params (missing {key!r})")
        node = node[key]
    return node


def set_path(tree: Mapping[str, Any], site: str, value: Any) -> Params:
    """A copy of `tree` with the subtree at `site` replaced (other subtrees shared, not copied)."""
    head, _, rest = site.partition("/")
    new = dict(tree)
    new[head] = set_path(tree[head], rest, value) if rest else value
    return new


def fold_projections(model: Any, params: Params) -> Params:
    """Fold each compressed field's projection into the Linear that reads the embeddings.

    Only for models whose concatenated field embeddings feed one Linear directly and nothing
    else (`model.FOLD_INTO`); for others the params are returned unchanged. The Linear's rows
    for field f, K_f [d, out], become `U_f^T K_f` [k, out] and its bias gains `mu_f K_f`; the
    projection disappears and scores are unchanged.

    Bag fields (`info.bags`) read their vectors between the categorical and the numeric ones
    and never fold: a pooled bag's bias is scaled by its weights' sum (its length for "sum", 0
    for an empty bag; `pooling`), which a fixed bias of the Linear cannot follow; nor does a
    table a bag shares (the bag still needs its projection).
    """
    target = getattr(model, "FOLD_INTO", None)
    if target is None:
        return dict(params)
    dense = get_path(params, target)
    if "kernel" not in dense:
        raise CompressionError(f"cannot fold into {target!r}: it is factorized already; fold "
                               "before compressing that layer (compress() does)")
    kernel = np.asarray(dense["kernel"], np.float64)
    bias = np.asarray(dense["bias"], np.float64)
    embed = params["embed"]
    bags = tuple(getattr(model.info, "bags", ()))
    keep = {b.name for b in bags} | {b.shares for b in bags if b.shares is not None}
    names = list(model.info.cat_names) + [b.name for b in bags] + list(model.info.num_names)
    new_embed, blocks, row = dict(embed), [], 0
    for name in names:
        p = embed[next((b.shares for b in bags if b.name == name and b.shares), name)]
        dim = forms.output_width(p)
        k_f = kernel[row:row + dim]
        row += dim
        if forms.table_form(p) == "compressed" and name not in keep:
            proj_w = np.asarray(p["proj"]["kernel"], np.float64)
            bias = bias + np.asarray(p["proj"]["bias"], np.float64) @ k_f
            k_f = proj_w @ k_f
            new_embed[name] = {"embedding": p["embedding"]}
        blocks.append(k_f)
    if row != kernel.shape[0]:
        raise CompressionError(f"fields give {row} inputs but {target!r} has {kernel.shape[0]}")
    new_dense = {"kernel": _like(np.concatenate(blocks), dense["kernel"]),
                 "bias": _like(bias, dense["bias"])}
    out = set_path(params, target, new_dense)
    out["embed"] = new_embed
    return out


def pad_ranks(params: Params, multiple: int = 4) -> Params:
    """Each compressed table's rank k padded up to a multiple of `multiple` (at most its
    projection's width d): zero columns in the table, zero rows in the projection, so scores are
    unchanged (the added products are exact zeros).

    The packed layout holds one storage per table width, so a table is not padded into a width
    where it would sit beside tables of the other storage (int8 or float; e.g. after
    `quantize`, a rank-1 table stays float): at such a width the padded tables whose storage
    differs from the tables already there (none there: the int8 ones go) keep their rank.

    For a serving runtime that pays per operation (ONNX Runtime at small batches): the packed
    layout gathers and projects once per table width, and a budget plan spreads the fields over
    many ranks (a trained AFM DeepFM on Criteo: 13 widths, 98 nodes that ONNX Runtime runs;
    padded to 4: 53). Costs (k' - k) columns per row: +9 % bytes on that model. Folded tables
    (their projection lives in the next Linear), full and TT tables, and int8 ones' row scales
    are unchanged. `merge_ranks` reaches few widths for fewer bytes.
    """
    if multiple < 1:
        raise CompressionError(f"pad_ranks: multiple must be >= 1, got {multiple}")
    tables = _compressed_tables(params)
    rank_of = {name: min(t.d, -(-t.k // multiple) * multiple) for name, t in tables.items()}
    fixed = _fixed_storage(params)
    while True:   # padded tables that would share a width with the other storage keep their rank
        kinds, native = _storage_by_width(tables, fixed, rank_of)
        keep = [name for name, w in rank_of.items() if w != tables[name].k and len(kinds[w]) > 1
                and tables[name].int8 not in (native[w] or {True})]
        if not keep:
            return padded(params, rank_of)
        rank_of.update((name, tables[name].k) for name in keep)


def merge_ranks(params: Params, ranks: int | None = None, *, max_added: float | None = None) -> Params:
    """The compressed tables' ranks padded (as `pad_ranks` pads them: zero columns and zero
    projection rows, scores unchanged) so that at most `ranks` distinct ranks remain, choosing
    the kept ranks that add the fewest bytes (or, with `max_added`, as few ranks as that many
    added bytes allow): `padded(params, merged_ranks(params, ranks, max_added=...))`."""
    return padded(params, merged_ranks(params, ranks, max_added=max_added))


def merged_ranks(params: Params, ranks: int | None = None, *,
                 max_added: float | None = None) -> dict[str, int]:
    """The rank each compressed table pads to (`merge_ranks`) so that at most `ranks` distinct
    ranks remain, choosing the kept ranks that add the fewest bytes; or, given `max_added`
    instead of `ranks`, the fewest ranks whose padding adds at most that many bytes.

    Each table pads up to the smallest kept rank at or above its own, never past its
    projection's width d, nor into a width where it would sit beside tables of the other storage
    (int8 or float: the packed layout holds one per width); where that leaves no way to reach
    `ranks` ranks, as few as it allows remain (a layout choice never fails an export). The kept
    ranks come from a dynamic program over the distinct ranks in ascending order, where a
    group's cost is its padded bytes (rows x table bytes per value plus d x projection bytes per
    value, per added column): big tables keep their own rank and the small ones join them. On
    a trained AFM DeepFM on Criteo (13 ranks): 3 ranks for +4.9 % bytes, where padding to a
    multiple of 4 gives 4 ranks for +9.7 % (experiments/results/onnx_pad.md).
    """
    if (ranks is None) == (max_added is None):
        raise CompressionError("merge_ranks: give either ranks or max_added")
    if ranks is not None and ranks < 1:
        raise CompressionError(f"merge_ranks: ranks must be >= 1, got {ranks}")
    tables = _compressed_tables(params)
    fixed = _fixed_storage(params)
    widths = sorted({t.k for t in tables.values()})
    if ranks is not None and len(widths) <= ranks:
        return {name: t.k for name, t in tables.items()}

    def cost(i: int, j: int) -> float:      # the ranks widths[i..j] padded to widths[j]
        top, total, kinds = widths[j], 0.0, set(fixed.get(widths[j], ()))
        for t in tables.values():
            if widths[i] <= t.k <= top:
                if top > t.d:
                    return np.inf
                total += (top - t.k) * t.per_column
                kinds.add(t.int8)
        return np.inf if i < j and len(kinds) > 1 else total   # one storage per packed width

    n = len(widths)
    group = [[cost(i, j) if i <= j else np.inf for j in range(n)] for i in range(n)]
    best = np.full((n + 1, n + 1), np.inf)   # best[g, j]: ranks widths[:j] in g groups
    back = np.zeros((n + 1, n + 1), int)
    best[0, 0] = 0.0
    for g in range(1, n + 1):
        for j in range(1, n + 1):
            costs = [best[g - 1, i] + group[i][j - 1] for i in range(j)]
            back[g, j] = int(np.argmin(costs))
            best[g, j] = costs[back[g, j]]
    allowed = np.flatnonzero(np.isfinite(best[:, n]))   # group counts the widths allow (n does)
    if ranks is None:                    # the fewest groups within the byte budget (n adds none)
        g = int(next(k for k in allowed if best[k, n] <= max_added))
    elif allowed[0] > ranks:             # widths d forbid `ranks` groups: the fewest they allow
        g = int(allowed[0])
    else:
        g = int(np.argmin(best[:ranks + 1, n]))
    kept, j = [], n
    while j > 0:
        kept.append(widths[j - 1])
        j, g = back[g, j], g - 1
    return {name: min(w for w in kept if w >= t.k) for name, t in tables.items()}


def rank_plan(params: Params, max_ranks: int | str | None) -> dict[str, int] | None:
    """The rank each compressed table pads to for a runtime that pays per table rank (ONNX
    Runtime: `export_onnx`, `afm-jax export --max-ranks`): "auto", the fewest distinct ranks
    whose padding adds at most the params' own bytes (loaded, the model is at most twice its
    stored size; a big table keeps its rank, and the small ones join it); N >= 1, at most N
    ranks (`merged_ranks`); 0 or None: None, every rank as it is."""
    if not max_ranks:
        return None
    if max_ranks == "auto":
        from afm_jax.inference import count_bytes
        return merged_ranks(params, max_added=count_bytes(params))
    if isinstance(max_ranks, str):
        raise CompressionError(f"max_ranks: expected 'auto' or a count, got {max_ranks!r}")
    return merged_ranks(params, int(max_ranks))


class _Table(NamedTuple):
    k: int            # rank
    d: int            # projection width
    per_column: int   # bytes one added column costs (table rows and a projection row)
    int8: bool        # int8 rows


def _compressed_tables(params: Params) -> dict[str, _Table]:
    """Each compressed (projected) table in params["embed"], by name."""
    embed = params.get("embed")
    out = {}
    for name, node in (embed.items() if isinstance(embed, Mapping) else ()):
        if forms.table_form(node) == "compressed":
            table = node["embedding_q" if "embedding_q" in node else "embedding"]
            kernel = node["proj"]["kernel"]
            k, d = np.shape(kernel)
            per_column = np.shape(table)[0] * np.dtype(table.dtype).itemsize \
                + d * np.dtype(kernel.dtype).itemsize
            out[name] = _Table(int(k), int(d), int(per_column), "embedding_q" in node)
    return out


def _fixed_storage(params: Params) -> dict[int, set[bool]]:
    """Table width -> the storages (int8: True) of the row tables that padding leaves as they
    are (full and folded), which the packed layout puts beside compressed tables of that rank."""
    embed = params.get("embed")
    out: dict[int, set[bool]] = {}
    for node in (embed.values() if isinstance(embed, Mapping) else ()):
        if forms.table_form(node) == "full":   # folded ones too (no model dim given)
            out.setdefault(forms.table_width(node), set()).add(forms.is_int8(node))
    return out


def _storage_by_width(tables: Mapping[str, _Table], fixed: Mapping[int, set[bool]],
                      rank_of: Mapping[str, int]) -> tuple[dict, dict]:
    """Width -> the storages of every table there after padding to rank_of, and of those there
    without padding."""
    kinds: dict[int, set[bool]] = {w: set(s) for w, s in fixed.items()}
    native: dict[int, set[bool]] = {w: set(s) for w, s in fixed.items()}
    for name, w in rank_of.items():
        kinds.setdefault(w, set()).add(tables[name].int8)
        native.setdefault(w, set())
        if w == tables[name].k:
            native[w].add(tables[name].int8)
    return kinds, native


def padded(params: Params, rank_of: Mapping[str, int], pad=np.pad) -> Params:
    """params with each named compressed table padded with zero columns (and its projection
    with zero rows) up to rank_of[name]. pad: `np.pad`, or `jnp.pad` to pad inside a traced
    function (the ONNX export pads there, so that the file holds the tables unpadded)."""
    out = dict(params)
    if not rank_of:
        return out
    new_embed = dict(params["embed"])
    for name, k_new in rank_of.items():
        node = new_embed[name]
        key = "embedding_q" if "embedding_q" in node else "embedding"
        table, kernel = node[key], node["proj"]["kernel"]
        extra = k_new - np.shape(kernel)[0]
        if extra > 0:
            new_embed[name] = {**node, key: pad(table, ((0, 0), (0, extra))),
                               "proj": {**node["proj"], "kernel": pad(kernel, ((0, extra), (0, 0)))}}
    out["embed"] = new_embed
    return out


def compress(params: Params, stats: Stats, plan: Plan, *, model: Any = None,
             activation: str | None = None, shift_std: float = 4.0) -> Params:
    """The whole model in one call: every site with a rank in `plan` gets its AFM map.

    plan: site -> rank (None: keep full). Linear sites become factor pairs (with `activation`
    between the factors if given); embedding sites become compressed tables. With `model`, the
    projections of compressed embeddings are folded into the Linear they feed where the model
    allows it (`model.FOLD_INTO`), before that Linear is itself factorized.
    """
    out: dict = dict(params)
    ranks = {s: r for s, r in plan.items() if r is not None}
    for site, rank in ranks.items():
        if site not in stats:
            raise CompressionError(f"no statistics for site {site!r}; collect them first")
        node = get_path(params, site)
        if forms.table_form(node) is not None:
            out = set_path(out, site, afm_embedding(node, stats[site], rank))
    fold_target = getattr(model, "FOLD_INTO", None) if model is not None else None
    if fold_target is not None and any(s.startswith("embed/") for s in ranks):
        # the folded Linear computes the same outputs, so its statistics still hold
        out = fold_projections(model, out)
    for site, rank in ranks.items():
        node = get_path(out, site)
        if forms.linear_form(node) is not None:
            out = set_path(out, site, afm_linear(node, stats[site], rank, activation=activation,
                                                 shift_std=shift_std))
        elif forms.table_form(node) is None:
            raise CompressionError(f"site {site!r} is neither a full Linear nor an embedding "
                                   f"table (keys {sorted(node)})")
    return out
