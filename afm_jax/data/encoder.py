"""Encoder: per-field vocabularies (value string -> id) and numeric standardization, fitted on train rows."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from afm_jax.data.bags import Padded, as_list_column, list_lengths, pad_ids
from afm_jax.data.hashing import HASH_RULE, check_buckets, hash_ids
from afm_jax.data.schema import BagInfo, BagSpec, FeatureInfo
from afm_jax.errors import DataError

# Version 1: single-valued fields with fitted vocabularies. Version 2 adds multi-valued fields
# ("bags") and hashed fields ("hash_buckets"); an encoder without either still writes version 1.
ENCODER_FORMAT_VERSION = 1
ENCODER_FORMAT_VERSIONS = (1, 2)


def numeric_transform(x: np.ndarray) -> np.ndarray:
    """log1p(max(x, 0)) as float32; NaN (missing) stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.log1p(np.maximum(x, 0.0)).astype(np.float32)


def _as_string_array(values: Any) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(np.asarray(values, dtype=object) if not isinstance(values, list) else values)
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    return values


def _vocabulary(values: Sequence[str], counts: np.ndarray, min_count: int) -> list[str]:
    """The values seen >= min_count times, by descending count, then by value string."""
    values = np.array(list(values), dtype=object)
    counts = np.asarray(counts)
    keep = np.flatnonzero(counts >= min_count)
    order = keep[np.lexsort((values[keep].astype(str), -counts[keep]))] if len(keep) else keep
    return values[order].tolist()


class NumericMoments(NamedTuple):
    """Count, mean and sum of squared deviations of each numeric field's present (non-NaN) values,
    float64 [Fn] each; blocks of train rows merge as they stream through (Chan et al.)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def zeros(cls, n_fields: int) -> NumericMoments:
        """The moments of no rows."""
        return cls(np.zeros(n_fields), np.zeros(n_fields), np.zeros(n_fields))

    @classmethod
    def of(cls, x: np.ndarray) -> NumericMoments:
        """Moments of a block x float64 [N, Fn] with NaN for missing."""
        c = (~np.isnan(x)).sum(axis=0).astype(np.float64)
        mean = np.where(c > 0, np.nansum(x, axis=0) / np.maximum(c, 1), 0.0)
        return cls(c, mean, np.nansum((x - mean) ** 2, axis=0))

    def merge(self, other: NumericMoments) -> NumericMoments:
        """Moments of the rows of both (shifted merge: accurate for large means in float64)."""
        count = self.count + other.count
        delta = other.mean - self.mean
        frac = np.where(count > 0, other.count / np.maximum(count, 1), 0.0)
        return NumericMoments(count, self.mean + delta * frac, self.m2 + other.m2 + delta ** 2 * self.count * frac)


class Encoder:
    """Fitted on training rows only (`Encoder.fit`).

    Per categorical field, ids 1..V-1 go to the values seen >= min_count times in train, ordered by
    descending count then by value string; id 0 is missing or out-of-vocabulary. Per dense numeric
    field, mean/std of log1p(max(x, 0)) over train.

    bags: the multi-valued fields (`BagSpec`), with bag_vocabs[k] the vocabulary of bag k (fitted
    like a categorical field's, counting every item of the train rows; empty for a bag that
    shares another field's, whose ids follow that field's vocabulary or hash rule). hash_buckets:
    field -> N for hashed fields, whose vocabulary is empty and whose ids follow the rule of the
    `hashing` module (1..N-1; 0 = missing) with the field's own name (a sharing bag: the shared
    field's name, so the same value gets the same id in both).
    """

    def __init__(self, cat_names: Sequence[str], vocabs: Sequence[Sequence[str]], num_names: Sequence[str] = (),
                 num_mean: Sequence[float] = (), num_std: Sequence[float] = (), min_count: int = 1, *,
                 bags: Sequence[BagSpec] = (), bag_vocabs: Sequence[Sequence[str]] | None = None,
                 hash_buckets: Mapping[str, int] | None = None):
        if len(cat_names) != len(vocabs):
            raise DataError(f"{len(cat_names)} categorical fields but {len(vocabs)} vocabularies")
        if not (len(num_names) == len(num_mean) == len(num_std)):
            raise DataError("num_names, num_mean and num_std must have equal lengths")
        self.cat_names = tuple(cat_names)
        self.vocabs = [list(map(str, v)) for v in vocabs]
        self.num_names = tuple(num_names)
        self.num_mean = np.asarray(num_mean, dtype=np.float64).reshape(-1)
        self.num_std = np.asarray(num_std, dtype=np.float64).reshape(-1)
        if np.any(~(self.num_std > 0)):
            raise DataError("numeric std must be > 0 (use 1.0 for constant columns)")
        self.min_count = int(min_count)
        self.bags = tuple(bags)
        self.bag_vocabs = [list(map(str, v)) for v in (bag_vocabs if bag_vocabs is not None else [[]] * len(bags))]
        if len(self.bag_vocabs) != len(self.bags):
            raise DataError(f"{len(self.bags)} multi-valued fields but {len(self.bag_vocabs)} vocabularies")
        self.hash_buckets = {str(k): check_buckets(v, k) for k, v in (hash_buckets or {}).items()}
        own = dict(zip(self.cat_names, self.vocabs))
        own.update((b.name, v) for b, v in zip(self.bags, self.bag_vocabs) if b.shares is None)
        for name in self.hash_buckets:
            if name not in own:
                raise DataError("hashed field is not a categorical or own-vocabulary multi-valued field", field=name)
            if own[name]:
                raise DataError("a hashed field has no vocabulary", field=name)
        for b, v in zip(self.bags, self.bag_vocabs):
            if b.shares is not None and (b.shares not in own or v):
                raise DataError(f"shares {b.shares!r}: not a field with its own vocabulary (or has one itself)",
                                field=b.name)
        self._value_sets = [pa.array(v, type=pa.string()) for v in self.vocabs]
        self._tables = {name: pa.array(v, type=pa.string()) for name, v in own.items()}

    @classmethod
    def fit(cls, cat_names: Sequence[str], values: Sequence[Sequence[str]], counts: Sequence[np.ndarray],
            num_names: Sequence[str] = (), moments: NumericMoments | None = None, min_count: int = 1, *,
            bags: Sequence[BagSpec] = (), bag_values: Sequence[Sequence[str]] = (),
            bag_counts: Sequence[np.ndarray] = (), hash_buckets: Mapping[str, int] | None = None) -> Encoder:
        """The encoder of training statistics: field f's distinct values[f] seen counts[f] (int [V_f])
        times in train, and the moments of the transformed numeric fields (numeric_transform).
        bags: the multi-valued fields, bag_values/bag_counts their item counts in train (empty for
        a sharing bag). Hashed fields (hash_buckets) get no vocabulary, whatever their counts."""
        if min_count < 1:
            raise DataError(f"min_count must be >= 1, got {min_count}", field="min_count")
        hashed = dict(hash_buckets or {})
        vocabs = [[] if n in hashed else _vocabulary(v, c, min_count) for n, v, c in zip(cat_names, values, counts)]
        bag_vocabs = [[] if b.shares is not None or b.name in hashed else _vocabulary(v, c, min_count)
                      for b, v, c in zip(bags, bag_values, bag_counts)]
        m = NumericMoments.zeros(len(num_names)) if moments is None else moments
        std = np.sqrt(np.where(m.count > 0, m.m2 / np.maximum(m.count, 1), 1.0))
        std = np.where(std > 1e-12, std, 1.0)  # constant (or absent) columns are only centered
        return cls(cat_names, vocabs, num_names, np.where(m.count > 0, m.mean, 0.0), std, min_count,
                   bags=bags, bag_vocabs=bag_vocabs, hash_buckets=hashed)

    def table_size(self, name: str) -> int:
        """Rows of the table of field `name` (a categorical or own-vocabulary bag), id 0 included."""
        if name in self.hash_buckets:
            return self.hash_buckets[name]
        return len(self._tables[name]) + 1

    @property
    def info(self) -> FeatureInfo:
        return FeatureInfo(cat_names=self.cat_names, vocab_sizes=tuple(self.table_size(n) for n in self.cat_names),
                           num_names=self.num_names,
                           bags=tuple(BagInfo(b.name, self.table_size(b.shares or b.name), b.max_len, b.combiner,
                                              b.shares) for b in self.bags))

    def encode(self, columns: Mapping[str, Any] | Any) -> tuple[np.ndarray, np.ndarray]:
        """Encode raw columns -> (cat int32 [N, Fc], num float32 [N, Fn]).

        columns: a mapping field name -> values (or a RawChunk from the readers): categorical fields
        as strings (None = missing), numeric fields as raw numbers (NaN = missing). Unseen -> 0.
        """
        if hasattr(columns, "columns") and not isinstance(columns, Mapping):
            columns = columns.columns
        missing = [n for n in self.cat_names + self.num_names if n not in columns]
        if missing:
            raise DataError(f"columns to encode lack fields {missing}", field=missing[0])
        n = len(columns[self.cat_names[0]]) if self.cat_names else len(columns[self.num_names[0]])
        cat = np.zeros((n, len(self.cat_names)), dtype=np.int32)
        for j, name in enumerate(self.cat_names):
            values = _as_string_array(columns[name])
            if len(values) != n:
                raise DataError(f"field has {len(values)} values, expected {n}", field=name)
            cat[:, j] = self.ids(j, values)
        num = np.zeros((n, len(self.num_names)), dtype=np.float32)
        for j, name in enumerate(self.num_names):
            col = columns[name]
            if isinstance(col, (pa.Array, pa.ChunkedArray)):
                col = pc.fill_null(pc.cast(col, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
            num[:, j] = self.standardize(numeric_transform(col), j)
        return cat, num

    def ids(self, j: int, values: Any) -> np.ndarray:
        """Ids int32 [N] of categorical field j's values (strings; None = missing): 1 + vocabulary
        position, 0 for missing or out of vocabulary (a hashed field: its hash rule)."""
        if self.hash_buckets and self.cat_names[j] in self.hash_buckets:
            return self.table_ids(self.cat_names[j], values)
        idx = pc.index_in(_as_string_array(values), value_set=self._value_sets[j])
        return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int32) + 1

    def table_ids(self, name: str, values: Any) -> np.ndarray:
        """Ids int32 [N] of values in the table of field `name` (a categorical or own-vocabulary
        bag field): its vocabulary (0 = missing or unseen) or, if hashed, its hash rule."""
        if name in self.hash_buckets:
            return hash_ids(name, _as_string_array(values), self.hash_buckets[name])
        idx = pc.index_in(_as_string_array(values), value_set=self._tables[name])
        return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int32) + 1

    def bag_ids(self, k: int, column: Any) -> Padded:
        """Bag field k's column (list<string>, or delimited strings) as padded ids int32 [N, L],
        lengths int32 [N], and what the cut to max_len dropped (`bags.pad_ids`)."""
        spec = self.bags[k]
        lists = as_list_column(column, spec.separator)
        return pad_ids(self.table_ids(spec.shares or spec.name, lists.flatten()), list_lengths(lists), spec)

    def encode_bags(self, columns: Mapping[str, Any] | Any) -> tuple[dict, dict, dict]:
        """Raw bag columns -> (bags {field: int32 [N, L]}, bag_len {field: int32 [N]}, truncated
        {field: {"rows": rows cut, "items": items dropped}}); empty dicts without bag fields."""
        if hasattr(columns, "columns") and not isinstance(columns, Mapping):
            columns = columns.columns
        bags, lens, cut = {}, {}, {}
        for k, spec in enumerate(self.bags):
            if spec.name not in columns:
                raise DataError("columns to encode lack this multi-valued field", field=spec.name)
            p = self.bag_ids(k, columns[spec.name])
            bags[spec.name], lens[spec.name] = p.ids, p.lengths
            cut[spec.name] = {"rows": p.truncated_rows, "items": p.dropped_items}
        return bags, lens, cut

    def standardize(self, transformed: np.ndarray, j: int) -> np.ndarray:
        """(t - mean_j) / std_j with missing (NaN) -> 0, as float32."""
        out = ((transformed.astype(np.float64) - self.num_mean[j]) / self.num_std[j]).astype(np.float32)
        out[np.isnan(out)] = 0.0
        return out

    def to_json(self) -> dict:
        """Plain JSON. With bags or hashed fields (format version 2) it adds "bags" (each field's
        BagSpec and "vocab") and "hash_buckets" with the "hash_rule" that maps values to ids."""
        d = {
            "format_version": 2 if (self.bags or self.hash_buckets) else ENCODER_FORMAT_VERSION,
            "cat_names": list(self.cat_names),
            "vocabs": self.vocabs,
            "num_names": list(self.num_names),
            "num_mean": [float(x) for x in self.num_mean],
            "num_std": [float(x) for x in self.num_std],
            "min_count": self.min_count,
        }
        if self.bags:
            d["bags"] = [dict(b.to_json(), vocab=v) for b, v in zip(self.bags, self.bag_vocabs)]
        if self.hash_buckets:
            d["hash_buckets"] = dict(self.hash_buckets)
            d["hash_rule"] = HASH_RULE
        return d

    @classmethod
    def from_json(cls, d: dict) -> Encoder:
        if not isinstance(d, dict) or d.get("format_version") not in ENCODER_FORMAT_VERSIONS:
            raise DataError(f"not an encoder JSON of format version {' or '.join(map(str, ENCODER_FORMAT_VERSIONS))}")
        if d.get("hash_buckets") and d.get("hash_rule") != HASH_RULE:
            raise DataError(f"encoder JSON hashes with rule {d.get('hash_rule')!r}; this version knows {HASH_RULE!r}",
                            field="hash_rule")
        try:
            bags = [BagSpec(**{k: v for k, v in b.items() if k != "vocab"}) for b in d.get("bags", [])]
            return cls(d["cat_names"], d["vocabs"], d["num_names"], d["num_mean"], d["num_std"],
                       d.get("min_count", 1), bags=bags, bag_vocabs=[b.get("vocab", []) for b in d.get("bags", [])],
                       hash_buckets=d.get("hash_buckets"))
        except KeyError as e:
            raise DataError(f"encoder JSON lacks key {e.args[0]!r}", field=e.args[0]) from e
        except TypeError as e:
            raise DataError(f"encoder JSON has a malformed bag entry: {e}", field="bags") from e

    def save(self, path: str | Path) -> None:
        """Write plain JSON atomically (temp file then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> Encoder:
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read encoder JSON: {e}", path=str(path)) from e
        try:
            return cls.from_json(d)
        except DataError as e:
            raise DataError(str(e), path=str(path), field=e.field) from e

    def __repr__(self) -> str:
        bags = f", bags={len(self.bags)}" if self.bags else ""
        hashed = f", hashed={len(self.hash_buckets)}" if self.hash_buckets else ""
        return (f"Encoder(cat={len(self.cat_names)} fields, vocab={sum(map(len, self.vocabs))}, "
                f"num={len(self.num_names)}{bags}{hashed})")
