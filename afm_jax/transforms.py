"""What a client must do to raw values before a scorer takes them, written into every export's
signature.json (`field_transforms`, `source_layout`), so that a client in any language can
encode a raw line from `signature.json` and `encoder.json` alone (the ONNX graph also does it
in the graph).

Each field, in the scorer's input order (categorical fields are the columns of `cat`, numeric
ones of `num`), gets its kind and rule:
  - categorical: id = 1 + the value's index in encoder.json's vocabulary; missing or unseen -> 0;
  - hashed: id = `HASH_RULE` (encoder.json's "hash_rule"); missing -> 0;
  - bucketized (a number made a category, Criteo's I1..I13): the key "b" + floor(ln(x)^2) for
    x > 2, else floor(x) as an integer string; then looked up like a categorical value;
  - numeric: (float32(ln(1 + max(x, 0))) - mean) / std in float64, stored as float32; missing
    -> 0;
  - multi_valued / sequence (a list per row; a sequence reads another field's table): split,
    cut to max_len, each item encoded as its table's field, padded (`bag_transform`).
"""

from __future__ import annotations

from collections.abc import Sequence

from afm_jax.errors import AfmError

MISSING_TEXT = "an empty value (text files) or a null (Parquet)"
BUCKET_RULE = ("x > 2: key 'b' + str(floor(ln(x)**2)); else key str(floor(x)) (an integer, e.g. "
               "'-3', '0', '2'); then the key's id as for a categorical field")
NUMERIC_RULE = ("t = float32(ln(1 + max(x, 0))); value = float32((float64(t) - mean) / std); "
                "missing -> 0")


def bucketized_fields(data_meta: dict | None) -> tuple[str, ...]:
    """The categorical fields a model dir's data reader bucketized from numbers (model.json's
    "data": a schema file's "bucketize", or the reader's default: Criteo's I1..I13)."""
    from afm_jax.data.readers import CRITEO_SCHEMA
    from afm_jax.data.schema import Schema

    data_meta = data_meta or {}
    if data_meta.get("schema"):
        try:
            return tuple(Schema.from_json(data_meta["schema"]).bucketize)
        except Exception as e:
            raise AfmError(f"the model was trained with the schema file {data_meta['schema']}, "
                           f"which cannot be read now ({e}); it says which fields are bucketized "
                           "numbers, which an export must state") from e
    spec = str(data_meta.get("spec") or "")
    return tuple(CRITEO_SCHEMA.bucketize) if spec.startswith("criteo:") else ()


def field_transforms(encoder, bucketize: Sequence[str] = ()) -> list[dict]:
    """Per field of `encoder`, in the scorer's input order: input ("cat"/"num" and column, or a
    bag field's "bag:<field>"), kind, missing rule and the rule that turns a raw value into
    the scorer's input."""
    hashed = getattr(encoder, "hash_buckets", {}) or {}
    out = []
    for j, name in enumerate(encoder.cat_names):
        entry = {"field": name, "input": "cat", "column": j, "missing": MISSING_TEXT}
        if name in hashed:
            from afm_jax.data.hashing import HASH_RULE
            entry.update(kind="hashed", hash_buckets=int(hashed[name]),
                         rule=f"id = {HASH_RULE} with buckets = {int(hashed[name])}; missing -> 0")
        elif name in bucketize:
            entry.update(kind="bucketized", raw="number", vocabulary=f"encoder.json vocabs[{j}]",
                         rule=BUCKET_RULE + f"; ids: 1 + index in encoder.json vocabs[{j}], "
                                            "missing or unseen -> 0")
        else:
            entry.update(kind="categorical", raw="string", vocabulary=f"encoder.json vocabs[{j}]",
                         rule=f"id = 1 + index of the value in encoder.json vocabs[{j}]; missing "
                              "or unseen -> 0")
        out.append(entry)
    for j, name in enumerate(encoder.num_names):
        out.append({"field": name, "input": "num", "column": j, "missing": MISSING_TEXT,
                    "kind": "numeric", "raw": "number", "rule": NUMERIC_RULE,
                    "mean": float(encoder.num_mean[j]), "std": float(encoder.num_std[j])})
    return out + [bag_transform(encoder, k) for k in range(len(getattr(encoder, "bags", ())))]


def bag_input_names(field: str) -> tuple[str, str]:
    """The scorer inputs of multi-valued field `field` in both export formats: its padded ids
    and its lengths."""
    return f"bag:{field}", f"bag_len:{field}"


def bag_transform(encoder, k: int) -> dict:
    """Multi-valued field k of `encoder`: how a raw list becomes the scorer's inputs
    "bag:<field>" (padded ids) and "bag_len:<field>" (`inference.bag_inputs`)."""
    b = encoder.bags[k]
    table = b.shares or b.name
    hashed = getattr(encoder, "hash_buckets", {}) or {}
    if table in hashed:
        from afm_jax.data.hashing import HASH_RULE
        item = f"id = {HASH_RULE} with field = {table!r}, buckets = {int(hashed[table])}"
    elif table in encoder.cat_names:
        item = (f"id = 1 + index of the item in encoder.json vocabs[{encoder.cat_names.index(table)}]"
                "; unseen -> 0")
    else:
        item = f"id = 1 + index of the item in encoder.json bags[{k}].vocab; unseen -> 0"
    keep = ("the last" if b.truncation == "keep_last" else "the first") + f" {b.max_len} items"
    ids, lengths = bag_input_names(b.name)
    return {"field": b.name, "input": ids, "lengths": lengths,
            "kind": "sequence" if b.shares else "multi_valued", "raw": "list of strings",
            "separator": b.separator, "max_len": b.max_len, "combiner": b.combiner,
            "truncation": b.truncation, "shares": b.shares,
            "missing": MISSING_TEXT + " is an empty list (length 0, pools to zero); an empty "
                                      "item between separators is a bad line",
            "rule": (f"split the text at {b.separator!r} (Parquet: the list<string> as it is); "
                     f"keep {keep} of a longer list, in their order; each item: {item}; "
                     f"{ids} = the ids left-aligned, padded with 0 to {b.max_len}; "
                     f"{lengths} = the number of ids kept")}


QUOTING = ('RFC 4180: a field in double quotes may hold the delimiter, and "" in it is one quote; '
           "a quote inside an unquoted field is data; no line breaks inside a field")


def source_layout(data_meta: dict | None) -> dict:
    """Where each field comes from in the raw files of the model's data kind."""
    from afm_jax.data.readers import CRITEO_COLUMNS

    spec = str((data_meta or {}).get("spec") or "")
    kind = spec.split(":", 1)[0] if ":" in spec else spec
    if kind == "criteo" and not (data_meta or {}).get("schema"):
        return {"format": "criteo", "delimiter": "\t", "header": False,
                "columns": list(CRITEO_COLUMNS),
                "note": "files without the label have the 39 columns after 'label'"}
    if kind in ("csv", "avazu"):
        from afm_jax.data.readers.tabular import csv_delimiter
        path = spec.split(":", 1)[1] if ":" in spec else ""
        return {"format": kind, "delimiter": csv_delimiter(path) if kind == "csv" else ",",
                "header": True, "quoting": QUOTING,
                "columns": "by name: a field is the column of the same name"}
    if kind == "parquet":
        return {"format": kind, "columns": "by name: a field is the column of the same name"}
    return {"format": kind or "unknown",
            "note": f"fields derived by the reader afm_jax.data.readers ({kind or 'in memory'})"}
