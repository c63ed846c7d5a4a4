"""AFM compression: statistics, params -> params maps, rank plans, baselines, fine-tuning.

`compress_model` runs the whole pipeline (collect -> plan -> map -> fine-tune); the pieces below
it are pure functions to compose by hand:

    stats = collect_stats(model, params, batches)      # site -> SiteStats (mean, cov)
    plan = make_plan(params, stats, "budget:0.25")     # site -> rank
    small = compress(params, stats, plan, model=model) # params -> params, same scorer
    found = search_plan(params, stats, parse_quality_target("auc-drop:0.001"), score)
"""

from afm_jax.compress.afm import (
                                  afm_embedding,
                                  afm_linear,
                                  compress,
                                  fold_projections,
                                  merge_ranks,
                                  merged_ranks,
                                  pad_ranks,
                                  padded,
                                  principal_directions,
                                  rank_plan,
                                  variance_kept,
)
from afm_jax.compress.baselines import svd_compress, svd_embedding, svd_linear
from afm_jax.compress.finetune import FinetuneResult, finetune
from afm_jax.compress.pipeline import CompressionResult, calibration_indices, compress_model
from afm_jax.compress.ranks import PlanReport, budget_plan, energy_plan, fixed_plan, make_plan, plan_report
from afm_jax.compress.search import (
                                     QualityTarget,
                                     SearchResult,
                                     SearchStep,
                                     bytes_plan,
                                     parse_quality_target,
                                     search_plan,
)
from afm_jax.compress.stats import SiteStats, collect_stats, load_stats, save_stats

__all__ = [
    "SiteStats", "collect_stats", "save_stats", "load_stats",
    "afm_linear", "afm_embedding", "fold_projections", "pad_ranks", "merge_ranks", "merged_ranks",
    "padded", "rank_plan", "compress", "principal_directions",
    "variance_kept", "svd_linear", "svd_embedding", "svd_compress", "finetune", "FinetuneResult",
    "fixed_plan", "energy_plan", "budget_plan", "make_plan", "plan_report", "PlanReport",
    "compress_model", "CompressionResult", "calibration_indices",
    "QualityTarget", "SearchStep", "SearchResult", "parse_quality_target", "search_plan",
    "bytes_plan",
]
