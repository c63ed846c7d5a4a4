"""Short fine-tuning of compressed params (e.g. the activation variant) with optax."""

from __future__ import annotations

from typing import Any

import jax
import optax
from tqdm.auto import tqdm

from afm_jax.inference import evaluate, make_scorer
from afm_jax.train import make_train_step

_FACTOR_KEYS = ("u", "v", "proj")


def factor_labels(params: Any) -> Any:
    """A pytree of "train"/"freeze" labels: "train" inside factor pairs and compressed tables."""

    def label(node: Any, inside: bool) -> Any:
        if isinstance(node, dict):
            compressed_table = "proj" in node
            return {k: label(v, inside or compressed_table or k in _FACTOR_KEYS
                             or k.startswith("u_")) for k, v in node.items()}
        return "train" if inside else "freeze"

    return label(params, False)


def finetune(model, params: Any, dataset, steps: int, *, learning_rate: float = 1e-4,
             batch_size: int = 1024, trainable: str = "factors", seed: int = 0,
             progress: bool = True, mesh=None, shard_embeddings: bool = False) -> tuple[Any, dict]:
    """Train `params` for `steps` steps on dataset.train; returns (params, report).

    trainable: "factors" (only factor pairs and compressed tables move) or "all". The report
    holds validation AUC and logloss before and after, so a variant is judged against the same
    fine-tuning given to the original. mesh: data-parallel over a `jax.sharding.Mesh` as in
    `train` (the returned params stay on the mesh; `distributed.host_params` fetches them).
    """
    from afm_jax import distributed
    from afm_jax.data import iterate_batches

    if trainable == "all":
        tx = optax.adam(learning_rate)
    elif trainable == "factors":
        tx = optax.multi_transform({"train": optax.adam(learning_rate),
                                    "freeze": optax.set_to_zero()}, factor_labels(params))
    else:
        raise ValueError(f"trainable must be 'factors' or 'all', got {trainable!r}")
    scorer = make_scorer(model, mesh)
    if mesh is None:
        params = jax.tree.map(lambda x: jax.numpy.array(x), params)
    else:
        params = distributed.shard_params(params, mesh, shard_embeddings)
    before = evaluate(scorer, params, dataset.valid, mesh=mesh)
    opt_state = tx.init(params)
    if mesh is not None:
        opt_state = distributed.place_like(opt_state, params)
    step_fn = make_train_step(model, tx)
    done, epoch = 0, 0
    bar = tqdm(total=steps, desc="fine-tune", disable=not progress, leave=False)
    while done < steps:
        batches = (iterate_batches(dataset.train, batch_size, shuffle=True, seed=seed * 7919 + epoch)
                   if mesh is None else
                   distributed.global_batches(dataset.train, batch_size, mesh, shuffle=True,
                                              seed=seed * 7919 + epoch))
        for batch in batches:
            params, opt_state, _ = step_fn(params, opt_state, batch)
            done += 1
            bar.update(1)
            if done >= steps:
                break
        epoch += 1
    bar.close()
    after = evaluate(scorer, params, dataset.valid, mesh=mesh)
    return params, {"steps": steps, "trainable": trainable,
                    "valid_before": {"auc": before["auc"], "logloss": before["logloss"]},
                    "valid_after": {"auc": after["auc"], "logloss": after["logloss"]}}
