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

from afm_jax.data.schema import FeatureInfo
from afm_jax.errors import DataError

ENCODER_FORMAT_VERSION = 1


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
    """

    def __init__(self, cat_names: Sequence[str], vocabs: Sequence[Sequence[str]], num_names: Sequence[str] = (),
                 num_mean: Sequence[float] = (), num_std: Sequence[float] = (), min_count: int = 1):
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
        self._value_sets = [pa.array(v, type=pa.string()) for v in self.vocabs]

    @classmethod
    def fit(cls, cat_names: Sequence[str], values: Sequence[Sequence[str]], counts: Sequence[np.ndarray],
            num_names: Sequence[str] = (), moments: NumericMoments | None = None, min_count: int = 1) -> Encoder:
        """The encoder of training statistics: field f's distinct values[f] seen counts[f] (int [V_f])
        times in train, and the moments of the transformed numeric fields (numeric_transform)."""
        if min_count < 1:
            raise DataError(f"min_count must be >= 1, got {min_count}", field="min_count")
        vocabs = [_vocabulary(v, c, min_count) for v, c in zip(values, counts)]
        m = NumericMoments.zeros(len(num_names)) if moments is None else moments
        std = np.sqrt(np.where(m.count > 0, m.m2 / np.maximum(m.count, 1), 1.0))
        std = np.where(std > 1e-12, std, 1.0)  # constant (or absent) columns are only centered
        return cls(cat_names, vocabs, num_names, np.where(m.count > 0, m.mean, 0.0), std, min_count)

    @property
    def info(self) -> FeatureInfo:
        return FeatureInfo(cat_names=self.cat_names, vocab_sizes=tuple(len(v) + 1 for v in self.vocabs),
                           num_names=self.num_names)

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
        position, 0 for missing or out of vocabulary."""
        idx = pc.index_in(_as_string_array(values), value_set=self._value_sets[j])
        return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int32) + 1

    def standardize(self, transformed: np.ndarray, j: int) -> np.ndarray:
        """(t - mean_j) / std_j with missing (NaN) -> 0, as float32."""
        out = ((transformed.astype(np.float64) - self.num_mean[j]) / self.num_std[j]).astype(np.float32)
        out[np.isnan(out)] = 0.0
        return out

    def to_json(self) -> dict:
        return {
            "format_version": ENCODER_FORMAT_VERSION,
            "cat_names": list(self.cat_names),
            "vocabs": self.vocabs,
            "num_names": list(self.num_names),
            "num_mean": [float(x) for x in self.num_mean],
            "num_std": [float(x) for x in self.num_std],
            "min_count": self.min_count,
        }

    @classmethod
    def from_json(cls, d: dict) -> Encoder:
        if not isinstance(d, dict) or d.get("format_version") != ENCODER_FORMAT_VERSION:
            raise DataError(f"not an encoder JSON of format version {ENCODER_FORMAT_VERSION}")
        try:
            return cls(d["cat_names"], d["vocabs"], d["num_names"], d["num_mean"], d["num_std"],
                       d.get("min_count", 1))
        except KeyError as e:
            raise DataError(f"encoder JSON lacks key {e.args[0]!r}", field=e.args[0]) from e

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
        return f"Encoder(cat={len(self.cat_names)} fields, vocab={sum(map(len, self.vocabs))}, num={len(self.num_names)})"
