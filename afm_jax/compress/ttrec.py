"""TT-Rec baseline (Yin et al., MLSys 2021): embedding tables as tensor trains, trained from scratch.

A table E [V, d] becomes three cores G0 [v1, d1, r], G1 [v2, r, d2, r], G2 [v3, r, d3] with
v1 v2 v3 >= V and d1 d2 d3 = d; row i = (i1, i2, i3) in mixed radix (v1, v2, v3) is the
contraction G0[i1] G1[i2] G2[i3] (see `afm_jax.nn.tt_row`). Unlike AFM and weight SVD this is
not a map of trained params: `tt_tables` swaps freshly initialized cores in for the full tables
of freshly initialized params, and the model is then trained like the original.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from afm_jax.errors import CompressionError


def _balanced_factors(n: int, parts: int) -> tuple[int, ...]:
    """`parts` integers >= 1 with product exactly n, as equal as possible (ascending)."""
    if parts == 1:
        return (n,)
    best: tuple[int, ...] | None = None
    for f in range(1, n + 1):
        if n % f:
            continue
        rest = _balanced_factors(n // f, parts - 1)
        cand = tuple(sorted((f, *rest)))
        if best is None or max(cand) - min(cand) < max(best) - min(best):
            best = cand
    return best  # type: ignore[return-value]


def tt_shape(vocab: int, dim: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Row factors (v1, v2, v3) with v1 v2 v3 >= vocab, near-cubic, and dim factors (d1, d2, d3)."""
    if vocab < 1 or dim < 1:
        raise CompressionError(f"TT table needs vocab >= 1 and dim >= 1, got {vocab} x {dim}")
    v1 = math.ceil(vocab ** (1 / 3))
    v2 = math.ceil(math.sqrt(vocab / v1))
    v3 = math.ceil(vocab / (v1 * v2))
    return (v1, v2, v3), _balanced_factors(dim, 3)  # type: ignore[return-value]


def tt_param_count(vocab: int, dim: int, rank: int) -> int:
    (v1, v2, v3), (d1, d2, d3) = tt_shape(vocab, dim)
    return v1 * d1 * rank + v2 * rank * d2 * rank + v3 * rank * d3


def tt_rank_for_budget(vocab: int, dim: int, budget: int) -> int:
    """The largest TT rank whose cores hold at most `budget` params (at least 1)."""
    r = 1
    while tt_param_count(vocab, dim, r + 1) <= budget:
        r += 1
    return r


def tt_cores(vocab: int, dim: int, rank: int, seed: int = 0, std: float = 1e-2,
             dtype=np.float32) -> dict[str, np.ndarray]:
    """Random cores whose rows have entries of standard deviation `std` (like a normal(std)
    full table): each core N(0, s^2) with r^2 s^6 = std^2."""
    (v1, v2, v3), (d1, d2, d3) = tt_shape(vocab, dim)
    s = (std ** 2 / rank ** 2) ** (1 / 6)
    rng = np.random.default_rng(seed)
    return {"tt_0": (s * rng.standard_normal((v1, d1, rank))).astype(dtype),
            "tt_1": (s * rng.standard_normal((v2, rank, d2, rank))).astype(dtype),
            "tt_2": (s * rng.standard_normal((v3, rank, d3))).astype(dtype)}


def tt_tables(params: Mapping[str, Any], ranks: Mapping[str, int], seed: int = 0) -> dict:
    """Params with the full tables at `ranks` (site "embed/<field>" -> TT rank) replaced by
    fresh TT cores; every other param is kept as it is."""
    embed = dict(params.get("embed", {}))
    for i, (site, rank) in enumerate(sorted(ranks.items())):
        field = site.split("/", 1)[1] if site.startswith("embed/") else None
        if field is None or field not in embed or "embedding" not in embed[field]:
            raise CompressionError(f"TT-Rec: {site!r} is not a full embedding table; tables: "
                                   f"{sorted('embed/' + f for f in embed)}")
        if rank < 1:
            raise CompressionError(f"TT-Rec: rank for {site!r} must be >= 1, got {rank}")
        vocab, dim = np.shape(embed[field]["embedding"])
        embed[field] = tt_cores(vocab, dim, rank, seed=seed * 100_003 + i,
                                dtype=np.asarray(embed[field]["embedding"]).dtype)
    return {**params, "embed": embed}


def tt_plan_like(params: Mapping[str, Any], budgets: Mapping[str, int],
                 min_rows: int = 1000) -> dict[str, int]:
    """TT ranks matching a parameter budget per table (e.g. AFM's compressed table + projection),
    for the tables of at least `min_rows` rows; smaller tables stay full."""
    plan = {}
    for site, budget in budgets.items():
        field = site.split("/", 1)[1]
        vocab, dim = np.shape(params["embed"][field]["embedding"])
        if vocab >= min_rows:
            plan[site] = tt_rank_for_budget(vocab, dim, budget)
    return plan
