"""One scorer for original and compressed params: `jit(vmap(score_example))`."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from afm_jax import metrics

Batch = Mapping[str, Any]
Scorer = Callable[[Any, Batch], jax.Array]


def logits_fn(model) -> Callable[[Any, Batch], jax.Array]:
    """Un-jitted batched logits: (params, {"cat": [B,Fc], "num": [B,Fn]}) -> [B]."""

    def one(params, cat, num):
        return model.apply({"params": params}, cat, num)

    def batched(params, batch: Batch) -> jax.Array:
        return jax.vmap(one, in_axes=(None, 0, 0))(params, batch["cat"], batch["num"])

    return batched


def make_scorer(model) -> Scorer:
    """`score(params, batch) -> probabilities [B]`, jitted; takes every params form of `model`.

    The same function scores the original params and any AFM-compressed pytree: the layers read
    the structure of the params they are given (a new structure compiles once more).
    """
    logits = logits_fn(model)

    @jax.jit
    def score(params, batch: Batch) -> jax.Array:
        return jax.nn.sigmoid(logits(params, batch))

    return score


def _padded_batches(split, batch_size: int) -> Iterator[tuple[dict, int]]:
    """Fixed-shape batches in order (the last one padded with row 0) and their true sizes."""
    n = len(split)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        idx = np.arange(start, start + batch_size)
        idx[stop - start:] = start
        yield {"cat": np.asarray(split.cat[idx]), "num": np.asarray(split.num[idx])}, stop - start


def predict(scorer: Scorer, params, split, batch_size: int = 8192) -> np.ndarray:
    """Probabilities [N] for every row of an EncodedSplit, in order (one compile per shape)."""
    out = []
    for batch, size in _padded_batches(split, batch_size):
        out.append(np.asarray(scorer(params, batch))[:size])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def evaluate(scorer: Scorer, params, split, batch_size: int = 8192) -> dict[str, float]:
    """AUC, logloss, rows and seconds of scoring a split."""
    t0 = time.perf_counter()
    probs = predict(scorer, params, split, batch_size)
    seconds = time.perf_counter() - t0
    labels = np.asarray(split.label)
    return {"auc": metrics.auc(labels, probs), "logloss": metrics.logloss(labels, probs),
            "rows": int(len(split)), "seconds": seconds}


def throughput(scorer: Scorer, params, split, batch_size: int = 8192, repeats: int = 5) -> float:
    """Rows/s of the jitted scorer on one fixed batch of real rows (median of repeats, warm)."""
    batch, _ = next(_padded_batches(split, batch_size))
    batch = jax.device_put(batch)
    scorer(params, batch).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scorer(params, batch).block_until_ready()
        times.append(time.perf_counter() - t0)
    return batch_size / float(np.median(times))


def count_params(params) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))
