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
