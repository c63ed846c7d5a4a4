"""One scorer for original and compressed params: `jit(vmap(score_example))`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from afm_jax import metrics
from afm_jax._cache import cache_per_model
from afm_jax.nn import PRECISIONS, precision_name  # noqa: F401  (re-exported)
from afm_jax.pooling import model_inputs
from afm_jax.transforms import bag_input_names, field_transforms

Batch = Mapping[str, Any]
Scorer = Callable[[Any, Batch], jax.Array]


def default_chunk_rows() -> int | None:
    """Rows per chunk for scoring on this backend: 1024 on CPU, where working in cache-sized
    chunks measured 1.5-1.6x faster at batch 8192 (experiments/results/bench_cpu.md); none on
    accelerators, where a whole batch at once is fastest."""
    return 1024 if jax.default_backend() == "cpu" else None


def chunked(n: Any, shards: int, chunk_rows: int | None) -> bool:
    """Whether a batch of `n` rows (split in `shards` equal device blocks) runs in chunks of
    `chunk_rows` rows per block: only when a block holds more than that (and n is a number that
    `shards` divides, not a symbolic export dimension)."""
    return (chunk_rows is not None and isinstance(n, int) and n % shards == 0
            and n // shards > chunk_rows)


def to_chunks(x: jax.Array, shards: int, chunk_rows: int) -> jax.Array:
    """[n, ...] -> [chunks, shards * chunk_rows, ...] for `jax.lax.map` / `jax.lax.scan`.

    x is `shards` equal blocks of rows (one per device when sharded on axis 0), each zero-padded
    to a multiple of chunk_rows; chunk j holds rows j*chunk_rows.. of every block, so each step
    stays sharded. Padded rows are zeros: callers drop them (`from_chunks`) or weight them 0.
    """
    per = x.shape[0] // shards
    pad = -per % chunk_rows
    chunks = (per + pad) // chunk_rows
    x = x.reshape(shards, per, *x.shape[1:])
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape(shards, chunks, chunk_rows, *x.shape[2:])
    return jnp.swapaxes(x, 0, 1).reshape(chunks, shards * chunk_rows, *x.shape[3:])


def from_chunks(y: jax.Array, n: int, shards: int) -> jax.Array:
    """The inverse of `to_chunks` for per-row outputs: [chunks, shards * chunk_rows, ...] ->
    [n, ...], the padding dropped."""
    chunks, chunk_rows = y.shape[0], y.shape[1] // shards
    y = jnp.swapaxes(y.reshape(chunks, shards, chunk_rows, *y.shape[2:]), 0, 1)
    return y.reshape(shards, chunks * chunk_rows, *y.shape[3:])[:, :n // shards].reshape(n, *y.shape[3:])


def _at_precision(model, compute_dtype):
    """`model` at `compute_dtype` (`models.with_precision`), or `model` itself for None: it
    keeps its own precision (`CTRModel.compute_dtype`, float32 unless made otherwise)."""
    from afm_jax.models.base import with_precision as clone_at

    return model if compute_dtype is None else clone_at(model, compute_dtype)


def logits_fn(model, chunk_rows: int | None = None, shards: int = 1,
              compute_dtype=None) -> Callable[[Any, Batch], jax.Array]:
    """Un-jitted batched logits: (params, {"cat": [B,Fc], "num": [B,Fn]}) -> [B]; a batch
    with bag fields carries "bags" and "bag_len" too (`afm_jax.data.splits`), which go to the
    model with the ids (`pooling.model_inputs`).

    chunk_rows: score a batch larger than this in chunks of that many rows (`lax.map`), which
    keeps each chunk's activations in cache on a CPU; None scores the batch at once.
    shards: devices on the batch axis (a batch sharded over a mesh's "data" axis): each chunk
    then takes `chunk_rows` rows from every device's block, so every step stays sharded.
    compute_dtype: the model's precision (`CTRModel.compute_dtype`) unless given here: e.g.
    jnp.bfloat16: every Linear product (`nn._affine`) takes inputs of that dtype and
    accumulates in float32; all else stays float32. jnp.int8: the products of int8-stored
    kernels (`quantize`) run int8 x int8 -> int32 on activations quantized per row; float
    kernels stay float32. "float32": float32 all through.
    """
    model = _at_precision(model, compute_dtype)

    def one(params, cat, num):
        return model.apply({"params": params}, cat, num)

    def rows(params, cat, num):
        return jax.vmap(one, in_axes=(None, 0, 0))(params, cat, num)

    def batched(params, batch: Batch) -> jax.Array:
        cat, num = batch["cat"], batch["num"]
        chex.assert_rank([cat, num], 2)
        chex.assert_type(cat, int)
        chex.assert_equal_shape_prefix([cat, num], 1)
        x = model_inputs(batch)   # the categorical ids, with the bags when the batch has some
        n = cat.shape[0]
        if not chunked(n, shards, chunk_rows):
            return rows(params, x, num)
        parts = jax.tree.map(lambda a: to_chunks(a, shards, chunk_rows), (x, num))
        return from_chunks(jax.lax.map(lambda xs: rows(params, *xs), parts), n, shards)

    return batched


@cache_per_model(32)
def _scorer(model, shards: int) -> Scorer:
    # the model carries its precision (compute_dtype): one compiled scorer per precision
    logits = logits_fn(model, default_chunk_rows(), shards)
    return jax.jit(lambda params, batch: jax.nn.sigmoid(logits(params, batch)))


def make_scorer(model, mesh=None, compute_dtype=None) -> Scorer:
    """`score(params, batch) -> probabilities [B]`, a plain jitted function; it takes every
    params form of `model`.

    The same function scores the original params and any AFM-compressed pytree, per-field or
    packed: the layers read the structure of the params they are given (a new structure
    compiles once more). Pack per-field params once (`packing.pack`, or `device_params`, which
    also places them) before scoring many batches: the packed layout runs fastest. Cached per
    model (its fields, precision included) and mesh size, so every evaluation of one model
    (each epoch's validation, each train() call) reuses the compiled scorer. mesh: score
    batches sharded over its "data" axis (`predict`, `evaluate` with the same mesh place them;
    params with `distributed.shard_params`).
    compute_dtype: the model's own precision (`CTRModel.compute_dtype`) unless given:
    jnp.bfloat16 (or "bfloat16") runs every Linear product with bfloat16 inputs and float32
    accumulation, all else in float32 (`logits_fn`); jnp.int8 (or "int8") runs the products of
    int8-stored kernels in int8 with int32 accumulation; "float32": float32 all through. The
    same as `make_scorer(with_precision(model, compute_dtype), mesh)`.
    """
    from afm_jax.distributed import data_size
    return _scorer(_at_precision(model, compute_dtype), data_size(mesh))


def model_batch(batch: Batch) -> dict:
    """The arrays of a batch a scorer reads: "cat", "num", and "bags" / "bag_len" when the
    data has multi-valued fields (labels and weights left out)."""
    return {k: batch[k] for k in ("cat", "num", "bags", "bag_len") if k in batch}


def predict(scorer: Scorer, params, split, batch_size: int = 8192, *, mesh=None,
            out: np.ndarray | None = None) -> np.ndarray:
    """Probabilities [N] for every row of an EncodedSplit, in order (one compile per shape).

    params go to the scorer as they are: pack per-field params first (`device_params`, or
    `packing.pack`) for the fast layout. mesh: batches sharded over its "data" axis (each process reads only its devices' rows; the
    scores are gathered to every process). out: write into this [N] array (e.g. a memory-mapped
    .npy) instead of collecting the scores in memory.
    """
    from afm_jax.data import iterate_batches
    from afm_jax.distributed import fetch

    parts, pos = [], 0
    for batch in iterate_batches(split, batch_size, pad_last=True, mesh=mesh):
        size = min(batch_size, len(split) - pos)  # the last batch is padded: drop its padding
        scores = fetch(scorer(params, model_batch(batch)))[:size]
        if out is None:
            parts.append(scores)
        else:
            out[pos:pos + size] = scores
        pos += size
    if out is not None:
        return out
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def evaluate(scorer: Scorer, params, split, batch_size: int = 8192, *, mesh=None) -> dict[str, float]:
    """AUC, logloss, rows and seconds of scoring a split (params as `predict` takes them)."""
    t0 = time.perf_counter()
    probs = predict(scorer, params, split, batch_size, mesh=mesh)
    seconds = time.perf_counter() - t0
    labels = np.asarray(split.label)
    return {"auc": metrics.auc(labels, probs), "logloss": metrics.logloss(labels, probs),
            "rows": int(len(split)), "seconds": seconds}


def throughput(scorer: Scorer, params, split, batch_size: int = 8192, repeats: int = 5) -> float:
    """Rows/s of the jitted scorer on one fixed batch of real rows (median of repeats, warm);
    params as `predict` takes them."""
    from afm_jax.data import iterate_batches
    from afm_jax.timing import median_seconds

    first = next(iterate_batches(split, batch_size, pad_last=True))
    batch = jax.device_put(model_batch(first))
    params = jax.device_put(params)
    return batch_size / median_seconds(scorer, params, batch, repeats=repeats)


def count_params(params) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def count_bytes(params) -> int:
    """Bytes of the params' arrays as stored (int8 1, float32 4 per value)."""
    return int(sum(np.size(x) * np.dtype(getattr(x, "dtype", np.float32)).itemsize
                   for x in jax.tree_util.tree_leaves(params)))


SIGNATURE_FILE = "signature.json"
EXPORT_FORMAT = "afm_jax.export/2"


def device_params(model, params, mesh=None, shard_embeddings: bool = False):
    """`params` packed (`packing.pack`) and placed once: on the default device, or on `mesh`
    (tables row-sharded with `shard_embeddings`). Host params, e.g. from
    `checkpoint.load_model_dir`, would otherwise be copied to the device on every call."""
    from afm_jax.distributed import shard_params
    from afm_jax.packing import pack

    packed = pack(model, params)
    if mesh is None:
        return jax.device_put(packed)
    return shard_params(packed, mesh, shard_embeddings)


def bind_scorer(model, params, mesh=None) -> Callable[[Batch], jax.Array]:
    """`score(batch) -> probabilities [B]` with `params` packed and placed on the device(s) once,
    so a serving loop pays no per-call copy of the params (host params, e.g. from
    `checkpoint.load_model_dir`, would otherwise be transferred on every call).

    The jitted scorer's own dispatch is kept: an ahead-of-time compiled call per batch shape
    with the params as a flat list of leaves was measured against it (experiments/results/
    bench_cpu.md, "Dispatch at small batches") and did not cut a batch-1 or batch-64 call
    beyond the noise; packing already cuts the leaves per call (e.g. 121 -> 20).
    """
    scorer = make_scorer(model, mesh)
    placed = device_params(model, params, mesh)

    def score(batch: Batch) -> jax.Array:
        return scorer(placed, batch)

    score.params = placed
    return score


def bag_inputs(info, batch: int | str = "batch") -> list[dict]:
    """The scorer's inputs for the multi-valued fields of `info` after "cat" and "num", in
    order: per bag field its padded ids "bag:<field>" int32 [batch, max_len] and its lengths
    "bag_len:<field>" int32 [batch] (`afm_jax.data.splits`); empty without bag fields."""
    out = []
    for b in getattr(info, "bags", ()):
        table = f"the table of field {b.shares!r}" if b.shares else "its own table"
        ids, lengths = bag_input_names(b.name)
        out += [{"name": ids, "dtype": "int32", "shape": [batch, b.max_len],
                 "field": b.name, "kind": "sequence" if b.shares else "multi_valued",
                 "max_len": b.max_len, "combiner": b.combiner, "shares": b.shares,
                 "vocab_size": b.vocab_size,
                 "ids": f"the row's item ids in {table} (encoder.json), left-aligned, then any "
                        "ids (0) up to max_len; items past bag_len are ignored; ids outside "
                        "[0, vocab_size) score as 0"},
                {"name": lengths, "dtype": "int32", "shape": [batch],
                 "field": b.name, "values": f"the row's item count, 0..{b.max_len} (0: an empty "
                                            "bag, which pools to zero)"}]
    return out


def signature(model, n_leaves: int, batch_size: int | None, platforms,
              precision: str = "float32", encoder=None, bucketize=(), source=None) -> dict:
    """What a client in any language needs to feed an exported scorer: inputs in order with
    dtypes, shapes, field names and vocabulary sizes, and the output."""
    from afm_jax.models import model_to_json

    info = model.info
    batch = "batch" if batch_size is None else int(batch_size)
    return {
        "format": EXPORT_FORMAT,
        "inputs": [
            {"name": "cat", "dtype": "int32", "shape": [batch, len(info.cat_names)],
             "fields": list(info.cat_names), "vocab_sizes": [int(v) for v in info.vocab_sizes],
             "ids": "the encoder's ids (encoder.json); 0 is missing or out of vocabulary, and "
                    "ids outside [0, vocab_size) score as 0"},
            {"name": "num", "dtype": "float32", "shape": [batch, len(info.num_names)],
             "fields": list(info.num_names), "values": "transformed as encoder.json says"},
            *bag_inputs(info, batch)],
        "output": {"name": "score", "dtype": "float32", "shape": [batch],
                   "meaning": "click probability"},
        "params": {"file": "params.npz", "leaves": n_leaves,
                   "order": "leaf_00000, leaf_00001, ... are the scorer's first inputs"},
        "platforms": list(platforms),
        "precision": {"compute": precision,
                      "meaning": "dtype of the Linear products' inputs (float32 accumulation); "
                                 "everything else float32"},
        "model": model_to_json(model),
        # with the encoder: every field's raw-value transform, and where fields come from
        **({} if encoder is None else {"fields": field_transforms(encoder, bucketize),
                                       "source": source or {}}),
    }


def export(model, params, path, *, encoder=None, batch_size: int | None = None,
           platforms: tuple[str, ...] | None = None, compute_dtype=None,
           overwrite: bool = False, bucketize: tuple[str, ...] = (),
           source: dict | None = None) -> Path:
    """Write the scorer as a serialized `jax.export` artifact that runs with jax alone.

    path/ gets `scorer.jaxexport` (StableHLO of the packed scorer; the batch dimension is
    symbolic unless `batch_size` is given), `params.npz` (its params leaves, loaded with
    allow_pickle=False), `signature.json` (inputs, dtypes, field names and order, vocabulary
    sizes, output) and, with `encoder`, `encoder.json`. platforms: lowering platforms ("cpu",
    "cuda", "tpu"); default the current backend. compute_dtype: as for `make_scorer`, baked
    into the artifact and recorded in signature.json ("precision"); None: the model's own.
    Load with `load_exported(path)`. The directory is written atomically
    (`outputs.atomic_dir`); an existing one is an OutputError unless `overwrite`. With
    `encoder`, signature.json states every field's raw-value transform (`transforms`):
    bucketize names the fields bucketized from numbers, source the raw files' layout.
    """
    from afm_jax.outputs import atomic_dir

    with atomic_dir(path, overwrite) as tmp:
        _write_export(model, params, tmp, encoder, batch_size, platforms, compute_dtype,
                      bucketize, source)
    return Path(path)


def _write_export(model, params, out: Path, encoder, batch_size, platforms, compute_dtype,
                  bucketize=(), source=None) -> None:
    from jax import export as jex

    from afm_jax.packing import pack

    n_cat, n_num = len(model.info.cat_names), len(model.info.num_names)
    b = jex.symbolic_shape("b")[0] if batch_size is None else batch_size
    leaves, treedef = jax.tree_util.tree_flatten(pack(model, params))
    model = _at_precision(model, compute_dtype)
    logits = logits_fn(model)

    bags = tuple(getattr(model.info, "bags", ()))

    def score(flat, cat, num, *bag_arrays):  # flat leaves: the layout stays in the code
        p = jax.tree_util.tree_unflatten(treedef, flat)
        return jax.nn.sigmoid(logits(p, {"cat": cat, "num": num,
                                         **bag_batch(bags, bag_arrays)}))

    spec = [jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype) for x in leaves]
    bag_specs = [jax.ShapeDtypeStruct(shape, jnp.int32) for bag in bags
                 for shape in ((b, bag.max_len), (b,))]
    exported = jex.export(jax.jit(score), platforms=platforms)(
        spec, jax.ShapeDtypeStruct((b, n_cat), jnp.int32),
        jax.ShapeDtypeStruct((b, n_num), jnp.float32), *bag_specs)
    (out / "scorer.jaxexport").write_bytes(exported.serialize())
    with open(out / "params.npz", "wb") as f:
        np.savez(f, **{f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)})
    if encoder is not None:
        encoder.save(out / "encoder.json")
    sig = signature(model, len(leaves), batch_size, exported.platforms,
                    precision_name(getattr(model, "compute_dtype", None)), encoder, bucketize,
                    source)
    (out / SIGNATURE_FILE).write_text(json.dumps(sig, indent=1) + "\n")


def bag_batch(bags, bag_arrays) -> dict:
    """{"bags": {field: ids}, "bag_len": {field: lengths}} from the exported scorer's bag
    inputs in signature order (`bag_inputs`: ids, lengths per field); {} without bags."""
    if not bags:
        return {}
    return {"bags": {bag.name: bag_arrays[2 * k] for k, bag in enumerate(bags)},
            "bag_len": {bag.name: bag_arrays[2 * k + 1] for k, bag in enumerate(bags)}}


def load_exported(path) -> Callable[..., jax.Array]:
    """`score(cat int32[B, Fc], num float32[B, Fn], bags=None, bag_len=None) -> probabilities
    [B]` from `export`; a model with multi-valued fields takes bags {field: int32 [B, max_len]}
    and bag_len {field: int32 [B]} too (`Encoder.encode_bags` gives both).

    The params go to the device once, here; each call runs one jitted function. The returned
    function carries `.signature` (the export's signature.json, {} for older exports).
    """
    from jax import export as jex

    from afm_jax.errors import AfmError, CheckpointError

    d = Path(path)
    try:
        exported = jex.deserialize(bytearray((d / "scorer.jaxexport").read_bytes()))
        with np.load(d / "params.npz", allow_pickle=False) as z:
            leaves = [z[k] for k in sorted(z.files)]
        sig_path = d / SIGNATURE_FILE
        sig = json.loads(sig_path.read_text()) if sig_path.is_file() else {}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d}: not a loadable exported scorer ({e})") from e
    bag_fields = [i["field"] for i in sig.get("inputs", ()) if i["name"].startswith("bag:")]
    n_inputs = 2 + 2 * len(bag_fields)
    if len(leaves) + n_inputs != len(exported.in_avals):
        raise CheckpointError(f"{d}: params.npz holds {len(leaves)} arrays and signature.json "
                              f"names {n_inputs} inputs, the scorer takes "
                              f"{len(exported.in_avals)} in all; the export is damaged")
    placed = jax.device_put(leaves)
    chunk_rows = default_chunk_rows()
    symbolic = not isinstance(exported.in_avals[-1].shape[0], int)

    def run(flat, inputs):
        args, kwargs = jax.tree_util.tree_unflatten(exported.in_tree, [*flat, *inputs])
        return exported.call(*args, **kwargs)

    @jax.jit
    def call(flat, inputs):
        n = inputs[0].shape[0]
        if not (symbolic and chunked(n, 1, chunk_rows)):
            return run(flat, inputs)
        # on a CPU, cache-sized chunks as the live scorer runs them (the artifact's batch
        # dimension is symbolic, so the chunking happens here, around it)
        out = jax.lax.map(lambda xs: run(flat, xs),
                          [to_chunks(x, 1, chunk_rows) for x in inputs])
        return from_chunks(out, n, 1)

    def as_array(x, dtype):
        return x if getattr(x, "dtype", None) == dtype else np.asarray(x, dtype)

    def score(cat, num, bags=None, bag_len=None):
        missing = [f for f in bag_fields if f not in (bags or {}) or f not in (bag_len or {})]
        if missing:
            raise AfmError(f"{d}: the scorer reads the multi-valued fields {bag_fields}; give "
                           f"bags= and bag_len= for {missing} (Encoder.encode_bags)")
        inputs = [as_array(cat, np.int32), as_array(num, np.float32)]
        for f in bag_fields:
            inputs += [as_array(bags[f], np.int32), as_array(bag_len[f], np.int32)]
        rows = {np.shape(x)[0] for x in inputs}
        if len(rows) > 1:
            raise AfmError(f"{d}: the inputs cat, num and the bags must have one row count, "
                           f"got {[np.shape(x)[0] for x in inputs]}")
        return call(placed, inputs)

    score.signature = sig
    return score
