"""Training loop: optax Adam, binary cross-entropy, early stopping on validation AUC, orbax resume."""

from __future__ import annotations

import contextlib
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

from afm_jax import rowwise
from afm_jax._cache import cache_per_model
from afm_jax.errors import AfmError
from afm_jax.inference import evaluate, logits_fn, make_scorer
from afm_jax.ops import batch_loss
from afm_jax.packing import pack, unpack
from afm_jax.pooling import example_input, model_inputs


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
    table_optimizer: str = "auto"   # tables: "rowwise" (lazy Adam), "rowwise_adagrad", "dense",
                                    # "auto" (`rowwise.resolve`: table rows against the
                                    # batch's dedupe slots)
    table_learning_rate: float | None = None  # row-wise tables' rate (None: learning_rate)


@dataclass
class TrainResult:
    params: Any                  # the best params (by validation AUC)
    best_valid: dict
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def init_params(model, info, seed: int = 0) -> Any:
    """Fresh params for one example of the fields in `info`."""
    num = jnp.zeros((len(info.num_names),), jnp.float32)
    return model.init(jax.random.key(seed), example_input(info), num)["params"]


def embedding_l2(params: Any, cat: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Mean over the batch (weighted by `weight` [B], 0 for padding rows) of the squared norm of
    the embedding rows it reads. cat: [B, Fc], or with bags the model input
    (`pooling.model_inputs`); a bag's padding reads nothing. The tables must be packed (`packing.pack`, as
    `train` trains them); a model without embedding tables has no L2 (0)."""
    from afm_jax.forms import is_packed
    from afm_jax.packing import rows_l2

    tables = params.get("embed", {}) if isinstance(params, dict) else {}
    if not tables:
        return jnp.zeros(())
    if not is_packed(tables):
        raise AfmError("embed_l2 needs packed embedding tables: pass packing.pack(model, params)")
    return rows_l2(tables, cat, weight)


def make_train_step(model, tx: optax.GradientTransformation, embed_l2: float = 0.0):
    """Jitted `(params, opt_state, batch) -> (params, opt_state, loss)`, donating its state.

    A batch may carry "weight" [B] (0 for padding rows): the loss (and the embedding L2) is then
    the weighted mean, so a padded last batch trains like the short one without a second
    compilation. embed_l2 > 0 needs packed params (`embedding_l2`).
    """
    logits = logits_fn(model)

    def loss_fn(params, batch):
        loss = batch_loss(logits(params, batch), batch)
        reg = (embed_l2 * embedding_l2(params, model_inputs(batch), batch.get("weight"))
               if embed_l2 else 0.0)
        return loss + reg, loss

    @partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batch):
        (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


@cache_per_model(16)
def _adam_step(model, learning_rate: float, embed_l2: float, table_optimizer: str = "dense",
               table_learning_rate: float | None = None):
    """The train step, cached per (model, learning rate, L2, table optimizer): a second `train`
    call in the same process (another run, a resume, a benchmark round) reuses the compiled
    step. Tables are updated row-wise (`rowwise.make_step`) or by dense Adam with the rest."""
    if table_optimizer == "dense":
        return make_train_step(model, optax.adam(learning_rate), embed_l2)
    return rowwise.make_step(model, learning_rate, table_optimizer, embed_l2,
                             table_learning_rate=table_learning_rate)


def _counters(epoch: int, step: int, best_auc: float, bad_epochs: int,
              batch_in_epoch: int = 0, epoch_loss_sum: Any = 0.0, epoch_loss_n: int = 0
              ) -> dict[str, np.ndarray]:
    """The loop's scalars as 0-d arrays (what orbax saves), float32/int32 as JAX runs them.

    epoch: epochs finished; batch_in_epoch: batches of the next epoch already trained, and
    epoch_loss_sum (float32, as the loop sums it) / epoch_loss_n the sum and count of their
    losses, so that a run resumed mid-epoch reports the same epoch train_loss.
    """
    return {"epoch": np.array(epoch, np.int32), "step": np.array(step, np.int32),
            "best_auc": np.array(best_auc, np.float32),
            "bad_epochs": np.array(bad_epochs, np.int32),
            "batch_in_epoch": np.array(batch_in_epoch, np.int32),
            "epoch_loss_sum": np.array(epoch_loss_sum, np.float32),
            "epoch_loss_n": np.array(epoch_loss_n, np.int32)}


def _exact_best_auc(saved: np.float32, history: list[dict]) -> float:
    """The best validation AUC as the loop held it (float64), from the float32 one a checkpoint
    holds: the epoch entry of the history (JSON, float64) that rounds to it. Comparing the
    float32 value with the float64 history would lose the best entry's record and shift the
    "did this epoch improve?" decisions after a resume."""
    for h in history:
        if "train_loss" in h and np.float32(h["auc"]) == saved:
            return float(h["auc"])
    return float(saved)


def _state_manager(out_dir: Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        (out_dir / "state").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False))


@dataclass
class _Loop:
    """What the training loop carries from step to step; a checkpoint holds all but history."""

    params: Any
    opt_state: Any
    best_params: Any = None      # own buffers (the step donates the params'); None until the
                                 # first validation, so a fresh run holds one copy of the tables
    best_auc: float = -1.0
    step: int = 0
    bad_epochs: int = 0
    epoch: int = 0               # epochs finished
    batch_in_epoch: int = 0      # batches of the next epoch already trained
    epoch_loss_sum: Any = 0.0    # float32 sum of those batches' losses (a device scalar while
    epoch_loss_n: int = 0        # the epoch runs) and their count
    history: list[dict] = field(default_factory=list)

    def checkpoint(self, epoch_done: int, batch_in_epoch: int) -> dict[str, Any]:
        return {"params": self.params, "opt_state": self.opt_state, "best_params": self.best(),
                **_counters(epoch_done, self.step, self.best_auc, self.bad_epochs, batch_in_epoch,
                            self.epoch_loss_sum, self.epoch_loss_n)}

    def best(self) -> Any:
        """The best params so far; before any validation, the params as they are."""
        return self.params if self.best_params is None else self.best_params

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], history: list[dict]) -> _Loop:
        return cls(params=state["params"], opt_state=state["opt_state"],
                   best_params=state["best_params"],
                   best_auc=_exact_best_auc(np.float32(state["best_auc"]), history),
                   step=int(state["step"]), bad_epochs=int(state["bad_epochs"]),
                   epoch=int(state["epoch"]), batch_in_epoch=int(state["batch_in_epoch"]),
                   epoch_loss_sum=np.float32(state["epoch_loss_sum"]),
                   epoch_loss_n=int(state["epoch_loss_n"]),
                   history=history)


@dataclass(frozen=True)
class _Run:
    """What stays fixed while the loop runs."""

    model: Any
    dataset: Any
    config: TrainConfig
    mesh: Any
    out_dir: Path | None                   # where the run writes: out_dir's .partial sibling
    manager: ocp.CheckpointManager | None  # with an out_dir
    progress: bool
    step_fn: Any                           # the jitted Adam step (`_adam_step`)
    lockstep: bool                         # wait for each step (`distributed.lockstep`)
    scorer: Any                            # the jitted validation scorer (`make_scorer`)


def _start(model, info, config: TrainConfig, params: Any, mesh, shard_embeddings: bool) -> _Loop:
    """Fresh params (or a copy of the given ones) and Adam state, placed on the mesh."""
    from afm_jax import distributed

    if params is None:
        params = init_params(model, info, config.seed)
    else:  # the step donates its inputs' buffers: train a copy, keep the caller's params intact
        params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    params = pack(model, params)  # train in the packed layout: one gather per table width
    if mesh is not None:
        params = distributed.shard_params(params, mesh, shard_embeddings)
    if config.table_optimizer == "dense":
        opt_state = optax.adam(config.learning_rate).init(params)
        if mesh is not None:
            opt_state = distributed.place_like(opt_state, params)
    else:  # row slots take their tables' shardings; the dense Adam state is replicated
        opt_state = rowwise.init(params, config.learning_rate, config.table_optimizer)
        if mesh is not None:
            opt_state = opt_state._replace(
                dense=jax.device_put(opt_state.dense, distributed.replicated(mesh)),
                count=jax.device_put(opt_state.count, distributed.replicated(mesh)))
    return _Loop(params=params, opt_state=opt_state)


def _restore(run: _Run, loop: _Loop) -> _Loop:
    """The loop as the last checkpoint in run.out_dir left it, or `loop` when there is none."""
    from afm_jax import distributed
    from afm_jax.checkpoint import discarding_closed_loop_reports

    latest = run.manager.latest_step()
    if latest is None:
        return loop
    target = loop.checkpoint(loop.epoch, loop.batch_in_epoch)
    if run.mesh is not None:  # orbax restores every array onto its mesh sharding
        target = {k: v if k in ("params", "opt_state", "best_params")
                  else distributed.from_host(v, distributed.replicated(run.mesh))
                  for k, v in target.items()}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        with discarding_closed_loop_reports():
            state = run.manager.restore(latest, args=ocp.args.StandardRestore(abstract))
    except Exception as e:
        raise AfmError(f"{run.out_dir / 'state'}: cannot resume from epoch {latest} "
                       f"({type(e).__name__}: {e}); was it written for another model "
                       f"or config? Remove {run.out_dir} to start afresh, or choose "
                       "another out_dir.",
                       cli=f"{run.out_dir / 'state'}: cannot resume from epoch {latest} "
                           f"({type(e).__name__}); was it written for another model or "
                           f"config? Remove {run.out_dir} to start afresh, or choose "
                           "another --out.") from e
    hist_path = run.out_dir / "history.json"
    history = json.loads(hist_path.read_text()) if hist_path.exists() else []
    if run.progress:
        tqdm.write(f"resuming {run.out_dir} after epoch {int(state['epoch'])}")
    return _Loop.from_checkpoint(state, history)


def _save(run: _Run, loop: _Loop, epoch_done: int, batch_in_epoch: int) -> None:
    """Checkpoint the loop (orbax, every process) and its history (process 0)."""
    from afm_jax import distributed

    state = loop.checkpoint(epoch_done, batch_in_epoch)
    # every step dispatched so far finishes here, on this thread: orbax's own threads then
    # only copy finished buffers to the host and never race a step's collectives
    jax.block_until_ready(state)
    run.manager.save(loop.step, args=ocp.args.StandardSave(state), force=True)
    run.manager.wait_until_finished()
    if distributed.is_primary():
        (run.out_dir / "history.json").write_text(json.dumps(loop.history, indent=1))


def _check_finite(run: _Run, loop: _Loop, value: float, epoch: int) -> None:
    if not math.isfinite(value):
        raise AfmError(f"training loss became {value} in epoch {epoch + 1} (step {loop.step}); "
                       "lower the learning rate or check the inputs. The last good "
                       "checkpoint is kept" + (f" (in {run.out_dir}, or the finished run's "
                                               "directory); the same call resumes from it."
                                               if run.out_dir else "."))


def _current(run: _Run, loop: _Loop) -> Any:
    """The params as they stand: with row-wise lazy Adam, every row's pending momentum tail
    applied (`rowwise.settle`, new buffers), as dense Adam would have them; otherwise
    loop.params themselves (which the next step donates: copy them to keep them)."""
    c = run.config
    if c.table_optimizer == "dense":
        return loop.params
    return rowwise.settle(loop.params, loop.opt_state, c.learning_rate, c.table_optimizer,
                          table_learning_rate=c.table_learning_rate)


def _validate(run: _Run, loop: _Loop, tag: str, params: Any) -> dict:
    res = evaluate(run.scorer, params, run.dataset.valid, mesh=run.mesh)
    res.update(tag=tag, step=loop.step)
    return res


def _train_epoch(run: _Run, loop: _Loop, epoch: int, start: int) -> float:
    """Train epoch `epoch` from its batch `start` on; returns its mean training loss."""
    from afm_jax.data.batching import host_batches, place_batch, prefetch

    config = run.config
    steps_per_epoch = math.ceil(len(run.dataset.train) / config.batch_size)
    batches = host_batches(run.dataset.train, config.batch_size, shuffle=True,
                           seed=config.seed * 100_003 + epoch, start_batch=start,
                           pad_last=True, mesh=run.mesh)
    # resumed mid-epoch: continue the float32 sum of the batches before the checkpoint
    loss_sum, loss_n = ((jnp.asarray(loop.epoch_loss_sum, jnp.float32), loop.epoch_loss_n) if start
                        else (jnp.zeros(()), 0))
    # a thread cuts the next host batches while the step runs; this thread places each one
    # (an asynchronous transfer) right before its step, so only this thread touches devices
    with prefetch(batches, size=2, place=partial(place_batch, mesh=run.mesh)) as batches:
        bar = tqdm(batches, total=steps_per_epoch, initial=start,
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not run.progress, leave=False)
        for i, batch in enumerate(bar, start=start):
            loop.params, loop.opt_state, loss = run.step_fn(loop.params, loop.opt_state, batch)
            if run.lockstep:
                loss.block_until_ready()
            loss_sum, loss_n, loop.step = loss_sum + loss, loss_n + 1, loop.step + 1
            if loop.step % config.log_every == 0:
                _check_finite(run, loop, float(loss_sum), epoch)
                bar.set_postfix(loss=f"{float(loss_sum) / loss_n:.4f}")
            if config.eval_every and loop.step % config.eval_every == 0:
                loop.history.append(_validate(run, loop, f"step {loop.step}",
                                              _current(run, loop)))
            if (run.manager is not None and config.checkpoint_every
                    and loop.step % config.checkpoint_every == 0 and i + 1 < steps_per_epoch):
                _check_finite(run, loop, float(loss_sum), epoch)
                loop.epoch_loss_sum, loop.epoch_loss_n = loss_sum, loss_n
                _save(run, loop, epoch, i + 1)
    _check_finite(run, loop, float(loss_sum), epoch)
    loop.epoch_loss_sum, loop.epoch_loss_n = 0.0, 0
    return float(loss_sum) / max(loss_n, 1)


def _run_epochs(run: _Run, loop: _Loop) -> None:
    """The remaining epochs (the first from where a resumed run stopped), each validated, the
    best params kept, a checkpoint after each; stops early after `patience` bad epochs."""
    from afm_jax import distributed

    first = loop.epoch
    for epoch in range(first, run.config.epochs):
        if loop.bad_epochs >= run.config.patience:
            break
        train_loss = _train_epoch(run, loop, epoch, loop.batch_in_epoch if epoch == first else 0)
        current = _current(run, loop)
        res = _validate(run, loop, f"epoch {epoch + 1}", current)
        res["train_loss"] = train_loss
        loop.history.append(res)
        if run.progress and distributed.is_primary():
            tqdm.write(f"epoch {epoch + 1}: train loss {res['train_loss']:.4f}  valid AUC "
                       f"{res['auc']:.4f}  logloss {res['logloss']:.4f}")
        if res["auc"] > loop.best_auc:
            loop.best_auc, loop.bad_epochs = res["auc"], 0
            # own buffers: the step donates (frees) the params' buffers
            loop.best_params = (jax.tree.map(jnp.copy, current) if current is loop.params
                                else current)
        else:
            loop.bad_epochs += 1
        del current
        if run.manager is not None:
            _save(run, loop, epoch + 1, 0)


def _finish(run: _Run, loop: _Loop, best_valid: dict, extra_meta: dict | None,
            final: Path) -> None:
    """Write the model directory: the best params (trimmed to host) with model.json/encoder.json
    into the run's working directory, which is then renamed to `final` (replacing it)."""
    from afm_jax import distributed
    from afm_jax.checkpoint import write_model_dir
    from afm_jax.outputs import commit

    meta = {"train_config": dataclasses.asdict(run.config), "best_valid": best_valid,
            **(extra_meta or {})}
    best = loop.best() if run.mesh is None else distributed.host_params(loop.best(),
                                                                       run.model.info)
    write_model_dir(run.out_dir, run.model, unpack(run.model, best),
                    encoder=getattr(run.dataset, "encoder", None), extra=meta)
    distributed.sync("afm_jax.train.written")
    if distributed.is_primary():
        commit(run.out_dir, final, overwrite=True)
    distributed.sync("afm_jax.train.renamed")


def _working_dir(out: Path, overwrite: bool) -> Path:
    """The directory a run with `out_dir=out` writes into: `out.partial` (`outputs.partial_path`),
    renamed to `out` when the run completes, so `out` is never half written and a failed or
    killed run leaves `out` as it was. An interrupted run's `out.partial` is resumed from; else,
    unless `overwrite`, a finished `out`'s checkpoints and history are copied in to resume from
    (a longer run in the same directory)."""
    import shutil

    from afm_jax import distributed
    from afm_jax.outputs import partial_path

    work = partial_path(out)
    if distributed.is_primary():
        has_steps = lambda d: d.is_dir() and any(p.name.isdigit() for p in d.iterdir())  # noqa: E731
        if not has_steps(work / "state") and not overwrite and has_steps(out / "state"):
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(out / "state", work / "state")
            if (out / "history.json").is_file():
                shutil.copy2(out / "history.json", work / "history.json")
        work.mkdir(parents=True, exist_ok=True)
    distributed.sync("afm_jax.train.working_dir")
    return work


def train(model, dataset, config: TrainConfig = TrainConfig(), *, out_dir: str | None = None,
          params: Any = None, progress: bool = True, extra_meta: dict | None = None,
          mesh=None, shard_embeddings: bool = False, overwrite: bool = False) -> TrainResult:
    """Train `model` on dataset.train, early-stopping on dataset.valid AUC.

    With `out_dir`, the training state is checkpointed after every epoch (orbax) and the best
    params with model.json/encoder.json are written, so the directory alone can be reloaded;
    a second call with the same `out_dir` resumes after the last finished epoch. The run writes
    into `out_dir`'s sibling `OUT.partial` and renames it to `out_dir` when complete: a failed
    or killed run leaves `out_dir` as it was and its checkpoints in `OUT.partial`, where the
    next call resumes. overwrite: do not resume from a finished `out_dir` (train afresh and
    replace it; an interrupted run's `OUT.partial` is still resumed).

    mesh: data-parallel over a `jax.sharding.Mesh` (`afm_jax.distributed.make_mesh`): each
    global batch (the same rows as without a mesh) is sharded over "data", gradients are reduced
    by the compiler; `shard_embeddings` row-shards the embedding tables over "model". In a
    multi-process run each process reads only its devices' rows, and only process 0 writes
    model.json and history (orbax writes the checkpoints from every process). The returned
    params stay on the mesh. Training runs in the packed layout (`packing.pack`) and so do its
    checkpoints; the returned params and the model directory are per-field.
    """
    from afm_jax import distributed

    config = dataclasses.replace(
        config, table_optimizer=rowwise.resolve(config.table_optimizer, dataset.info,
                                              config.batch_size))
    t_start = time.perf_counter()
    loop = _start(model, dataset.info, config, params, mesh, shard_embeddings)
    out = None if out_dir is None else Path(out_dir)
    work = None if out is None else _working_dir(out, overwrite)
    # the manager's threads and files are released however training ends, before the rename
    with contextlib.nullcontext(None) if work is None else _state_manager(work) as manager:
        run = _Run(model, dataset, config, mesh, work, manager,
                   progress, _adam_step(model, config.learning_rate, config.embed_l2,
                                        config.table_optimizer, config.table_learning_rate),
                   distributed.lockstep(mesh), make_scorer(model, mesh))
        if run.manager is not None:
            loop = _restore(run, loop)
        _run_epochs(run, loop)
        seconds = time.perf_counter() - t_start
        best_valid = next((h for h in loop.history if h["auc"] == loop.best_auc), {"auc": loop.best_auc})
    if out is not None:
        _finish(run, loop, best_valid, extra_meta, out)
    return TrainResult(params=unpack(model, loop.best()), best_valid=best_valid,
                       history=loop.history,
                       seconds=seconds)
