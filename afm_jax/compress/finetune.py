"""Short fine-tuning of compressed params (e.g. the activation variant) with optax."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax
from tqdm.auto import tqdm

from afm_jax.forms import trainable_labels
from afm_jax.inference import evaluate, make_scorer
from afm_jax.packing import pack, unpack
from afm_jax.train import make_train_step


def factor_labels(params: Any, embed_dim: int | None = None) -> Any:
    """A pytree of "train"/"freeze" labels: "train" inside factor pairs and compressed or folded
    tables (`forms.trainable_labels`; embed_dim tells a folded table from a full one)."""
    return trainable_labels(params, embed_dim)


class FinetuneResult(NamedTuple):
    """What `finetune` gives back (named, as `train`'s and `compress_model`'s results).

    params: the fine-tuned per-field params (on the mesh with one).
    report: {"steps", "trainable", "valid_before": {"auc", "logloss"}, "valid_after": {...}},
    JSON-ready (`CompressionResult.finetune` and model.json hold it).
    """

    params: Any
    report: dict


def finetune(model, params: Any, dataset, steps: int, *, learning_rate: float = 1e-4,
             batch_size: int = 1024, trainable: str = "factors", seed: int = 0,
             progress: bool = True, mesh=None, shard_embeddings: bool = False) -> FinetuneResult:
    """Train `params` for `steps` steps on dataset.train; returns a `FinetuneResult`.

    trainable: "factors" (only factor pairs and compressed tables move) or "all". The report
    holds validation AUC and logloss before and after, so a variant is judged against the same
    fine-tuning given to the original. mesh: data-parallel over a `jax.sharding.Mesh` as in
    `train` (the returned params stay on the mesh; `distributed.host_params` fetches them).
    Steps run on packed tables; the returned params are per-field.
    """
    from afm_jax import distributed
    from afm_jax.data import iterate_batches

    params = pack(model, params)   # train in the packed layout, as `train` does
    if trainable == "all":
        tx = optax.adam(learning_rate)
    elif trainable == "factors":
        labels = factor_labels(params, getattr(model.config, "embed_dim", None))
        tx = optax.multi_transform({"train": optax.adam(learning_rate),
                                    "freeze": optax.set_to_zero()}, labels)
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
    lockstep = distributed.lockstep(mesh)
    done, epoch = 0, 0
    bar = tqdm(total=steps, desc="fine-tune", disable=not progress, leave=False)
    while done < steps:
        for batch in iterate_batches(dataset.train, batch_size, shuffle=True,
                                     seed=seed * 7919 + epoch, mesh=mesh):
            params, opt_state, loss = step_fn(params, opt_state, batch)
            if lockstep:  # see distributed.lockstep
                loss.block_until_ready()
            done += 1
            bar.update(1)
            if done >= steps:
                break
        epoch += 1
    bar.close()
    after = evaluate(scorer, params, dataset.valid, mesh=mesh)
    report = {"steps": steps, "trainable": trainable,
              "valid_before": {"auc": before["auc"], "logloss": before["logloss"]},
              "valid_after": {"auc": after["auc"], "logloss": after["logloss"]}}
    return FinetuneResult(params=unpack(model, params), report=report)
