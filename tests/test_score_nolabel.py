"""Scoring files without the label column (issue 25, item 4): a label-stripped copy of the shared
Criteo sample scores exactly like the labelled file, in the Criteo, CSV and Parquet layouts;
evaluate refuses such files with an error naming the file and the missing label."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afm_jax.cli import main
from afm_jax.data.dataset import make_source, parse_data_spec
from afm_jax.data.readers import CRITEO_COLUMNS, CRITEO_SCHEMA
from afm_jax.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CRITEO = SHARED / "criteo" / "train.tsv"
AVAZU = SHARED / "avazu" / "sample.csv"
ROWS = 1500
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared real data not found at {SHARED}")


def _head(path: Path, n: int) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _score(model_dir: str, data: str, out: Path, *extra: str) -> dict:
    assert main(["score", "--model-dir", model_dir, "--data", data, "--out", str(out),
                 "--no-progress", *extra]) == 0
    return pq.read_table(out).to_pydict()


@pytest.fixture(scope="module")
def criteo(tmp_path_factory):
    """(dir, the sample's first ROWS lines as fields, a DeepFM trained on them, its scores)."""
    d = tmp_path_factory.mktemp("nolabel")
    rows = [line.split("\t") for line in _head(CRITEO, ROWS)]
    assert all(len(r) == len(CRITEO_COLUMNS) for r in rows)
    labelled = _write(d / "labelled.tsv", ["\t".join(r) for r in rows])
    model_dir = str(d / "m")
    assert main(["train", "--data", f"criteo:{labelled}", "--min-count", "2", "--mlp", "16",
                 "--epochs", "1", "--out", model_dir, "--cache-dir", str(d / "cache"),
                 "--no-progress"]) == 0
    scores = _score(model_dir, f"criteo:{labelled}", d / "labelled.parquet")
    assert scores["line"] == list(range(1, ROWS + 1))
    return d, rows, model_dir, np.asarray(scores["score"])


def test_criteo_without_label_scores_like_the_labelled_file(criteo, capsys):
    d, rows, model_dir, expected = criteo
    stripped = _write(d / "test_nolabel.tsv", ["\t".join(r[1:]) for r in rows])  # 39 columns
    got = _score(model_dir, f"criteo:{stripped}", d / "nolabel.parquet", "--json")
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == ROWS
    assert got["line"] == list(range(1, ROWS + 1))
    assert set(got) == {"file", "line", "score"}  # scores only
    np.testing.assert_array_equal(np.asarray(got["score"]), expected)  # row for row, same bits


def _table(rows: list[list[str]], label: bool) -> pa.Table:
    """The rows as a table of string columns (label first if kept); empty fields are nulls."""
    names = list(CRITEO_COLUMNS)
    cols = {n: pa.array([r[j] or None for r in rows], pa.string()) for j, n in enumerate(names)}
    if not label:
        del cols["label"]
    return pa.table(cols)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tabular_without_label_scores_like_the_labelled_file(criteo, fmt):
    """CSV and Parquet with the Criteo schema: with the label column or without it, the scores are
    the labelled Criteo file's (the model's fields are the schema's, in the same order)."""
    d, rows, model_dir, expected = criteo
    schema = d / "schema.json"
    schema.write_text(json.dumps(CRITEO_SCHEMA.to_json()))
    for label in (True, False):
        path = d / f"{fmt}_{label}.{fmt}"
        table = _table(rows, label)
        if fmt == "csv":
            header = ",".join(table.column_names)
            _write(path, [header] + [",".join(v or "" for v in row.values())
                                     for row in table.to_pylist()])
        else:
            pq.write_table(table, path)
        got = _score(model_dir, f"{fmt}:{path}", d / f"scores_{fmt}_{label}.parquet",
                     "--schema", str(schema))
        np.testing.assert_array_equal(np.asarray(got["score"]), expected)


def test_evaluate_demands_labels(criteo, capsys):
    """evaluate (and train) on a file without labels: exit 2, the error names the file and the
    missing label."""
    d, rows, model_dir, _ = criteo
    stripped = _write(d / "eval_nolabel.tsv", ["\t".join(r[1:]) for r in rows])
    schema = d / "schema.json"
    schema.write_text(json.dumps(CRITEO_SCHEMA.to_json()))
    csv = d / "eval_nolabel.csv"
    table = _table(rows, label=False)
    _write(csv, [",".join(table.column_names)] + [",".join(v or "" for v in row.values())
                                                  for row in table.to_pylist()])
    parquet = d / "eval_nolabel.parquet"
    pq.write_table(table, parquet)
    cache = ["--cache-dir", str(d / "cache"), "--no-progress"]
    assert main(["evaluate", "--model-dir", model_dir, "--data", f"criteo:{stripped}", *cache]) == 2
    err = capsys.readouterr().err
    assert stripped in err and "line 1" in err and "layout without the label" in err, err
    for spec in (f"csv:{csv}", f"parquet:{parquet}"):
        assert main(["evaluate", "--model-dir", model_dir, "--data", spec, "--schema", str(schema),
                     *cache]) == 2
        err = capsys.readouterr().err
        assert spec.partition(":")[2] in err and "label column 'label' is not in" in err, err


def _chunks(spec: str, require_label: bool) -> tuple[bool, list]:
    source = make_source(parse_data_spec(spec), require_label=require_label)
    return source.has_label, [c for c, bad in source.chunks(False) if not bad and c is not None]


def test_avazu_test_layout(tmp_path):
    """Avazu's test layout (no `click`): read when scoring, with the same features as the
    labelled rows and NaN labels; refused, naming `click`, when labels are required."""
    lines = _head(AVAZU, 400)
    header = lines[0].split(",")
    k = header.index("click")
    stripped = _write(tmp_path / "test.csv", [",".join(v for j, v in enumerate(line.split(",")) if j != k)
                                              for line in lines])
    has, (a,) = _chunks(f"avazu:{_write(tmp_path / 'train.csv', lines)}", require_label=False)
    has_not, (b,) = _chunks(f"avazu:{stripped}", require_label=False)
    assert has and not has_not and len(a) == len(b) == len(lines) - 1
    assert (a.cat_names, a.num_names) == (b.cat_names, b.num_names)
    for name in a.cat_names:
        assert a.columns[name].equals(b.columns[name]), name
    np.testing.assert_array_equal(a.lines, b.lines)
    assert np.isnan(b.label).all() and not np.isnan(a.label).any()
    with pytest.raises(DataError, match="'click' is not in the Avazu header") as e:
        make_source(parse_data_spec(f"avazu:{stripped}"))
    assert e.value.path == stripped


def test_libfm_features_only(tmp_path):
    labelled = _write(tmp_path / "a.libfm", ["1 3:1 17:1", "-1 4:1 18:1", "1 3:1 19:1"])
    bare = _write(tmp_path / "b.libfm", ["3:1 17:1", "4:1 18:1", "3:1 19:1"])
    _, (a,) = _chunks(f"libfm:{labelled}", require_label=True)
    has, (b,) = _chunks(f"libfm:{bare}", require_label=False)
    assert not has and a.cat_names == b.cat_names == ("f0", "f1")
    assert all(a.columns[n].equals(b.columns[n]) for n in a.cat_names)
    assert np.isnan(b.label).all()
    with pytest.raises(DataError, match="label column 'label' is not in line 1"):
        make_source(parse_data_spec(f"libfm:{bare}"))


def test_movielens_ratings_without_rating(tmp_path):
    """ratings.parquet without `rating`: read when scoring (same features, NaN labels), refused
    naming `rating` when labels are required. users/items are links to the shared files."""
    src = SHARED / "movielens100k"
    for name in ("users", "items"):
        (tmp_path / f"{name}.parquet").symlink_to(src / f"{name}.parquet")
    ratings = pq.read_table(src / "ratings.parquet").slice(0, 500)
    pq.write_table(ratings.drop_columns(["rating"]), tmp_path / "ratings.parquet")
    has, (b,) = _chunks(f"movielens:{tmp_path}", require_label=False)
    (tmp_path / "labelled").mkdir()
    for name in ("users", "items"):
        (tmp_path / "labelled" / f"{name}.parquet").symlink_to(src / f"{name}.parquet")
    pq.write_table(ratings, tmp_path / "labelled" / "ratings.parquet")
    _, (a,) = _chunks(f"movielens:{tmp_path / 'labelled'}", require_label=True)
    assert not has and len(a) == len(b) == 500 and a.cat_names == b.cat_names
    assert all(a.columns[n].equals(b.columns[n]) for n in a.cat_names)
    np.testing.assert_array_equal(a.lines, b.lines)
    assert np.isnan(b.label).all() and not np.isnan(a.label).any()
    with pytest.raises(DataError, match="label column 'rating' is not in ratings.parquet"):
        make_source(parse_data_spec(f"movielens:{tmp_path}"))
