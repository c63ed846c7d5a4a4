"""MovieLens-100k: ratings joined with user and movie attributes from three Parquet files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from afm_jax.data.readers.base import ChunkStream, Source, check_file, missing_label, resolve_schema
from afm_jax.data.readers.fields import convert_table
from afm_jax.data.schema import Schema
from afm_jax.errors import DataError

_AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])
_AGE_NAMES = np.array(["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"], dtype=object)
MOVIELENS_FIELDS = ("user", "movie", "age", "gender", "occupation", "zip3", "genre", "year")


def movielens_source(directory: str, schema: Schema | str | None = None, *, require_label: bool = True) -> Source:
    """MovieLens-100k from ratings/users/items.parquet; label rating >= 4; rows sorted by timestamp.

    Fields: user, movie, age bucket, gender, occupation, zip3 (zip prefix), genre (first genre flag
    set, or "none"), year (release year). 'Line' numbers are 1-based rows of ratings.parquet.
    require_label=False (scoring): ratings.parquet may lack `rating` (labels NaN).
    """
    d = Path(directory)
    paths = tuple(check_file(str(d / f"{n}.parquet")) for n in ("ratings", "users", "items"))
    sch = resolve_schema(schema, Schema(label="label", categorical=MOVIELENS_FIELDS), paths[0])
    has_label = "rating" in pq.ParquetFile(paths[0]).schema_arrow.names
    if require_label and not has_label:
        raise missing_label(paths[0], "rating", "ratings.parquet")

    def chunks(progress: bool) -> ChunkStream:
        ratings, users, items = (pq.read_table(p) for p in paths)
        rating_cols = ("user_id", "movie_id", "timestamp") + (("rating",) if has_label else ())
        for tab, cols, p in ((ratings, rating_cols, paths[0]),
                             (users, ("user_id", "age", "gender", "occupation", "zip_code"), paths[1]),
                             (items, ("movie_id", "release_date"), paths[2])):
            for c in cols:
                if c not in tab.column_names:
                    raise DataError(f"column {c!r} missing", path=p, field=c)
        genres = [c for c in items.column_names[items.column_names.index("release_date") + 1:]
                  if c not in ("video_release_date", "IMDb_URL")]
        n = ratings.num_rows
        order = np.argsort(pc.fill_null(ratings["timestamp"], 0).to_numpy(zero_copy_only=False), kind="stable")
        ratings = ratings.take(pa.array(order))
        lines = order.astype(np.int64) + 1
        ok = pc.and_(pc.is_valid(ratings["user_id"]), pc.is_valid(ratings["movie_id"]))
        if has_label:
            rating = pc.cast(ratings["rating"], pa.float64())
            ok = pc.and_(ok, pc.fill_null(pc.and_(pc.greater_equal(rating, 0.5), pc.less_equal(rating, 5.0)), False))
            label = {"label": pc.if_else(pc.greater_equal(pc.fill_null(rating, 0), 4.0), "1", "0")}
        else:
            label = {}
        ok = ok.to_numpy(zero_copy_only=False)
        ui = pc.index_in(ratings["user_id"], value_set=users["user_id"])
        mi = pc.index_in(ratings["movie_id"], value_set=items["movie_id"])

        def take(tab: pa.Table, col: str | pa.Array, idx: pa.Array) -> pa.Array:
            values = tab[col] if isinstance(col, str) else col
            return pc.take(values, idx)

        age = users["age"].to_numpy(zero_copy_only=False)
        age_bucket = pa.array(_AGE_NAMES[np.searchsorted(_AGE_EDGES, age, side="right")].tolist(), type=pa.string())
        zip3 = pc.utf8_slice_codeunits(pc.cast(users["zip_code"], pa.string()), 0, 3)
        if genres:
            flags = np.stack([pc.fill_null(items[g], 0).to_numpy(zero_copy_only=False) for g in genres], axis=1) > 0
            first = np.where(flags.any(axis=1), flags.argmax(axis=1), len(genres))
            genre = pa.array((genres + ["none"])[i] for i in first)
        else:
            genre = pa.array(["none"] * items.num_rows)
        year = pc.extract_regex(pc.cast(items["release_date"], pa.string()), r"(?P<y>[0-9]{4})\s*$")
        year = pc.struct_field(year, [0])
        table = pa.table({
            **label,
            "user": pc.cast(ratings["user_id"], pa.string()),
            "movie": pc.cast(ratings["movie_id"], pa.string()),
            "age": take(users, age_bucket, ui),
            "gender": pc.cast(take(users, "gender", ui), pa.string()),
            "occupation": pc.cast(take(users, "occupation", ui), pa.string()),
            "zip3": take(users, zip3, ui),
            "genre": take(items, genre, mi),
            "year": take(items, year, mi),
        })
        if n:
            reason = "rating must be a number in 0.5..5 with user and movie ids" if has_label else \
                "user and movie ids must be present"
            yield convert_table(table, lines, paths[0], sch, (("1",), ("0",)) if has_label else None,
                                checks=[("rating", ok, reason)])
    return Source("movielens", paths, sch, chunks, has_label)
