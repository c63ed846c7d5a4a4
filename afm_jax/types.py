"""Type aliases of the public API, as optax names its types (`optax.Params`, `optax.Updates`).

Params: a model's params, a plain nested dict of arrays (Flax linen), e.g.
    {"mlp": {"dense_0": {"kernel": [in, out], "bias": [out]}}, "embed": {"C1": {"embedding": ...}}}
Stats: per-site output statistics keyed by site path ("mlp/dense_0", "embed/C1").
Plan: site path -> rank (None keeps the site full), as the rank planners return it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from afm_jax.compress.stats import SiteStats

Params: TypeAlias = dict[str, Any]
Stats: TypeAlias = "Mapping[str, SiteStats]"
Plan: TypeAlias = dict[str, int | None]

__all__ = ["Params", "Plan", "Stats"]
