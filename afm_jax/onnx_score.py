"""`afm-jax score` on an ONNX export: raw rows of a file scored by ONNX Runtime (`onnx_scorer`).

An export directory (`afm-jax export --format onnx`: model.onnx + signature.json) is read with
the same readers as a model directory (`dataset.make_source`), and each chunk's columns become
the graph's feeds per signature.json's inputs:
  - categorical: the strings, missing as "";
  - bucketized and numeric: the raw numbers as float64, NaN for missing (the file is read with
    the bucketized fields as numbers, so that the graph bucketizes them; a value below -2**63 is
    still a bad line, as when a model directory scores the file);
  - multi-valued / sequence: the row's items joined by the field's separator ("" = empty bag);
  - hashed (`hashed:<field>`): the ids of `hashing.hash_ids`, and for a hashed bag its padded
    ids and lengths (`bags.pad_ids`).
The schema is --schema's, else for csv:/parquet: data the one signature.json's inputs spell
(label column "label", absent is fine), else the reader's default (Criteo: I1..I13 bucketized).
An export made with --no-raw-inputs takes the encoder's ids and holds no encoder: scoring it
is refused with a message saying so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from afm_jax.onnx_export import ONNX_FILE, ONNX_FORMAT, ONNX_SIGNATURE, ExportError, load_onnx

BAG_KINDS = ("multi_valued", "sequence")


def onnx_export_dir(path) -> Path | None:
    """The export directory `path` names (the directory, or its model.onnx), else None: a
    directory holding model.onnx is an ONNX export."""
    p = Path(path)
    if p.is_file() and p.suffix == ".onnx":
        return p.parent
    return p if (p / ONNX_FILE).is_file() else None


def read_signature(export_dir: Path) -> dict:
    """signature.json of an ONNX export; ExportError naming the file when absent or not one."""
    file = export_dir / ONNX_SIGNATURE
    try:
        sig = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{file}: cannot read the ONNX export's signature ({type(e).__name__}: "
                          f"{e}); export it again with afm-jax export --format onnx") from e
    if not isinstance(sig, dict) or sig.get("format") != ONNX_FORMAT \
            or not isinstance(sig.get("inputs"), list):
        raise ExportError(f"{file}: not the signature of an afm_jax ONNX export (format "
                          f"{ONNX_FORMAT!r}); export it again with afm-jax export --format onnx")
    if "fields" not in sig:
        raise ExportError(f"{export_dir} was exported with --no-raw-inputs: its graph takes the "
                          "encoder's ids and transformed numbers (cat, num), and the export holds "
                          "no encoder to make them from raw rows; score the model directory, or "
                          "export it again without --no-raw-inputs")
    return sig


def _bag_spec(entry: dict):
    from afm_jax.data.schema import BagSpec
    return BagSpec(entry["field"], int(entry["max_len"]), entry["combiner"], entry["separator"],
                   entry["truncation"], entry.get("shares"))


def signature_schema(sig: dict):
    """The Schema that signature.json's inputs spell (bucketized fields as numbers)."""
    from afm_jax.data.schema import Schema

    cat, num, bags = [], [], []
    for entry in sig["inputs"]:
        kind = entry.get("kind")
        if kind in BAG_KINDS:
            bags.append(_bag_spec(entry))
        elif kind in ("categorical", "hashed"):
            cat.append(entry["field"] if kind == "hashed" else entry["name"])
        elif kind in ("numeric", "bucketized"):
            num.append(entry["name"])
    return Schema(label="label", categorical=tuple(cat), numeric=tuple(num), bags=tuple(bags))


def _raw_numbers_source(source, bucketized: tuple[str, ...], spec, require_label: bool = False):
    """`source` reading the bucketized fields as numbers (float64, NaN = missing), with the
    bad-line rule of a bucketized value (below -2**63) kept."""
    from afm_jax.data.dataset import make_source
    from afm_jax.data.readers import BadLine

    sch = source.schema
    if not sch.bucketize:
        return source
    raw = make_source(spec, dataclasses.replace(sch, numeric=sch.numeric + sch.bucketize,
                                                bucketize=()), require_label=require_label)
    checked = [f for f in sch.bucketize if f in bucketized]

    def chunks(progress: bool):
        for chunk, bad in raw.chunks(progress):
            if chunk is None or not checked:
                yield chunk, bad
                continue
            low = {f: chunk.columns[f] < -2.0 ** 63 for f in checked}
            out = np.logical_or.reduce(list(low.values()))
            if out.any():
                for i in np.flatnonzero(out):
                    f = next(f for f in chunk.num_names if f in low and low[f][i])
                    bad.append(BadLine(chunk.path, int(chunk.lines[i]), f, "value out of range "
                                       "(bucketized values must be >= -2**63), got "
                                       f"{float(chunk.columns[f][i])!r}"))
                bad.sort(key=lambda b: b.line)
                chunk = _keep_rows(chunk, ~out)
            yield chunk, bad
    return dataclasses.replace(raw, chunks=chunks, schema=sch)


def _keep_rows(chunk, keep: np.ndarray):
    """The rows of `chunk` where keep; None when none is left."""
    from afm_jax.data.readers import RawChunk

    if not keep.any():
        return None
    mask = pa.array(keep)
    take = lambda c: c.filter(mask) if isinstance(c, (pa.Array, pa.ChunkedArray)) else c[keep]  # noqa: E731
    return RawChunk({n: take(c) for n, c in chunk.columns.items()}, chunk.cat_names,
                    chunk.num_names, chunk.label[keep], chunk.lines[keep], chunk.path,
                    chunk.bag_names, {n: c[keep] for n, c in chunk.cut.items()})


def _check_fields(sig: dict, schema, export_dir: Path) -> None:
    """Every graph input's field is read by `schema` in the role the graph takes it in."""
    roles = {**{c: "categorical" for c in schema.categorical},
             **{c: "numeric" for c in schema.numeric}, **{c: "bucketized" for c in schema.bucketize},
             **{b.name: "multi-valued" for b in schema.bags}}
    want = {"categorical": "categorical", "hashed": "categorical", "numeric": "numeric",
            "bucketized": "bucketized", "multi_valued": "multi-valued", "sequence": "multi-valued"}
    for entry in sig["inputs"]:
        kind = entry.get("kind")
        if kind not in want:
            continue
        field = entry.get("field", entry["name"])
        if roles.get(field) != want[kind]:
            got = f"as {roles[field]}" if field in roles else "not at all"
            raise ExportError(f"{export_dir / ONNX_FILE} takes field {field!r} as {kind}, but "
                              f"the data's schema reads it {got}; pass --schema with the "
                              "schema the model was trained with")


def feeds(sig: dict, chunk) -> dict[str, np.ndarray]:
    """The graph's inputs for the rows of `chunk` (a RawChunk read with the bucketized fields
    as numbers), per signature.json's inputs."""
    from afm_jax.data.bags import list_lengths, pad_ids
    from afm_jax.data.hashing import hash_ids

    out: dict[str, np.ndarray] = {}
    for entry in sig["inputs"]:
        name, kind = entry["name"], entry.get("kind")
        col = chunk.columns.get(entry.get("field", name))
        if kind in BAG_KINDS and "hash_buckets" in entry:       # hashed bag: ids + lengths
            flat = hash_ids(entry["hash_field"], col.flatten(), entry["hash_buckets"])
            padded = pad_ids(flat, list_lengths(col), _bag_spec(entry))
            out[name] = padded.ids.astype(np.int64)
            out[entry["lengths"]] = padded.lengths.astype(np.int64)
        elif kind in BAG_KINDS:
            sep = entry["separator"]
            if len(col) and pc.any(pc.match_substring(col.flatten(), sep)).as_py():
                raise ExportError(f"{chunk.path}: an item of field {entry['field']!r} holds its "
                                  f"separator {sep!r}, which the ONNX graph splits on; score "
                                  "the model directory instead")
            out[name] = _strings(pc.binary_join(col, sep))
        elif kind == "hashed":
            out[name] = hash_ids(entry["hash_field"], col, entry["hash_buckets"]).astype(np.int64)
        elif kind in ("numeric", "bucketized"):
            out[name] = np.asarray(col, dtype=np.float64)
        elif kind == "categorical":
            out[name] = _strings(col)
    return out


def _strings(col) -> np.ndarray:
    return pc.fill_null(col, "").to_numpy(zero_copy_only=False).astype(object)


def onnx_scorer(model_dir, spec, schema=None, precision: str = "float32", batch_size: int = 8192
                ) -> tuple[object, Callable, str]:
    """(source, score_chunk, precision) for scoring `spec`'s file with the ONNX export in
    `model_dir`: the reader of the file, `score_chunk(RawChunk) -> float32 [N]` and the
    products' precision baked into the export. schema: --schema's (None: see the module
    docstring). ExportError for a corrupt export, a --no-raw-inputs one, or a --precision other
    than the export's."""
    from afm_jax.data.dataset import make_source

    export_dir = onnx_export_dir(model_dir)
    if export_dir is None:
        raise ExportError(f"{model_dir}: no {ONNX_FILE} here")
    sig = read_signature(export_dir)
    baked = sig.get("precision", "float32")
    if precision not in ("float32", baked):
        raise ExportError(f"--precision {precision}: the ONNX export in {export_dir} has its "
                          f"products baked in as {baked} (signature.json); drop --precision, or "
                          "export again with it")
    score = load_onnx(export_dir)
    if schema is None and spec.kind in ("csv", "parquet"):
        schema = signature_schema(sig)
    source = make_source(spec, schema, require_label=False)
    _check_fields(sig, source.schema, export_dir)
    bucketized = tuple(e["name"] for e in sig["inputs"] if e.get("kind") == "bucketized")
    source = _raw_numbers_source(source, bucketized, spec)

    def score_chunk(chunk) -> np.ndarray:
        inputs = feeds(sig, chunk)
        parts = []
        for a in range(0, len(chunk), batch_size):
            batch = {k: v[a:a + batch_size] for k, v in inputs.items()}
            try:
                parts.append(np.asarray(score(batch), dtype=np.float32))
            except Exception as e:   # onnxruntime's own error types
                raise ExportError(f"{export_dir / ONNX_FILE}: ONNX Runtime failed on rows of "
                                  f"{chunk.path} ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:300] if str(e) else ''})") from e
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    return source, score_chunk, baked
