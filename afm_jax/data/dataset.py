"""Datasets: spec parsing, the streaming encode/split builder, the on-disk cache, load_dataset."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from afm_jax.data.encoder import Encoder, NumericMoments, numeric_transform
from afm_jax.data.readers import (
    BadLine,
    RawChunk,
    Source,
    avazu_source,
    criteo_source,
    csv_source,
    libfm_source,
    movielens_source,
    parquet_source,
)
from afm_jax.data.schema import FeatureInfo, Schema
from afm_jax.errors import DataError

CACHE_FORMAT_VERSION = 1
DEFAULT_MAX_BAD_FRACTION = 0.5  # on_bad_lines="skip": more than this share bad is an error
SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
MAX_REPORTED_BAD_LINES = 10
_ROW_BLOCK = 1 << 20  # rows per block in the count/remap passes

# Default options per dataset kind. min_count: values seen fewer times in train map to id 0.
# criteo/avazu 10 (the usual choice on the full sets; lower it on the small samples);
# libfm/movielens 1 (small, curated vocabularies where every value matters); generic csv/parquet 2
# (drops singletons, which carry no generalizable signal); synthetic 1.
DATASET_DEFAULTS: dict[str, dict] = {
    "criteo": {"min_count": 10},
    "avazu": {"min_count": 10},
    "libfm": {"min_count": 1},
    "movielens": {"min_count": 1},
    "csv": {"min_count": 2},
    "parquet": {"min_count": 2},
    "synthetic": {"min_count": 1, "rows": 200_000},
}


@dataclass
class EncodedSplit:
    """Encoded rows: cat int32 [N, Fc] in [0, vocab_f), num float32 [N, Fn], label float32 [N] (0/1).
    Arrays may be read-only np.memmap views of the cache."""

    cat: np.ndarray
    num: np.ndarray
    label: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.label)
        if self.cat.ndim != 2 or self.num.ndim != 2 or self.cat.shape[0] != n or self.num.shape[0] != n:
            raise DataError(f"inconsistent split shapes cat {self.cat.shape}, num {self.num.shape}, "
                            f"label {self.label.shape}")

    def __len__(self) -> int:
        return len(self.label)


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


@dataclass(frozen=True)
class DataSpec:
    kind: str
    paths: tuple[str, ...] = ()
    rows: int | None = None


def parse_data_spec(spec: str) -> DataSpec:
    """'criteo:PATH' | 'avazu:PATH' | 'libfm:PATH[,PATH...]' | 'movielens:DIR' | 'csv:PATH' |
    'parquet:PATH' | 'synthetic' | 'synthetic:ROWS' -> DataSpec."""
    if not isinstance(spec, str) or not spec:
        raise DataError(f"data spec must be a non-empty string, got {spec!r}")
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "synthetic":
        if not rest:
            return DataSpec("synthetic")
        try:
            rows = int(rest.replace("_", ""))
        except ValueError:
            raise DataError(f"synthetic row count must be an integer, got {rest!r}", field="spec") from None
        if rows < 10:
            raise DataError(f"synthetic needs at least 10 rows, got {rows}", field="spec")
        return DataSpec("synthetic", rows=rows)
    if kind not in DATASET_DEFAULTS:
        kinds = ", ".join(f"{k}:" for k in DATASET_DEFAULTS)
        guess = kind_for_path(spec)
        if guess is not None or not rest:  # a bare path: the "kind:" prefix is what is missing
            hint = f"; did you mean {guess}:{spec}?" if guess else ""
            raise DataError(f"data spec {spec!r} has no kind: prefix{hint} (kinds: {kinds})",
                            field="spec",
                            cli=f"--data {spec} has no kind: prefix"
                                + (f"; did you mean --data {guess}:{spec}?" if guess else "")
                                + f" (kinds: {kinds})")
        raise DataError(f"unknown data kind {kind!r} in spec {spec!r}; one of {sorted(DATASET_DEFAULTS)}",
                        field="spec")
    if not rest:
        raise DataError(f"spec {spec!r} needs a path: '{kind}:PATH'", field="spec")
    paths = tuple(p.strip() for p in rest.split(",")) if kind == "libfm" else (rest.strip(),)
    if any(not p for p in paths):
        raise DataError(f"empty path in spec {spec!r}", field="spec")
    return DataSpec(kind, tuple(str(Path(p).expanduser()) for p in paths))


# the kind a bare path's extension implies (a compression suffix is looked through)
_KIND_BY_EXTENSION = {".tsv": "criteo", ".txt": "criteo", ".csv": "csv", ".parquet": "parquet",
                      ".pq": "parquet", ".libfm": "libfm", ".svm": "libfm"}


def kind_for_path(path: str) -> str | None:
    """The data kind a bare path suggests by its extension (criteo for .tsv, parquet for
    .parquet, ...; movielens for a folder), or None."""
    p = Path(path.strip()).expanduser()
    suffixes = [s.lower() for s in p.suffixes if s.lower() not in (".gz", ".bz2", ".xz", ".zst")]
    if suffixes and suffixes[-1] in _KIND_BY_EXTENSION:
        return _KIND_BY_EXTENSION[suffixes[-1]]
    if p.is_dir():
        return "movielens"
    return None


def make_source(ds: DataSpec, schema: Schema | str | None = None) -> Source:
    """The streaming reader of a file-backed spec (not synthetic)."""
    if ds.kind == "criteo":
        return criteo_source(ds.paths[0], schema)
    if ds.kind == "avazu":
        return avazu_source(ds.paths[0], schema)
    if ds.kind == "libfm":
        return libfm_source(ds.paths, schema)
    if ds.kind == "movielens":
        return movielens_source(ds.paths[0], schema)
    if ds.kind == "csv":
        return csv_source(ds.paths[0], schema)
    if ds.kind == "parquet":
        return parquet_source(ds.paths[0], schema)
    raise DataError(f"no file reader for kind {ds.kind!r}")


def check_max_bad_fraction(value: float) -> float:
    """`value` if it is a share in [0, 1], else DataError."""
    if not 0.0 <= value <= 1.0:
        raise DataError(f"max_bad_fraction must be in [0, 1], got {value}",
                        cli=f"--max-bad-fraction must be in [0, 1], got {value}")
    return value


def check_bad_lines(good: int, bad: int, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
                    first_bad: list | None = None, path: str | None = None) -> None:
    """DataError with the counts when no line was good, or more than `max_bad_fraction` of the
    lines read were bad (lines skipped under on_bad_lines="skip" are counted, not lost)."""
    if bad == 0 or (good > 0 and bad / (good + bad) <= max_bad_fraction):
        return
    share = bad / (good + bad)
    first = f"; first bad lines: {list(first_bad)[:5]}" if first_bad else ""
    what = (f"every line read was bad ({bad:,} bad, 0 good)" if good == 0 else
            f"{bad:,} of {good + bad:,} lines read were bad ({share:.1%})")
    raise DataError(f"{what}{first}; check the file and its kind, or raise max_bad_fraction "
                    f"(now {max_bad_fraction:g}) if that many bad lines are expected",
                    path=path,
                    cli=f"{what}{first}; check the file and its kind:, or raise --max-bad-fraction "
                        f"(now {max_bad_fraction:g}) if that many bad lines are expected")


# ------------------------------------------------------------------------------------ the builder

class _Sink:
    """Append-only row storage for provisional arrays: in memory, or raw files in `directory`."""

    def __init__(self, directory: Path | None, n_cat: int, n_num: int):
        self.directory, self.n_cat, self.n_num, self.n = directory, n_cat, n_num, 0
        self._mem: dict[str, list[np.ndarray]] = {"cat": [], "num": [], "label": []}
        self._files = {}
        if directory is not None:
            self._files = {k: open(directory / f"_prov_{k}.bin", "wb") for k in self._mem}

    def append(self, cat: np.ndarray, num: np.ndarray, label: np.ndarray) -> None:
        for key, arr in (("cat", cat), ("num", num), ("label", label)):
            if self._files:
                self._files[key].write(np.ascontiguousarray(arr).tobytes())
            else:
                self._mem[key].append(arr)
        self.n += len(label)

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shapes = {"cat": ((self.n, self.n_cat), np.int32), "num": ((self.n, self.n_num), np.float32),
                  "label": ((self.n,), np.float32)}
        out = []
        for key, (shape, dtype) in shapes.items():
            if self._files:
                self._files[key].close()
                if int(np.prod(shape)) == 0:
                    out.append(np.zeros(shape, dtype))
                else:
                    out.append(np.memmap(self.directory / f"_prov_{key}.bin", dtype=dtype, mode="r", shape=shape))
            else:
                parts = self._mem[key]
                out.append(np.concatenate(parts).reshape(shape) if parts else np.zeros(shape, dtype))
        return tuple(out)


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


def _n_rows(rows: slice | np.ndarray) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


def _row_blocks(rows: slice | np.ndarray) -> Iterable[tuple[int, slice | np.ndarray]]:
    """(offset within the split, rows) blocks of at most _ROW_BLOCK rows."""
    n = _n_rows(rows)
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
    """Every streamed row, with provisional ids: cat int32 [N, Fc] (0 = missing), transformed num
    float32 [N, Fn] (numeric_transform, NaN = missing), label float32 [N]. ids[f] maps field f's
    values to their provisional ids 1, 2, ... in first-seen order. Arrays may be memmaps in out_dir."""

    cat_names: tuple[str, ...]
    num_names: tuple[str, ...]
    ids: list[dict[str, int]]
    cat: np.ndarray
    num: np.ndarray
    label: np.ndarray
    truncated: bool
    files: list[str]

    def __len__(self) -> int:
        return len(self.label)


def _first_rows(chunk: RawChunk, bad: list[BadLine], k: int) -> tuple[RawChunk, list[BadLine]]:
    """The first k rows of chunk, and the bad lines that come before the last of them."""
    cutoff = int(chunk.lines[k - 1])
    return chunk.head(k), [b for b in bad if b.path != chunk.path or b.line < cutoff]


def _provisional_ids(chunk: RawChunk, ids: list[dict[str, int]]) -> np.ndarray:
    """Provisional ids int32 [N, Fc] of a chunk's categorical values; new values join ids[f]."""
    out = np.empty((len(chunk), len(chunk.cat_names)), dtype=np.int32)
    for j, fname in enumerate(chunk.cat_names):
        enc = pc.dictionary_encode(chunk.columns[fname])
        values = enc.dictionary.to_pylist()
        m = ids[j]
        value_ids = np.fromiter((m.setdefault(v, len(m) + 1) for v in values), dtype=np.int32, count=len(values))
        idx = pc.fill_null(enc.indices, len(values)).to_numpy(zero_copy_only=False)
        out[:, j] = np.append(value_ids, np.int32(0))[idx]
    return out


def _transformed(chunk: RawChunk) -> np.ndarray:
    """A chunk's numeric fields through numeric_transform, float32 [N, Fn] (NaN = missing)."""
    out = np.empty((len(chunk), len(chunk.num_names)), dtype=np.float32)
    for j, fname in enumerate(chunk.num_names):
        out[:, j] = numeric_transform(chunk.columns[fname])
    return out


def _stream(chunks: Iterable[tuple[RawChunk | None, list[BadLine]]], tracker: _BadTracker, max_rows: int | None,
            out_dir: Path | None) -> _Provisional | None:
    """Read chunks (up to max_rows rows) once into provisional arrays; None when no row is valid."""
    names: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    ids: list[dict[str, int]] = []
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
            names = (chunk.cat_names, chunk.num_names)
            ids = [{} for _ in chunk.cat_names]
            sink = _Sink(out_dir, len(chunk.cat_names), len(chunk.num_names))
        elif (chunk.cat_names, chunk.num_names) != names:
            raise DataError("fields differ between chunks", path=chunk.path, line=int(chunk.lines[0]))
        sink.append(_provisional_ids(chunk, ids), _transformed(chunk), chunk.label.astype(np.float32))
        rows_read += len(chunk)
        if truncated:
            break
    if sink is None or rows_read == 0:
        return None
    return _Provisional(*names, ids, *sink.finish(), truncated, files)


def _train_statistics(prov: _Provisional, train_rows: slice | np.ndarray) -> tuple[list[np.ndarray], NumericMoments]:
    """What Encoder.fit needs of the training rows: per field, the count int64 [V_f] of each
    provisional value (ids 1..V_f), and the moments of the transformed numeric fields."""
    counts = [np.zeros(len(m) + 1, dtype=np.int64) for m in prov.ids]
    moments = NumericMoments.zeros(len(prov.num_names))
    for _, r in _row_blocks(train_rows):
        block = np.asarray(prov.cat[r])
        for j, c in enumerate(counts):
            c += np.bincount(block[:, j], minlength=len(c))
        moments = moments.merge(NumericMoments.of(np.asarray(prov.num[r], dtype=np.float64)))
    return [c[1:] for c in counts], moments


def _check_fields(encoder: Encoder, prov: _Provisional) -> None:
    """DataError unless the data has the given encoder's fields, in its order."""
    if (encoder.cat_names, encoder.num_names) != (prov.cat_names, prov.num_names):
        raise DataError(f"the data's fields {list(prov.cat_names) + list(prov.num_names)} differ from the "
                        f"encoder's {list(encoder.cat_names) + list(encoder.num_names)}",
                        path=prov.files[0] if prov.files else None)


def _remaps(prov: _Provisional, encoder: Encoder) -> list[np.ndarray]:
    """Per field, the encoder's id int32 [V_f + 1] of each provisional id (missing, 0, stays 0)."""
    return [np.append(np.int32(0), encoder.ids(j, list(m))) for j, m in enumerate(prov.ids)]


def _encode_split(prov: _Provisional, rows: slice | np.ndarray, remaps: list[np.ndarray], encoder: Encoder,
                  out_dir: Path | None, split_name: str) -> EncodedSplit:
    """One split's final arrays (.npy files in out_dir, if given): ids remapped, numerics standardized."""
    n, n_num = _n_rows(rows), len(prov.num_names)
    cat = _alloc(out_dir, f"{split_name}_cat", (n, len(prov.cat_names)), np.int32)
    num = _alloc(out_dir, f"{split_name}_num", (n, n_num), np.float32)
    label = _alloc(out_dir, f"{split_name}_label", (n,), np.float32)
    for off, r in _row_blocks(rows):
        block = np.asarray(prov.cat[r])
        k = len(block)
        for j, remap in enumerate(remaps):
            cat[off:off + k, j] = remap[block[:, j]]
        x = np.asarray(prov.num[r])
        for j in range(n_num):
            num[off:off + k, j] = encoder.standardize(x[:, j], j)
        label[off:off + k] = prov.label[r]
    for arr in (cat, num, label):
        if isinstance(arr, np.memmap):
            arr.flush()
    return EncodedSplit(cat, num, label)


def _build_report(name: str, prov: _Provisional, tracker: _BadTracker, splits: dict[str, EncodedSplit],
                  encoder: Encoder, options: dict, t0: float, t_parse: float) -> dict:
    """What was read, skipped and built, for Dataset.report (and the cache's report.json)."""
    return {
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


def build_from_chunks(name: str, chunks: Iterable[tuple[RawChunk | None, list[BadLine]]], *, min_count: int,
                      split: str = "sequential", seed: int = 0, on_bad_lines: str = "error",
                      max_rows: int | None = None, out_dir: Path | None = None,
                      encoder: Encoder | None = None, paths: tuple[str, ...] = ()) -> Dataset:
    """Stream chunks once into provisional ids, fit the Encoder on the training rows (or take the
    given `encoder`, e.g. a model directory's) and remap every split with it.

    Memory stays bounded by the vocabularies when out_dir is given (arrays are written there as
    .npy); with out_dir=None everything stays in memory. paths: the source files, named by the
    error raised when no valid row is found."""
    t0 = time.perf_counter()
    _check_build_options(min_count, max_rows, split)
    tracker = _BadTracker(on_bad_lines)
    prov = _stream(chunks, tracker, max_rows, out_dir)
    if prov is None:
        raise DataError(f"no valid rows in {name} ({tracker.count} bad lines skipped)",
                        path=", ".join(paths) if paths else None)
    t_parse = time.perf_counter() - t0
    rows = split_rows(len(prov), split, seed)
    if encoder is None:
        counts, moments = _train_statistics(prov, rows["train"])
        encoder = Encoder.fit(prov.cat_names, [list(m) for m in prov.ids], counts, prov.num_names, moments,
                              min_count)
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


# ----------------------------------------------------------------------------------------- cache

def default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "afm_jax"


def _cache_key(source: Source, options: dict) -> tuple[str, dict]:
    files = []
    for p in source.paths:
        st = os.stat(p)
        files.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    key = {"version": CACHE_FORMAT_VERSION, "kind": source.name, "files": files, "schema": source.schema.to_json(),
           **options}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return f"{source.name}-{digest}", key


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:  # zero-size arrays cannot be memory-mapped
        return np.load(path, allow_pickle=False)


def _load_cached(directory: Path, t0: float) -> Dataset:
    encoder = Encoder.load(directory / "encoder.json")
    with open(directory / "report.json", encoding="utf-8") as f:
        report = json.load(f)
    splits = {s: EncodedSplit(*(_load_array(directory / f"{s}_{k}.npy") for k in ("cat", "num", "label")))
              for s in SPLITS}
    report.update(cache_hit=True, build_seconds=report.get("seconds"), seconds=round(time.perf_counter() - t0, 3),
                  cache_dir=str(directory))
    return Dataset(report["name"], encoder.info, splits["train"], splits["valid"], splits["test"], encoder, report)


def load_dataset(spec: str, *, schema: Schema | str | None = None, min_count: int | None = None,
                 split: str = "sequential", seed: int = 0, on_bad_lines: str = "error",
                 cache_dir: str | None = None, max_rows: int | None = None, progress: bool = True,
                 encoder: Encoder | None = None, synthetic_vocab: int | None = None,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> Dataset:
    """Read, validate, encode and split a dataset, caching the result as memory-mappable .npy.

    spec: see parse_data_spec. cache_dir: the cache root (default ~/.cache/afm_jax); each distinct
    (files, sizes, mtimes, options) gets its own subdirectory, written atomically. A second call
    with the same arguments loads the cache (report["cache_hit"] is True). 'synthetic[:ROWS]' is
    generated in memory (seed, min_count, split and max_rows apply; no cache, no bad lines).
    encoder: encode with this fitted encoder (a trained model's) instead of fitting a new one.
    synthetic_vocab: synthetic data only: tables of fixed sizes summing to this many rows
    (`synthetic_dataset(total_vocab=...)`), however few rows the data has.
    max_bad_fraction: with on_bad_lines="skip", a DataError (with the counts) when more than
    this share of the lines read was bad (`check_bad_lines`): a file that is mostly bad is
    a wrong file or a wrong kind, not data.
    """
    t0 = time.perf_counter()
    ds = parse_data_spec(spec)
    defaults = DATASET_DEFAULTS[ds.kind]
    min_count = defaults["min_count"] if min_count is None else int(min_count)
    if ds.kind == "synthetic":
        from afm_jax.data.synthetic import synthetic_dataset
        rows = ds.rows or defaults["rows"]
        if max_rows is not None:
            rows = min(rows, max_rows)
        return synthetic_dataset(rows, seed=seed, min_count=min_count, split=split, encoder=encoder,
                                 total_vocab=synthetic_vocab)
    if synthetic_vocab is not None:
        raise DataError(f"synthetic_vocab applies to synthetic data only, not to {spec!r}",
                        field="synthetic_vocab", cli=f"--synthetic-vocab applies to --data synthetic[:ROWS] only, not to {spec!r}")
    if on_bad_lines not in ("error", "skip"):
        raise DataError(f"on_bad_lines must be 'error' or 'skip', got {on_bad_lines!r}", field="on_bad_lines")
    check_max_bad_fraction(max_bad_fraction)
    if split not in ("sequential", "random"):
        raise DataError(f"split must be 'sequential' or 'random', got {split!r}", field="split")
    source = make_source(ds, schema)
    options = {"min_count": min_count, "split": split, "seed": seed if split == "random" else 0,
               "on_bad_lines": on_bad_lines, "max_rows": max_rows}
    if encoder is not None:
        options["encoder"] = hashlib.sha256(json.dumps(encoder.to_json(), sort_keys=True).encode()).hexdigest()
    dirname, key = _cache_key(source, options)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    final = root / dirname
    if (final / "report.json").is_file():
        return _checked(_load_cached(final, t0), max_bad_fraction)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{dirname}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        dataset = build_from_chunks(ds.kind, source.chunks(progress), min_count=min_count, split=split, seed=seed,
                                    on_bad_lines=on_bad_lines, max_rows=max_rows, out_dir=tmp, encoder=encoder,
                                    paths=source.paths)
        _checked(dataset, max_bad_fraction)  # a mostly bad file is an error, and not cached
        dataset.encoder.save(tmp / "encoder.json")
        with open(tmp / "key.json", "w", encoding="utf-8") as f:
            json.dump(key, f, indent=1)
        for s in SPLITS:  # zero-size arrays were kept in memory: write them too
            sp = getattr(dataset, s)
            for k in ("cat", "num", "label"):
                if not (tmp / f"{s}_{k}.npy").exists():
                    np.save(tmp / f"{s}_{k}.npy", getattr(sp, k), allow_pickle=False)
        with open(tmp / "report.json", "w", encoding="utf-8") as f:
            json.dump(dataset.report, f, indent=1)
        del dataset
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: use its cache
            if not (final / "report.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out = _load_cached(final, t0)
    out.report.update(cache_hit=False, seconds=round(time.perf_counter() - t0, 3))
    return _checked(out, max_bad_fraction)


def _checked(dataset: Dataset, max_bad_fraction: float) -> Dataset:
    """`dataset`, if its bad lines are within `max_bad_fraction` (`check_bad_lines`)."""
    r = dataset.report
    check_bad_lines(r.get("rows_read", 0), r.get("rows_skipped", 0), max_bad_fraction,
                    r.get("first_skipped_lines"), ", ".join(map(str, r.get("files", []))) or None)
    return dataset
