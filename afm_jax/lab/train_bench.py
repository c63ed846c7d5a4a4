"""Training-speed benchmark: a whole afm_jax epoch against the bare jitted step and torch peers.

Everything runs in one process on the same training rows (encoded once), alternating the
contenders over several rounds so machine noise hits them all alike:

- ``afm_jax epoch``: ``afm_jax.train.train(model, ds, TrainConfig(epochs=1, batch_size=B))``,
  the public entry point: data feeding, shuffling, loss logging and the end-of-epoch validation
  pass included (also reported without the validation, timed on its own with a fresh scorer as
  train() builds one);
- ``bare step``: train()'s own step (packed params, default table optimizer) over a list of
  device_put batches
  (the same rows, pre-shuffled, warm): the ceiling for our own loop;
- ``DeepCTR-Torch`` 0.3.0 ``model.fit(x, y, batch_size=B, epochs=1, verbose=0)`` (optional);
- ``FuxiCTR`` 2.3.10 ``BaseModel.fit`` with DeepFM / DCNv2 assembled from its own layers
  (optional; its fit validates at the end of the epoch, as ours does).

The peers come with ``pip install afm-jax[bench]``; a peer that is not installed or fails is
left out, and the result says why.

Peak memory is the peak resident-set size of the process during a run minus the RSS just before
it, sampled every 5 ms from /proc/self/statm (so it covers XLA's and torch's native buffers,
which tracemalloc does not see).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os
import tempfile
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from afm_jax._cache import KeyedCache
from afm_jax.data import iterate_batches
from afm_jax.data.batching import to_device
from afm_jax.data.dataset import EncodedSplit
from afm_jax.inference import evaluate, make_scorer
from afm_jax.models import build_model
from afm_jax.packing import pack
from afm_jax.timing import median_seconds
from afm_jax.train import TrainConfig, init_params, train

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the high-water mark (coarser)
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _PeakRSS:
    """Peak RSS increase (bytes) over the `with` block, sampled by a thread."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.base = self.peak_abs = _rss()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak_abs = max(self.peak_abs, _rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak_abs = max(self.peak_abs, _rss())
        self.peak = self.peak_abs - self.base


def subsample(dataset, max_rows: int | None):
    """The dataset with only its first `max_rows` training rows (deterministic)."""
    if max_rows is None or max_rows >= len(dataset.train):
        return dataset
    t = dataset.train
    return replace(dataset, train=EncodedSplit(np.asarray(t.cat[:max_rows]),
                                               np.asarray(t.num[:max_rows]),
                                               np.asarray(t.label[:max_rows])))


def in_memory(dataset):
    """The splits as plain in-memory numpy arrays (a memmap cache is read once, for everyone)."""
    def load(s):
        return EncodedSplit(np.ascontiguousarray(s.cat), np.ascontiguousarray(s.num),
                            np.ascontiguousarray(s.label))
    return replace(dataset, train=load(dataset.train), valid=load(dataset.valid),
                   test=load(dataset.test))


# ------------------------------------------------------------------- feeding: epoch vs bare step

def epoch_vs_bare_step(model, ds, batch_size: int = 1024, rounds: int = 5, seed: int = 0,
                       config: TrainConfig | None = None,
                       variants: Mapping[str, Callable[[], contextlib.AbstractContextManager]]
                       | None = None, mesh=None) -> dict:
    """How close a warm training epoch comes to its bare step, the feeding overhead alone.

    Inside one `train()` call (so the very step function, params layout and optimizer state
    train() builds): train's own `_train_epoch` (shuffle, cut, feed, loss checks) against the
    bare step, that step function over the same batches (`iterate_batches(pad_last=True)` with
    the epoch's seed) placed on the device beforehand. Every contender runs once untimed (warm),
    then `rounds` times, alternating, the order rotated each round. variants: epoch contenders,
    each run inside its context (e.g. one that patches the feeding); default one, "warm epoch".
    mesh: train data-parallel over it (batches sharded on "data"), the bare step's batches too.

    Returns {"rows", "batch_size", "rows_s": {name: [per round]}, "ratio": {name: [per round:
    epoch rows/s / that round's bare-step rows/s]}, "ratio_median": {name: median}}.
    """
    train_module = importlib.import_module("afm_jax.train")
    cfg = config or TrainConfig(epochs=1, batch_size=batch_size, seed=seed)
    variants = dict(variants or {"warm epoch": contextlib.nullcontext})
    inner = train_module._train_epoch
    result: dict = {}

    def measure(run, loop, epoch, start):
        split = run.dataset.train
        n = len(split)
        placed = [to_device(b) for b in iterate_batches(
            split, cfg.batch_size, shuffle=True, seed=cfg.seed * 100_003 + epoch, pad_last=True,
            mesh=run.mesh)]
        jax.block_until_ready(placed)

        def bare():
            for b in placed:
                loop.params, loop.opt_state, loss = run.step_fn(loop.params, loop.opt_state, b)
                if run.lockstep:  # as train's loop does (see distributed.lockstep)
                    loss.block_until_ready()
            jax.block_until_ready((loop.params, loss))

        def epoch_in(context):
            def go():
                with context():
                    inner(run, loop, epoch, 0)
                jax.block_until_ready(loop.params)
            return go

        fns = {"bare step": bare, **{k: epoch_in(c) for k, c in variants.items()}}
        for fn in fns.values():  # warm: compile, first touch of the pages
            fn()
        names = list(fns)
        rows_s: dict[str, list[float]] = {k: [] for k in names}
        for r in range(rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                fns[k]()
                rows_s[k].append(n / (time.perf_counter() - t0))
        ratio = {k: [a / b for a, b in zip(rows_s[k], rows_s["bare step"])] for k in variants}
        result.update(rows=n, batch_size=cfg.batch_size, rows_s=rows_s, ratio=ratio,
                      ratio_median={k: float(np.median(v)) for k, v in ratio.items()})
        return 0.0

    train_module._train_epoch = measure
    try:
        train_module.train(model, ds, cfg, progress=False, mesh=mesh)
    finally:
        train_module._train_epoch = inner
    return result


def format_epoch_vs_bare_step(result: dict) -> str:
    """One line per epoch contender: median rows/s, and its ratio to the bare step."""
    bare = np.median(result["rows_s"]["bare step"])
    lines = [f"bare step: {bare:,.0f} rows/s (median of {len(result['rows_s']['bare step'])} rounds, "
             f"{result['rows']:,} rows, batch {result['batch_size']})"]
    for k, ratios in result["ratio"].items():
        lines.append(f"{k}: {np.median(result['rows_s'][k]):,.0f} rows/s, warm epoch / bare step "
                     f"{result['ratio_median'][k]:.1%} (median of per-round ratios; rounds "
                     + ", ".join(f"{x:.2f}" for x in ratios) + ")")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- contenders

def _afm_epoch(model, ds, bs: int, seed: int) -> dict:
    t0 = time.perf_counter()
    res = train(model, ds, TrainConfig(epochs=1, batch_size=bs, seed=seed), progress=False)
    total = time.perf_counter() - t0
    # the validation pass as train() runs it: a fresh scorer (so its compile) + evaluate
    t1 = time.perf_counter()
    evaluate(make_scorer(model), pack(model, res.params), ds.valid)
    val_cold = time.perf_counter() - t1
    t2 = time.perf_counter()
    ev = evaluate(make_scorer(model), pack(model, res.params), ds.valid)  # cached compile
    val_warm = time.perf_counter() - t2
    return {"seconds": total, "valid_seconds": val_cold, "valid_warm_seconds": val_warm,
            "valid_auc": res.best_valid.get("auc"), "check_auc": ev["auc"]}


def _bare_step(model, ds, bs: int, seed: int) -> dict:
    """train()'s own step (packed params, its default table optimizer) over device batches."""
    from afm_jax import rowwise
    from afm_jax.train import _adam_step, _start

    cfg = TrainConfig(batch_size=bs, seed=seed)
    cfg = dataclasses.replace(cfg, table_optimizer=rowwise.resolve(cfg.table_optimizer, ds.info,
                                                                       bs))
    loop = _start(model, ds.info, cfg, None, None, False)
    params, opt_state = loop.params, loop.opt_state
    step = _adam_step(model, cfg.learning_rate, cfg.embed_l2, cfg.table_optimizer,
                      cfg.table_learning_rate)
    batches = [jax.device_put(b) for b in
               iterate_batches(ds.train, bs, shuffle=True, seed=seed, pad_last=True)]
    jax.block_until_ready(batches)
    # compile (every distinct batch shape) outside the timing
    t0 = time.perf_counter()
    shapes = {}
    for b in batches:
        shapes.setdefault(b["cat"].shape[0], b)
    for b in shapes.values():
        params, opt_state, loss = step(params, opt_state, b)
    loss.block_until_ready()
    compile_s = time.perf_counter() - t0
    flops = sum(step_flops(step, params, opt_state, b) for b in batches)
    t0 = time.perf_counter()
    for b in batches:
        params, opt_state, loss = step(params, opt_state, b)
    jax.block_until_ready((params, loss))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "compile_seconds": compile_s, "flops": flops,
            "gflops_s": flops / seconds / 1e9 if flops else None}


def step_flops(step, *args) -> float:
    """XLA's count of floating-point operations in one call of the jitted `step` on `args`
    (compiled cost analysis; 0 where the backend gives none). Cached per argument shapes."""
    key = (step, jax.tree.structure(args),
           tuple((np.shape(x), str(getattr(x, "dtype", ""))) for x in jax.tree.leaves(args)))

    def count() -> float:
        cost = step.lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float((cost or {}).get("flops", 0.0))

    return _FLOPS.get(key, count)


_FLOPS = KeyedCache("afm_jax.lab.train_bench.flops", 256)


def matmul_ceiling(rows: int, width: int = 400, repeats: int = 20) -> float:
    """GFLOP/s of a jitted float32 [rows, width] @ [width, width], the step's own product shape
    (median of `repeats` calls): the machine's measured ceiling for the step's FLOP rate."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(rows, width)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(width, width)), jnp.float32)
    return 2 * rows * width * width / median_seconds(jax.jit(jnp.dot), x, w,
                                                     repeats=repeats) / 1e9


def _deepctr(name: str, ds, bs: int, seed: int, embed_dim: int, mlp) -> dict:
    import torch
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models import DCN, DeepFM

    info = ds.info
    cols = [SparseFeat(n, vocabulary_size=v, embedding_dim=embed_dim)
            for n, v in zip(info.cat_names, info.vocab_sizes)]
    torch.manual_seed(seed)
    if name == "deepfm":
        m = DeepFM(cols, cols, dnn_hidden_units=tuple(mlp), seed=seed, device="cpu")
    else:  # DCNv2: full-matrix cross, 3 layers, MLP in parallel
        m = DCN(cols, cols, cross_num=3, cross_parameterization="matrix",
                dnn_hidden_units=tuple(mlp), seed=seed, device="cpu")
    m.compile("adam", "binary_crossentropy")
    x = {n: np.asarray(ds.train.cat[:, i]) for i, n in enumerate(info.cat_names)}
    y = np.asarray(ds.train.label)
    t0 = time.perf_counter()
    m.fit(x, y, batch_size=bs, epochs=1, verbose=0)
    return {"seconds": time.perf_counter() - t0}


def _fuxi_import():
    """FuxiCTR's pieces; raises ImportError when it (or ray / h5py, which its pip package
    declares and imports at module level) is missing, and run() then leaves it out."""
    import fuxictr
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.layers import CrossNetV2, FactorizationMachine, FeatureEmbedding, MLP_Block
    from fuxictr.pytorch.models import BaseModel
    return types.SimpleNamespace(version=getattr(fuxictr, "__version__", "2.3.10"),
                                 FeatureMap=FeatureMap, BaseModel=BaseModel,
                                 FeatureEmbedding=FeatureEmbedding, MLP_Block=MLP_Block,
                                 FactorizationMachine=FactorizationMachine, CrossNetV2=CrossNetV2)


class _FuxiBatches:
    """FuxiCTR-style generator: dicts of torch tensors per feature, reshuffled every epoch."""

    def __init__(self, split: EncodedSplit, names, bs: int, shuffle: bool, seed: int = 0):
        self.split, self.names, self.bs, self.shuffle, self.seed = split, names, bs, shuffle, seed

    def __len__(self):
        return -(-len(self.split) // self.bs)

    def __iter__(self):
        import torch
        n = len(self.split)
        order = np.random.default_rng(self.seed).permutation(n) if self.shuffle else None
        for s in range(0, n, self.bs):
            idx = slice(s, s + self.bs) if order is None else order[s:s + self.bs]
            cat = torch.from_numpy(np.ascontiguousarray(self.split.cat[idx]).astype(np.int64))
            batch = {f: cat[:, i] for i, f in enumerate(self.names)}
            batch["label"] = torch.from_numpy(np.asarray(self.split.label[idx]))
            yield batch
        self.seed += 1


def _fuxi_model(fx, name: str, fmap, embed_dim: int, mlp, root: str):
    import torch.nn as nn

    common = dict(model_id=f"bench_{name}", gpu=-1, verbose=0, model_root=root,
                  metrics=["AUC", "logloss"], optimizer="adam", loss="binary_crossentropy")

    class FuxiDeepFM(fx.BaseModel):  # FuxiCTR's model-zoo DeepFM, from its layers
        def __init__(self):
            super().__init__(fmap, **common)
            self.embedding_layer = fx.FeatureEmbedding(fmap, embed_dim)
            self.fm = fx.FactorizationMachine(fmap)
            self.mlp = fx.MLP_Block(input_dim=fmap.sum_emb_out_dim(), output_dim=1,
                                    hidden_units=list(mlp), hidden_activations="ReLU",
                                    output_activation=None)
            self.compile(common["optimizer"], common["loss"], 1e-3)
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            emb = self.embedding_layer(X)
            y = self.fm(X, emb) + self.mlp(emb.flatten(start_dim=1))
            return {"y_pred": self.output_activation(y)}

    class FuxiDCNv2(fx.BaseModel):  # FuxiCTR's model-zoo DCNv2 (parallel), from its layers
        def __init__(self):
            super().__init__(fmap, **common)
            d = fmap.sum_emb_out_dim()
            self.embedding_layer = fx.FeatureEmbedding(fmap, embed_dim)
            self.crossnet = fx.CrossNetV2(d, 3)
            self.parallel_dnn = fx.MLP_Block(input_dim=d, output_dim=None, hidden_units=list(mlp),
                                             hidden_activations="ReLU", output_activation=None)
            self.fc = nn.Linear(d + mlp[-1], 1)
            self.compile(common["optimizer"], common["loss"], 1e-3)
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs):
            import torch
            X = self.get_inputs(inputs)
            emb = self.embedding_layer(X, flatten_emb=True)
            out = torch.cat([self.crossnet(emb), self.parallel_dnn(emb)], dim=-1)
            return {"y_pred": self.output_activation(self.fc(out))}

    return FuxiDeepFM() if name == "deepfm" else FuxiDCNv2()


def _fuxictr(name: str, ds, bs: int, seed: int, embed_dim: int, mlp) -> dict:
    import torch
    fx = _fuxi_import()
    info = ds.info
    root = tempfile.mkdtemp(prefix="fuxi_bench_")
    fmap = fx.FeatureMap("bench", root)
    for n, v in zip(info.cat_names, info.vocab_sizes):
        fmap.features[n] = {"type": "categorical", "source": "", "vocab_size": int(v)}
    fmap.labels = ["label"]
    fmap.num_fields = len(info.cat_names)
    fmap.default_emb_dim = embed_dim
    fmap.set_column_index()
    torch.manual_seed(seed)
    m = _fuxi_model(fx, name, fmap, embed_dim, mlp, root)
    os.makedirs(m.model_dir, exist_ok=True)
    train_gen = _FuxiBatches(ds.train, info.cat_names, bs, True, seed)
    valid_gen = _FuxiBatches(ds.valid, info.cat_names, 8192, False)
    t0 = time.perf_counter()
    m.fit(train_gen, epochs=1, validation_data=valid_gen)
    total = time.perf_counter() - t0
    t1 = time.perf_counter()
    m.evaluate(valid_gen)
    return {"seconds": total, "valid_seconds": time.perf_counter() - t1}


def peer_versions() -> dict[str, str | None]:
    out = {}
    try:
        import deepctr_torch
        out["deepctr"] = deepctr_torch.__version__
    except Exception:
        out["deepctr"] = None
    try:
        out["fuxictr"] = _fuxi_import().version
    except Exception as e:  # noqa: BLE001
        out["fuxictr"] = None
        out["fuxictr_error"] = f"{type(e).__name__}: {e}"
    try:
        import torch
        out["torch"] = torch.__version__
    except Exception:
        out["torch"] = None
    return out


# --------------------------------------------------------------------------------------- run

def _summary(xs: list[float]) -> dict:
    a = np.asarray(xs, float)
    med = float(np.median(a))
    return {"median": med, "min": float(a.min()), "max": float(a.max()),
            "spread": float((a.max() - a.min()) / med) if med else 0.0, "n": len(xs)}


def run(dataset, models=("deepfm", "dcnv2"), batch_sizes=(1024, 4096), rounds: int = 3,
        peers=("deepctr", "fuxictr"), max_rows: int | None = None, embed_dim: int = 16,
        mlp: tuple[int, ...] = (400, 400, 400), progress: bool = True,
        extras: bool = False) -> dict:
    """All measurements as a dict: per (model, batch) and contender, rows/s per round and summary.

    rows/s are training rows / wall seconds of the whole call (validation excluded only where
    named so). Contenders alternate within every round, and their order rotates each round.
    """
    ds = in_memory(subsample(dataset, max_rows))
    n = len(ds.train)
    versions = peer_versions() if peers else {}
    use = [p for p in peers if versions.get(p)]
    skipped = {p: versions.get(f"{p}_error", "not installed") for p in peers if p not in use}
    built = {name: build_model(name, ds.info, embed_dim=embed_dim, mlp=tuple(mlp))
             for name in models}
    contenders: dict[str, Callable[..., dict]] = {
        "afm_jax epoch": lambda name, bs, seed: _afm_epoch(built[name], ds, bs, seed),
        "bare step": lambda name, bs, seed: _bare_step(built[name], ds, bs, seed)}
    if "deepctr" in use:
        contenders["DeepCTR-Torch fit"] = lambda name, bs, seed: _deepctr(
            name, ds, bs, seed, embed_dim, mlp)
    if "fuxictr" in use:
        contenders["FuxiCTR fit"] = lambda name, bs, seed: _fuxictr(
            name, ds, bs, seed, embed_dim, mlp)
    names = list(contenders)
    raw: dict[tuple, list[dict]] = {}
    failed: dict[str, str] = {}
    bar = tqdm(total=rounds * len(models) * len(batch_sizes) * len(names), desc="train bench",
               disable=not progress)
    for r in range(rounds):
        for name in models:
            for bs in batch_sizes:
                order = names[r % len(names):] + names[:r % len(names)]
                for c in order:
                    if c in failed:
                        continue
                    try:
                        with _PeakRSS() as mem:
                            out = contenders[c](name, bs, r)
                    except Exception as e:  # a peer that breaks is left out, with the reason
                        if c in ("afm_jax epoch", "bare step"):
                            raise
                        failed[c] = f"{type(e).__name__}: {e}"
                        continue
                    out["peak_rss_delta"] = mem.peak
                    out["round"] = r
                    raw.setdefault((name, bs, c), []).append(out)
                    bar.update(1)
    bar.close()

    skipped.update({c: f"failed: {why}" for c, why in failed.items()})
    raw = {k: v for k, v in raw.items() if k[2] not in failed}
    rows = []
    for (name, bs, c), outs in raw.items():
        row = {"model": name, "batch": bs, "contender": c, "rounds": outs,
               "rows_s": _summary([n / o["seconds"] for o in outs]),
               "peak_rss_mib": max(o["peak_rss_delta"] for o in outs) / 2**20}
        if "valid_seconds" in outs[0]:
            row["rows_s_no_valid"] = _summary([n / (o["seconds"] - o["valid_seconds"])
                                               for o in outs])
            row["valid_seconds"] = _summary([o["valid_seconds"] for o in outs])
        if "valid_warm_seconds" in outs[0]:
            row["valid_warm_seconds"] = _summary([o["valid_warm_seconds"] for o in outs])
        if "compile_seconds" in outs[0]:
            row["compile_seconds"] = _summary([o["compile_seconds"] for o in outs])
        if outs[0].get("gflops_s"):
            row["gflops_s"] = _summary([o["gflops_s"] for o in outs])
            row["flops_per_step"] = outs[0]["flops"] / max(1, math.ceil(n / bs))
        rows.append(row)
    result = {"train_rows": n, "valid_rows": len(ds.valid), "models": list(models),
              "batch_sizes": list(batch_sizes), "rounds": rounds, "mlp": list(mlp),
              "embed_dim": embed_dim, "fields": len(ds.info.cat_names),
              "numeric_fields": len(ds.info.num_names), "versions": versions,
              "skipped": skipped, "device": f"{jax.devices()[0].platform}", "rows": rows}
    result["matmul_ceiling_gflops"] = {bs: matmul_ceiling(bs, max(mlp)) for bs in batch_sizes}
    if extras:
        result["extras"] = extra_rates(built, ds)
    return result


def extra_rates(built: dict, ds, finetune_steps: int = 50, rounds: int = 3) -> dict:
    """Rows/s of the statistics pass against the scorer's over the same training rows (both
    in 4096-row batches, warm, alternating, median of `rounds`), and of compress.finetune."""
    from afm_jax.compress import collect_stats
    from afm_jax.compress.finetune import finetune
    from afm_jax.inference import device_params, predict

    out = {}
    n = len(ds.train)
    for name, model in built.items():
        params = init_params(model, ds.info, 0)
        scorer, placed = make_scorer(model), device_params(model, params)

        def stats(model=model, params=params):
            collect_stats(model, params, iterate_batches(ds.train, 4096), progress=False)

        def score(scorer=scorer, placed=placed):
            jax.block_until_ready(predict(scorer, placed, ds.train, batch_size=4096))

        cold = time.perf_counter()
        stats()
        cold = time.perf_counter() - cold
        score()
        runs: dict[str, list[float]] = {"stats": [], "score": []}
        for _ in range(rounds):
            for k, f in (("stats", stats), ("score", score)):
                t0 = time.perf_counter()
                f()
                runs[k].append(time.perf_counter() - t0)
        times = [cold, float(np.median(runs["stats"]))]
        score_rows_s = n / float(np.median(runs["score"]))
        ft = []
        for _ in range(2):
            t0 = time.perf_counter()
            finetune(model, params, ds, finetune_steps, trainable="all", progress=False)
            ft.append(time.perf_counter() - t0)
        # finetune's report evaluates the valid split before and after: time those apart
        scorer = make_scorer(model)
        evaluate(scorer, placed, ds.valid)
        t0 = time.perf_counter()
        evaluate(scorer, placed, ds.valid)
        val = time.perf_counter() - t0
        out[name] = {"stats_rows_s_cold": n / times[0], "stats_rows_s": n / times[1],
                     "score_rows_s": score_rows_s,
                     "finetune_rows_s": finetune_steps * 1024 / ft[1],
                     "finetune_rows_s_no_valid": finetune_steps * 1024 / max(ft[1] - 2 * val,
                                                                             1e-9),
                     "finetune_steps": finetune_steps}
    return out


def _get(result, model, bs, contender):
    return next((r for r in result["rows"] if r["model"] == model and r["batch"] == bs
                 and r["contender"] == contender), None)


def to_markdown(result: dict, command: str, machine: str = "") -> str:
    n = result["train_rows"]
    v = result["versions"]
    lines = [f"# Training-speed benchmark ({machine or result['device']})", "",
             f"Command: `{command}`", "",
             f"{n:,} training rows (same rows, same order of work for every contender), "
             f"{result['valid_rows']:,} validation rows; {result['fields']} categorical fields x "
             f"{result['embed_dim']}, MLP {'-'.join(map(str, result['mlp']))}; "
             f"{result['rounds']} rounds, contenders alternating (order rotated each round). "
             "rows/s = training rows / wall seconds of the whole call; median over rounds, "
             "spread = (max - min) / median. Peak MiB = peak RSS during the call minus RSS "
             "before it (sampled every 5 ms from /proc/self/statm; includes native XLA/torch "
             "buffers; 0 means the call fit in memory the process already held).", ""]
    if v.get("torch"):
        lines.append(f"Peers: torch {v.get('torch')}, DeepCTR-Torch {v.get('deepctr')}, "
                     f"FuxiCTR {v.get('fuxictr')} (CPU). DeepCTR-Torch DCNv2 = "
                     "`DCN(cross_parameterization='matrix', cross_num=3)` (full-matrix cross, "
                     "parallel MLP). FuxiCTR models assembled from its layers "
                     "(FeatureEmbedding, FactorizationMachine / CrossNetV2, MLP_Block) as in its "
                     "model zoo; its fit validates at the end of the epoch like ours.")
    for p, why in result.get("skipped", {}).items():
        lines.append(f"Left out: {p} ({why}).")
    lines += ["", "| model | batch | contender | rows/s median (min-max, spread) | "
              "rows/s w/o validation | peak MiB |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        s = r["rows_s"]
        nv = r.get("rows_s_no_valid")
        lines.append(f"| {r['model']} | {r['batch']} | {r['contender']} | {s['median']:,.0f} "
                     f"({s['min']:,.0f}-{s['max']:,.0f}, {s['spread']:.2f}) | "
                     + (f"{nv['median']:,.0f}" if nv else "-")
                     + f" | {r['peak_rss_mib']:,.0f} |")
    lines += ["", "Ratios (medians):", "",
              "| model | batch | epoch / bare step | epoch w/o valid / bare step | "
              "epoch / DeepCTR-Torch | epoch / FuxiCTR | epoch w/o valid / FuxiCTR w/o valid |",
              "|---|---|---|---|---|---|---|"]
    for m in result["models"]:
        for bs in result["batch_sizes"]:
            ep, bare = _get(result, m, bs, "afm_jax epoch"), _get(result, m, bs, "bare step")
            dc, fx = _get(result, m, bs, "DeepCTR-Torch fit"), _get(result, m, bs, "FuxiCTR fit")
            e, env = ep["rows_s"]["median"], ep["rows_s_no_valid"]["median"]
            cells = [m, str(bs), f"{e / bare['rows_s']['median']:.0%}",
                     f"{env / bare['rows_s']['median']:.0%}",
                     f"{e / dc['rows_s']['median']:.2f}x" if dc else "-",
                     f"{e / fx['rows_s']['median']:.2f}x" if fx else "-",
                     f"{env / fx['rows_s_no_valid']['median']:.2f}x" if fx else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "afm_jax epoch breakdown (medians): validation as train() runs it (fresh "
              "scorer: compile + evaluate), the same warm, and the bare step's compile time. "
              "train() caches its compiled step per (model, learning rate, L2) and pads the "
              "last batch, so only the first round of each cell pays that compile; the "
              "medians over rounds are warm epochs (every round's figure is in the .json):", ""]
    for m in result["models"]:
        for bs in result["batch_sizes"]:
            ep, bare = _get(result, m, bs, "afm_jax epoch"), _get(result, m, bs, "bare step")
            lines.append(f"- {m} batch {bs}: epoch {n / ep['rows_s']['median']:.2f} s, "
                         f"validation {ep['valid_seconds']['median']:.2f} s cold / "
                         f"{ep['valid_warm_seconds']['median']:.2f} s warm, bare-step loop "
                         f"{n / bare['rows_s']['median']:.2f} s + its compile "
                         f"{bare['compile_seconds']['median']:.2f} s")
    ceiling = result.get("matmul_ceiling_gflops")
    if ceiling:
        lines += ["", "Bare step's FLOP rate: XLA's FLOP count of the compiled step (cost "
                  "analysis) x steps / the timed loop, against the measured ceiling: a jitted "
                  "float32 [batch, w] @ [w, w] product, w the widest MLP layer, timed in the "
                  "same run.", "", "| model | batch | GFLOP per step | bare step GFLOP/s | "
                  "matmul ceiling GFLOP/s | share of ceiling |", "|---|---|---:|---:|---:|---:|"]
        for m in result["models"]:
            for bs in result["batch_sizes"]:
                bare = _get(result, m, bs, "bare step")
                top = ceiling.get(bs, ceiling.get(str(bs)))
                if not bare or "gflops_s" not in bare or not top:
                    continue
                rate = bare["gflops_s"]["median"]
                lines.append(f"| {m} | {bs} | {bare['flops_per_step'] / 1e9:.2f} | {rate:.1f} | "
                             f"{top:.1f} | {rate / top:.0%} |")
    if "extras" in result:
        lines += ["", "Other passes (statistics and scorer: warm, alternating, median of 3; "
                  "finetune: second call, 50 steps of 1024, "
                  "trainable='all'; its two validation passes subtracted in the last figure):",
                  ""]
        for m, e in result["extras"].items():
            vs = (f", {e['stats_rows_s'] / e['score_rows_s']:.2f}x the scorer's "
                  f"{e['score_rows_s']:,.0f} rows/s over the same rows" if "score_rows_s" in e
                  else "")
            lines.append(f"- {m}: collect_stats over iterate_batches(train, 4096) "
                         f"{e['stats_rows_s']:,.0f} rows/s (cold {e['stats_rows_s_cold']:,.0f}"
                         f"{vs}); "
                         f"finetune {e['finetune_rows_s']:,.0f} rows/s, "
                         f"{e['finetune_rows_s_no_valid']:,.0f} without its validation")
    return "\n".join(lines) + "\n"
