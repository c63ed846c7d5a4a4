"""Rank plans: which rank each site gets, and what that costs and keeps.

A plan is a plain dict site -> rank (None: keep the site full). A site is only factorized when
that saves parameters; otherwise the planners leave it full.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from afm_jax import forms
from afm_jax.compress.afm import get_path, variance_kept
from afm_jax.errors import CompressionError
from afm_jax.types import Params, Plan, Stats


@dataclass(frozen=True)
class SiteShape:
    """A compressible site: kind "linear" (in -> out) or "embedding" (rows V, dim d as in/out)."""

    kind: str
    inputs: int
    outputs: int

    def full_params(self) -> int:
        if self.kind == "linear":
            return self.inputs * self.outputs + self.outputs
        return self.inputs * self.outputs

    def factored_params(self, rank: int) -> int:
        """Linear: {W U, b U} + {U^T, b2}; embedding: (E - mu) U + {U^T, mu}."""
        if self.kind == "linear":
            return rank * (self.inputs + 1) + rank * self.outputs + self.outputs
        return self.inputs * rank + rank * self.outputs + self.outputs

    def params_at(self, rank: int | None) -> int:
        return self.full_params() if rank is None else self.factored_params(rank)

    def max_saving_rank(self) -> int:
        """Largest rank whose factor pair has fewer params than the full site (0 if none)."""
        full, k = self.full_params(), 0
        while k < self.outputs and self.factored_params(k + 1) < full:
            k += 1
        return k


def site_shapes(params: Params, stats: Stats,
                sites: Sequence[str] | None = None) -> dict[str, SiteShape]:
    """Shapes of the sites that have statistics and full params, optionally filtered by prefix.

    sites: prefixes such as ("mlp/", "embed/") or exact names; None keeps every site.
    """
    shapes = {}
    for site in stats:
        if sites is not None and not any(site == p or site.startswith(p.rstrip("/") + "/")
                                         for p in sites):
            continue
        node = get_path(params, site)
        if forms.linear_form(node) == "full":
            i, o = np.shape(node["kernel"])
            shapes[site] = SiteShape("linear", int(i), int(o))
        elif forms.table_form(node) == "full":
            v, d = np.shape(node["embedding"])
            shapes[site] = SiteShape("embedding", int(v), int(d))
    return shapes


def _clip(shape: SiteShape, rank: int | None) -> int | None:
    """None (keep full) where the rank would not save parameters."""
    if rank is None or rank > shape.max_saving_rank():
        return None
    return rank


def fixed_plan(params: Params, stats: Stats, rank: int | Mapping[str, int | None],
               sites: Sequence[str] | None = None) -> Plan:
    """The same rank for every site (or a rank per site name); full where it would not save."""
    shapes = site_shapes(params, stats, sites)
    if isinstance(rank, Mapping):
        unknown = sorted(set(rank) - set(shapes))
        if unknown:
            raise CompressionError(f"plan names site(s) {unknown} that have no statistics or "
                                   f"full params; sites: {sorted(shapes)}")
        return {s: _clip(shapes[s], rank.get(s)) for s in shapes if s in rank}
    if rank < 0:
        raise CompressionError(f"rank must be >= 0, got {rank}")
    return {s: _clip(sh, min(rank, sh.outputs)) for s, sh in shapes.items()}


def energy_plan(params: Params, stats: Stats, energy: float,
                sites: Sequence[str] | None = None) -> Plan:
    """Per site the smallest rank keeping >= `energy` of its output variance."""
    if not 0.0 < energy <= 1.0:
        raise CompressionError(f"energy must be in (0, 1], got {energy}")
    plan = {}
    for s, sh in site_shapes(params, stats, sites).items():
        kept = variance_kept(stats[s].cov)
        rank = int(np.searchsorted(kept, energy - 1e-12))
        plan[s] = _clip(sh, min(rank, sh.outputs))
    return plan


def budget_plan(params: Params, stats: Stats, fraction: float,
                sites: Sequence[str] | None = None) -> Plan:
    """Ranks within `fraction` of the sites' full parameter count, by variance bought per param.

    Every factorizable site starts at rank 1; each further rank goes to the site whose next
    eigenvalue keeps the largest fraction of that site's variance per parameter it costs, until
    the budget is spent. Sites that cannot save parameters stay full and count in full.
    """
    if not 0.0 < fraction:
        raise CompressionError(f"budget fraction must be > 0, got {fraction}")
    shapes = site_shapes(params, stats, sites)
    total = sum(sh.full_params() for sh in shapes.values())
    budget = fraction * total
    factorizable = {s: sh for s, sh in shapes.items() if sh.max_saving_rank() >= 1}
    factored = {s: 1 for s in factorizable}  # every factorizable site starts at rank 1
    used = sum(sh.full_params() for s, sh in shapes.items() if s not in factorizable)
    used += sum(sh.factored_params(1) for sh in factorizable.values())
    if used > budget:
        raise CompressionError(
            f"budget {fraction} ({budget:.0f} params) cannot be met: rank 1 at every site "
            f"already needs {used} of {total} params")
    gains = {s: np.diff(variance_kept(stats[s].cov)) for s in factorizable}
    heap: list[tuple[float, str]] = []
    for s, sh in factorizable.items():
        cost = sh.factored_params(2) - sh.factored_params(1)
        if sh.max_saving_rank() >= 2:
            heapq.heappush(heap, (-gains[s][1] / cost, s))
    while heap:
        _, s = heapq.heappop(heap)
        sh, k = factorizable[s], factored[s]
        cost = sh.factored_params(k + 1) - sh.factored_params(k)
        if used + cost > budget:
            continue
        factored[s], used = k + 1, used + cost
        if k + 2 <= sh.max_saving_rank():
            nxt = sh.factored_params(k + 2) - sh.factored_params(k + 1)
            heapq.heappush(heap, (-gains[s][k + 1] / nxt, s))
    return {s: factored.get(s) for s in shapes}


def make_plan(params: Params, stats: Stats, spec: str,
              sites: Sequence[str] | None = None) -> Plan:
    """A plan from a string: "rank:64", "energy:0.99" or "budget:0.25" (checked by
    `plan_spec.parse_plan`; bytes and quality plans go through `compress_model`)."""
    from afm_jax.compress.plan_spec import PLAN_USAGE, parse_plan

    parsed = parse_plan(spec)
    if parsed.kind == "rank":
        return fixed_plan(params, stats, int(parsed.value), sites)
    if parsed.kind == "energy":
        return energy_plan(params, stats, float(parsed.value), sites)
    if parsed.kind == "budget":
        return budget_plan(params, stats, float(parsed.value), sites)
    raise CompressionError(f"plan {spec!r} needs the model and data: use compress_model; "
                           f"make_plan takes rank:K, energy:E or budget:F ({PLAN_USAGE})")


@dataclass(frozen=True)
class PlanReport:
    rows: list[dict]
    params_before: int
    params_after: int

    @property
    def ratio(self) -> float:
        return self.params_before / max(self.params_after, 1)

    def to_json(self) -> dict:
        return {"sites": self.rows, "params_before": self.params_before,
                "params_after": self.params_after, "ratio": self.ratio}

    def to_markdown(self) -> str:
        lines = ["| site | kind | shape | rank | params before | params after | variance kept |",
                 "|---|---|---|---:|---:|---:|---:|"]
        for r in self.rows:
            rank = "full" if r["rank"] is None else r["rank"]
            lines.append(f"| {r['site']} | {r['kind']} | {r['inputs']}x{r['outputs']} | {rank} "
                         f"| {r['params_before']:,} | {r['params_after']:,} "
                         f"| {r['variance_kept']:.4f} |")
        lines.append(f"| **total** | | | | {self.params_before:,} | {self.params_after:,} "
                     f"| ratio {self.ratio:.2f}x |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return json.dumps(self.to_json())


def plan_report(params: Params, stats: Stats, plan: Plan) -> PlanReport:
    """Per site its shape, rank, params before and after and variance kept; totals.

    Counts embedding projections that a fold would remove as kept (an upper bound).
    """
    shapes = site_shapes(params, stats, list(plan))
    rows, before, after = [], 0, 0
    for s, sh in shapes.items():
        rank = plan.get(s)
        kept = 1.0 if rank is None else float(variance_kept(stats[s].cov)[rank])
        rows.append({"site": s, "kind": sh.kind, "inputs": sh.inputs, "outputs": sh.outputs,
                     "rank": rank, "params_before": sh.full_params(),
                     "params_after": sh.params_at(rank), "variance_kept": kept})
        before += sh.full_params()
        after += sh.params_at(rank)
    return PlanReport(rows, before, after)
