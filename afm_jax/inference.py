"""One scorer for original and compressed params: `jit(vmap(score_example))`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from afm_jax import metrics
from afm_jax._cache import cache_per_model

Batch = Mapping[str, Any]
Scorer = Callable[[Any, Batch], jax.Array]


def default_chunk_rows() -> int | None:
    """Rows per chunk for scoring on this backend: 1024 on CPU, where working in cache-sized
    chunks measured 1.5-1.6x faster at batch 8192 (experiments/results/bench_cpu.md); none on
    accelerators, where a whole batch at once is fastest."""
    return 1024 if jax.default_backend() == "cpu" else None


def logits_fn(model, chunk_rows: int | None = None, shards: int = 1) -> Callable[[Any, Batch], jax.Array]:
    """Un-jitted batched logits: (params, {"cat": [B,Fc], "num": [B,Fn]}) -> [B].

    chunk_rows: score a batch larger than this in chunks of that many rows (`lax.map`), which
    keeps each chunk's activations in cache on a CPU; None scores the batch at once.
    shards: devices on the batch axis (a batch sharded over a mesh's "data" axis): each chunk
    then takes `chunk_rows` rows from every device's block, so every step stays sharded.
    """

    def one(params, cat, num):
        return model.apply({"params": params}, cat, num)

    def rows(params, cat, num):
        return jax.vmap(one, in_axes=(None, 0, 0))(params, cat, num)

    def batched(params, batch: Batch) -> jax.Array:
        cat, num = batch["cat"], batch["num"]
        chex.assert_rank([cat, num], 2)
        chex.assert_type(cat, int)
        chex.assert_equal_shape_prefix([cat, num], 1)
        n = cat.shape[0]
        if chunk_rows is None or not isinstance(n, int) or n % shards or n // shards <= chunk_rows:
            return rows(params, cat, num)
        per = n // shards
        pad = -per % chunk_rows
        chunks = (per + pad) // chunk_rows

        def split(x):  # [n, f] -> [chunks, shards * chunk_rows, f]
            x = jnp.pad(x.reshape(shards, per, x.shape[1]), ((0, 0), (0, pad), (0, 0)))
            x = x.reshape(shards, chunks, chunk_rows, x.shape[2])
            return jnp.swapaxes(x, 0, 1).reshape(chunks, shards * chunk_rows, x.shape[3])

        out = jax.lax.map(lambda xs: rows(params, *xs), (split(cat), split(num)))
        out = jnp.swapaxes(out.reshape(chunks, shards, chunk_rows), 0, 1)
        return out.reshape(shards, chunks * chunk_rows)[:, :per].reshape(n)

    return batched


@cache_per_model(32)
def _scorer(model, shards: int) -> Scorer:
    logits = logits_fn(model, default_chunk_rows(), shards)

    @jax.jit
    def score(params, batch: Batch) -> jax.Array:
        return jax.nn.sigmoid(logits(params, batch))

    return score


def make_scorer(model, mesh=None) -> Scorer:
    """`score(params, batch) -> probabilities [B]`, jitted; takes every params form of `model`.

    The same function scores the original params and any AFM-compressed pytree: the layers read
    the structure of the params they are given (a new structure compiles once more). Cached per
    model, so every evaluation of one model (each epoch's validation, each train() call) reuses
    the compiled scorer. mesh: score batches sharded over its "data" axis (`predict`,
    `evaluate` with the same mesh place them; params with `distributed.shard_params`).
    """
    from afm_jax.distributed import data_size
    return _scorer(model, data_size(mesh))


def _fixed_shape_batches(split, batch_size: int) -> Iterator[tuple[dict, int]]:
    """Batches in order, the last padded to full size (one compile), and their true sizes."""
    from afm_jax.data import iterate_batches
    for batch in iterate_batches(split, batch_size, pad_last=True):
        yield {"cat": batch["cat"], "num": batch["num"]}, int(batch["weight"].sum())


def predict(scorer: Scorer, params, split, batch_size: int = 8192, *, mesh=None,
            out: np.ndarray | None = None) -> np.ndarray:
    """Probabilities [N] for every row of an EncodedSplit, in order (one compile per shape).

    mesh: batches sharded over its "data" axis (each process reads only its devices' rows; the
    scores are gathered to every process). out: write into this [N] array (e.g. a memory-mapped
    .npy) instead of collecting the scores in memory.
    """
    if mesh is not None:
        from afm_jax import distributed
        batches = distributed.global_batches(split, batch_size, mesh, with_sizes=True)
        to_host = distributed.fetch
    else:
        batches, to_host = _fixed_shape_batches(split, batch_size), np.asarray
    parts, pos = [], 0
    for batch, size in batches:
        scores = to_host(scorer(params, {"cat": batch["cat"], "num": batch["num"]}))[:size]
        if out is None:
            parts.append(scores)
        else:
            out[pos:pos + size] = scores
        pos += size
    if out is not None:
        return out
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def evaluate(scorer: Scorer, params, split, batch_size: int = 8192, *, mesh=None) -> dict[str, float]:
    """AUC, logloss, rows and seconds of scoring a split."""
    t0 = time.perf_counter()
    probs = predict(scorer, params, split, batch_size, mesh=mesh)
    seconds = time.perf_counter() - t0
    labels = np.asarray(split.label)
    return {"auc": metrics.auc(labels, probs), "logloss": metrics.logloss(labels, probs),
            "rows": int(len(split)), "seconds": seconds}


def throughput(scorer: Scorer, params, split, batch_size: int = 8192, repeats: int = 5) -> float:
    """Rows/s of the jitted scorer on one fixed batch of real rows (median of repeats, warm)."""
    batch, _ = next(_fixed_shape_batches(split, batch_size))
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


def export(model, params, path, *, batch_size: int | None = None) -> Path:
    """Write the scorer as a serialized `jax.export` artifact that runs with jax alone.

    path/ gets `scorer.jaxexport` (StableHLO; the batch dimension is symbolic unless
    `batch_size` is given) and `params.npz` (the params leaves, loaded with allow_pickle=False).
    Load with `load_exported(path)`; no model code is needed there.
    """
    from jax import export as jex

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    n_cat, n_num = len(model.info.cat_names), len(model.info.num_names)
    b = jex.symbolic_shape("b")[0] if batch_size is None else batch_size
    logits = logits_fn(model)

    def score(p, cat, num):
        return jax.nn.sigmoid(logits(p, {"cat": cat, "num": num}))

    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), params)
    exported = jex.export(jax.jit(score))(spec, jax.ShapeDtypeStruct((b, n_cat), jnp.int32),
                                          jax.ShapeDtypeStruct((b, n_num), jnp.float32))
    (out / "scorer.jaxexport").write_bytes(exported.serialize())
    leaves = jax.tree_util.tree_leaves(params)
    with open(out / "params.npz", "wb") as f:
        np.savez(f, **{f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)})
    return out


def load_exported(path) -> Callable[[np.ndarray, np.ndarray], jax.Array]:
    """`score(cat int32[B, Fc], num float32[B, Fn]) -> probabilities [B]` from `export`."""
    from jax import export as jex

    from afm_jax.errors import CheckpointError

    d = Path(path)
    try:
        exported = jex.deserialize(bytearray((d / "scorer.jaxexport").read_bytes()))
        with np.load(d / "params.npz", allow_pickle=False) as z:
            leaves = [z[k] for k in sorted(z.files)]
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d}: not a loadable exported scorer ({e})") from e

    def score(cat, num):
        args, kwargs = jax.tree_util.tree_unflatten(
            exported.in_tree, [*leaves, np.asarray(cat, np.int32), np.asarray(num, np.float32)])
        return exported.call(*args, **kwargs)

    return score
