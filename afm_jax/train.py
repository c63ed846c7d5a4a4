"""Training loop: optax Adam, binary cross-entropy, early stopping on validation AUC, orbax resume."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from afm_jax._cache import cache_per_model
from afm_jax.errors import AfmError
from afm_jax.inference import evaluate, logits_fn, make_scorer


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Serialized to model.json so a directory says how it was made."""

    epochs: int = 2
    batch_size: int = 1024
    learning_rate: float = 1e-3
    embed_l2: float = 0.0        # L2 on the embedding rows a batch reads (not whole tables)
    patience: int = 1            # epochs without validation-AUC gain before stopping
    eval_every: int = 0          # also evaluate every N steps (0: only after each epoch)
    log_every: int = 50          # read the loss back (and check it is finite) every N steps
    checkpoint_every: int = 0    # with an out_dir, also checkpoint every N steps (0: per epoch)
    seed: int = 0


@dataclass
class TrainResult:
    params: Any                  # the best params (by validation AUC)
    best_valid: dict
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def init_params(model, info, seed: int = 0) -> Any:
    """Fresh params for one example of the fields in `info`."""
    cat = jnp.zeros((len(info.cat_names),), jnp.int32)
    num = jnp.zeros((len(info.num_names),), jnp.float32)
    return model.init(jax.random.key(seed), cat, num)["params"]


def embedding_l2(params: Any, cat: jax.Array) -> jax.Array:
    """Mean over the batch of the squared norm of the embedding rows it reads. cat: [B, Fc]."""
    tables = params.get("embed", {}) if isinstance(params, dict) else {}
    total = jnp.zeros(())
    for i, p in enumerate(tables.values()):
        if "embedding" in p and i < cat.shape[1]:
            rows = p["embedding"][jnp.clip(cat[:, i], 0, p["embedding"].shape[0] - 1)]
            total = total + (rows * rows).sum(-1).mean()
    return total


def make_train_step(model, tx: optax.GradientTransformation, embed_l2: float = 0.0):
    """Jitted `(params, opt_state, batch) -> (params, opt_state, loss)`, donating its state.

    A batch may carry "weight" [B] (0 for padding rows): the loss is then the weighted mean, so
    a padded last batch trains exactly like the short one without a second compilation.
    """
    logits = logits_fn(model)

    def loss_fn(params, batch):
        per_row = optax.sigmoid_binary_cross_entropy(logits(params, batch), batch["label"])
        if "weight" in batch:
            w = batch["weight"]
            loss = (per_row * w).sum() / jnp.maximum(w.sum(), 1.0)
        else:
            loss = per_row.mean()
        reg = embed_l2 * embedding_l2(params, batch["cat"]) if embed_l2 else 0.0
        return loss + reg, loss

    @partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batch):
        (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


@cache_per_model(16)
def _adam_step(model, learning_rate: float, embed_l2: float):
    """The Adam train step, cached per (model, learning rate, L2): a second `train` call in the
    same process (another run, a resume, a benchmark round) reuses the compiled step."""
    return make_train_step(model, optax.adam(learning_rate), embed_l2)


def _counters(epoch: int, step: int, best_auc: float, bad_epochs: int,
              batch_in_epoch: int = 0) -> dict[str, np.ndarray]:
    """The loop's scalars as 0-d arrays (what orbax saves), float32/int32 as JAX runs them.

    epoch: epochs finished; batch_in_epoch: batches of the next epoch already trained.
    """
    return {"epoch": np.array(epoch, np.int32), "step": np.array(step, np.int32),
            "best_auc": np.array(best_auc, np.float32),
            "bad_epochs": np.array(bad_epochs, np.int32),
            "batch_in_epoch": np.array(batch_in_epoch, np.int32)}


def _state_manager(out_dir: Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        (out_dir / "state").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False))


def train(model, dataset, config: TrainConfig = TrainConfig(), *, out_dir: str | None = None,
          params: Any = None, progress: bool = True, extra_meta: dict | None = None,
          mesh=None, shard_embeddings: bool = False) -> TrainResult:
    """Train `model` on dataset.train, early-stopping on dataset.valid AUC.

    With `out_dir`, the training state is checkpointed after every epoch (orbax) and the best
    params with model.json/encoder.json are written, so the directory alone can be reloaded;
    a second call with the same `out_dir` resumes after the last finished epoch.

    mesh: data-parallel over a `jax.sharding.Mesh` (`afm_jax.distributed.make_mesh`): each
    global batch (the same rows as without a mesh) is sharded over "data", gradients are reduced
    by the compiler; `shard_embeddings` row-shards the embedding tables over "model". In a
    multi-process run each process reads only its devices' rows, and only process 0 writes
    model.json and history (orbax writes the checkpoints from every process). The returned
    params stay on the mesh (tables padded when sharded: `distributed.host_params` trims them).
    """
    from afm_jax import distributed
    from afm_jax.checkpoint import save_model_dir
    from afm_jax.data import iterate_batches

    t_start = time.perf_counter()
    if params is None:
        params = init_params(model, dataset.info, config.seed)
    else:  # the step donates its inputs' buffers: train a copy, keep the caller's params intact
        params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    if mesh is not None:
        params = distributed.shard_params(params, mesh, shard_embeddings)
    tx = optax.adam(config.learning_rate)
    opt_state = tx.init(params)
    if mesh is not None:
        opt_state = distributed.place_like(opt_state, params)
    step_fn = _adam_step(model, config.learning_rate, config.embed_l2)
    scorer = make_scorer(model, mesh)
    # best_params needs buffers of its own: the step donates (frees) the params' buffers
    state = {"params": params, "opt_state": opt_state,
             "best_params": jax.tree.map(jnp.copy, params),
             **_counters(epoch=0, step=0, best_auc=-1.0, bad_epochs=0)}
    history: list[dict] = []
    manager = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        manager = _state_manager(out)
        latest = manager.latest_step()
        if latest is not None:
            if mesh is not None:  # orbax restores every array onto its mesh sharding
                state = {k: v if k in ("params", "opt_state", "best_params")
                         else distributed.from_host(v, distributed.replicated(mesh))
                         for k, v in state.items()}
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
            try:
                state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
            except Exception as e:
                raise AfmError(f"{out / 'state'}: cannot resume from epoch {latest} "
                               f"({type(e).__name__}: {e}); was it written for another model "
                               "or config? Use a new --out directory.") from e
            hist_path = out / "history.json"
            history = json.loads(hist_path.read_text()) if hist_path.exists() else []
            if progress:
                tqdm.write(f"resuming {out} after epoch {int(state['epoch'])}")

    params, opt_state = state["params"], state["opt_state"]
    best_params, best_auc = state["best_params"], float(state["best_auc"])
    step, bad_epochs = int(state["step"]), int(state["bad_epochs"])
    resume_batch = int(state["batch_in_epoch"])
    steps_per_epoch = math.ceil(len(dataset.train) / config.batch_size)

    def save(epoch_done: int, batch_in_epoch: int) -> None:
        manager.save(step, args=ocp.args.StandardSave(
            {"params": params, "opt_state": opt_state, "best_params": best_params,
             **_counters(epoch_done, step, best_auc, bad_epochs, batch_in_epoch)}), force=True)
        manager.wait_until_finished()
        if distributed.is_primary():
            (Path(out_dir) / "history.json").write_text(json.dumps(history, indent=1))

    def check_finite(value: float, epoch: int) -> None:
        if not math.isfinite(value):
            raise AfmError(f"training loss became {value} in epoch {epoch + 1} (step {step}); "
                           "lower the learning rate or check the inputs. The last good "
                           "checkpoint is kept" + (f" in {out_dir}." if out_dir else "."))

    def validate(tag: str) -> dict:
        res = evaluate(scorer, params, dataset.valid, mesh=mesh)
        res.update(tag=tag, step=step)
        return res

    for epoch in range(int(state["epoch"]), config.epochs):
        if bad_epochs >= config.patience:
            break
        start = resume_batch if epoch == int(state["epoch"]) else 0
        seed = config.seed * 100_003 + epoch
        if mesh is None:
            batches = iterate_batches(dataset.train, config.batch_size, shuffle=True,
                                      seed=seed, start_batch=start, pad_last=True)
        else:  # the same rows, each process reading only its own devices' share
            batches = distributed.global_batches(dataset.train, config.batch_size, mesh,
                                                 shuffle=True, seed=seed, start_batch=start)
        bar = tqdm(batches, total=steps_per_epoch, initial=start,
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        loss_sum, loss_n = jnp.zeros(()), 0
        for i, batch in enumerate(bar, start=start):
            params, opt_state, loss = step_fn(params, opt_state, batch)
            loss_sum, loss_n, step = loss_sum + loss, loss_n + 1, step + 1
            if step % config.log_every == 0:
                check_finite(float(loss_sum), epoch)
                bar.set_postfix(loss=f"{float(loss_sum) / loss_n:.4f}")
            if config.eval_every and step % config.eval_every == 0:
                history.append(validate(f"step {step}"))
            if (manager is not None and config.checkpoint_every
                    and step % config.checkpoint_every == 0 and i + 1 < steps_per_epoch):
                check_finite(float(loss_sum), epoch)
                save(epoch, i + 1)
        check_finite(float(loss_sum), epoch)
        res = validate(f"epoch {epoch + 1}")
        res["train_loss"] = float(loss_sum) / max(loss_n, 1)
        history.append(res)
        if progress and distributed.is_primary():
            tqdm.write(f"epoch {epoch + 1}: train loss {res['train_loss']:.4f}  valid AUC "
                       f"{res['auc']:.4f}  logloss {res['logloss']:.4f}")
        if res["auc"] > best_auc:
            best_auc, bad_epochs = res["auc"], 0
            best_params = jax.tree.map(jnp.copy, params)  # params buffers are donated next step
        else:
            bad_epochs += 1
        if manager is not None:
            save(epoch + 1, 0)

    seconds = time.perf_counter() - t_start
    best_valid = next((h for h in history if h["auc"] == best_auc), {"auc": best_auc})
    if out_dir is not None:
        meta = {"train_config": dataclasses.asdict(config), "best_valid": best_valid,
                **(extra_meta or {})}
        save_model_dir(out_dir, model, best_params if mesh is None else
                       distributed.host_params(best_params, model.info),
                       encoder=getattr(dataset, "encoder", None), extra=meta)
    return TrainResult(params=best_params, best_valid=best_valid, history=history,
                       seconds=seconds)
