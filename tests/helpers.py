"""Small fixtures shared by the tests: a field layout and random batches, no files needed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from afm_jax.data import FeatureInfo
from afm_jax.models import REGISTRY, build_model
from afm_jax.train import init_params

INFO = FeatureInfo(cat_names=("a", "b", "c", "d"), vocab_sizes=(40, 60, 25, 9),
                   num_names=("x", "y"))
SMALL = {"embed_dim": 8, "mlp": (32, 24)}


def small_model(name: str, info=INFO):
    """A registry model with small shapes (config fields it lacks are dropped)."""
    import dataclasses
    fields = {f.name for f in dataclasses.fields(REGISTRY[name][1])}
    return build_model(name, info, **{k: v for k, v in SMALL.items() if k in fields})


def random_batch(n: int, seed: int = 0, info=INFO) -> dict:
    rng = np.random.default_rng(seed)
    cat = np.stack([rng.integers(0, v, n) for v in info.vocab_sizes], 1).astype(np.int32)
    num = rng.normal(size=(n, len(info.num_names))).astype(np.float32)
    return {"cat": cat, "num": num, "label": (rng.uniform(size=n) < 0.3).astype(np.float32)}


def batches(n_batches: int, size: int = 256, seed: int = 0, info=INFO):
    return [random_batch(size, seed + i, info) for i in range(n_batches)]


def lively_params(model, seed: int = 0, info=INFO):
    """Random params scaled up so that logits vary by O(1) across rows (init is near zero)."""
    params = init_params(model, info, seed)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(tree, leaves)


def np_tree(params):
    return jax.tree.map(np.asarray, params)


def logits(model, params, batch):
    from afm_jax.inference import logits_fn
    return np.asarray(jax.jit(logits_fn(model))(params, {k: jnp.asarray(v) for k, v in
                                                         batch.items()}))


def bag_model_and_rows(directory, n: int, seed: int = 5) -> tuple:
    """A DeepFM trained through the CLI (`afm-jax train`) on `--synthetic-bags 2:3:5` data into
    directory/m, and n raw rows for its encoder as a CSV file with its schema file in
    `directory` (label column included; no quoting: values hold no commas; "" = missing): each
    categorical field some known values, "unseen" and ""; numbers with 10 % missing (NaN); each
    bag 0-8 known items and "unseen", its first three rows empty, one item and one over max_len.
    (model dir, encoder, columns by name, CSV path, schema path)."""
    import json
    from pathlib import Path

    from afm_jax.checkpoint import load_encoder
    from afm_jax.cli import main

    m = Path(directory) / "m"
    assert main(["train", "--data", "synthetic:1500", "--synthetic-bags", "2:3:5", "--model",
                 "deepfm", "--epochs", "1", "--mlp", "8", "--embed-dim", "4", "--out", str(m),
                 "--no-progress"]) == 0
    enc = load_encoder(m)
    rng = np.random.default_rng(seed)
    cols: dict = {"label": rng.integers(0, 2, n).astype(str)}
    for j, name in enumerate(enc.cat_names):
        cols[name] = rng.choice(enc.vocabs[j][:20] + ["unseen", ""], n)
    for name in enc.num_names:
        cols[name] = np.where(rng.uniform(size=n) < 0.1, np.nan, rng.exponential(5.0, n))
    for k, spec in enumerate(enc.bags):
        vocab = enc.bag_vocabs[k][:30] + ["unseen"]
        lists = [rng.choice(vocab, rng.integers(0, 9)).tolist() for _ in range(n)]
        lists[:3] = [[], [vocab[0]], vocab[:spec.max_len + 3]]
        cols[spec.name] = [spec.separator.join(x) for x in lists]
    data, schema = Path(directory) / "rows.csv", Path(directory) / "schema.json"
    text = [[("" if np.isnan(v) else repr(float(v))) if k in enc.num_names else str(v)
             for v in col] for k, col in cols.items()]
    data.write_text("\n".join([",".join(cols)] + [",".join(r) for r in zip(*text)]) + "\n")
    schema.write_text(json.dumps({"label": "label", "categorical": list(enc.cat_names),
                                  "numeric": list(enc.num_names),
                                  "multi_valued": [b.to_json() for b in enc.bags]}))
    return m, enc, cols, data, schema
