"""The `afm-jax` command: train CTR models, compress them with AFM, score and benchmark them.

    demo        train LR and DeepFM on synthetic data, AFM-compress DeepFM (a first look)
    train       train a model on a dataset into a model directory (resumable)
    evaluate    AUC and logloss of a model directory on a split
    compress    AFM-compress a model directory (collect -> plan -> map -> fine-tune)
    quantize    int8 storage of a model directory's kernels and tables (per row / channel)
    score       score a file with a model directory (or an ONNX export, by ONNX Runtime) into
                .parquet, .csv or .jsonl, row by row
    export      write a jax.export artifact of a model directory's scorer
    bench       scoring (or, with --train, training) benchmark against PyTorch peers
    experiment  regenerate a results table of experiments/

`afm-jax COMMAND --help` lists a command's options and their defaults. Every command that
reports figures takes --json and then prints one JSON object on its last line. Compiled code is
kept in JAX's persistent compilation cache under the cache root (~/.cache/afm_jax/jax_compile,
or --cache-dir's), so a second run skips most compilation; --no-compile-cache turns that off.
This module parses flags and prints; the work is done by the library (`afm_jax.compress`, ...).
A mistake (a bad plan, contradicting flags, an existing --out without --overwrite, --out equal to
the input) is refused before any work with exit 2 and one line on stderr in flags
(`AfmError.cli`); outputs are written atomically (`afm_jax.outputs`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from afm_jax.errors import AfmError, cli_message


def _data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required,
                   help="criteo:PATH | avazu:PATH | libfm:PATH[,PATH] | movielens:DIR | "
                        "csv:PATH | parquet:PATH | synthetic[:ROWS]")
    p.add_argument("--schema", help="JSON schema file for csv:/parquet: data")
    p.add_argument("--min-count", type=int, help="vocabulary min count (default: per dataset)")
    p.add_argument("--split-by", default="sequential", choices=["sequential", "random"],
                   help="8:1:1 train/valid/test split in file order or by a seeded shuffle")
    p.add_argument("--split-seed", type=int, help="seed of --split-by random (default: 0)")
    _bad_lines_args(p)
    p.add_argument("--max-rows", type=int, help="read only the first N valid rows")
    p.add_argument("--cache-dir", help="cache root: encoded arrays, and compiled code under "
                   "jax_compile/ (default: ~/.cache/afm_jax)")
    _synthetic_vocab_arg(p)


def _bad_lines_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-bad-lines", default="error", choices=["error", "skip"],
                   help="a malformed line stops the run, or is skipped and counted")
    p.add_argument("--max-bad-fraction", type=float, metavar="F",
                   help="with --on-bad-lines skip: stop (exit 2, with the counts) when more than "
                        "this share of the lines read is bad (default: 0.5; every line bad always "
                        "stops)")


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (never the input itself); without it an "
                        "existing --out is refused")


def _int_at_least(text: str, low: int) -> int:
    """An integer >= low from argparse (underscores allowed, e.g. 10_000_000)."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def _max_ranks(text: str) -> int | str:
    """argparse type: "auto" or an integer >= 0."""
    if text == "auto":
        return text
    try:
        return _int_at_least(text, 0)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 0, got {text!r}") from None


def _synthetic_vocab_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--synthetic-vocab", type=_positive_int, metavar="N",
                   help="with --data synthetic[:ROWS]: embedding tables of fixed sizes summing to N "
                        "rows (each table's out-of-vocabulary row 0 included; split over the fields "
                        "like the default vocabulary mix), whatever the row count")
    p.add_argument("--synthetic-bags", metavar="FIELDS[:MEAN_LEN[:MAX_LEN]]",
                   help="with --data synthetic[:ROWS]: add FIELDS multi-valued fields whose "
                        "lengths are Poisson(MEAN_LEN) cut to MAX_LEN (default 5 and 20)")


def _data_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"schema": args.schema, "min_count": args.min_count, "split": args.split_by,
            "seed": args.split_seed or 0, "on_bad_lines": args.on_bad_lines,
            "max_rows": args.max_rows, "cache_dir": args.cache_dir,
            "synthetic_vocab": args.synthetic_vocab,
            "synthetic_bags": args.synthetic_bags,
            **({} if args.max_bad_fraction is None
               else {"max_bad_fraction": args.max_bad_fraction})}


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse flags that contradict each other or are out of range, before any work."""
    def given(name: str) -> Any:
        return getattr(args, name, None)

    if given("max_bad_fraction") is not None:
        if args.on_bad_lines != "skip":
            raise AfmError("--max-bad-fraction applies with --on-bad-lines skip only; add "
                           "--on-bad-lines skip, or drop --max-bad-fraction")
        from afm_jax.data.dataset import check_max_bad_fraction
        check_max_bad_fraction(args.max_bad_fraction)
    if given("split_seed") is not None and getattr(args, "split_by", None) != "random":
        raise AfmError("--split-seed applies with --split-by random only; add --split-by random, "
                       "or drop --split-seed")
    if given("checkpoint_every") and not given("out"):
        raise AfmError("--checkpoint-every needs --out (the checkpoints go there); add --out DIR, "
                       "or drop --checkpoint-every")
    if given("overwrite") and not given("out"):
        raise AfmError("--overwrite needs --out (it replaces that); add --out, or drop --overwrite")
    if given("stats_rows") is not None and given("calibration_rows") is not None:
        raise AfmError("give --calibration-rows (an even sample) or the deprecated --stats-rows "
                       "(the first N rows), not both")
    for flag in ("batch_size", "epochs", "finetune_steps", "checkpoint_every", "eval_every",
                 "patience", "stats_rows", "devices", "model_axis"):
        value = given(flag)
        lowest = 1 if flag in ("batch_size", "epochs", "stats_rows", "devices",
                               "model_axis") else 0
        if value is not None and value < lowest:
            raise AfmError(f"--{flag.replace('_', '-')} must be >= {lowest}, got {value}")
    if given("plan") is not None:
        from afm_jax.compress.plan_spec import parse_plan
        parse_plan(args.plan)
    if given("act") is not None:
        from afm_jax.nn import ACTIVATIONS
        if args.act not in ACTIVATIONS:
            raise AfmError(f"--act {args.act}: unknown activation; choose one of "
                           f"{', '.join(sorted(ACTIVATIONS))}")


def _data_paths(spec: str | None) -> tuple[str, ...]:
    """The files a --data spec reads (checked: a bad spec fails here, before any work)."""
    if not spec:
        return ()
    from afm_jax.data import parse_data_spec
    return parse_data_spec(spec).paths


def _check_out(args: argparse.Namespace, *inputs: str | None) -> None:
    """Refuse --out when it exists (without --overwrite) or is, or holds, an input."""
    from afm_jax.outputs import check_output
    if getattr(args, "out", None):
        check_output(args.out, args.overwrite, inputs, training=args.command == "train")


def _load(spec: str, options: dict[str, Any], progress: bool, encoder=None):
    from afm_jax.data import load_dataset
    return load_dataset(spec, progress=progress, encoder=encoder, **options)


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, default=float))


def _table(rows: list[dict], cols: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"
        return f"{v:,}" if isinstance(v, int) else str(v)
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(x) for x in cells])


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if args.embed_dim is not None:
        kw["embed_dim"] = args.embed_dim
    if args.mlp is not None:
        kw["mlp"] = tuple(int(x) for x in args.mlp.split(",") if x)
    return kw


def _device_args(p: argparse.ArgumentParser) -> None:
    """--devices/--shard-embeddings and the multi-process flags (see afm_jax/distributed.py)."""
    p.add_argument("--devices", type=int,
                   help="local devices to use, batches sharded over them (default: all)")
    p.add_argument("--shard-embeddings", action="store_true",
                   help="row-shard the embedding tables over the mesh's model axis")
    p.add_argument("--model-axis", type=int,
                   help="devices per model group (default: 1; with --shard-embeddings: all)")
    p.add_argument("--coordinator", help="multi-process: HOST:PORT of process 0 "
                   "(or JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=int, help="multi-process: number of processes "
                   "(or JAX_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, help="multi-process: this process, 0.. "
                   "(or JAX_PROCESS_ID)")


def _mesh(args: argparse.Namespace):
    """The mesh of --devices/--model-axis (every local device of every process by default)."""
    import jax

    from afm_jax.distributed import make_mesh

    n_local = args.devices or len(jax.local_devices())
    model_axis = args.model_axis or (n_local if args.shard_embeddings else 1)
    if n_local % model_axis:
        raise AfmError(f"--model-axis {model_axis} does not divide the {n_local} devices per process")
    return make_mesh(n_local, model_axis=model_axis)


def _primary() -> bool:
    from afm_jax.distributed import is_primary
    return is_primary()


def cmd_train(args: argparse.Namespace) -> dict:
    from afm_jax.inference import count_params, device_params, evaluate, make_scorer
    from afm_jax.models import build_model
    from afm_jax.train import TrainConfig, train

    progress = not args.no_progress
    options = _data_options(args)
    _check_out(args, *_data_paths(args.data))
    if args.out and args.overwrite is False and _partial_exists(args.out):
        print(f"note: resuming the unfinished run in {args.out}.partial", file=sys.stderr)
    ds = _load(args.data, options, progress)
    model = build_model(args.model, ds.info, **_model_kwargs(args))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.lr, seed=args.seed, embed_l2=args.embed_l2,
                         patience=args.patience, checkpoint_every=args.checkpoint_every,
                         eval_every=args.eval_every, table_optimizer=args.table_optimizer,
                         table_learning_rate=args.table_lr)
    mesh = _mesh(args)
    res = train(model, ds, config, out_dir=args.out, progress=progress,
                extra_meta={"data": {"spec": args.data, **options}}, mesh=mesh,
                shard_embeddings=args.shard_embeddings, overwrite=args.overwrite)
    test = evaluate(make_scorer(model, mesh),
                    device_params(model, res.params, mesh, args.shard_embeddings), ds.test, mesh=mesh)
    out = {"model": args.model, "data": args.data, "auc": test["auc"],
           "logloss": test["logloss"], "rows": test["rows"],
           "valid_auc": res.best_valid.get("auc"), "params": count_params(res.params),
           "seconds": res.seconds, "out": args.out, "devices": mesh.size,
           "processes": jax_process_count()}
    print(f"{args.model} on {args.data}: test AUC {test['auc']:.4f}  logloss "
          f"{test['logloss']:.4f}  ({test['rows']:,} rows; trained in {res.seconds:.1f}s)")
    return out


def _partial_exists(out: str) -> bool:
    from afm_jax.outputs import partial_path
    return partial_path(out).is_dir()


def jax_process_count() -> int:
    import jax
    return jax.process_count()


def _model_dir_data(args: argparse.Namespace, meta: dict, model_dir: str, progress: bool):
    """The data of --data encoded with the model directory's own encoder."""
    from afm_jax.checkpoint import load_encoder
    saved = meta.get("data", {})
    options = {k: v for k, v in saved.items() if k != "spec"}
    spec = args.data or saved.get("spec")
    if spec is None:
        raise AfmError(f"{model_dir}: no --data given and model.json names none")
    if args.data:
        options.update({k: v for k, v in _data_options(args).items()
                        if v is not None and k not in ("split", "seed", "on_bad_lines")})
        options["on_bad_lines"] = args.on_bad_lines
        if args.max_bad_fraction is None:
            options.pop("max_bad_fraction", None)
    encoder = None
    if Path(model_dir, "encoder.json").is_file():
        encoder = load_encoder(model_dir)
    return _load(spec, options, progress, encoder=encoder)



# inference.PRECISIONS, spelled out so that building the parser does not import jax
PRECISIONS = ("float32", "bfloat16", "int8")


def _precision_arg(p: argparse.ArgumentParser, note: str = "") -> None:
    p.add_argument("--precision", default="float32", choices=PRECISIONS,
                   help="dtype of the scorer's Linear products' inputs: bfloat16 with float32 "
                        "accumulation, or int8 x int8 -> int32 for int8-stored kernels "
                        f"(afm-jax quantize); all else float32{note}")


def _compute_dtype(args: argparse.Namespace) -> str:
    """--precision as make_scorer's compute_dtype ("float32", "bfloat16" or "int8")."""
    return args.precision


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from afm_jax.checkpoint import load_model_dir
    from afm_jax.inference import count_params, device_params, evaluate, make_scorer

    model, params, meta = load_model_dir(args.model_dir)
    ds = _model_dir_data(args, meta, args.model_dir, not args.no_progress)
    split = getattr(ds, args.split)
    mesh = _mesh(args)
    res = evaluate(make_scorer(model, mesh, _compute_dtype(args)),
                   device_params(model, params, mesh, args.shard_embeddings), split, mesh=mesh)
    out = {"model_dir": args.model_dir, "split": args.split, "precision": args.precision,
           "auc": res["auc"], "logloss": res["logloss"], "rows": res["rows"],
           "params": count_params(params), "seconds": res["seconds"]}
    print(f"{args.model_dir} [{args.split}, {args.precision}]: AUC {res['auc']:.4f}  "
          f"logloss {res['logloss']:.4f}  ({res['rows']:,} rows, {count_params(params):,} params)")
    return out


def _calibration_rows(text: str) -> int:
    """argparse type of --calibration-rows: N >= 1, or "all" (0: every training row)."""
    if text.strip().lower() == "all":
        return 0
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} (or 'all')") from None


def cmd_compress(args: argparse.Namespace) -> dict:
    from afm_jax.checkpoint import load_model_dir, write_model_dir
    from afm_jax.compress import compress_model, save_stats
    from afm_jax.compress.pipeline import DEFAULT_CALIBRATION_ROWS
    from afm_jax.inference import count_bytes, count_params, device_params, evaluate, make_scorer
    from afm_jax.outputs import atomic_dir

    progress = not args.no_progress
    _check_out(args, args.model_dir, *_data_paths(args.data))
    model, params, meta = load_model_dir(args.model_dir)
    ds = _model_dir_data(args, meta, args.model_dir, progress)
    sites = [s for s in args.sites.split(",") if s] if args.sites else None
    if args.stats_rows is not None:
        print("note: --stats-rows is deprecated (it calibrates on the FIRST N training rows); "
              "--calibration-rows N draws N rows evenly across the training split",
              file=sys.stderr)
    calibration = DEFAULT_CALIBRATION_ROWS if args.calibration_rows is None else args.calibration_rows
    res = compress_model(model, params, ds, args.plan, sites=sites, activation=args.act,
                         finetune_steps=args.finetune_steps,
                         calibration_rows=None if calibration == 0 else calibration,
                         stats_rows=args.stats_rows, progress=progress,
                         mesh=(mesh := _mesh(args)), shard_embeddings=args.shard_embeddings,
                         int8=args.int8)
    scorer = make_scorer(model, mesh)
    before, after = (evaluate(scorer, device_params(model, p, mesh, args.shard_embeddings), ds.test,
                              mesh=mesh) for p in (params, res.params))
    report = res.report
    encoder = None
    if Path(args.model_dir, "encoder.json").is_file():
        from afm_jax.checkpoint import load_encoder
        encoder = load_encoder(args.model_dir)
    extra = {k: v for k, v in meta.items() if k not in ("model", "info")}
    search = res.search.to_json() if res.search is not None else None
    extra["compression"] = {"from": str(args.model_dir), "plan": args.plan, "sites": sites,
                            "activation": args.act, "finetune": res.finetune,
                            "int8": bool(args.int8),
                            "calibration_rows": res.calibration_rows, "search": search,
                            **report.to_json()}
    plan_md = report.to_markdown()
    if res.search is not None:
        plan_md += "\n\n## search\n\n" + res.search.to_markdown()
    with atomic_dir(args.out, args.overwrite) as tmp:
        write_model_dir(tmp, model, res.params, encoder=encoder, extra=extra)
        if _primary():
            save_stats(tmp / "stats.npz", res.stats)
            (tmp / "plan.md").write_text(plan_md + "\n")
    out_dir = Path(args.out)
    print(plan_md)
    print(f"\nstatistics on {res.calibration_rows:,} of {len(ds.train):,} training rows "
          f"({res.stats_seconds:.1f}s)")
    print(f"\ntest AUC {before['auc']:.4f} -> {after['auc']:.4f}   logloss {before['logloss']:.4f}"
          f" -> {after['logloss']:.4f}   params {count_params(params):,} -> "
          f"{count_params(res.params):,}   bytes {count_bytes(params):,} -> "
          f"{count_bytes(res.params):,}   written to {out_dir}")
    return {"params_before": report.params_before, "params_after": report.params_after,
            "bytes_before": count_bytes(params), "bytes_after": count_bytes(res.params),
            "ratio": report.ratio, "total_params_before": count_params(params),
            "total_params_after": count_params(res.params), "auc_before": before["auc"],
            "auc": after["auc"], "logloss_before": before["logloss"],
            "logloss": after["logloss"], "rows": after["rows"],
            "params": count_params(res.params), "seconds": res.stats_seconds
            + res.compress_seconds, "calibration_rows": res.calibration_rows,
            "search": search, "out": str(out_dir)}


def jax_to_host(params):
    """Params as host numpy arrays (quantize works on the host)."""
    import jax
    import numpy as np
    return jax.tree.map(np.asarray, params)


def cmd_quantize(args: argparse.Namespace) -> dict:
    from afm_jax.checkpoint import load_encoder, load_model_dir, save_model_dir
    from afm_jax.inference import count_bytes, count_params, device_params, evaluate, make_scorer
    from afm_jax.quantize import quantize

    progress = not args.no_progress
    _check_out(args, args.model_dir, *_data_paths(args.data))
    model, params, meta = load_model_dir(args.model_dir)
    qparams = quantize(jax_to_host(params))
    encoder = load_encoder(args.model_dir) if Path(args.model_dir, "encoder.json").is_file() \
        else None
    extra = {k: v for k, v in meta.items() if k not in ("model", "info")}
    extra["quantization"] = {"from": str(args.model_dir), "bits": 8}
    out_dir = save_model_dir(args.out, model, qparams, encoder=encoder, extra=extra,
                             overwrite=args.overwrite)
    result = {"params_before": count_params(params), "params_after": count_params(qparams),
              "bytes_before": count_bytes(params), "bytes_after": count_bytes(qparams),
              "out": str(out_dir)}
    try:
        ds = _model_dir_data(args, meta, args.model_dir, progress)
    except AfmError as e:   # no data to score on: the sizes alone
        print(f"note: not evaluated ({e})", file=sys.stderr)
        ds = None
    if ds is not None:
        scorer = make_scorer(model)
        before, after = (evaluate(scorer, device_params(model, p), ds.test) for p in (params, qparams))
        result.update(auc_before=before["auc"], auc=after["auc"],
                      logloss_before=before["logloss"], logloss=after["logloss"],
                      rows=after["rows"])
        print(f"test AUC {before['auc']:.4f} -> {after['auc']:.4f}   logloss "
              f"{before['logloss']:.4f} -> {after['logloss']:.4f}")
    print(f"params {result['params_before']:,} -> {result['params_after']:,}   bytes "
          f"{result['bytes_before']:,} -> {result['bytes_after']:,} "
          f"({result['bytes_after'] / max(result['bytes_before'], 1):.3f}x)   "
          f"written to {out_dir}")
    return result


def cmd_demo(args: argparse.Namespace) -> dict:
    from afm_jax.compress import compress_model
    from afm_jax.data import synthetic_dataset
    from afm_jax.inference import count_params, device_params, evaluate, make_scorer, throughput
    from afm_jax.models import build_model
    from afm_jax.train import TrainConfig, train

    progress = not args.no_progress
    t0 = time.perf_counter()
    ds = synthetic_dataset(args.rows, seed=args.seed)
    print(f"synthetic CTR data: {len(ds.train):,} train / {len(ds.valid):,} valid / "
          f"{len(ds.test):,} test rows, {len(ds.info.cat_names)} categorical + "
          f"{len(ds.info.num_names)} numeric fields")
    config = TrainConfig(epochs=args.epochs, batch_size=1024, seed=args.seed)
    rows, trained = [], {}
    for name in ("lr", "deepfm"):
        model = build_model(name, ds.info)
        res = train(model, ds, config, progress=progress)
        scorer = make_scorer(model)
        placed = device_params(model, res.params)
        test = evaluate(scorer, placed, ds.test)
        trained[name] = (model, res.params, scorer)
        rows.append({"model": name, "valid AUC": res.best_valid["auc"], "test AUC": test["auc"],
                     "test logloss": test["logloss"], "params": count_params(res.params),
                     "rows/s": throughput(scorer, placed, ds.test)})
    print("\n" + _table(rows, ["model", "params", "valid AUC", "test AUC", "test logloss",
                                "rows/s"]))
    model, params, scorer = trained["deepfm"]
    comp = compress_model(model, params, ds, args.plan, progress=progress)
    cparams = comp.params
    placed = device_params(model, cparams)
    test = evaluate(scorer, placed, ds.test)
    rows.append({"model": f"deepfm AFM {args.plan}", "test AUC": test["auc"],
                 "test logloss": test["logloss"], "params": count_params(cparams),
                 "rows/s": throughput(scorer, placed, ds.test)})
    print(f"\nAFM compression of DeepFM ({args.plan}; statistics {comp.stats_seconds:.1f}s, "
          f"map {comp.compress_seconds:.2f}s): compressible params "
          f"{comp.report.params_before:,} -> {comp.report.params_after:,} "
          f"({comp.report.ratio:.2f}x fewer)\n")
    print(_table(rows[1:], ["model", "params", "test AUC", "test logloss", "rows/s"]))
    lr_auc, deep_auc = rows[0]["test AUC"], rows[1]["test AUC"]
    print(f"\nDeepFM {'beats' if deep_auc > lr_auc else 'does NOT beat'} LR on test AUC "
          f"({deep_auc:.4f} vs {lr_auc:.4f}); total {time.perf_counter() - t0:.0f}s")
    return {"auc": test["auc"], "logloss": test["logloss"], "rows": test["rows"],
            "params": count_params(cparams), "seconds": time.perf_counter() - t0,
            "results": [{k: v for k, v in r.items()} for r in rows],
            "ratio": comp.report.ratio}


SCORE_FORMATS = (".parquet", ".csv", ".jsonl")


def _score_format(out: str) -> str:
    """The writer `score --out` asks for by its extension; AfmError for any other."""
    ext = Path(out).suffix.lower()
    if ext not in SCORE_FORMATS:
        raise AfmError(f"--out {out}: unknown extension {ext or '(none)'!r}; name the file "
                       f"{Path(out).stem or 'scores'}.parquet, .csv or .jsonl (the writer follows "
                       "the extension)")
    return ext


class _ScoreWriter:
    """Rows (file, line, score) to a .parquet, .csv or .jsonl file, chunk by chunk."""

    def __init__(self, path: Path, fmt: str):
        import pyarrow as pa

        self.schema = pa.schema([("file", pa.string()), ("line", pa.int64()),
                                 ("score", pa.float32())])
        self.fmt = fmt
        if fmt == ".parquet":
            import pyarrow.parquet as pq
            self.writer = pq.ParquetWriter(path, self.schema)
        elif fmt == ".csv":
            import pyarrow.csv as pacsv
            self.writer = pacsv.CSVWriter(path, self.schema)
        else:
            self.writer = open(path, "w", encoding="utf-8")

    def write(self, path: str, lines: np.ndarray, scores: np.ndarray) -> None:
        import pyarrow as pa

        if self.fmt == ".jsonl":
            name = json.dumps(path)
            self.writer.writelines(f'{{"file": {name}, "line": {int(n)}, "score": {float(v)!r}}}\n'
                                   for n, v in zip(lines, scores.astype(np.float32)))
            return
        self.writer.write_table(pa.table({"file": pa.array([path] * len(lines)),
                                          "line": lines.astype(np.int64),
                                          "score": scores.astype(np.float32)}, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


def cmd_score(args: argparse.Namespace) -> dict:
    """Stream a file through the scorer; one score per valid input row, in input order."""
    from afm_jax.checkpoint import load_encoder, load_model_dir
    from afm_jax.data import EncodedSplit, parse_data_spec
    from afm_jax.data.dataset import DEFAULT_MAX_BAD_FRACTION, check_bad_lines, make_source
    from afm_jax.inference import device_params, make_scorer, predict
    from afm_jax.outputs import atomic_file

    progress = not args.no_progress
    fmt = _score_format(args.out)
    spec = parse_data_spec(args.data)
    _check_out(args, args.model_dir, *spec.paths)
    if spec.kind == "synthetic":
        raise AfmError("score reads a file: give --data KIND:PATH (criteo:, csv:, ...), not "
                       "synthetic")
    if jax_process_count() > 1:
        raise AfmError("score reads its input file as one stream: run it as one process "
                       "(it uses every local device; --devices N for fewer)")
    from afm_jax.onnx_score import onnx_export_dir, onnx_scorer
    precision = args.precision
    if onnx_export_dir(args.model_dir) is not None:   # model.onnx: ONNX Runtime, raw rows in
        source, score_chunk, precision = onnx_scorer(args.model_dir, spec, args.schema,
                                                     args.precision, args.batch_size)
    else:
        model, params, meta = load_model_dir(args.model_dir)
        encoder = load_encoder(args.model_dir)
        schema = args.schema or meta.get("data", {}).get("schema")
        # scores need no labels: files without the label column are read as well (make_source)
        source = make_source(spec, schema, require_label=False)
        mesh = _mesh(args)
        scorer = make_scorer(model, mesh, _compute_dtype(args))
        params = device_params(model, params, mesh, args.shard_embeddings)  # packed, placed once

        def score_chunk(chunk) -> np.ndarray:
            cat, num = encoder.encode(chunk)
            bags, bag_len, _ = encoder.encode_bags(chunk)   # empty without bag fields
            return predict(scorer, params, EncodedSplit(cat, num, chunk.label, bags, bag_len),
                           args.batch_size, mesh=mesh)
    out = Path(args.out)
    max_bad = DEFAULT_MAX_BAD_FRACTION if args.max_bad_fraction is None else args.max_bad_fraction
    rows, skipped, first_skipped, t0 = 0, 0, [], time.perf_counter()
    with atomic_file(out, args.overwrite) as tmp:
        writer = _ScoreWriter(tmp, fmt)
        try:
            for chunk, bad in source.chunks(progress):
                if bad and args.on_bad_lines == "error":
                    raise bad[0].error()
                skipped += len(bad)
                first_skipped += [(b.path, b.line) for b in bad][: max(0, 10 - len(first_skipped))]
                if chunk is None or len(chunk) == 0:
                    continue
                writer.write(chunk.path, chunk.lines, score_chunk(chunk))
                rows += len(chunk)
        finally:
            writer.close()
        # a file that is all (or mostly) bad lines is a wrong file, not a success
        check_bad_lines(rows, skipped, max_bad, [line for _, line in first_skipped],
                        ", ".join(source.paths))
    seconds = time.perf_counter() - t0
    print(f"scored {rows:,} rows ({skipped:,} bad lines skipped{', first: ' + str(first_skipped) if skipped else ''})"
          f" in {seconds:.1f}s: {rows / max(seconds, 1e-9):,.0f} rows/s ({precision})"
          f" -> {out}")
    return {"rows": rows, "skipped": skipped, "first_skipped": first_skipped,
            "precision": precision, "seconds": seconds, "rows_per_s": rows / max(seconds, 1e-9), "out": str(out)}


def cmd_export(args: argparse.Namespace) -> dict:
    from afm_jax.checkpoint import load_encoder, load_model_dir
    from afm_jax.inference import count_params, export

    _check_out(args, args.model_dir)
    model, params, meta = load_model_dir(args.model_dir)
    encoder = load_encoder(args.model_dir) if Path(args.model_dir, "encoder.json").is_file() else None
    from afm_jax.transforms import bucketized_fields, source_layout

    if args.pad_ranks:
        from afm_jax.compress import pad_ranks
        params = pad_ranks(params, args.pad_ranks)
    max_ranks = args.max_ranks
    if args.format == "jax" and max_ranks:
        from afm_jax.compress import padded, rank_plan
        params = padded(params, rank_plan(params, max_ranks))

    data_meta = meta.get("data")
    bucketize = bucketized_fields(data_meta) if encoder is not None else ()
    if args.format == "onnx":
        from afm_jax.onnx_export import MAX_RANKS, ONNX_FILE, export_onnx
        raw = args.raw_inputs if args.raw_inputs is not None else True
        if args.batch_size:
            raise AfmError("--batch-size is for --format jax: the ONNX graph's batch is dynamic")
        if raw and encoder is None:
            raise AfmError(f"{args.model_dir} has no encoder.json, so the graph cannot take raw "
                           "values: export with --no-raw-inputs (ids in)")
        out = export_onnx(model, params, args.out, encoder=encoder if raw else None,
                          bucketize=bucketize if raw else (), source=source_layout(data_meta),
                          compute_dtype=_compute_dtype(args), overwrite=args.overwrite,
                          ort=args.ort,
                          max_ranks=MAX_RANKS if max_ranks is None else (max_ranks or None))
        size = (out / ONNX_FILE).stat().st_size
        print(f"exported the scorer of {args.model_dir} ({count_params(params):,} params, "
              f"{args.precision} products, {'raw values' if raw else 'ids'} in) to "
              f"{out / ONNX_FILE} ({size:,} bytes)")
        return {"out": str(out), "params": count_params(params), "precision": args.precision,
                "format": "onnx", "raw_inputs": raw, "bytes": size}
    if args.raw_inputs or args.ort:
        raise AfmError(f"{'--raw-inputs' if args.raw_inputs else '--ort'} needs --format onnx "
                       "(the jax.export artifact takes ids)")
    out = export(model, params, args.out, encoder=encoder, batch_size=args.batch_size,
                 compute_dtype=_compute_dtype(args), overwrite=args.overwrite,
                 bucketize=bucketize, source=source_layout(data_meta))
    print(f"exported the scorer of {args.model_dir} ({count_params(params):,} params, "
          f"{args.precision} products) to {out}")
    return {"out": str(out), "params": count_params(params), "precision": args.precision}


def cmd_train_bench(args: argparse.Namespace) -> dict:
    import platform

    from afm_jax.data import load_dataset
    from afm_jax.lab import train_bench

    if not args.data:
        raise AfmError("bench --train needs --data, e.g. criteo:../shared/data/criteo/train.tsv")
    ds = load_dataset(args.data, progress=not args.no_progress, synthetic_vocab=args.synthetic_vocab)
    result = train_bench.run(ds, models=args.models.split(","),
                             batch_sizes=[int(b) for b in (args.batch_sizes or "1024,4096").split(",")],
                             rounds=args.rounds, max_rows=args.max_rows)
    command = "afm-jax " + " ".join(sys.argv[1:])
    text = train_bench.to_markdown(result, command, f"{platform.machine()}, "
                                   f"{__import__('os').cpu_count()} cores")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_bench.md").write_text(text)
    print(text)
    return {"out": str(out / "train_bench.md")}


def cmd_bench(args: argparse.Namespace) -> dict:
    import jax

    from afm_jax.lab import bench

    if args.train:
        return cmd_train_bench(args)

    result = bench.run(models=tuple(args.models.split(",")),
                       batch_sizes=tuple(int(b) for b in (args.batch_sizes or "1,64,1024,8192").split(",")),
                       repeats=args.repeats, use_torch=not args.no_torch,
                       torch_compile=not args.no_torch_compile,
                       progress=not args.no_progress, use_onnx=not args.no_onnx)
    platform = jax.devices()[0].platform
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = "afm-jax bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else \
        "python experiments/bench.py " + " ".join(sys.argv[1:])
    text = bench.to_markdown(result, command)
    (out / f"bench_{platform}.md").write_text(text)
    (out / f"bench_{platform}.json").write_text(json.dumps(result, indent=1, default=float))
    print(text)
    return {"device": result["device"], "rows": len(result["rows"]),
            "out": str(out / f"bench_{platform}.md")}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, except for switches and options without one
    (their help says what happens when they are left out)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action.default, bool):
            return action.help or ""
        return super()._get_help_string(action) or ""


def build_parser() -> argparse.ArgumentParser:
    from afm_jax.models import REGISTRY

    doc = __doc__ or "afm-jax"
    parser = argparse.ArgumentParser(prog="afm-jax", description=doc.split("\n\n")[0],
                                     epilog=doc.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="last line: one JSON object")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--no-compile-cache", action="store_true",
                       help="do not keep compiled code in JAX's persistent compilation cache")

    p = add("demo", "train LR and DeepFM on synthetic data, compress DeepFM")
    p.add_argument("--rows", type=int, default=300_000, help="synthetic rows (8:1:1 split)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs per model")
    p.add_argument("--plan", default="budget:0.25", help="rank:K | energy:E | budget:F")
    p.add_argument("--seed", type=int, default=0, help="data and initialization seed")
    common(p)
    p.set_defaults(fn=cmd_demo)

    p = add("train", "train a model on a dataset")
    _data_args(p)
    p.add_argument("--model", default="deepfm", choices=list(REGISTRY), help="the model")
    p.add_argument("--out", help="model directory, written as OUT.partial (checkpoints) and "
                   "renamed when training completes; an interrupted run resumes from "
                   "OUT.partial (default: none written)")
    p.add_argument("--epochs", type=int, default=2, help="at most this many epochs")
    p.add_argument("--batch-size", type=int, default=1024, help="rows per training step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--embed-l2", type=float, default=0.0,
                   help="L2 penalty on the embedding rows a batch reads")
    p.add_argument("--table-optimizer", default="auto",
                   choices=["auto", "rowwise", "rowwise_adagrad", "dense"],
                   help="embedding tables: row-wise lazy Adam (only the rows a batch reads are "
                        "updated), row-wise Adagrad, dense Adam over every row, or auto: row-wise "
                        "when the tables hold at least 6 rows per dedupe slot of a batch (the sum "
                        "over fields of min(batch size, field rows)), dense below")
    p.add_argument("--table-lr", type=float, default=None,
                   help="learning rate of row-wise tables (default: --lr)")
    p.add_argument("--patience", type=int, default=1,
                   help="stop after this many epochs without a better validation AUC")
    p.add_argument("--eval-every", type=int, default=0,
                   help="also validate every N steps, into the history (0: once per epoch)")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="with --out, also checkpoint every N steps (resume mid-epoch; 0: "
                        "once per epoch)")
    p.add_argument("--seed", type=int, default=0, help="initialization and shuffling seed")
    p.add_argument("--embed-dim", type=int, help="embedding width (default: the model's)")
    p.add_argument("--mlp", help="hidden sizes, e.g. 400,400,400 (default: the model's)")
    _overwrite_arg(p)
    _device_args(p)
    common(p)
    p.set_defaults(fn=cmd_train)

    p = add("evaluate", "AUC and logloss of a model directory on a split")
    p.add_argument("--model-dir", required=True, help="written by train or compress")
    _data_args(p, required=False)
    p.add_argument("--split", default="test", choices=["train", "valid", "test"],
                   help="the split to score (--data defaults to the model's own data)")
    _precision_arg(p)
    _device_args(p)
    common(p)
    p.set_defaults(fn=cmd_evaluate)

    p = add("compress", "AFM-compress a model directory")
    p.add_argument("--model-dir", required=True, help="written by train")
    _data_args(p, required=False)
    p.add_argument("--plan", default="budget:0.25",
                   help="rank:K | energy:E | budget:F | bytes:N (whole model in N float32 "
                        "bytes) | auc-drop:D[,logloss-rise:L] (smallest budget within D AUC "
                        "and L logloss of the original on the validation split)")
    p.add_argument("--sites", help="comma-separated site prefixes, e.g. mlp,embed (default: all)")
    p.add_argument("--act", help="activation between the factors: relu, gelu, silu, tanh "
                   "(default: none, linear AFM)")
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="fine-tune the factors this many steps after the map")
    p.add_argument("--calibration-rows", type=_calibration_rows, metavar="N|all",
                   help="statistics on N training rows drawn evenly across the training split "
                        "(default: 100,000; all rows when fewer; 'all': every row)")
    p.add_argument("--stats-rows", type=int,
                   help="deprecated: calibrate on the FIRST N training rows (use "
                        "--calibration-rows)")
    p.add_argument("--int8", action="store_true",
                   help="store the compressed kernels and tables as int8 (afm-jax quantize); "
                        "bytes:N then fits the int8 model, a quality plan scores int8")
    p.add_argument("--out", required=True, help="model directory of the compressed model")
    _overwrite_arg(p)
    _device_args(p)
    common(p)
    p.set_defaults(fn=cmd_compress)

    p = add("quantize", "int8 storage of a model directory (per-row tables, per-channel kernels)")
    p.add_argument("--model-dir", required=True, help="written by train or compress")
    _data_args(p, required=False)
    p.add_argument("--out", required=True, help="model directory of the int8 model")
    _overwrite_arg(p)
    common(p)
    p.set_defaults(fn=cmd_quantize)

    p = add("score", "score a file with a model directory, write parquet, csv or jsonl")
    p.add_argument("--model-dir", required=True, help="written by train or compress, or an ONNX "
                   "export (export --format onnx), scored by ONNX Runtime")
    p.add_argument("--data", required=True, help="criteo:PATH | avazu:PATH | ... (as in train); the "
                   "label column may be absent (Criteo: 39 columns I1..I13, C1..C26)")
    p.add_argument("--schema", help="JSON schema file for csv:/parquet: data")
    _bad_lines_args(p)
    p.add_argument("--batch-size", type=int, default=8192, help="rows per scoring call")
    p.add_argument("--out", required=True, help="output file, written by its extension: "
                   ".parquet, .csv or .jsonl (file, line, score per row)")
    _overwrite_arg(p)
    _precision_arg(p)
    _device_args(p)
    common(p)
    p.set_defaults(fn=cmd_score)

    p = add("bench", "scoring benchmark: original vs AFM vs PyTorch")
    p.add_argument("--models", default="deepfm,dcnv2", help="comma-separated model names")
    p.add_argument("--batch-sizes", help="default 1,64,1024,8192 (scoring) / 1024,4096 (--train)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per cell")
    p.add_argument("--no-torch", action="store_true", help="leave out the PyTorch peer")
    p.add_argument("--no-torch-compile", action="store_true",
                   help="PyTorch eager only (torch.compile takes minutes per shape)")
    p.add_argument("--no-onnx", action="store_true",
                   help="leave out ONNX Runtime (timed where the [onnx] extra is installed)")
    p.add_argument("--out-dir", default="experiments/results",
                   help="where bench_<platform>.md and .json go")
    p.add_argument("--train", action="store_true",
                   help="training benchmark instead (epoch vs bare step vs torch peers)")
    p.add_argument("--data", help="with --train: the data, e.g. criteo:PATH")
    p.add_argument("--rounds", type=int, default=3, help="with --train")
    p.add_argument("--max-rows", type=int, help="with --train: first N training rows")
    _synthetic_vocab_arg(p)
    common(p)
    p.set_defaults(fn=cmd_bench)

    p = add("export", "write a model directory's scorer as a jax.export artifact or one ONNX file")
    p.add_argument("--model-dir", required=True, help="written by train or compress")
    p.add_argument("--format", choices=["jax", "onnx"], default="jax",
                   help="jax: jax.export artifact (ids in); onnx: model.onnx + signature.json for "
                        "ONNX Runtime (needs the [onnx] extra)")
    p.add_argument("--raw-inputs", action=argparse.BooleanOptionalAction, default=None,
                   help="ONNX: the encoder goes into the graph, one input per field (strings, "
                        "numbers; default on); --no-raw-inputs: ids and transformed numbers in")
    p.add_argument("--ort", action="store_true",
                   help="ONNX: also write ONNX Runtime's .ort file and the operator list of a "
                        "minimal build (model.required_operators.with_runtime_opt.config)")
    p.add_argument("--batch-size", type=int, help="fixed batch size (default: symbolic)")
    p.add_argument("--pad-ranks", type=_positive_int, metavar="N",
                   help="pad each compressed table's rank up to a multiple of N (scores "
                        "unchanged; fewer table widths, so fewer gathers and projections per "
                        "call, which ONNX Runtime at batch 1-64 pays for; the file grows, where "
                        "--max-ranks pads in the graph: experiments/results/onnx_pad.md)")
    p.add_argument("--max-ranks", type=_max_ranks, metavar="N|auto",
                   help="pad the compressed tables' ranks so that at most N distinct ranks remain, "
                        "choosing those that add the fewest bytes (compress.merge_ranks; scores "
                        "unchanged); auto: the fewest ranks whose padding at most doubles the "
                        "model's bytes once loaded (the default for --format onnx, where each rank "
                        "costs ONNX Runtime a gather and a projection per call, and the file holds "
                        "the tables unpadded: ONNX Runtime pads them when it loads the file); 0: "
                        "as the model has them")
    p.add_argument("--out", required=True, help="artifact directory")
    _overwrite_arg(p)
    _precision_arg(p, "; baked into the artifact, signature.json records it")
    common(p)
    p.set_defaults(fn=cmd_export)

    p = add("experiment", "regenerate a results table (see experiments/)")
    p.add_argument("name", choices=["paper-table"], help="the table")
    p.add_argument("--data", help="folder of the real data samples (default: $AFM_JAX_DATA, "
                   "else ../shared/data beside the repository)")
    p.add_argument("--out", default="experiments/results",
                   help="where paper_table.md, plots and per-cell JSON (resumable) go")
    p.add_argument("--datasets", help="comma-separated (default: all real samples, whole); "
                   "NAME_Nk is the first N thousand rows of NAME, e.g. criteo_40k")
    p.add_argument("--models", help="comma-separated (default: the paper's seven)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--methods", default="all", choices=("all", "core"),
                   help="method groups: all, or core (no TT-Rec, seed-code config, fine-tunes, "
                   "calibration sweep)")
    p.add_argument("--max-rows", default="",
                   help="per-dataset row caps (first N rows of the file), e.g. criteo=40000; "
                   "a capped dataset's cells are named NAME_Nk (default: no cap)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs per cell")
    common(p)
    p.set_defaults(fn=cmd_experiment)
    return parser


def cmd_experiment(args: argparse.Namespace) -> dict:
    from afm_jax.lab import paper_table
    from afm_jax.lab.datasets import default_data_dir

    args.data = args.data or str(default_data_dir())
    if not Path(args.data).is_dir():
        raise AfmError(f"--data {args.data}: not a folder (it should hold criteo/, avazu/, "
                       "frappe/, movielens100k/)")
    caps = {}
    for item in filter(None, (args.max_rows or "").split(",")):
        name, _, n = item.partition("=")
        if not n.isdigit() or int(n) < 1:
            raise AfmError(f"--max-rows {item!r}: use DATASET=N with N >= 1")
        caps[name] = int(n)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        raise AfmError(f"--seeds {args.seeds!r}: use comma-separated integers") from None
    from afm_jax.models import REGISTRY
    models = tuple(args.models.split(",")) if args.models else paper_table.MODELS
    bad = [m for m in models if m not in REGISTRY]
    if bad:
        raise AfmError(f"--models: unknown {bad}; choose from {sorted(REGISTRY)}")
    command = ("python experiments/paper_table.py " + " ".join(sys.argv[1:])
               if sys.argv[0].endswith("paper_table.py")
               else "afm-jax " + " ".join(args.argv)).strip()
    md = paper_table.run(args.data, args.out,
                         datasets=tuple(args.datasets.split(",")) if args.datasets else None,
                         models=models, seeds=seeds, max_rows=caps, epochs=args.epochs,
                         methods=args.methods, command=command, progress=not args.no_progress)
    if not args.json:
        print(md.read_text())
    return {"report": str(md)}


def _one_line(message: str) -> str:
    return " ".join(message.split())


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that outputs being written are removed."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 0 on success, 2 with one line on stderr for an error the user can fix
    (an AfmError, spoken in flags), or for an interrupt (SIGINT, SIGTERM): the output being
    written is removed and any previous one is left as it was."""
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave SIGTERM as it is
        pass
    try:
        return _run(args)
    except (KeyboardInterrupt, _Terminated) as e:
        how = "SIGINT" if isinstance(e, KeyboardInterrupt) else "SIGTERM"
        out = getattr(args, "out", None)
        kept = f"; {out} is as it was before" if out else ""
        print(f"afm-jax {args.command}: error: interrupted by {how}{kept}; run the command "
              "again to redo it", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        _check_flags(args)
    except AfmError as e:
        print(f"afm-jax {args.command}: error: {_one_line(cli_message(e))}", file=sys.stderr)
        return 2
    if not args.no_compile_cache:
        from afm_jax._cache import enable_compile_cache
        enable_compile_cache(getattr(args, "cache_dir", None))
    try:
        if hasattr(args, "coordinator"):
            from afm_jax.distributed import initialize_from_env
            if initialize_from_env(args.coordinator, args.num_processes, args.process_id):
                import jax
                if jax.process_index() != 0:  # process 0 reports; the others stay quiet
                    sys.stdout = open(os.devnull, "w")
                    args.no_progress = True
        result = args.fn(args)
    except AfmError as e:
        print(f"afm-jax {args.command}: error: {_one_line(cli_message(e))}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
