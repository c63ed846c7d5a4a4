"""The jax.export artifact with multi-valued and sequence fields (issue 22, item 8): its inputs,
signature.json and `load_exported`, against the live scorer and `afm-jax score`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from afm_jax.checkpoint import load_encoder, load_model_dir
from afm_jax.cli import main
from afm_jax.data import parse_data_spec
from afm_jax.data.dataset import make_source
from afm_jax.data.schema import Schema
from afm_jax.errors import AfmError
from afm_jax.inference import default_chunk_rows, export, load_exported, make_scorer

SCHEMA = {"label": "y", "categorical": [{"name": "user", "hash_buckets": 97}, "item"],
          "numeric": ["price"],
          "multi_valued": [{"name": "tags", "max_len": 3, "combiner": "sqrtn", "separator": ";"}],
          "sequence": [{"name": "seen", "max_len": 4, "shares": "item", "truncation": "keep_first"}]}


def write_rows(path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = ["y,user,item,price,tags,seen"]
    for _ in range(n):
        item = int(rng.integers(30))
        tags = ";".join(f"t{int(t)}" for t in rng.integers(12, size=int(rng.integers(0, 6))))
        seen = "|".join(f"i{int(t)}" for t in rng.integers(35, size=int(rng.integers(0, 7))))
        y = int(rng.random() < (0.7 if item % 3 == 0 else 0.2))
        price = "" if rng.random() < 0.1 else f"{rng.exponential(10):.2f}"
        lines.append(f"{y},u{int(rng.integers(50))},i{item},{price},{tags},{seen}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DIN and a compressed DeepFM trained through the CLI on a CSV with a hashed field, a
    multi-valued field and a sequence sharing the item table."""
    d = tmp_path_factory.mktemp("bags_export")
    data, schema = d / "d.csv", d / "schema.json"
    write_rows(data, 2400, seed=0)
    write_rows(d / "new.csv", 1500, seed=1)   # rows to score: unseen items and tags too
    schema.write_text(json.dumps(SCHEMA))
    common = ["--data", f"csv:{data}", "--schema", str(schema), "--epochs", "1", "--mlp", "16",
              "--min-count", "2", "--no-progress"]
    assert main(["train", *common, "--model", "din", "--out", str(d / "din")]) == 0
    assert main(["train", *common, "--model", "deepfm", "--out", str(d / "deepfm")]) == 0
    assert main(["compress", "--model-dir", str(d / "deepfm"), "--plan", "budget:0.5", "--out",
                 str(d / "afm"), "--no-progress"]) == 0
    return d


@pytest.mark.parametrize("name", ["din", "afm"])
def test_exported_bag_model_scores_raw_rows_as_afm_jax_score(trained, name, capsys):
    d, out = trained, trained / f"{name}_exp"
    assert main(["export", "--model-dir", str(d / name), "--out", str(out)]) == 0
    assert main(["score", "--model-dir", str(d / name), "--data", f"csv:{d / 'new.csv'}",
                 "--schema", str(d / "schema.json"), "--out", str(d / f"{name}.jsonl"),
                 "--no-progress"]) == 0
    want = np.array([json.loads(s)["score"] for s in (d / f"{name}.jsonl").read_text().splitlines()])

    enc = load_encoder(d / name)
    source = make_source(parse_data_spec(f"csv:{d / 'new.csv'}"), Schema.from_dict(SCHEMA),
                         require_label=False)
    (raw, bad), = list(source.chunks(False))   # one chunk: 1,500 short lines
    assert not bad
    cat, num = enc.encode(raw)
    bags, bag_len, cut = enc.encode_bags(raw)
    assert cut["seen"]["rows"] > 0 and cut["tags"]["rows"] > 0   # lists longer than max_len
    score = load_exported(out)
    got = np.asarray(score(cat, num, bags, bag_len))
    assert len(got) == 1500 > default_chunk_rows()   # chunked around the symbolic batch
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)

    sig = json.loads((out / "signature.json").read_text())
    assert [i["name"] for i in sig["inputs"]] == ["cat", "num", "bag:tags", "bag_len:tags",
                                                  "bag:seen", "bag_len:seen"]
    tags, seen = sig["inputs"][2], sig["inputs"][4]
    assert tags["shape"] == ["batch", 3] and tags["combiner"] == "sqrtn" and tags["kind"] == "multi_valued"
    assert seen["shares"] == "item" and seen["kind"] == "sequence" and seen["max_len"] == 4
    fields = {f["field"]: f for f in sig["fields"]}
    assert fields["tags"]["separator"] == ";" and fields["tags"]["truncation"] == "keep_last"
    assert "encoder.json bags[0].vocab" in fields["tags"]["rule"]
    assert fields["seen"]["truncation"] == "keep_first" and "vocabs[1]" in fields["seen"]["rule"]
    assert fields["user"]["kind"] == "hashed" and fields["user"]["hash_buckets"] == 97
    assert score.signature == sig


def test_a_client_encodes_bags_from_the_signature_alone(trained):
    """The rule text in signature.json and encoder.json's vocabularies are enough to build the
    bag inputs: done here by hand (no Encoder) and compared with Encoder.encode_bags."""
    d, out = trained, trained / "din_client"
    assert main(["export", "--model-dir", str(d / "din"), "--out", str(out)]) == 0
    sig = json.loads((out / "signature.json").read_text())
    enc_json = json.loads((out / "encoder.json").read_text())
    text = (d / "new.csv").read_text().splitlines()
    header, rows = text[0].split(","), [line.split(",") for line in text[1:]]
    for f in (f for f in sig["fields"] if f["kind"] in ("multi_valued", "sequence")):
        table = f["shares"] or f["field"]
        vocab = (enc_json["vocabs"][enc_json["cat_names"].index(table)] if f["shares"]
                 else enc_json["bags"][[b["name"] for b in enc_json["bags"]].index(table)]["vocab"])
        index = {v: i + 1 for i, v in enumerate(vocab)}
        ids = np.zeros((len(rows), f["max_len"]), np.int32)
        lens = np.zeros(len(rows), np.int32)
        for r, row in enumerate(rows):
            value = row[header.index(f["field"])]
            items = value.split(f["separator"]) if value else []
            items = items[-f["max_len"]:] if f["truncation"] == "keep_last" else items[:f["max_len"]]
            ids[r, :len(items)] = [index.get(v, 0) for v in items]
            lens[r] = len(items)
        enc = load_encoder(d / "din")
        k = [b.name for b in enc.bags].index(f["field"])
        want = enc.bag_ids(k, [row[header.index(f["field"])] for row in rows])
        np.testing.assert_array_equal(ids, want.ids)
        np.testing.assert_array_equal(lens, want.lengths)


def test_exported_bag_scorer_equals_the_live_one_and_needs_the_bags(trained, tmp_path):
    model, params, _ = load_model_dir(trained / "din")
    info = model.info
    rng = np.random.default_rng(3)
    n = 37
    batch = {"cat": rng.integers(0, max(info.vocab_sizes) + 3, (n, len(info.cat_names))).astype(np.int32),
             "num": rng.normal(size=(n, len(info.num_names))).astype(np.float32),
             "bags": {b.name: rng.integers(-2, b.vocab_size + 3, (n, b.max_len)).astype(np.int32)
                      for b in info.bags},
             "bag_len": {b.name: rng.integers(0, b.max_len + 1, n).astype(np.int32) for b in info.bags}}
    export(model, params, tmp_path / "x")
    score = load_exported(tmp_path / "x")
    want = np.asarray(make_scorer(model)(params, batch))
    np.testing.assert_allclose(np.asarray(score(batch["cat"], batch["num"], batch["bags"],
                                                batch["bag_len"])), want, rtol=0, atol=1e-6)
    with pytest.raises(AfmError, match="multi-valued fields.*bags= and bag_len="):
        score(batch["cat"], batch["num"])
    short = {k: v[:5] for k, v in batch["bag_len"].items()}
    with pytest.raises(AfmError, match="one row count"):
        score(batch["cat"], batch["num"], batch["bags"], short)
