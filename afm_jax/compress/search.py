"""Plans chosen by a quality target or a byte size, on statistics collected once.

    target = parse_quality_target("auc-drop:0.0005,logloss-rise:0.001")
    found = search_plan(params, stats, target, score)   # score(plan) -> {"auc", "logloss"}
    found.plan                                           # site -> rank, validated by `score`
    print(found.to_markdown())                           # the search trace

The search bisects the parameter budget of `budget_plan` between its smallest feasible fraction
(rank 1 at every site) and 1. Each try is one AFM map scored by the caller's `score` (on the
validation split, never test): everything here is pure except those calls. Quality is monotone
in the budget in practice but not by construction, so the plan returned is always one that was
scored and accepted (the smallest such), and the uncompressed plan when none was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from afm_jax.compress.ranks import budget_plan, plan_report, site_shapes
from afm_jax.errors import CompressionError
from afm_jax.inference import count_params
from afm_jax.types import Params, Plan, Stats

QUALITY_KINDS = ("auc-drop", "logloss-rise")
_QUALITY_USAGE = "use auc-drop:D, logloss-rise:L or both as auc-drop:D,logloss-rise:L (D, L >= 0)"
BYTES_PER_PARAM = 4  # float32


@dataclass(frozen=True)
class QualityTarget:
    """The most validation AUC may drop and logloss may rise against the original (None: any)."""

    auc_drop: float | None = None
    logloss_rise: float | None = None

    def accepts(self, baseline: Mapping[str, float], scores: Mapping[str, float]) -> bool:
        """True when `scores` is within the target of `baseline` (NaN scores never are)."""
        drop = baseline["auc"] - scores["auc"]
        rise = scores["logloss"] - baseline["logloss"]
        if self.auc_drop is not None and not drop <= self.auc_drop:
            return False
        return self.logloss_rise is None or rise <= self.logloss_rise

    def __str__(self) -> str:
        parts = []
        if self.auc_drop is not None:
            parts.append(f"auc-drop:{self.auc_drop:g}")
        if self.logloss_rise is not None:
            parts.append(f"logloss-rise:{self.logloss_rise:g}")
        return ",".join(parts)


def is_quality_spec(spec: object) -> bool:
    """Whether a plan spec asks for a quality target ("auc-drop:..." or "logloss-rise:...")."""
    return isinstance(spec, str) and spec.partition(":")[0].strip() in QUALITY_KINDS


def parse_quality_target(spec: str) -> QualityTarget:
    """"auc-drop:D", "logloss-rise:L" or "auc-drop:D,logloss-rise:L" -> QualityTarget.

    Raises CompressionError naming the spec for an unknown or repeated kind, a missing or
    non-numeric value, or a negative or non-finite one.
    """
    values: dict[str, float] = {}
    for part in spec.split(","):
        kind, sep, text = (x.strip() for x in part.partition(":"))
        if kind not in QUALITY_KINDS:
            raise CompressionError(f"bad plan {spec!r}: unknown target {kind or part!r}; "
                                   f"{_QUALITY_USAGE}")
        if kind in values:
            raise CompressionError(f"bad plan {spec!r}: {kind} given twice; {_QUALITY_USAGE}")
        try:
            value = float(text)
        except ValueError:
            raise CompressionError(f"bad plan {spec!r}: {kind} needs a number, got {text!r}; "
                                   f"{_QUALITY_USAGE}") from None
        if not sep or not math.isfinite(value) or value < 0:
            raise CompressionError(f"bad plan {spec!r}: {kind} must be a finite number >= 0, "
                                   f"got {text!r}; {_QUALITY_USAGE}")
        values[kind] = value
    return QualityTarget(values.get("auc-drop"), values.get("logloss-rise"))


class SearchStep(NamedTuple):
    """One scored try: the budget fraction asked, the plan's compressible params and scores."""

    budget: float
    params_before: int
    params_after: int
    auc: float
    logloss: float
    auc_drop: float
    logloss_rise: float
    accepted: bool

    @property
    def ratio(self) -> float:
        """Compressible params before / after."""
        return self.params_before / max(self.params_after, 1)


@dataclass(frozen=True)
class SearchResult:
    """What `search_plan` found: the plan, its budget (None: uncompressed), the trace.

    baseline: validation scores of the original params. steps: every scored try in order.
    compressed: False when no budget below 1 met the target and the plan keeps every site full.
    """

    target: QualityTarget
    baseline: dict[str, float]
    steps: tuple[SearchStep, ...]
    plan: Plan
    budget: float | None
    compressed: bool
    note: str
    seconds: float

    @property
    def chosen(self) -> SearchStep | None:
        """The accepted step whose plan was returned (None for the uncompressed plan)."""
        return next((s for s in self.steps if s.accepted and s.budget == self.budget), None)

    def to_json(self) -> dict:
        return {"target": str(self.target), "baseline": self.baseline, "budget": self.budget,
                "compressed": self.compressed, "note": self.note, "seconds": self.seconds,
                "steps": [{**s._asdict(), "ratio": s.ratio} for s in self.steps]}

    def to_markdown(self) -> str:
        b = self.baseline
        lines = [f"target {self.target} on validation; original AUC {b['auc']:.5f}, "
                 f"logloss {b['logloss']:.5f}", "",
                 "| try | budget | params after | ratio | valid AUC | AUC drop "
                 "| valid logloss | logloss rise | accepted |",
                 "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for i, s in enumerate(self.steps, 1):
            mark = "yes" if s.accepted else "no"
            if s is self.chosen:
                mark += " (chosen)"
            lines.append(f"| {i} | {s.budget:.5f} | {s.params_after:,} | {s.ratio:.2f}x "
                         f"| {s.auc:.5f} | {s.auc_drop:+.5f} | {s.logloss:.5f} "
                         f"| {s.logloss_rise:+.5f} | {mark} |")
        lines += ["", self.note]
        return "\n".join(lines)


def _key(plan: Plan) -> tuple:
    return tuple(sorted(plan.items()))


def search_plan(params: Params, stats: Stats, target: QualityTarget,
                score: Callable[[Plan], Mapping[str, float]],
                sites: Sequence[str] | None = None, *, resolution: float | None = None,
                rel_tolerance: float = 0.01, max_tries: int = 16) -> SearchResult:
    """The smallest `budget_plan` whose scores stay within `target` of the original's.

    score: plan -> {"auc", "logloss"} of the model compressed with that plan, on validation
    data; the all-full plan gives the baseline. Bisection on the budget fraction between the
    smallest feasible one and 1, until the bracket is narrower than `resolution` (default: the
    cheapest single rank step of any site, so a one-site search lands on an exact rank) or than
    `rel_tolerance` of the accepted end (params within 1% of the bracket's best are not worth
    another scoring), or `max_tries` plans were scored. Plans already scored are not scored
    again; the budget-1 plan must be accepted for the bisection to start.
    """
    if max_tries < 2:
        raise CompressionError(f"max_tries must be >= 2, got {max_tries}")
    t0 = time.perf_counter()
    shapes = site_shapes(params, stats, sites)
    full: Plan = {s: None for s in shapes}
    baseline = {k: float(v) for k, v in score(full).items() if k in ("auc", "logloss")}
    factorizable = {s: sh for s, sh in shapes.items() if sh.max_saving_rank() >= 1}

    def done(steps: list[SearchStep], note: str) -> SearchResult:
        accepted = [s for s in steps if s.accepted]
        if not accepted:
            return SearchResult(target, baseline, tuple(steps), full, None, False, note,
                                time.perf_counter() - t0)
        best = min(accepted, key=lambda s: (s.params_after, s.budget))
        plan = budget_plan(params, stats, best.budget, sites)
        return SearchResult(target, baseline, tuple(steps), plan, best.budget, True, note,
                            time.perf_counter() - t0)

    if not factorizable:
        return done([], "no site can save parameters: the plan keeps every site full")
    total = sum(sh.full_params() for sh in shapes.values())
    floor = sum(sh.full_params() for s, sh in shapes.items() if s not in factorizable)
    floor += sum(sh.factored_params(1) for sh in factorizable.values())
    lo = floor / total
    if resolution is None:
        step_cost = min(sh.factored_params(2) - sh.factored_params(1)
                        for sh in factorizable.values())
        resolution = step_cost / total
    steps: list[SearchStep] = []
    seen: dict[tuple, bool] = {}

    def attempt(fraction: float) -> bool:
        plan = budget_plan(params, stats, fraction, sites)
        key = _key(plan)
        if key not in seen:
            scores = score(plan)
            auc, logloss = float(scores["auc"]), float(scores["logloss"])
            report = plan_report(params, stats, plan)
            ok = target.accepts(baseline, {"auc": auc, "logloss": logloss})
            steps.append(SearchStep(fraction, report.params_before, report.params_after, auc,
                                    logloss, baseline["auc"] - auc,
                                    logloss - baseline["logloss"], ok))
            seen[key] = ok
        return seen[key]

    # the smallest feasible budget, padded a hair so float rounding cannot make it infeasible
    lo = min(lo * (1 + 1e-12), 1.0)
    if attempt(lo):
        return done(steps, f"the smallest feasible budget ({lo:.5f}, rank 1 at every site) "
                           "meets the target")
    hi = 1.0
    if not attempt(hi):
        return done(steps, "no budget below 1 meets the target on validation: the plan keeps "
                           "every site full (uncompressed)")
    def narrow() -> bool:
        return hi - lo <= max(resolution, rel_tolerance * hi)

    while not narrow() and len(steps) < max_tries:
        mid = (lo + hi) / 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    why = (f"bracket {lo:.5f}..{hi:.5f} narrower than one rank step or {rel_tolerance:g} of "
           f"its top" if narrow() else f"{max_tries} tries scored (bracket {lo:.5f}..{hi:.5f})")
    return done(steps, f"bisection stopped: {why}; the smallest accepted plan is returned")


def bytes_plan(params: Params, stats: Stats, n_bytes: int,
               sites: Sequence[str] | None = None) -> Plan:
    """The largest `budget_plan` whose whole model fits in `n_bytes` bytes of float32.

    Params outside the compressible sites count in full. Projections that folding removes are
    counted as kept, so the compressed model is at most `n_bytes`. A model that fits already
    gets the all-full plan.
    """
    shapes = site_shapes(params, stats, sites)
    total_model = count_params(params)
    if total_model * BYTES_PER_PARAM <= n_bytes or not shapes:
        return {s: None for s in shapes}
    compressible = sum(sh.full_params() for sh in shapes.values())
    fixed = total_model - compressible
    fraction = (n_bytes / BYTES_PER_PARAM - fixed) / compressible
    if fraction <= 0:
        raise CompressionError(
            f"bytes:{n_bytes} cannot be met: the {fixed:,} params outside the compressible "
            f"sites already need {fixed * BYTES_PER_PARAM:,} bytes")
    try:
        return budget_plan(params, stats, fraction, sites)
    except CompressionError as e:
        raise CompressionError(f"bytes:{n_bytes} cannot be met: {e}") from None


def fit_bytes(params: Params, stats: Stats, n_bytes: int, sites: Sequence[str] | None,
              build: Callable[[Plan], Params], size: Callable[[Params], int], *,
              rel_tolerance: float = 1e-3, max_tries: int = 16) -> tuple[Plan, Params]:
    """The largest `budget_plan` whose model, as `build(plan)` makes it, stores in at most
    `n_bytes` (as `size` counts it): `bytes_plan` when that already fits, then a bisection of
    the budget fraction upward on the measured size, until the bracket is narrower than
    `rel_tolerance` of its top or `max_tries` plans were built. For forms whose bytes no
    formula gives, e.g. int8 after AFM (`build` = compress then quantize, `size` =
    `inference.count_bytes`). Returns (plan, built params); CompressionError when none fits.
    """
    shapes = site_shapes(params, stats, sites)
    full = {s: None for s in shapes}
    best = (full, build(full))
    if size(best[1]) <= n_bytes:
        return best
    compressible = sum(sh.full_params() for sh in shapes.values())
    fixed = count_params(params) - compressible
    lo, hi = (n_bytes / BYTES_PER_PARAM - fixed) / compressible, 1.0
    best = None
    if lo > 0:   # float32 bytes would fit here, so any smaller form fits too
        plan = bytes_plan(params, stats, n_bytes, sites)
        built = build(plan)
        if size(built) <= n_bytes:
            best = (plan, built)
    if best is None:   # start from the smallest plan there is
        lo = 0.0
        plan = {s: 1 for s in shapes}
        built = build(plan)
        if size(built) > n_bytes:
            raise CompressionError(f"bytes:{n_bytes} cannot be met: rank 1 at every site "
                                   f"stores {size(built):,} bytes")
        best = (plan, built)
    seen = {_key(best[0]): True}
    tries = 1
    while tries < max_tries and hi - lo > rel_tolerance * hi:
        mid = (lo + hi) / 2
        try:
            cand = budget_plan(params, stats, mid, sites)
        except CompressionError:
            lo = mid
            continue
        key = _key(cand)
        if key not in seen:
            built = build(cand)
            tries += 1
            seen[key] = size(built) <= n_bytes
            if seen[key]:
                best = (cand, built)
        if seen[key]:
            lo = mid
        else:
            hi = mid
    return best


def parse_bytes(spec: str) -> int:
    """"bytes:N" -> N (underscores, and suffixes k, M, G in powers of 1024 allowed)."""
    text = spec.partition(":")[2].strip().replace("_", "")
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:].lower(), 1)
    try:
        value = int(float(text[:-1] if scale > 1 else text) * scale)
    except (ValueError, OverflowError):
        value = 0
    if value < 1:
        raise CompressionError(f"bad plan {spec!r}: use bytes:N with N >= 1 bytes "
                               "(e.g. bytes:4000000 or bytes:4M)")
    return value
