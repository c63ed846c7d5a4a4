"""afm_jax: train CTR models in JAX, then compress them with Atomic Feature Mimicking (AFM).

    ds = afm_jax.synthetic_dataset(200_000)
    model = afm_jax.build_model("deepfm", ds.info)
    params = afm_jax.train(model, ds).params
    small = afm_jax.compress_model(model, params, ds, "budget:0.25").params
    batch = next(afm_jax.iterate_batches(ds.test, 1024))
    scores = afm_jax.make_scorer(model)(small, batch)   # same scorer, both forms
    print(afm_jax.evaluate(afm_jax.make_scorer(model), afm_jax.pack(model, small), ds.test))

Precision is part of the model (`with_precision(model, "bfloat16")`, or
`make_scorer(model, compute_dtype="bfloat16")`); every compiled function is cached per model.
The composable pieces, optax-style: `init_params`, `make_train_step` (a jitted
`(params, opt_state, batch) -> (params, opt_state, loss)` with any optax transformation),
`pack`/`unpack` (per-field <-> packed params), `export`/`load_exported` (a jax.export
artifact) and `load_model_dir` (a trained or compressed model directory).

`afm_jax.compress` is the compression subpackage; its pieces compose by hand:

    from afm_jax import compress
    stats = compress.collect_stats(model, params, afm_jax.iterate_batches(ds.train, 4096))
    plan = compress.make_plan(params, stats, "budget:0.25")        # site -> rank
    small = compress.compress(params, stats, plan, model=model)    # params -> params

Type aliases of the API (`Params`, `Stats`, `Plan`) live in `afm_jax.types`.
"""

from afm_jax import compress  # the subpackage; the params -> params map is compress.compress
from afm_jax.checkpoint import load_model_dir, save_model_dir
from afm_jax.compress import (
                              CompressionResult,
                              FinetuneResult,
                              budget_plan,
                              collect_stats,
                              compress_model,
                              energy_plan,
                              finetune,
                              fixed_plan,
                              fold_projections,
                              load_stats,
                              make_plan,
                              plan_report,
                              save_stats,
                              svd_compress,
)
from afm_jax.data import (
                              Dataset,
                              Encoder,
                              FeatureInfo,
                              Schema,
                              iterate_batches,
                              load_dataset,
                              synthetic_dataset,
)
from afm_jax.errors import AfmError, CheckpointError, CompressionError, DataError
from afm_jax.inference import evaluate, export, load_exported, make_scorer, predict
from afm_jax.models import build_model, with_precision
from afm_jax.packing import pack, unpack
from afm_jax.quantize import dequantize, quantize
from afm_jax.train import TrainConfig, TrainResult, init_params, make_train_step, train
from afm_jax.types import Params, Plan, Stats

__version__ = "0.1.0"

__all__ = [
    "build_model", "with_precision", "train", "TrainConfig", "TrainResult", "init_params",
    "make_train_step", "make_scorer", "evaluate", "predict", "pack", "unpack", "export",
    "load_exported", "load_model_dir", "save_model_dir",
    "Dataset", "Encoder", "FeatureInfo", "Schema", "load_dataset", "synthetic_dataset",
    "iterate_batches", "compress", "compress_model", "CompressionResult",
    "collect_stats", "save_stats", "load_stats",
    "fold_projections", "fixed_plan", "energy_plan", "budget_plan", "make_plan", "plan_report",
    "svd_compress", "finetune", "FinetuneResult", "AfmError", "DataError", "CheckpointError", "CompressionError",
    "Params", "Plan", "Stats", "quantize", "dequantize",
]
