"""Field specifications: which source columns are the label, categorical, dense numeric or bucketized."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afm_jax.data.hashing import check_buckets
from afm_jax.errors import DataError

_SCHEMA_KEYS = ("label", "categorical", "numeric", "bucketize", "multi_valued", "sequence")
COMBINERS = ("sum", "mean", "sqrtn", "max")
TRUNCATIONS = ("keep_last", "keep_first")
_BAG_KEYS = ("name", "max_len", "combiner", "separator", "truncation", "shares", "hash_buckets")


def _str_tuple(value: Any, key: str, path: str | None) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise DataError(f"schema key {key!r} must be a list of column names (strings), got {value!r}",
                        path=path, field=key)
    return tuple(value)


@dataclass(frozen=True)
class BagSpec:
    """A multi-valued categorical field: each row holds a list of values (a delimited string in
    CSV/TSV, `separator` between items; or a Parquet list<string>), encoded as `max_len` padded
    ids plus a length (`splits` module docstring).

    combiner (sum | mean | sqrtn | max): how a model pools the field's vectors (stored for it).
    truncation: which items a list longer than max_len keeps, the most recent ones: "keep_last"
    (lists are oldest first, the usual log order: keep the tail) or "keep_first" (lists are most
    recent first). Truncated rows and dropped items are counted in the dataset report.
    shares: a sequence field (e.g. a user's history of movies) that takes its ids from another
    field's vocabulary (or hash rule) and reads that field's table; None for a field of its own.
    """

    name: str
    max_len: int
    combiner: str = "mean"
    separator: str = "|"
    truncation: str = "keep_last"
    shares: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DataError(f"a multi-valued field needs a name (string), got {self.name!r}", field="name")
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 1:
            raise DataError(f"max_len must be an integer >= 1, got {self.max_len!r}", field=self.name)
        if self.combiner not in COMBINERS:
            raise DataError(f"combiner must be one of {list(COMBINERS)}, got {self.combiner!r}", field=self.name)
        if self.truncation not in TRUNCATIONS:
            raise DataError(f"truncation must be one of {list(TRUNCATIONS)} (which end holds the most recent "
                            f"items), got {self.truncation!r}", field=self.name)
        if not isinstance(self.separator, str) or not self.separator or any(c in self.separator for c in "\r\n"):
            raise DataError(f"separator must be a non-empty string without line breaks, got {self.separator!r}",
                            field=self.name)
        if self.shares is not None and (not isinstance(self.shares, str) or not self.shares):
            raise DataError(f"shares must name another field, got {self.shares!r}", field=self.name)

    def to_json(self) -> dict:
        d = {"name": self.name, "max_len": self.max_len, "combiner": self.combiner, "separator": self.separator,
             "truncation": self.truncation}
        if self.shares is not None:
            d["shares"] = self.shares
        return d


def _bag_specs(raw: Any, key: str, path: str | None) -> tuple[tuple[BagSpec, ...], dict[str, int]]:
    """The BagSpecs (and hash_buckets) of a "multi_valued" or "sequence" list of JSON objects."""
    if not isinstance(raw, list):
        raise DataError(f"schema key {key!r} must be a list of objects", path=path, field=key)
    specs, buckets = [], {}
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise DataError(f"each {key!r} entry must be an object with a \"name\", got {entry!r}",
                            path=path, field=key)
        name = entry["name"]
        unknown = [k for k in entry if k not in _BAG_KEYS]
        if unknown:
            raise DataError(f"unknown key {unknown[0]!r}; allowed: {', '.join(_BAG_KEYS)}", path=path, field=name)
        if "max_len" not in entry:
            raise DataError("a multi-valued field needs \"max_len\"", path=path, field=name)
        if key == "sequence" and "shares" not in entry:
            raise DataError("a sequence field needs \"shares\": the field whose vocabulary and table it uses",
                            path=path, field=name)
        if key == "multi_valued" and "shares" in entry:
            raise DataError("a field that shares another's vocabulary goes under \"sequence\"", path=path,
                            field=name)
        if "hash_buckets" in entry:
            buckets[name] = entry["hash_buckets"]
        try:
            specs.append(BagSpec(**{k: v for k, v in entry.items() if k != "hash_buckets"}))
        except DataError as e:
            raise DataError(e.reason, path=path, field=name) from e
    return tuple(specs), buckets


def _categorical(raw: Any, path: str | None) -> tuple[tuple[str, ...], dict[str, int]]:
    """Names and hash_buckets of a "categorical" list: column names, or {"name", "hash_buckets"}."""
    if not isinstance(raw, list):
        raise DataError(f"schema key 'categorical' must be a list of column names, got {raw!r}", path=path,
                        field="categorical")
    names, buckets = [], {}
    for entry in raw:
        if isinstance(entry, dict):
            if not isinstance(entry.get("name"), str) or set(entry) - {"name", "hash_buckets"}:
                raise DataError(f"a categorical entry is a column name or {{\"name\": ..., \"hash_buckets\": N}}, "
                                f"got {entry!r}", path=path, field="categorical")
            if "hash_buckets" in entry:
                buckets[entry["name"]] = entry["hash_buckets"]
            entry = entry["name"]
        if not isinstance(entry, str):
            raise DataError(f"schema key 'categorical' must list column names (strings), got {entry!r}",
                            path=path, field="categorical")
        names.append(entry)
    return tuple(names), buckets


@dataclass(frozen=True)
class Schema:
    """Roles of the source columns.

    label: 0/1 column. categorical: string-valued fields. numeric: dense fields, transformed to
    log1p(max(x, 0)) and standardized with train mean/std (missing -> 0 after standardizing).
    bucketize: numeric columns turned into categorical fields, floor(log(x)^2) for x > 2, else the
    integer value itself (the Criteo winners' trick; the two ranges get distinct value strings,
    "b<k>" and "<x>", so 3 -> "b1" does not collide with 1 -> "1").
    bags: multi-valued fields (`BagSpec`; JSON keys "multi_valued" and, for those that share another
    field's vocabulary, "sequence"). hash_buckets: field -> N for categorical or own-vocabulary
    multi-valued fields whose ids are hashed instead of fitted (`hashing` module: ids 1..N-1, 0 =
    missing); a dict or (name, N) pairs. JSON: a categorical entry {"name": c, "hash_buckets": N},
    or "hash_buckets": N in a multi_valued entry.
    """

    label: str
    categorical: tuple[str, ...]
    numeric: tuple[str, ...] = ()
    bucketize: tuple[str, ...] = ()
    bags: tuple[BagSpec, ...] = ()
    hash_buckets: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        for key in ("categorical", "numeric", "bucketize"):
            object.__setattr__(self, key, _str_tuple(list(getattr(self, key)), key, None))
        if not isinstance(self.label, str):
            raise DataError(f"schema label must be a column name, got {self.label!r}", field="label")
        bags = tuple(self.bags)
        if not all(isinstance(b, BagSpec) for b in bags):
            raise DataError("schema bags must be BagSpec objects", field="bags")
        object.__setattr__(self, "bags", bags)
        hb = self.hash_buckets
        hb = tuple(hb.items() if isinstance(hb, dict) else hb)
        features = self.categorical + self.numeric + self.bucketize + self.bag_names
        if not features:
            raise DataError("schema has no feature columns", field="categorical")
        seen: set[str] = set()
        for name in features:
            if name in seen or name == self.label:
                raise DataError(f"column {name!r} appears twice in the schema (each column has one role)",
                                field=name)
            seen.add(name)
        own = {b.name for b in bags if b.shares is None}
        for b in bags:
            if b.shares is not None and b.shares not in self.categorical and b.shares not in own:
                raise DataError(f"shares {b.shares!r}, which is not a categorical field nor a multi-valued "
                                "field with its own vocabulary", field=b.name)
        checked = []
        for name, n in hb:
            if name not in self.categorical and name not in own:
                raise DataError("hash_buckets applies to categorical and multi-valued fields with their own "
                                "vocabulary (a sequence uses the rule of the field it shares)", field=name)
            checked.append((name, check_buckets(n, name)))
        object.__setattr__(self, "hash_buckets", tuple(checked))

    @property
    def bag_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bags)

    @property
    def hashed(self) -> dict[str, int]:
        """Field -> hash_buckets of the hashed fields."""
        return dict(self.hash_buckets)

    @property
    def features(self) -> frozenset[str]:
        return frozenset(self.categorical + self.numeric + self.bucketize + self.bag_names)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the schema reads: the label, then the features."""
        return (self.label,) + self.categorical + self.numeric + self.bucketize + self.bag_names

    @classmethod
    def from_json(cls, path: str | Path) -> Schema:
        """Read {"label": col, "categorical": [...], "numeric": [...], "bucketize": [...],
        "multi_valued": [...], "sequence": [...]} from a file (see the class docstring)."""
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
        categorical, buckets = _categorical(raw.get("categorical", []), path)
        lists = {k: _str_tuple(raw.get(k, []), k, path) for k in ("numeric", "bucketize")}
        bags: tuple[BagSpec, ...] = ()
        for key in ("multi_valued", "sequence"):
            specs, more = _bag_specs(raw.get(key, []), key, path)
            bags += specs
            buckets.update(more)
        try:
            return cls(label=raw["label"], categorical=categorical, **lists, bags=bags,
                       hash_buckets=tuple(buckets.items()))
        except DataError as e:
            raise DataError(e.reason, path=path, field=e.field) from e

    def to_json(self) -> dict:
        hashed = self.hashed
        d: dict = {"label": self.label,
                   "categorical": [{"name": c, "hash_buckets": hashed[c]} if c in hashed else c
                                   for c in self.categorical],
                   "numeric": list(self.numeric), "bucketize": list(self.bucketize)}
        for key, shared in (("multi_valued", False), ("sequence", True)):
            entries = [dict(b.to_json(), **({"hash_buckets": hashed[b.name]} if b.name in hashed else {}))
                       for b in self.bags if (b.shares is not None) == shared]
            if entries:
                d[key] = entries
        return d


@dataclass(frozen=True)
class BagInfo:
    """What a model needs to know about one multi-valued field: its padded length L (`max_len`),
    how to pool it (`combiner`), and its table: rows `vocab_size` (id 0 included), its own, or
    the table of field `shares` (a categorical or another bag field) whose rows it reads."""

    name: str
    vocab_size: int
    max_len: int
    combiner: str = "mean"
    shares: str | None = None

    def __post_init__(self) -> None:
        BagSpec(self.name, self.max_len, self.combiner, shares=self.shares)  # validates the shared fields
        if int(self.vocab_size) < 1:
            raise DataError("every vocab size must be >= 1 (id 0 is always present)", field=self.name)
        object.__setattr__(self, "vocab_size", int(self.vocab_size))

    def to_json(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "max_len": self.max_len,
                "combiner": self.combiner, "shares": self.shares}


@dataclass(frozen=True)
class FeatureInfo:
    """What a model needs to know about the encoded features.

    cat_names: categorical fields in the order of the source columns (bucketized numeric columns
    included). vocab_sizes: per categorical field, including id 0 (missing / out-of-vocabulary).
    num_names: dense numeric fields in source order. bags: the multi-valued fields (`BagInfo`),
    in the order of the batch's "bags" dict; empty for single-valued data.
    """

    cat_names: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    num_names: tuple[str, ...] = ()
    bags: tuple[BagInfo, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cat_names", tuple(self.cat_names))
        object.__setattr__(self, "vocab_sizes", tuple(int(v) for v in self.vocab_sizes))
        object.__setattr__(self, "num_names", tuple(self.num_names))
        object.__setattr__(self, "bags", tuple(self.bags))
        if len(self.cat_names) != len(self.vocab_sizes):
            raise DataError(f"{len(self.cat_names)} categorical names but {len(self.vocab_sizes)} vocab sizes")
        if any(v < 1 for v in self.vocab_sizes):
            raise DataError("every vocab size must be >= 1 (id 0 is always present)")
        tables = dict(zip(self.cat_names, self.vocab_sizes))
        tables.update((b.name, b.vocab_size) for b in self.bags if b.shares is None)
        for b in self.bags:
            if b.shares is not None and tables.get(b.shares) != b.vocab_size:
                raise DataError(f"shares {b.shares!r}, which has no table of {b.vocab_size} rows", field=b.name)

    @property
    def n_categorical(self) -> int:
        return len(self.cat_names)

    @property
    def n_numeric(self) -> int:
        return len(self.num_names)

    @property
    def bag_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bags)

    def to_json(self) -> dict:
        d = {"cat_names": list(self.cat_names), "vocab_sizes": list(self.vocab_sizes),
             "num_names": list(self.num_names)}
        if self.bags:  # single-valued data keeps the JSON it always had
            d["bags"] = [b.to_json() for b in self.bags]
        return d

    @classmethod
    def from_json(cls, d: dict) -> FeatureInfo:
        unknown = set(d) - {"cat_names", "vocab_sizes", "num_names", "bags"}
        if unknown:
            raise DataError(f"unknown FeatureInfo keys {sorted(unknown)}")
        return cls(cat_names=tuple(d["cat_names"]), vocab_sizes=tuple(d["vocab_sizes"]),
                   num_names=tuple(d.get("num_names", ())),
                   bags=tuple(BagInfo(**b) for b in d.get("bags", ())))
