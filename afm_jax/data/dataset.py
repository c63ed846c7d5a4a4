"""Datasets: spec parsing, the on-disk cache, load_dataset (the builder is in `build`, the split
types in `splits`, re-exported here)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from afm_jax.data.build import MAX_REPORTED_BAD_LINES, bag_file_keys, build_from_chunks
from afm_jax.data.encoder import Encoder
from afm_jax.data.readers import (
    Source,
    avazu_source,
    criteo_source,
    csv_source,
    libfm_source,
    movielens_source,
    parquet_source,
)
from afm_jax.data.schema import Schema
from afm_jax.data.splits import SPLIT_FRACTIONS, SPLITS, Dataset, EncodedSplit, split_rows
from afm_jax.data.synthetic import SyntheticBags, synthetic_dataset
from afm_jax.errors import DataError

__all__ = ["DATASET_DEFAULTS", "CACHE_FORMAT_VERSION", "DataSpec", "parse_data_spec", "make_source", "load_dataset",
           "default_cache_root", "build_from_chunks", "Dataset", "EncodedSplit", "split_rows", "SPLITS",
           "SPLIT_FRACTIONS", "MAX_REPORTED_BAD_LINES"]

CACHE_FORMAT_VERSION = 1
DEFAULT_MAX_BAD_FRACTION = 0.5  # on_bad_lines="skip": more than this share bad is an error

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


def make_source(ds: DataSpec, schema: Schema | str | None = None, *, require_label: bool = True) -> Source:
    """The streaming reader of a file-backed spec (not synthetic).

    require_label=False (scoring): files without the label column are read too (Criteo's 39
    columns, Avazu without `click`, a CSV/Parquet without the schema's label, libFM lines of
    features only, ratings without `rating`); their chunks' labels are NaN and the Source's
    `has_label` is False. With True (training, evaluation), a file without labels is a DataError
    naming it and the missing column (Criteo: each 39-column line is a bad line saying so)."""
    readers = {"criteo": criteo_source, "avazu": avazu_source, "movielens": movielens_source,
               "csv": csv_source, "parquet": parquet_source}
    if ds.kind == "libfm":
        return libfm_source(ds.paths, schema, require_label=require_label)
    if ds.kind in readers:
        return readers[ds.kind](ds.paths[0], schema, require_label=require_label)
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
    bag_keys = [(b.name, *bag_file_keys(k)) for k, b in enumerate(encoder.bags)]
    splits = {s: EncodedSplit(*(_load_array(directory / f"{s}_{k}.npy") for k in ("cat", "num", "label")),
                              {n: _load_array(directory / f"{s}_{i}.npy") for n, i, _ in bag_keys},
                              {n: _load_array(directory / f"{s}_{ln}.npy") for n, _, ln in bag_keys})
              for s in SPLITS}
    report.update(cache_hit=True, build_seconds=report.get("seconds"), seconds=round(time.perf_counter() - t0, 3),
                  cache_dir=str(directory))
    return Dataset(report["name"], encoder.info, splits["train"], splits["valid"], splits["test"], encoder, report)


def load_dataset(spec: str, *, schema: Schema | str | None = None, min_count: int | None = None,
                 split: str = "sequential", seed: int = 0, on_bad_lines: str = "error",
                 cache_dir: str | None = None, max_rows: int | None = None, progress: bool = True,
                 encoder: Encoder | None = None, synthetic_vocab: int | None = None,
                 synthetic_bags: SyntheticBags | str | None = None,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> Dataset:
    """Read, validate, encode and split a dataset, caching the result as memory-mappable .npy.

    spec: see parse_data_spec. cache_dir: the cache root (default ~/.cache/afm_jax); each distinct
    (files, sizes, mtimes, options) gets its own subdirectory, written atomically. A second call
    with the same arguments loads the cache (report["cache_hit"] is True). 'synthetic[:ROWS]' is
    generated in memory (seed, min_count, split and max_rows apply; no cache, no bad lines).
    encoder: encode with this fitted encoder (a trained model's) instead of fitting a new one.
    synthetic_vocab: synthetic data only: tables of fixed sizes summing to this many rows
    (`synthetic_dataset(total_vocab=...)`), however few rows the data has. synthetic_bags:
    synthetic data only: add multi-valued fields (`SyntheticBags`, or its string form
    "FIELDS[:MEAN_LEN[:MAX_LEN]]"); None keeps the data exactly as without the option.
    Multi-valued (and hashed) fields of a file come from its schema; the cache stores each bag's
    ids and lengths beside the other arrays (`{split}_bag{k}.npy`, `{split}_bag{k}_len.npy`).
    max_bad_fraction: with on_bad_lines="skip", a DataError (with the counts) when more than
    this share of the lines read was bad (`check_bad_lines`): a file that is mostly bad is
    a wrong file or a wrong kind, not data.
    """
    t0 = time.perf_counter()
    ds = parse_data_spec(spec)
    defaults = DATASET_DEFAULTS[ds.kind]
    min_count = defaults["min_count"] if min_count is None else int(min_count)
    if ds.kind == "synthetic":
        rows = ds.rows or defaults["rows"]
        if max_rows is not None:
            rows = min(rows, max_rows)
        if isinstance(synthetic_bags, str):
            synthetic_bags = SyntheticBags.parse(synthetic_bags)
        return synthetic_dataset(rows, seed=seed, min_count=min_count, split=split, encoder=encoder,
                                 total_vocab=synthetic_vocab, bags=synthetic_bags)
    for opt, value in (("synthetic_vocab", synthetic_vocab), ("synthetic_bags", synthetic_bags)):
        if value is not None:
            flag = "--" + opt.replace("_", "-")
            raise DataError(f"{opt} applies to synthetic data only, not to {spec!r}", field=opt,
                            cli=f"{flag} applies to --data synthetic[:ROWS] only, not to {spec!r}")
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
                                    paths=source.paths, schema=source.schema)
        _checked(dataset, max_bad_fraction)  # a mostly bad file is an error, and not cached
        dataset.encoder.save(tmp / "encoder.json")
        with open(tmp / "key.json", "w", encoding="utf-8") as f:
            json.dump(key, f, indent=1)
        for s in SPLITS:  # zero-size arrays were kept in memory: write them too
            sp = getattr(dataset, s)
            arrays = {k: getattr(sp, k) for k in ("cat", "num", "label")}
            for k, b in enumerate(dataset.encoder.bags):
                ids_key, len_key = bag_file_keys(k)
                arrays[ids_key], arrays[len_key] = sp.bags[b.name], sp.bag_len[b.name]
            for k, arr in arrays.items():
                if not (tmp / f"{s}_{k}.npy").exists():
                    np.save(tmp / f"{s}_{k}.npy", arr, allow_pickle=False)
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
