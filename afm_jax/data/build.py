"""The streaming builder: reader chunks -> provisional ids -> an Encoder fitted on train -> splits.

`build_from_chunks` reads every chunk once into provisional arrays (ids in first-seen order; hashed
fields get their final ids at once), fits the Encoder on the training rows, and remaps each split.
Multi-valued fields are cut to their max_len as they stream (the cut is counted in the report).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from afm_jax.data.bags import list_lengths, pad_ids
from afm_jax.data.encoder import Encoder, NumericMoments, numeric_transform
from afm_jax.data.hashing import hash_ids
from afm_jax.data.readers import BadLine, RawChunk
from afm_jax.data.schema import BagSpec, Schema
from afm_jax.data.splits import SPLITS, Dataset, EncodedSplit, count_rows, split_rows
from afm_jax.errors import DataError

MAX_REPORTED_BAD_LINES = 10
_ROW_BLOCK = 1 << 20  # rows per block in the count/remap passes


def bag_file_keys(k: int) -> tuple[str, str]:
    """The array names (in the cache: `{split}_{name}.npy`) of bag field k's ids and lengths."""
    return f"bag{k}", f"bag{k}_len"


class _Sink:
    """Append-only row storage for provisional arrays: in memory, or raw files in `directory`.
    layout: name -> (trailing shape, dtype)."""

    def __init__(self, directory: Path | None, layout: dict[str, tuple[tuple[int, ...], type]]):
        self.directory, self.layout, self.n = directory, layout, 0
        self._mem: dict[str, list[np.ndarray]] = {k: [] for k in layout}
        self._files = {}
        if directory is not None:
            self._files = {k: open(directory / f"_prov_{k}.bin", "wb") for k in layout}

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        for key, arr in arrays.items():
            if self._files:
                self._files[key].write(np.ascontiguousarray(arr).tobytes())
            else:
                self._mem[key].append(arr)
        self.n += len(arrays["label"])

    def finish(self) -> dict[str, np.ndarray]:
        out = {}
        for key, (tail, dtype) in self.layout.items():
            shape = (self.n,) + tail
            if self._files:
                self._files[key].close()
                if int(np.prod(shape)) == 0:
                    out[key] = np.zeros(shape, dtype)
                else:
                    out[key] = np.memmap(self.directory / f"_prov_{key}.bin", dtype=dtype, mode="r", shape=shape)
            else:
                parts = self._mem[key]
                out[key] = np.concatenate(parts).reshape(shape) if parts else np.zeros(shape, dtype)
        return out


class _BadTracker:
    def __init__(self, on_bad_lines: str):
        if on_bad_lines not in ("error", "skip"):
            raise DataError(f"on_bad_lines must be 'error' or 'skip', got {on_bad_lines!r}", field="on_bad_lines")
        self.mode, self.count, self.examples = on_bad_lines, 0, []

    def add(self, bad: list[BadLine]) -> None:
        if not bad:
            return
        if self.mode == "error":
            raise bad[0].error()
        self.count += len(bad)
        room = MAX_REPORTED_BAD_LINES - len(self.examples)
        self.examples += [{"path": b.path, "line": b.line, "field": b.field, "reason": b.reason} for b in bad[:room]]


def _row_blocks(rows: slice | np.ndarray) -> Iterable[tuple[int, slice | np.ndarray]]:
    """(offset within the split, rows) blocks of at most _ROW_BLOCK rows."""
    n = count_rows(rows)
    for s in range(0, n, _ROW_BLOCK):
        e = min(s + _ROW_BLOCK, n)
        yield s, (slice(rows.start + s, rows.start + e) if isinstance(rows, slice) else rows[s:e])


def _alloc(directory: Path | None, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    if directory is None or int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.lib.format.open_memmap(directory / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)


def _check_build_options(min_count: int, max_rows: int | None, split: str) -> None:
    """DataError for an option out of range, before any row is read."""
    if min_count < 1:
        raise DataError(f"min_count must be >= 1, got {min_count}", field="min_count")
    if max_rows is not None and max_rows < 1:
        raise DataError(f"max_rows must be >= 1, got {max_rows}", field="max_rows")
    if split not in ("sequential", "random"):
        raise DataError(f"split must be 'sequential' or 'random', got {split!r}", field="split")


@dataclass
class _Provisional:
    """Every streamed row, with provisional ids: arrays["cat"] int32 [N, Fc] (0 = missing),
    ["num"] transformed float32 [N, Fn] (numeric_transform, NaN = missing), ["label"] float32 [N],
    and per bag k ["bag{k}"] int32 [N, L_k] and ["bag{k}_len"] int32 [N]. ids[table] maps a
    table's values to their provisional ids 1, 2, ... in first-seen order (no entry for a hashed
    table: its ids are final). cut[name]: [rows, items] the max_len cut dropped. Arrays may be
    memmaps in out_dir."""

    cat_names: tuple[str, ...]
    num_names: tuple[str, ...]
    bags: tuple[BagSpec, ...]
    hashed: dict[str, int]
    ids: dict[str, dict[str, int]]
    arrays: dict[str, np.ndarray]
    cut: dict[str, list[int]]
    truncated: bool
    files: list[str]

    def __len__(self) -> int:
        return len(self.arrays["label"])


def _first_rows(chunk: RawChunk, bad: list[BadLine], k: int) -> tuple[RawChunk, list[BadLine]]:
    """The first k rows of chunk, and the bad lines that come before the last of them."""
    cutoff = int(chunk.lines[k - 1])
    return chunk.head(k), [b for b in bad if b.path != chunk.path or b.line < cutoff]


def _table_ids(table: str, values, prov_ids: dict[str, dict[str, int]], hashed: dict[str, int]) -> np.ndarray:
    """Provisional ids int32 [N] of values (strings, null = missing -> 0) in a table: its final
    hashed ids, or first-seen ids (new values join prov_ids[table])."""
    if table in hashed:
        return hash_ids(table, values, hashed[table])
    enc = pc.dictionary_encode(values)
    distinct = enc.dictionary.to_pylist()
    m = prov_ids[table]
    value_ids = np.fromiter((m.setdefault(v, len(m) + 1) for v in distinct), dtype=np.int32, count=len(distinct))
    idx = pc.fill_null(enc.indices, len(distinct)).to_numpy(zero_copy_only=False)
    return np.append(value_ids, np.int32(0))[idx]


def _chunk_arrays(chunk: RawChunk, bags: tuple[BagSpec, ...], prov_ids: dict[str, dict[str, int]],
                  hashed: dict[str, int], cut: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """A chunk's provisional arrays (see _Provisional); adds the chunk's max_len cuts to `cut`."""
    cat = np.empty((len(chunk), len(chunk.cat_names)), dtype=np.int32)
    for j, fname in enumerate(chunk.cat_names):
        cat[:, j] = _table_ids(fname, chunk.columns[fname], prov_ids, hashed)
    num = np.empty((len(chunk), len(chunk.num_names)), dtype=np.float32)
    for j, fname in enumerate(chunk.num_names):
        num[:, j] = numeric_transform(chunk.columns[fname])
    out = {"cat": cat, "num": num, "label": chunk.label.astype(np.float32)}
    for k, spec in enumerate(bags):
        lists = chunk.columns[spec.name]
        lengths = list_lengths(lists)
        padded = pad_ids(_table_ids(spec.shares or spec.name, lists.flatten(), prov_ids, hashed), lengths, spec)
        before = chunk.cut.get(spec.name, np.zeros(len(chunk), np.int64))
        cut[spec.name][0] += int(((lengths > spec.max_len) | (before > 0)).sum())
        cut[spec.name][1] += padded.dropped_items + int(before.sum())
        ids_key, len_key = bag_file_keys(k)
        out[ids_key], out[len_key] = padded.ids, padded.lengths
    return out


def _bag_specs(chunk: RawChunk, schema: Schema | None) -> tuple[BagSpec, ...]:
    """The specs of a chunk's multi-valued fields, in the chunk's order."""
    specs = {b.name: b for b in schema.bags} if schema is not None else {}
    missing = [n for n in chunk.bag_names if n not in specs]
    if missing:
        raise DataError("a multi-valued field needs its BagSpec: pass the schema", path=chunk.path,
                        field=missing[0])
    return tuple(specs[n] for n in chunk.bag_names)


def _stream(chunks: Iterable[tuple[RawChunk | None, list[BadLine]]], tracker: _BadTracker, max_rows: int | None,
            out_dir: Path | None, schema: Schema | None) -> _Provisional | None:
    """Read chunks (up to max_rows rows) once into provisional arrays; None when no row is valid."""
    names: tuple[tuple[str, ...], ...] | None = None
    bags: tuple[BagSpec, ...] = ()
    hashed = schema.hashed if schema is not None else {}
    ids: dict[str, dict[str, int]] = {}
    cut: dict[str, list[int]] = {}
    sink: _Sink | None = None
    rows_read, truncated, files = 0, False, []
    for chunk, bad in chunks:
        if chunk is not None and max_rows is not None and rows_read + len(chunk) >= max_rows:
            chunk, bad = _first_rows(chunk, bad, max_rows - rows_read)
            truncated = True
        tracker.add(bad)
        if chunk is None:
            continue
        if chunk.path not in files:
            files.append(chunk.path)
        if names is None:
            names = (chunk.cat_names, chunk.num_names, chunk.bag_names)
            bags = _bag_specs(chunk, schema)
            ids = {t: {} for t in chunk.cat_names + tuple(b.name for b in bags if b.shares is None)
                   if t not in hashed}
            cut = {b.name: [0, 0] for b in bags}
            layout = {"cat": ((len(chunk.cat_names),), np.int32), "num": ((len(chunk.num_names),), np.float32),
                      "label": ((), np.float32)}
            for k, b in enumerate(bags):
                ids_key, len_key = bag_file_keys(k)
                layout[ids_key], layout[len_key] = ((b.max_len,), np.int32), ((), np.int32)
            sink = _Sink(out_dir, layout)
        elif (chunk.cat_names, chunk.num_names, chunk.bag_names) != names:
            raise DataError("fields differ between chunks", path=chunk.path, line=int(chunk.lines[0]))
        sink.append(_chunk_arrays(chunk, bags, ids, hashed, cut))
        rows_read += len(chunk)
        if truncated:
            break
    if sink is None or rows_read == 0:
        return None
    return _Provisional(names[0], names[1], bags, {t: n for t, n in hashed.items()}, ids, sink.finish(), cut,
                        truncated, files)


def _train_statistics(prov: _Provisional, train_rows: slice | np.ndarray) -> tuple[dict[str, np.ndarray],
                                                                                   NumericMoments]:
    """What Encoder.fit needs of the training rows: per fitted table, the count int64 [V] of each
    provisional value (ids 1..V; a bag counts every item), and the numeric fields' moments."""
    counts = {t: np.zeros(len(m) + 1, dtype=np.int64) for t, m in prov.ids.items()}
    moments = NumericMoments.zeros(len(prov.num_names))
    for _, r in _row_blocks(train_rows):
        block = np.asarray(prov.arrays["cat"][r])
        for j, name in enumerate(prov.cat_names):
            if name in counts:
                counts[name] += np.bincount(block[:, j], minlength=len(counts[name]))
        for k, spec in enumerate(prov.bags):
            if spec.shares is None and spec.name in counts:
                ids_key, len_key = bag_file_keys(k)
                ids, lens = np.asarray(prov.arrays[ids_key][r]), np.asarray(prov.arrays[len_key][r])
                real = np.arange(spec.max_len)[None, :] < lens[:, None]
                counts[spec.name] += np.bincount(ids[real], minlength=len(counts[spec.name]))
        moments = moments.merge(NumericMoments.of(np.asarray(prov.arrays["num"][r], dtype=np.float64)))
    return {t: c[1:] for t, c in counts.items()}, moments


def _check_fields(encoder: Encoder, prov: _Provisional) -> None:
    """DataError unless the data has the given encoder's fields, in its order, with its bag specs
    and hash rules."""
    ours = (prov.cat_names, prov.num_names, prov.bags, prov.hashed)
    theirs = (encoder.cat_names, encoder.num_names, encoder.bags, encoder.hash_buckets)
    if ours != theirs:
        raise DataError(f"the data's fields {list(prov.cat_names) + list(prov.num_names)}, bags "
                        f"{[b.to_json() for b in prov.bags]} and hashed fields {prov.hashed} differ from the "
                        f"encoder's {list(encoder.cat_names) + list(encoder.num_names)}, "
                        f"{[b.to_json() for b in encoder.bags]} and {encoder.hash_buckets}",
                        path=prov.files[0] if prov.files else None)


def _remaps(prov: _Provisional, encoder: Encoder) -> dict[str, np.ndarray | None]:
    """Per table, the encoder's id int32 [V + 1] of each provisional id (missing, 0, stays 0);
    None for a hashed table (its provisional ids are final)."""
    out: dict[str, np.ndarray | None] = {t: None for t in prov.hashed}
    out.update((t, np.append(np.int32(0), encoder.table_ids(t, list(m)))) for t, m in prov.ids.items())
    return out


def _encode_split(prov: _Provisional, rows: slice | np.ndarray, remaps: dict[str, np.ndarray | None],
                  encoder: Encoder, out_dir: Path | None, split_name: str) -> EncodedSplit:
    """One split's final arrays (.npy files in out_dir, if given): ids remapped, numerics standardized."""
    n, n_num = count_rows(rows), len(prov.num_names)
    cat = _alloc(out_dir, f"{split_name}_cat", (n, len(prov.cat_names)), np.int32)
    num = _alloc(out_dir, f"{split_name}_num", (n, n_num), np.float32)
    label = _alloc(out_dir, f"{split_name}_label", (n,), np.float32)
    bags, bag_len = {}, {}
    for k, spec in enumerate(prov.bags):
        ids_key, len_key = bag_file_keys(k)
        bags[spec.name] = _alloc(out_dir, f"{split_name}_{ids_key}", (n, spec.max_len), np.int32)
        bag_len[spec.name] = _alloc(out_dir, f"{split_name}_{len_key}", (n,), np.int32)
    for off, r in _row_blocks(rows):
        block = np.asarray(prov.arrays["cat"][r])
        k = len(block)
        for j, name in enumerate(prov.cat_names):
            remap = remaps[name]
            cat[off:off + k, j] = block[:, j] if remap is None else remap[block[:, j]]
        x = np.asarray(prov.arrays["num"][r])
        for j in range(n_num):
            num[off:off + k, j] = encoder.standardize(x[:, j], j)
        label[off:off + k] = prov.arrays["label"][r]
        for b, spec in enumerate(prov.bags):
            ids_key, len_key = bag_file_keys(b)
            remap = remaps[spec.shares or spec.name]
            ids = np.asarray(prov.arrays[ids_key][r])
            bags[spec.name][off:off + k] = ids if remap is None else remap[ids]
            bag_len[spec.name][off:off + k] = prov.arrays[len_key][r]
    for arr in (cat, num, label, *bags.values(), *bag_len.values()):
        if isinstance(arr, np.memmap):
            arr.flush()
    return EncodedSplit(cat, num, label, bags, bag_len)


def _bag_report(prov: _Provisional, splits: dict[str, EncodedSplit], encoder: Encoder) -> dict:
    """Per bag field: its spec, table rows, the max_len cut (rows and items) and mean kept length."""
    info = {b.name: b for b in encoder.info.bags}
    out = {}
    for spec in prov.bags:
        lens = [np.asarray(splits[s].bag_len[spec.name], dtype=np.float64) for s in SPLITS]
        total = sum(len(x) for x in lens)
        out[spec.name] = {**spec.to_json(), "vocab_size": info[spec.name].vocab_size,
                          "truncated_rows": prov.cut[spec.name][0], "dropped_items": prov.cut[spec.name][1],
                          "mean_len": float(sum(x.sum() for x in lens) / total) if total else 0.0}
    return out


def _build_report(name: str, prov: _Provisional, tracker: _BadTracker, splits: dict[str, EncodedSplit],
                  encoder: Encoder, options: dict, t0: float, t_parse: float) -> dict:
    """What was read, skipped and built, for Dataset.report (and the cache's report.json)."""
    report = {
        "name": name,
        "rows_read": len(prov),
        "rows_skipped": tracker.count,
        "first_skipped_lines": [e["line"] for e in tracker.examples],
        "skipped_examples": tracker.examples,
        "truncated": prov.truncated,
        "splits": {s: len(splits[s]) for s in SPLITS},
        **options,
        "vocab_sizes": list(encoder.info.vocab_sizes),
        "positive_rate": float(np.mean(splits["train"].label)) if len(splits["train"]) else float("nan"),
        "files": prov.files,
        "parse_seconds": round(t_parse, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "cache_hit": False,
    }
    if prov.bags:
        report["bags"] = _bag_report(prov, splits, encoder)
    if encoder.hash_buckets:
        report["hash_buckets"] = dict(encoder.hash_buckets)
    return report


def _fit(prov: _Provisional, train_rows: slice | np.ndarray, min_count: int) -> Encoder:
    """The Encoder of the training rows' statistics (a sharing bag and a hashed table fit nothing)."""
    counts, moments = _train_statistics(prov, train_rows)

    def stats(table: str | None) -> tuple[list[str], np.ndarray]:
        return (list(prov.ids[table]), counts[table]) if table in prov.ids else ([], np.zeros(0, np.int64))

    cat_stats = [stats(t) for t in prov.cat_names]
    bag_stats = [stats(b.name if b.shares is None else None) for b in prov.bags]
    return Encoder.fit(prov.cat_names, [v for v, _ in cat_stats], [c for _, c in cat_stats], prov.num_names,
                       moments, min_count, bags=prov.bags, bag_values=[v for v, _ in bag_stats],
                       bag_counts=[c for _, c in bag_stats], hash_buckets=prov.hashed)


def build_from_chunks(name: str, chunks: Iterable[tuple[RawChunk | None, list[BadLine]]], *, min_count: int,
                      split: str = "sequential", seed: int = 0, on_bad_lines: str = "error",
                      max_rows: int | None = None, out_dir: Path | None = None,
                      encoder: Encoder | None = None, paths: tuple[str, ...] = (),
                      schema: Schema | None = None) -> Dataset:
    """Stream chunks once into provisional ids, fit the Encoder on the training rows (or take the
    given `encoder`, e.g. a model directory's) and remap every split with it.

    Memory stays bounded by the vocabularies when out_dir is given (arrays are written there as
    .npy); with out_dir=None everything stays in memory. paths: the source files, named by the
    error raised when no valid row is found. schema: the source's schema, needed for its
    multi-valued fields (BagSpecs) and hashed fields; None: single-valued, fitted fields only."""
    t0 = time.perf_counter()
    _check_build_options(min_count, max_rows, split)
    tracker = _BadTracker(on_bad_lines)
    prov = _stream(chunks, tracker, max_rows, out_dir, schema)
    if prov is None:
        raise DataError(f"no valid rows in {name} ({tracker.count} bad lines skipped)",
                        path=", ".join(paths) if paths else None)
    t_parse = time.perf_counter() - t0
    rows = split_rows(len(prov), split, seed)
    if encoder is None:
        encoder = _fit(prov, rows["train"], min_count)
    else:
        _check_fields(encoder, prov)
    remaps = _remaps(prov, encoder)
    splits = {s: _encode_split(prov, rows[s], remaps, encoder, out_dir, s) for s in SPLITS}
    options = {"split": split, "seed": seed, "min_count": min_count}
    report = _build_report(name, prov, tracker, splits, encoder, options, t0, t_parse)
    del prov  # closes the provisional memmaps before their files go
    if out_dir is not None:
        for p in out_dir.glob("_prov_*.bin"):
            p.unlink()
    return Dataset(name, encoder.info, splits["train"], splits["valid"], splits["test"], encoder, report)
