"""Encoded splits and datasets: the arrays a model reads, and how rows are split 8:1:1.

The batch representation (what `iterate_batches` yields and every model consumes)::

    {"cat":     int32   [B, Fc]    single-valued categorical ids, 0 = missing / out of vocabulary
     "num":     float32 [B, Fn]    standardized numeric fields
     "label":   float32 [B]        0/1
     "bags":    {field: int32 [B, L_f]}   multi-valued / sequence fields, padded ids
     "bag_len": {field: int32 [B]}        number of real items, 0 <= bag_len <= L_f
     "weight":  float32 [B]        only on padded batches (pad_last or a mesh): 0 on padding rows}

"bags" and "bag_len" appear only when the data has multi-valued fields (a dataset without them
yields exactly the three arrays it always did). L_f is the field's fixed `max_len`, so a jitted
step sees one shape per field and never recompiles. No id is reserved for padding: id 0 keeps its
meaning (missing / out of vocabulary, a real item of the bag when present). Positions
`bag_len[b] <= l < L_f` hold 0, a valid row, so a gather stays in bounds; they are padding and
must be masked by `bag_len` (an empty bag, bag_len 0, pools to zero). Items keep their input
order, truncated to the most recent `max_len` (see `schema.BagSpec`). `FeatureInfo.bags` tells a
model each field's L_f, combiner and the table it reads (`shares`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from afm_jax.data.encoder import Encoder
from afm_jax.data.schema import FeatureInfo
from afm_jax.errors import DataError

SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass
class EncodedSplit:
    """Encoded rows: cat int32 [N, Fc] in [0, vocab_f), num float32 [N, Fn], label float32 [N] (0/1);
    bags: multi-valued field -> padded ids int32 [N, L_f]; bag_len: field -> int32 [N] (see the
    module docstring). Arrays may be read-only np.memmap views of the cache."""

    cat: np.ndarray
    num: np.ndarray
    label: np.ndarray
    bags: dict[str, np.ndarray] = field(default_factory=dict)
    bag_len: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.label)
        if self.cat.ndim != 2 or self.num.ndim != 2 or self.cat.shape[0] != n or self.num.shape[0] != n:
            raise DataError(f"inconsistent split shapes cat {self.cat.shape}, num {self.num.shape}, "
                            f"label {self.label.shape}")
        self.bags, self.bag_len = dict(self.bags), dict(self.bag_len)
        if list(self.bags) != list(self.bag_len):
            raise DataError(f"bags {list(self.bags)} and bag_len {list(self.bag_len)} name different fields")
        for name, ids in self.bags.items():
            if ids.ndim != 2 or ids.shape[0] != n or np.shape(self.bag_len[name]) != (n,):
                raise DataError(f"bag shapes {ids.shape} (ids) and {np.shape(self.bag_len[name])} (lengths) "
                                f"do not fit {n} rows", field=name)

    def __len__(self) -> int:
        return len(self.label)

    def arrays(self) -> dict:
        """The split as a batch-shaped pytree of [N, ...] arrays (the module docstring's layout)."""
        out: dict = {"cat": self.cat, "num": self.num, "label": self.label}
        if self.bags:
            out["bags"], out["bag_len"] = dict(self.bags), dict(self.bag_len)
        return out

    def rows(self, r: slice | np.ndarray) -> EncodedSplit:
        """The split of rows `r` (a slice gives views, an index array copies)."""
        return EncodedSplit(self.cat[r], self.num[r], self.label[r], {k: v[r] for k, v in self.bags.items()},
                            {k: v[r] for k, v in self.bag_len.items()})


@dataclass
class Dataset:
    """Encoded train/valid/test splits, the fitted encoder, and a report of how they were made."""

    name: str
    info: FeatureInfo
    train: EncodedSplit
    valid: EncodedSplit
    test: EncodedSplit
    encoder: Encoder
    report: dict


def split_rows(n: int, split: str, seed: int) -> dict[str, slice | np.ndarray]:
    """Rows of each split: contiguous 8:1:1 slices ('sequential') or sorted index arrays from a
    seeded permutation ('random')."""
    n_train, n_valid = int(n * SPLIT_FRACTIONS[0]), int(n * SPLIT_FRACTIONS[1])
    bounds = (0, n_train, n_train + n_valid, n)
    if split == "sequential":
        return {s: slice(bounds[i], bounds[i + 1]) for i, s in enumerate(SPLITS)}
    if split == "random":
        perm = np.random.default_rng(seed).permutation(n)
        return {s: np.sort(perm[bounds[i]:bounds[i + 1]]) for i, s in enumerate(SPLITS)}
    raise DataError(f"split must be 'sequential' or 'random', got {split!r}", field="split")


def count_rows(rows: slice | np.ndarray) -> int:
    """How many rows a `split_rows` entry selects."""
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)

