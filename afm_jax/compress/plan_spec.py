"""Plan strings, parsed and range-checked before any work (statistics take minutes; a typo must
not cost them).

    parse_plan("budget:0.25")              # PlanSpec("budget", 0.25)
    parse_plan("rank:0")                   # CompressionError: rank must be an integer >= 1 ...
    parse_plan("budget:25")                # CompressionError: ... did you mean budget:0.25?
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from afm_jax.errors import CompressionError

PLAN_USAGE = ("plans: rank:K (K >= 1), energy:E (0 < E <= 1), budget:F (0 < F <= 1), "
              "bytes:N (N > 0 bytes, e.g. bytes:4M), auc-drop:D[,logloss-rise:L] (D, L >= 0)")


@dataclass(frozen=True)
class PlanSpec:
    """A checked plan string. kind: rank | energy | budget | bytes | quality; value: K, E, F or
    N (None for quality); target: the QualityTarget of a quality plan."""

    kind: str
    value: float | int | None
    target: Any = None
    text: str = ""


def _bad(spec: str, why: str) -> CompressionError:
    return CompressionError(f"bad plan {spec!r}: {why}; {PLAN_USAGE}")


def _fraction(spec: str, kind: str, text: str) -> float:
    """A value in (0, 1]; a percentage (1 < v <= 100) gets "did you mean" its fraction."""
    try:
        value = float(text)
    except ValueError:
        raise _bad(spec, f"{kind} needs a number, got {text!r}") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        hint = (f" (did you mean {kind}:{value / 100:g}?)"  # a percentage: 25 for 0.25
                if math.isfinite(value) and 2.0 <= value <= 100.0 else "")
        raise _bad(spec, f"{kind} must be in (0, 1], got {text}{hint}")
    return value


def parse_plan(spec: str) -> PlanSpec:
    """Parse and range-check a plan string; CompressionError naming it and listing every plan
    kind otherwise. rank >= 1; energy and budget in (0, 1]; bytes > 0; auc-drop and
    logloss-rise >= 0."""
    from afm_jax.compress.search import (
        _QUALITY_USAGE,
        is_quality_spec,
        parse_bytes,
        parse_quality_target,
    )

    if not isinstance(spec, str) or not spec.strip():
        raise _bad(str(spec), "empty")
    spec = spec.strip()
    kind, sep, text = (x.strip() for x in spec.partition(":"))
    if is_quality_spec(spec):
        try:
            target = parse_quality_target(spec)
        except CompressionError as e:  # its own usage names the quality kinds only
            raise CompressionError(f"{str(e).replace('; ' + _QUALITY_USAGE, '')}; "
                                   f"{PLAN_USAGE}") from None
        return PlanSpec("quality", None, target, spec)
    if not sep or not text:
        if kind in ("rank", "energy", "budget", "bytes"):
            raise _bad(spec, f"{kind} needs a value after the colon")
        raise _bad(spec, f"unknown plan kind {kind!r}")
    if kind == "rank":
        try:
            rank = int(text.replace("_", ""))
        except ValueError:
            raise _bad(spec, f"rank must be an integer >= 1, got {text!r}") from None
        if rank < 1:
            raise _bad(spec, f"rank must be an integer >= 1, got {rank}")
        return PlanSpec("rank", rank, None, spec)
    if kind in ("energy", "budget"):
        return PlanSpec(kind, _fraction(spec, kind, text), None, spec)
    if kind == "bytes":
        try:
            n = parse_bytes(spec)
        except CompressionError:
            raise _bad(spec, f"bytes must be a byte count > 0, got {text!r}") from None
        return PlanSpec("bytes", n, None, spec)
    raise _bad(spec, f"unknown plan kind {kind!r}")
