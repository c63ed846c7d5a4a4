"""MovieLens-100k: ratings joined with user and movie attributes from three Parquet files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from afm_jax.data.readers.base import ChunkStream, Source, check_file, missing_label, resolve_schema
from afm_jax.data.readers.fields import convert_table
from afm_jax.data.schema import BagSpec, Schema
from afm_jax.errors import DataError

_AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])
_AGE_NAMES = np.array(["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"], dtype=object)
MOVIELENS_FIELDS = ("user", "movie", "age", "gender", "occupation", "zip3", "genre", "year")
HISTORY_MAX_LEN = 20
# Multi-valued MovieLens: every genre of the movie instead of the first, and the user's history.
MOVIELENS_BAG_SCHEMA = Schema(
    label="label", categorical=tuple(f for f in MOVIELENS_FIELDS if f != "genre"),
    bags=(BagSpec("genres", max_len=6, combiner="mean"),
          BagSpec("history", max_len=HISTORY_MAX_LEN, combiner="mean", truncation="keep_first", shares="movie")))


def user_history(user: np.ndarray, timestamp: np.ndarray, valid: np.ndarray, max_len: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each rating's history: the rows of the ratings the same user made strictly earlier (a
    smaller timestamp: ratings in the same second are not "earlier"), most recent first, at most
    max_len. Rows must be in time order (ties in any order); invalid rows are in no history and
    have none. -> (row offsets int64 [N + 1], history rows int64 [offsets[-1]], items cut int64 [N])."""
    n = len(user)
    rows = np.arange(n)
    # Invalid rows form groups of their own (a user id below every real one).
    user = np.where(valid, user, -1 - rows).astype(np.int64)
    by_user = np.argsort(user, kind="stable")  # stable: time order within each user
    us, ts = user[by_user], timestamp[by_user]
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = us[1:] != us[:-1]
    new_second = new_user.copy()
    new_second[1:] |= ts[1:] != ts[:-1]
    group_start = np.maximum.accumulate(np.where(new_user, rows, 0))
    run_start = np.maximum.accumulate(np.where(new_second, rows, 0))  # first rating of this user and second
    earlier = run_start - group_start
    keep = np.minimum(earlier, max_len)
    at = np.empty(n, dtype=np.int64)
    at[by_user] = rows  # position of each row in the by-user order
    keep_t, start_t = keep[at], run_start[at]
    offsets = np.concatenate([[0], np.cumsum(keep_t)])
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], keep_t)
    history = by_user[np.repeat(start_t, keep_t) - 1 - within]
    return offsets, history, (earlier - keep)[at]


def movielens_source(directory: str, schema: Schema | str | None = None, *, require_label: bool = True) -> Source:
    """MovieLens-100k from ratings/users/items.parquet; label rating >= 4; rows sorted by timestamp.

    Fields: user, movie, age bucket, gender, occupation, zip3 (zip prefix), genre (first genre flag
    set, or "none"), year (release year). 'Line' numbers are 1-based rows of ratings.parquet.
    require_label=False (scoring): ratings.parquet may lack `rating` (labels NaN).
    Multi-valued fields a schema may also take (`MOVIELENS_BAG_SCHEMA` takes both, and drops
    "genre"): genres, every genre flag set (an empty bag for none); history, the movies the user
    rated strictly earlier (`user_history`), most recent first, cut to the schema's max_len
    (default 20; the cut is counted in the report), sharing the movie field's vocabulary.
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
        flags = np.zeros((items.num_rows, 0), dtype=bool)
        if genres:
            flags = np.stack([pc.fill_null(items[g], 0).to_numpy(zero_copy_only=False) for g in genres], axis=1) > 0
            first = np.where(flags.any(axis=1), flags.argmax(axis=1), len(genres))
            genre = pa.array((genres + ["none"])[i] for i in first)
        else:
            genre = pa.array(["none"] * items.num_rows)
        year = pc.extract_regex(pc.cast(items["release_date"], pa.string()), r"(?P<y>[0-9]{4})\s*$")
        year = pc.struct_field(year, [0])
        extra, cut = {}, {}
        bags = {b.name: b for b in sch.bags}
        if "genres" in bags:
            item_genres = pa.ListArray.from_arrays(
                pa.array(np.concatenate([[0], np.cumsum(flags.sum(axis=1))]).astype(np.int32)),
                pa.array(np.array(genres, dtype=object)[np.nonzero(flags)[1]].tolist(), pa.string()))
            extra["genres"] = pc.take(item_genres, mi)
        if "history" in bags:
            ts = pc.fill_null(ratings["timestamp"], 0).to_numpy(zero_copy_only=False)
            user = pc.fill_null(ratings["user_id"], 0).to_numpy(zero_copy_only=False)
            offsets, rows, cut["history"] = user_history(user, ts, ok, bags["history"].max_len)
            movie = pc.cast(ratings["movie_id"], pa.string()).combine_chunks()
            extra["history"] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                                        pc.take(movie, pa.array(rows)))
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
            **extra,
        })
        if n:
            reason = "rating must be a number in 0.5..5 with user and movie ids" if has_label else \
                "user and movie ids must be present"
            yield convert_table(table, lines, paths[0], sch, (("1",), ("0",)) if has_label else None,
                                checks=[("rating", ok, reason)], cut=cut)
    return Source("movielens", paths, sch, chunks, has_label)
