"""Field specifications: which source columns are the label, categorical, dense numeric or bucketized."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afm_jax.errors import DataError

_SCHEMA_KEYS = ("label", "categorical", "numeric", "bucketize")


def _str_tuple(value: Any, key: str, path: str | None) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise DataError(f"schema key {key!r} must be a list of column names (strings), got {value!r}",
                        path=path, field=key)
    return tuple(value)


@dataclass(frozen=True)
class Schema:
    """Roles of the source columns.

    label: 0/1 column. categorical: string-valued fields. numeric: dense fields, transformed to
    log1p(max(x, 0)) and standardized with train mean/std (missing -> 0 after standardizing).
    bucketize: numeric columns turned into categorical fields, floor(log(x)^2) for x > 2, else the
    integer value itself (the Criteo winners' trick; the two ranges get distinct value strings,
    "b<k>" and "<x>", so 3 -> "b1" does not collide with 1 -> "1").
    """

    label: str
    categorical: tuple[str, ...]
    numeric: tuple[str, ...] = ()
    bucketize: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in ("categorical", "numeric", "bucketize"):
            object.__setattr__(self, key, _str_tuple(list(getattr(self, key)), key, None))
        if not isinstance(self.label, str):
            raise DataError(f"schema label must be a column name, got {self.label!r}", field="label")
        features = self.categorical + self.numeric + self.bucketize
        if not features:
            raise DataError("schema has no feature columns", field="categorical")
        seen: set[str] = set()
        for name in features:
            if name in seen or name == self.label:
                raise DataError(f"column {name!r} appears twice in the schema (each column has one role)",
                                field=name)
            seen.add(name)

    @property
    def features(self) -> frozenset[str]:
        return frozenset(self.categorical + self.numeric + self.bucketize)

    @classmethod
    def from_json(cls, path: str | Path) -> Schema:
        """Read {"label": col, "categorical": [...], "numeric": [...], "bucketize": [...]} from a file."""
        path = str(path)
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read schema JSON: {e}", path=path) from e
        return cls.from_dict(raw, path=path)

    @classmethod
    def from_dict(cls, raw: Any, *, path: str | None = None) -> Schema:
        if not isinstance(raw, dict):
            raise DataError("schema must be a JSON object", path=path)
        for key in raw:
            if key not in _SCHEMA_KEYS:
                raise DataError(f"unknown schema key {key!r}; allowed: {', '.join(_SCHEMA_KEYS)}",
                                path=path, field=key)
        if "label" not in raw or not isinstance(raw["label"], str):
            raise DataError("schema needs \"label\": a column name (string)", path=path, field="label")
        lists = {k: _str_tuple(raw.get(k, []), k, path) for k in ("categorical", "numeric", "bucketize")}
        try:
            return cls(label=raw["label"], **lists)
        except DataError as e:
            raise DataError(str(e), path=path, field=e.field) from e

    def to_json(self) -> dict:
        return {"label": self.label, "categorical": list(self.categorical), "numeric": list(self.numeric),
                "bucketize": list(self.bucketize)}


@dataclass(frozen=True)
class FeatureInfo:
    """What a model needs to know about the encoded features.

    cat_names: categorical fields in the order of the source columns (bucketized numeric columns
    included). vocab_sizes: per categorical field, including id 0 (missing / out-of-vocabulary).
    num_names: dense numeric fields in source order.
    """

    cat_names: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    num_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cat_names", tuple(self.cat_names))
        object.__setattr__(self, "vocab_sizes", tuple(int(v) for v in self.vocab_sizes))
        object.__setattr__(self, "num_names", tuple(self.num_names))
        if len(self.cat_names) != len(self.vocab_sizes):
            raise DataError(f"{len(self.cat_names)} categorical names but {len(self.vocab_sizes)} vocab sizes")
        if any(v < 1 for v in self.vocab_sizes):
            raise DataError("every vocab size must be >= 1 (id 0 is always present)")

    @property
    def n_categorical(self) -> int:
        return len(self.cat_names)

    @property
    def n_numeric(self) -> int:
        return len(self.num_names)

    def to_json(self) -> dict:
        return {"cat_names": list(self.cat_names), "vocab_sizes": list(self.vocab_sizes),
                "num_names": list(self.num_names)}

    @classmethod
    def from_json(cls, d: dict) -> FeatureInfo:
        unknown = set(d) - {"cat_names", "vocab_sizes", "num_names"}
        if unknown:
            raise DataError(f"unknown FeatureInfo keys {sorted(unknown)}")
        return cls(cat_names=tuple(d["cat_names"]), vocab_sizes=tuple(d["vocab_sizes"]),
                   num_names=tuple(d.get("num_names", ())))
