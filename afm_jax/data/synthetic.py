"""Synthetic CTR data from a hidden model: Zipf categorical fields, count-like numeric fields, clicks
from first-order effects + field-pair latent interactions through a tanh nonlinearity.

Two encodings: by default an Encoder is fitted on the train split (only values seen there get ids);
with `total_vocab` the tables have fixed sizes summing to exactly that many rows (`IdentityEncoder`:
value k is id k, id 0 out of vocabulary), for scale runs whose tables are larger than the data.

Multi-valued fields are opt-in (`bags=SyntheticBags(...)`): without them the data is exactly what
it always was. With them, the single-valued columns stay the same and the labels also depend on
the bags (`_HiddenBags`)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from afm_jax.data.build import build_from_chunks
from afm_jax.data.encoder import Encoder, NumericMoments, _as_string_array, numeric_transform
from afm_jax.data.hashing import mix64
from afm_jax.data.readers import BadLine, RawChunk
from afm_jax.data.schema import COMBINERS, BagSpec, FeatureInfo, Schema
from afm_jax.data.splits import SPLITS, Dataset, EncodedSplit, count_rows, split_rows
from afm_jax.errors import DataError

SYNTHETIC_CHUNK = 1 << 16  # rows per generated chunk; row i depends only on (seed, i // SYNTHETIC_CHUNK)
_DEFAULT_VOCABS = (10, 100, 1_000, 10_000, 100_000, 50, 500, 5_000)


class _HiddenModel:
    """The click model: logit = b + sum_f w_f[x_f] + sum_j a_j u_j
    + s * 1.5 * tanh(z) + s * 0.5 * z2^2 - mean, with z, z2 = normalized sums over two random subsets
    of field pairs of r_fg <v_f[x_f], v_g[x_g]> (u_j = standardized log1p of numeric j)."""

    def __init__(self, rng: np.random.Generator, vocab_sizes: Sequence[int], n_numeric: int, zipf_a: float,
                 latent_dim: int, interaction_strength: float, pair_fraction: float,
                 hash_key: int | None = None):
        """hash_key: derive each value's weight and latent vector from a hash of (hash_key, field,
        value) when needed instead of drawing them into arrays, so memory does not grow with the
        vocabularies (only the Zipf CDFs, 8 bytes per value, are kept)."""
        f = len(vocab_sizes)
        self.vocab_sizes = list(vocab_sizes)
        self.cdfs = []
        for v in vocab_sizes:
            c = np.cumsum(np.arange(1, v + 1, dtype=np.float64) ** -zipf_a)
            c /= c[-1]
            self.cdfs.append(c)
        self.hash_key = hash_key
        if hash_key is None:
            self.w = [rng.normal(0.0, 1.0 / np.sqrt(f), size=v) for v in vocab_sizes]
            self.v = [rng.normal(0.0, 1.0 / np.sqrt(latent_dim), size=(v, latent_dim)) for v in vocab_sizes]
        pairs = [(i, j) for i in range(f) for j in range(i + 1, f)]
        self.pair_sets = []
        for _ in range(2):
            take = rng.random(len(pairs)) < pair_fraction
            chosen = [p for p, t in zip(pairs, take) if t] or pairs[:1]
            self.pair_sets.append((chosen, rng.normal(size=len(chosen))))
        self.a = rng.normal(0.0, 0.5, size=n_numeric)
        self.num_mu = rng.uniform(0.5, 3.0, size=n_numeric)
        self.n_numeric = n_numeric
        self.latent_dim = latent_dim
        self.strength = interaction_strength
        self.bias = 0.0

    def weight(self, k: int, ids: np.ndarray) -> np.ndarray:
        """First-order weights float64 [n] of field k's values `ids` (0-based)."""
        if self.hash_key is None:
            return self.w[k][ids]
        return _hash_normal(self.hash_key, 2 * k, ids, 1)[:, 0] / np.sqrt(len(self.vocab_sizes))

    def latent(self, k: int, ids: np.ndarray) -> np.ndarray:
        """Latent vectors float64 [n, latent_dim] of field k's values `ids` (0-based)."""
        if self.hash_key is None:
            return self.v[k][ids]
        return _hash_normal(self.hash_key, 2 * k + 1, ids, self.latent_dim) / np.sqrt(self.latent_dim)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> ids int64 [n, F], numeric counts float64 [n, Fn], logits float64 [n]."""
        ids = np.stack([np.minimum(np.searchsorted(c, rng.random(n)), len(c) - 1) for c in self.cdfs], axis=1)
        logu = rng.normal(self.num_mu, 1.0, size=(n, self.n_numeric))
        counts = np.floor(np.expm1(np.maximum(logu, 0.0)) * rng.uniform(0.5, 1.5, size=(n, self.n_numeric)))
        u = (np.log1p(counts) - self.num_mu) / 1.0
        fields = range(len(self.vocab_sizes))
        logit = self.bias + sum(self.weight(k, ids[:, k]) for k in fields) + u @ self.a
        vecs = [self.latent(k, ids[:, k]) for k in fields]
        zs = []
        for chosen, r in self.pair_sets:
            z = sum(rr * np.einsum("nd,nd->n", vecs[i], vecs[j]) for (i, j), rr in zip(chosen, r))
            zs.append(z / np.sqrt(len(chosen) / self.latent_dim))
        logit = logit + self.strength * (1.5 * np.tanh(zs[0]) + 0.5 * zs[1] ** 2 - 0.5)
        return ids, counts, logit


def _hash_normal(key: int, stream: int, ids: np.ndarray, width: int) -> np.ndarray:
    """Standard normals float64 [n, width], a pure function of (key, stream, id, column): a
    splitmix64 hash to two uniforms, then Box-Muller."""
    with np.errstate(over="ignore"):
        salt = mix64(np.array([key % (1 << 64), stream + 1], dtype=np.uint64))
        x = (ids.astype(np.uint64)[:, None] * np.uint64(width)
             + np.arange(width, dtype=np.uint64)) ^ salt[0]
        h1 = mix64(x + salt[1])
        h2 = mix64(h1 ^ salt[0])
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53
    u2 = (h2 >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


@dataclass(frozen=True)
class SyntheticBags:
    """Multi-valued synthetic fields b0..b{fields-1}: each row's length is Poisson(mean_len) (so
    some bags are empty, and lengths beyond max_len are cut, keeping the last items, and counted),
    items are Zipf over `vocab` values. String form (`parse`): "FIELDS[:MEAN_LEN[:MAX_LEN]]"."""

    fields: int = 2
    mean_len: float = 5.0
    max_len: int = 20
    vocab: int = 1_000
    combiner: str = "mean"

    def __post_init__(self) -> None:
        if isinstance(self.fields, bool) or not isinstance(self.fields, int) or self.fields < 1:
            raise DataError(f"fields must be an integer >= 1, got {self.fields!r}", field="synthetic_bags")
        if not (0 < float(self.mean_len) <= 10_000):
            raise DataError(f"mean_len must be in (0, 10000], got {self.mean_len!r}", field="synthetic_bags")
        if isinstance(self.vocab, bool) or not isinstance(self.vocab, int) or self.vocab < 1:
            raise DataError(f"vocab must be an integer >= 1, got {self.vocab!r}", field="synthetic_bags")
        if self.combiner not in COMBINERS:
            raise DataError(f"combiner must be one of {list(COMBINERS)}, got {self.combiner!r}",
                            field="synthetic_bags")
        BagSpec("b0", self.max_len)  # validates max_len

    @classmethod
    def parse(cls, text: str) -> SyntheticBags:
        """"FIELDS[:MEAN_LEN[:MAX_LEN]]", e.g. "2:5:20"."""
        parts = str(text).split(":")
        try:
            if not 1 <= len(parts) <= 3:
                raise ValueError
            kw = {"fields": int(parts[0])}
            if len(parts) > 1:
                kw["mean_len"] = float(parts[1])
            if len(parts) > 2:
                kw["max_len"] = int(parts[2])
        except ValueError:
            raise DataError(f"synthetic bags must read FIELDS[:MEAN_LEN[:MAX_LEN]], got {text!r}",
                            field="synthetic_bags") from None
        return cls(**kw)

    def specs(self) -> tuple[BagSpec, ...]:
        return tuple(BagSpec(f"b{k}", self.max_len, self.combiner) for k in range(self.fields))

    def to_json(self) -> dict:
        return {"fields": self.fields, "mean_len": self.mean_len, "max_len": self.max_len, "vocab": self.vocab,
                "combiner": self.combiner}


class _HiddenBags:
    """The bags' share of the click logit: per bag field b, the mean over its items of a
    first-order weight, plus the strength times r_b <mean item vector, v of categorical field
    b mod F> (a bag that interacts with a single-valued field). An empty bag adds nothing."""

    def __init__(self, rng: np.random.Generator, spec: SyntheticBags, n_categorical: int, zipf_a: float,
                 latent_dim: int, strength: float):
        c = np.cumsum(np.arange(1, spec.vocab + 1, dtype=np.float64) ** -zipf_a)
        self.cdf = c / c[-1]
        self.spec, self.strength, self.n_categorical = spec, strength, n_categorical
        self.w = [rng.normal(0.0, 1.0, size=spec.vocab) for _ in range(spec.fields)]
        self.v = [rng.normal(0.0, 1.0 / np.sqrt(latent_dim), size=(spec.vocab, latent_dim))
                  for _ in range(spec.fields)]
        self.r = rng.normal(size=spec.fields)

    def sample(self, rng: np.random.Generator, model: _HiddenModel, ids: np.ndarray
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """-> per bag field (lengths int64 [n], items int64 [sum of lengths], 0-based, row by
        row), and the logit float64 [n] they add, for rows whose categorical ids are `ids`."""
        n = len(ids)
        out, logit = [], np.zeros(n)
        for b in range(self.spec.fields):
            lengths = rng.poisson(self.spec.mean_len, size=n).astype(np.int64)
            items = np.minimum(np.searchsorted(self.cdf, rng.random(int(lengths.sum()))), len(self.cdf) - 1)
            row = np.repeat(np.arange(n), lengths)
            count = np.maximum(lengths, 1).astype(np.float64)
            first = np.bincount(row, weights=self.w[b][items], minlength=n) / count
            pooled = np.stack([np.bincount(row, weights=self.v[b][items, d], minlength=n)
                               for d in range(self.v[b].shape[1])], axis=1) / count[:, None]
            partner = b % self.n_categorical
            inter = np.einsum("nd,nd->n", pooled, model.latent(partner, ids[:, partner]))
            logit += first + self.strength * self.r[b] * inter * np.sqrt(self.v[b].shape[1])
            out.append((lengths, items))
        return out, logit


def _calibrate(model: _HiddenModel, rng: np.random.Generator, base_ctr: float,
               bags: _HiddenBags | None = None) -> None:
    ids, _, logit = model.sample(rng, 50_000)
    if bags is not None:
        logit = logit + bags.sample(rng, model, ids)[1]
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(logit + mid)))) < base_ctr:
            lo = mid
        else:
            hi = mid
    model.bias = (lo + hi) / 2


def _list_column(lengths: np.ndarray, items: np.ndarray) -> pa.Array:
    """Rows of items (0-based ints) as a list<string> column."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pc.cast(pa.array(items), pa.string()))


def synthetic_chunks(n_rows: int, model: _HiddenModel, seed: int, cat_names: Sequence[str],
                     num_names: Sequence[str], bags: _HiddenBags | None = None
                     ) -> Iterator[tuple[RawChunk, list[BadLine]]]:
    for i, start in enumerate(range(0, n_rows, SYNTHETIC_CHUNK)):
        rng = np.random.default_rng([seed, 2, i])
        ids, counts, logit = model.sample(rng, SYNTHETIC_CHUNK)
        k = min(SYNTHETIC_CHUNK, n_rows - start)
        bag_cols: dict = {}
        if bags is not None:  # its own stream: the single-valued columns stay as without bags
            lists, extra = bags.sample(np.random.default_rng([seed, 3, i]), model, ids[:k])
            logit = logit + np.concatenate([extra, np.zeros(SYNTHETIC_CHUNK - k)])
            bag_cols = {f"b{b}": _list_column(lengths, items) for b, (lengths, items) in enumerate(lists)}
        label = (rng.random(SYNTHETIC_CHUNK) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        cols: dict = {name: pc.cast(pa.array(ids[:k, j]), pa.string()) for j, name in enumerate(cat_names)}
        cols.update({name: counts[:k, j] for j, name in enumerate(num_names)})
        cols.update(bag_cols)
        lines = np.arange(start + 1, start + k + 1, dtype=np.int64)
        yield RawChunk(cols, tuple(cat_names), tuple(num_names), label[:k], lines, "synthetic",
                       tuple(bag_cols)), []


class IdentityEncoder(Encoder):
    """A fixed vocabulary per field: field j's value "k" (decimal, k = 1..V_j - 1) has id k, any
    other value (missing, unknown, out of range) id 0. Holds only the sizes V_j, not the values,
    so a 10M-row vocabulary costs nothing; its JSON (`to_json`) lists the values in id order, as
    any Encoder's does, so `Encoder.from_json` reads it back as an equivalent plain Encoder."""

    def __init__(self, cat_names: Sequence[str], vocab_sizes: Sequence[int], num_names: Sequence[str] = (),
                 num_mean: Sequence[float] = (), num_std: Sequence[float] = ()):
        super().__init__(cat_names, [[] for _ in cat_names], num_names, num_mean, num_std, 1)
        self.vocab_sizes = tuple(int(v) for v in vocab_sizes)
        if len(self.vocab_sizes) != len(self.cat_names) or min(self.vocab_sizes, default=1) < 1:
            raise DataError(f"{len(self.cat_names)} categorical fields need as many vocabulary sizes >= 1, "
                            f"got {list(self.vocab_sizes)}", field="vocab_sizes")

    @property
    def info(self) -> FeatureInfo:
        return FeatureInfo(cat_names=self.cat_names, vocab_sizes=self.vocab_sizes, num_names=self.num_names)

    def ids(self, j: int, values) -> np.ndarray:
        """Ids int32 [N]: int(value) for the decimals "1".."V_j - 1" (no sign, no leading zero), else 0."""
        arr = _as_string_array(values)
        ok = pc.fill_null(pc.and_(pc.and_(pc.utf8_is_digit(arr), pc.less_equal(pc.utf8_length(arr), 18)),
                                  pc.invert(pc.starts_with(arr, "0"))), False)
        num = pc.cast(pc.if_else(ok, arr, "0"), pa.int64()).to_numpy(zero_copy_only=False)
        return np.where((num >= 1) & (num < self.vocab_sizes[j]), num, 0).astype(np.int32)

    def to_json(self) -> dict:
        d = super().to_json()
        d["vocabs"] = [[str(k) for k in range(1, v)] for v in self.vocab_sizes]
        return d

    def __repr__(self) -> str:
        return (f"IdentityEncoder(cat={len(self.cat_names)} fields, vocab={sum(self.vocab_sizes)} rows, "
                f"num={len(self.num_names)})")


def table_sizes(total_vocab: int, weights: Sequence[float]) -> list[int]:
    """Rows per table, in proportion to `weights`, summing to exactly `total_vocab`: each table has
    its out-of-vocabulary row (id 0) and at least one value, so total_vocab >= 2 * len(weights).
    Shares are floored and the rows left go to the largest remainders (ties: first field)."""
    f = len(weights)
    if int(total_vocab) != total_vocab or total_vocab < 2 * f:
        raise DataError(f"total_vocab (--synthetic-vocab) must be an integer >= {2 * f} (2 rows per table "
                        f"for {f} categorical fields), got {total_vocab}", field="total_vocab")
    w = np.asarray(weights, dtype=np.float64)
    spare = int(total_vocab) - 2 * f
    share = spare * w / w.sum()
    sizes = np.floor(share).astype(np.int64)
    sizes[np.argsort(-(share - sizes), kind="stable")[:spare - int(sizes.sum())]] += 1
    return [int(v) + 2 for v in sizes]


def _check_identity(encoder: Encoder, cat_names: Sequence[str], num_names: Sequence[str],
                    sizes: Sequence[int]) -> None:
    """DataError unless `encoder` (e.g. a model directory's) has these fields and tables and maps
    value "k" to id k (checked on the first, middle and last value of each field)."""
    info = encoder.info
    if (tuple(info.cat_names), tuple(info.num_names)) != (tuple(cat_names), tuple(num_names)) \
            or list(info.vocab_sizes) != list(sizes):
        raise DataError(f"the encoder's fields/tables {list(info.cat_names)}/{list(info.vocab_sizes)} differ from "
                        f"the synthetic data's {list(cat_names)}/{list(sizes)} (same --synthetic-vocab?)",
                        field="total_vocab")
    if isinstance(encoder, IdentityEncoder):
        return
    for j, v in enumerate(sizes):
        probe = sorted({1, max(1, (v - 1) // 2), v - 1}) if v > 1 else []
        if probe and list(encoder.ids(j, [str(k) for k in probe])) != probe:
            raise DataError("the encoder does not map synthetic value k to id k: it was not made by "
                            "synthetic_dataset(total_vocab=...)", field=cat_names[j])


def _fixed_vocab_dataset(n_rows: int, model: _HiddenModel, seed: int, cat_names: Sequence[str],
                         num_names: Sequence[str], sizes: Sequence[int], split: str,
                         encoder: Encoder | None) -> Dataset:
    """Rows generated chunk by chunk (as `synthetic_chunks`: row i depends on (seed, i // chunk))
    straight into encoded arrays: value rank r of field j is id r + 1 (< sizes[j]); numerics
    standardized with the train split's moments (or the given encoder's)."""
    t0 = time.perf_counter()
    f, fn = len(cat_names), len(num_names)
    cat = np.empty((n_rows, f), np.int32)
    num = np.empty((n_rows, fn), np.float32)
    label = np.empty(n_rows, np.float32)
    for i, start in enumerate(range(0, n_rows, SYNTHETIC_CHUNK)):
        rng = np.random.default_rng([seed, 2, i])
        ids, counts, logit = model.sample(rng, SYNTHETIC_CHUNK)
        clicks = rng.random(SYNTHETIC_CHUNK) < 1 / (1 + np.exp(-logit))
        k = min(SYNTHETIC_CHUNK, n_rows - start)
        cat[start:start + k] = ids[:k] + 1
        for j in range(fn):
            num[start:start + k, j] = numeric_transform(counts[:k, j])
        label[start:start + k] = clicks[:k]
    rows = split_rows(n_rows, split, seed)
    if encoder is None:
        moments = NumericMoments.zeros(fn)
        train = rows["train"]
        for s in range(0, count_rows(train), SYNTHETIC_CHUNK):
            block = train[s:s + SYNTHETIC_CHUNK] if isinstance(train, np.ndarray) else \
                slice(train.start + s, min(train.start + s + SYNTHETIC_CHUNK, train.stop))
            moments = moments.merge(NumericMoments.of(num[block].astype(np.float64)))
        std = np.sqrt(np.where(moments.count > 0, moments.m2 / np.maximum(moments.count, 1), 1.0))
        encoder = IdentityEncoder(cat_names, sizes, num_names, moments.mean, np.where(std > 1e-12, std, 1.0))
    else:
        _check_identity(encoder, cat_names, num_names, sizes)
    for j in range(fn):
        num[:, j] = encoder.standardize(num[:, j], j)
    splits = {s: EncodedSplit(cat[r], num[r], label[r]) for s, r in rows.items()}
    report = {"name": "synthetic", "rows_read": n_rows, "rows_skipped": 0, "first_skipped_lines": [],
              "skipped_examples": [], "truncated": False, "splits": {s: len(splits[s]) for s in SPLITS},
              "split": split, "seed": seed, "min_count": 1, "vocab_sizes": list(encoder.info.vocab_sizes),
              "positive_rate": float(np.mean(splits["train"].label)) if len(splits["train"]) else float("nan"),
              "files": ["synthetic"], "seconds": round(time.perf_counter() - t0, 3), "cache_hit": False}
    return Dataset("synthetic", encoder.info, splits["train"], splits["valid"], splits["test"], encoder, report)


def synthetic_dataset(n_rows: int = 200_000, *, seed: int = 0, n_categorical: int = 16, n_numeric: int = 2,
                      vocab_sizes: Sequence[int] | None = None, zipf_a: float = 1.2, latent_dim: int = 4,
                      interaction_strength: float = 1.0, pair_fraction: float = 0.4, base_ctr: float = 0.22,
                      min_count: int = 1, split: str = "sequential", encoder=None,
                      total_vocab: int | None = None, bags: SyntheticBags | None = None) -> Dataset:
    """Deterministic (by seed) synthetic CTR data, generated in chunks; row i is the same for any
    n_rows > i. Fields c0..c{F-1} (Zipf, vocab sizes default to a 10..100k mix), numeric count-like
    fields n0..; labels from _HiddenModel with base CTR ~ base_ctr. Encoder fitted on train.

    total_vocab: instead, tables of fixed sizes (`table_sizes`: the default mix scaled so that
    the tables' rows, each with its out-of-vocabulary row 0, sum to exactly total_vocab), an
    `IdentityEncoder` (every id 1..V-1 has its row whether or not train saw it; the data never
    holds id 0), and the hidden model's per-value parameters hashed rather than stored, so memory
    is the data plus 8 bytes per table row (the Zipf CDFs). Not with vocab_sizes or min_count > 1.

    bags: add multi-valued fields b0.. (`SyntheticBags`; not with total_vocab). None (the
    default) generates exactly the data it always did.
    """
    if n_rows < 10:
        raise DataError(f"synthetic_dataset needs n_rows >= 10, got {n_rows}", field="n_rows")
    sizes = None
    if bags is not None and total_vocab is not None:
        raise DataError("synthetic bags do not combine with total_vocab (--synthetic-vocab) yet", field="bags")
    if total_vocab is not None:
        if vocab_sizes is not None:
            raise DataError("give vocab_sizes or total_vocab (--synthetic-vocab), not both", field="total_vocab")
        if min_count != 1:
            raise DataError(f"total_vocab (--synthetic-vocab) fixes the vocabularies: min_count must be 1, "
                            f"got {min_count}", field="min_count")
        if n_categorical < 1:
            raise DataError(f"n_categorical must be >= 1, got {n_categorical}", field="n_categorical")
        sizes = table_sizes(total_vocab, [_DEFAULT_VOCABS[i % len(_DEFAULT_VOCABS)] for i in range(n_categorical)])
        vocab_sizes = [v - 1 for v in sizes]  # values per field: ids 1..V-1
    elif vocab_sizes is None:
        vocab_sizes = [_DEFAULT_VOCABS[i % len(_DEFAULT_VOCABS)] for i in range(n_categorical)]
    vocab_sizes = [int(v) for v in vocab_sizes]
    if len(vocab_sizes) != n_categorical or n_categorical < 1 or min(vocab_sizes) < 1:
        raise DataError(f"vocab_sizes must be {n_categorical} positive ints, got {vocab_sizes}", field="vocab_sizes")
    hash_key = None if sizes is None else int(mix64(np.array([seed % (1 << 63)], np.uint64))[0])
    model = _HiddenModel(np.random.default_rng([seed, 0]), vocab_sizes, n_numeric, zipf_a, latent_dim,
                         interaction_strength, pair_fraction, hash_key=hash_key)
    hidden_bags = None if bags is None else _HiddenBags(np.random.default_rng([seed, 4]), bags, n_categorical,
                                                         zipf_a, latent_dim, interaction_strength)
    _calibrate(model, np.random.default_rng([seed, 1]), base_ctr, hidden_bags)
    cat_names = [f"c{j}" for j in range(n_categorical)]
    num_names = [f"n{j}" for j in range(n_numeric)]
    if sizes is not None:
        ds = _fixed_vocab_dataset(n_rows, model, seed, cat_names, num_names, sizes, split, encoder)
    else:
        schema = None if bags is None else Schema("label", tuple(cat_names), tuple(num_names), bags=bags.specs())
        ds = build_from_chunks("synthetic", synthetic_chunks(n_rows, model, seed, cat_names, num_names, hidden_bags),
                               min_count=min_count, split=split, seed=seed, out_dir=None, encoder=encoder,
                               schema=schema)
    ds.report.update(seed=seed, generator={"n_rows": n_rows, "vocab_sizes": vocab_sizes, "zipf_a": zipf_a,
                                           "latent_dim": latent_dim, "interaction_strength": interaction_strength,
                                           "pair_fraction": pair_fraction, "base_ctr": base_ctr,
                                           "total_vocab": total_vocab,
                                           **({"bags": bags.to_json()} if bags is not None else {})})
    return ds
