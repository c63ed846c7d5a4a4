"""Synthetic CTR data from a hidden model: Zipf categorical fields, count-like numeric fields, clicks
from first-order effects + field-pair latent interactions through a tanh nonlinearity."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from afm_jax.data.dataset import Dataset, build_from_chunks
from afm_jax.data.readers import BadLine, RawChunk
from afm_jax.errors import DataError

SYNTHETIC_CHUNK = 1 << 16  # rows per generated chunk; row i depends only on (seed, i // SYNTHETIC_CHUNK)
_DEFAULT_VOCABS = (10, 100, 1_000, 10_000, 100_000, 50, 500, 5_000)


class _HiddenModel:
    """The click model: logit = b + sum_f w_f[x_f] + sum_j a_j u_j
    + s * 1.5 * tanh(z) + s * 0.5 * z2^2 - mean, with z, z2 = normalized sums over two random subsets
    of field pairs of r_fg <v_f[x_f], v_g[x_g]> (u_j = standardized log1p of numeric j)."""

    def __init__(self, rng: np.random.Generator, vocab_sizes: Sequence[int], n_numeric: int, zipf_a: float,
                 latent_dim: int, interaction_strength: float, pair_fraction: float):
        f = len(vocab_sizes)
        self.vocab_sizes = list(vocab_sizes)
        self.cdfs = []
        for v in vocab_sizes:
            p = np.arange(1, v + 1, dtype=np.float64) ** -zipf_a
            c = np.cumsum(p)
            self.cdfs.append(c / c[-1])
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

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> ids int64 [n, F], numeric counts float64 [n, Fn], logits float64 [n]."""
        ids = np.stack([np.minimum(np.searchsorted(c, rng.random(n)), len(c) - 1) for c in self.cdfs], axis=1)
        logu = rng.normal(self.num_mu, 1.0, size=(n, self.n_numeric))
        counts = np.floor(np.expm1(np.maximum(logu, 0.0)) * rng.uniform(0.5, 1.5, size=(n, self.n_numeric)))
        u = (np.log1p(counts) - self.num_mu) / 1.0
        logit = self.bias + sum(w[ids[:, k]] for k, w in enumerate(self.w)) + u @ self.a
        vecs = [v[ids[:, k]] for k, v in enumerate(self.v)]
        zs = []
        for chosen, r in self.pair_sets:
            z = sum(rr * np.einsum("nd,nd->n", vecs[i], vecs[j]) for (i, j), rr in zip(chosen, r))
            zs.append(z / np.sqrt(len(chosen) / self.latent_dim))
        logit = logit + self.strength * (1.5 * np.tanh(zs[0]) + 0.5 * zs[1] ** 2 - 0.5)
        return ids, counts, logit


def _calibrate(model: _HiddenModel, rng: np.random.Generator, base_ctr: float) -> None:
    _, _, logit = model.sample(rng, 50_000)
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(logit + mid)))) < base_ctr:
            lo = mid
        else:
            hi = mid
    model.bias = (lo + hi) / 2


def synthetic_chunks(n_rows: int, model: _HiddenModel, seed: int, cat_names: Sequence[str],
                     num_names: Sequence[str]) -> Iterator[tuple[RawChunk, list[BadLine]]]:
    for i, start in enumerate(range(0, n_rows, SYNTHETIC_CHUNK)):
        rng = np.random.default_rng([seed, 2, i])
        ids, counts, logit = model.sample(rng, SYNTHETIC_CHUNK)
        label = (rng.random(SYNTHETIC_CHUNK) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        k = min(SYNTHETIC_CHUNK, n_rows - start)
        cols: dict = {name: pc.cast(pa.array(ids[:k, j]), pa.string()) for j, name in enumerate(cat_names)}
        cols.update({name: counts[:k, j] for j, name in enumerate(num_names)})
        lines = np.arange(start + 1, start + k + 1, dtype=np.int64)
        yield RawChunk(cols, tuple(cat_names), tuple(num_names), label[:k], lines, "synthetic"), []


def synthetic_dataset(n_rows: int = 200_000, *, seed: int = 0, n_categorical: int = 16, n_numeric: int = 2,
                      vocab_sizes: Sequence[int] | None = None, zipf_a: float = 1.2, latent_dim: int = 4,
                      interaction_strength: float = 1.0, pair_fraction: float = 0.4, base_ctr: float = 0.22,
                      min_count: int = 1, split: str = "sequential", encoder=None) -> Dataset:
    """Deterministic (by seed) synthetic CTR data, generated in chunks; row i is the same for any
    n_rows > i. Fields c0..c{F-1} (Zipf, vocab sizes default to a 10..100k mix), numeric count-like
    fields n0..; labels from _HiddenModel with base CTR ~ base_ctr. Encoder fitted on train."""
    if n_rows < 10:
        raise DataError(f"synthetic_dataset needs n_rows >= 10, got {n_rows}", field="n_rows")
    if vocab_sizes is None:
        vocab_sizes = [_DEFAULT_VOCABS[i % len(_DEFAULT_VOCABS)] for i in range(n_categorical)]
    vocab_sizes = [int(v) for v in vocab_sizes]
    if len(vocab_sizes) != n_categorical or n_categorical < 1 or min(vocab_sizes) < 1:
        raise DataError(f"vocab_sizes must be {n_categorical} positive ints, got {vocab_sizes}", field="vocab_sizes")
    model = _HiddenModel(np.random.default_rng([seed, 0]), vocab_sizes, n_numeric, zipf_a, latent_dim,
                         interaction_strength, pair_fraction)
    _calibrate(model, np.random.default_rng([seed, 1]), base_ctr)
    cat_names = [f"c{j}" for j in range(n_categorical)]
    num_names = [f"n{j}" for j in range(n_numeric)]
    ds = build_from_chunks("synthetic", synthetic_chunks(n_rows, model, seed, cat_names, num_names),
                           min_count=min_count, split=split, seed=seed, out_dir=None, encoder=encoder)
    ds.report.update(seed=seed, generator={"n_rows": n_rows, "vocab_sizes": vocab_sizes, "zipf_a": zipf_a,
                                           "latent_dim": latent_dim, "interaction_strength": interaction_strength,
                                           "pair_fraction": pair_fraction, "base_ctr": base_ctr})
    return ds
