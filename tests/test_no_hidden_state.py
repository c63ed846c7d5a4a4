"""No ambient state (issue 25, items 1, 2 and 7): precision is a field of the model, every cache
is registered with `clear_compiled` and keys on the model (precision included), the scorer is a
plain jitted function and the composable pieces are exported at the top level."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import afm_jax
from afm_jax.compress import collect_stats
from afm_jax.inference import make_scorer
from afm_jax.models import model_to_json, with_precision
from afm_jax.train import TrainConfig, init_params, train
from tests.helpers import INFO, batches, lively_params, np_tree, small_model

ROOT = Path(__file__).resolve().parents[1]
BF16 = "bfloat16"


def _setup():
    from afm_jax.data import synthetic_dataset

    model = small_model("deepfm")
    params = np_tree(lively_params(model))
    ds = synthetic_dataset(1500, seed=3, n_categorical=4, vocab_sizes=[20, 30, 40, 50])
    return model, params, ds, batches(3, 256)


def _calls(model, params, ds, bs) -> dict[str, np.ndarray]:
    """One call of each cached function at `model`'s precision: the scorer, the statistics
    pass and a short training run (its row-wise step and validation scorer)."""
    from afm_jax.models import build_model

    out = {"score": np.asarray(make_scorer(model)(params, bs[0]))}
    stats = collect_stats(model, params, bs, progress=False)
    out["cov"], out["mean"] = stats["mlp/dense_0"].cov, stats["mlp/dense_0"].mean
    net = with_precision(build_model("deepfm", ds.info, embed_dim=8, mlp=(16, 8)),
                         model.compute_dtype)
    res = train(net, ds, TrainConfig(epochs=1, batch_size=256, table_optimizer="rowwise"),
                progress=False)
    out["trained"] = np.asarray(res.params["mlp"]["dense_0"]["kernel"])
    out["table"] = np.asarray(res.params["embed"]["c1"]["embedding"])
    out["valid_auc"] = np.asarray(res.best_valid["auc"])
    return out


def float32_results(path: str) -> None:
    """The float32 results of a process that never ran bfloat16 (run in a subprocess)."""
    model, params, ds, bs = _setup()
    np.savez(path, **_calls(model, params, ds, bs))


def test_bf16_calls_do_not_leak_into_later_float32_ones(tmp_path):
    fresh_path = tmp_path / "fresh.npz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", "from tests.test_no_hidden_state import float32_results; "
                    f"float32_results({str(fresh_path)!r})"], cwd=ROOT, env=env, check=True)
    fresh = dict(np.load(fresh_path))

    model, params, ds, bs = _setup()
    low = _calls(with_precision(model, BF16), params, ds, bs)   # compiles and caches bf16 code
    after = _calls(model, params, ds, bs)                        # then float32, same process
    for k in fresh:
        np.testing.assert_array_equal(after[k], fresh[k], err_msg=k)
    # the bf16 calls did compute in bfloat16: had they leaked, the float32 ones would differ
    for k in ("score", "cov", "trained"):
        assert not np.array_equal(low[k], fresh[k]), k


def test_precision_is_a_model_field_outside_model_json_and_params():
    model = small_model("dcnv2")
    low = with_precision(model, "bfloat16")
    assert (model.compute_dtype, low.compute_dtype) == (None, "bfloat16")
    assert low != model and hash(low) != hash(model)
    assert with_precision(low, None) == model and with_precision(model, "float32") is model
    assert model_to_json(low) == model_to_json(model)   # model.json keeps its format
    a, b = init_params(model, INFO), init_params(low, INFO)
    assert jax.tree.structure(a) == jax.tree.structure(b)   # same param names
    jax.tree.map(np.testing.assert_array_equal, a, b)
    with pytest.raises(ValueError, match="float32, bfloat16, int8"):
        with_precision(model, "float16")


def test_scorer_is_a_plain_jitted_function():
    model = small_model("deepfm")
    scorer = make_scorer(model)
    assert not any(hasattr(scorer, a) for a in ("model", "precision"))
    params = lively_params(model)
    batch = {k: v for k, v in batches(1, 64)[0].items() if k != "label"}
    packed = afm_jax.pack(model, params)
    lowered = scorer.lower(packed, batch)   # a jax.jit function: lowers like one
    assert "stablehlo" in lowered.as_text()
    probs = afm_jax.predict(scorer, packed, _split(batch), batch_size=64)   # one batch, as is
    np.testing.assert_array_equal(probs, np.asarray(scorer(packed, batch)))


def _split(batch):
    from afm_jax.data import EncodedSplit
    return EncodedSplit(np.asarray(batch["cat"]), np.asarray(batch["num"]),
                        np.zeros(len(batch["cat"]), np.float32))


def test_clear_compiled_empties_every_registered_cache():
    import jax.numpy as jnp

    from afm_jax._cache import clear_compiled, registered_caches
    from afm_jax.compress import compress, fixed_plan
    from afm_jax.lab.train_bench import step_flops
    from afm_jax.train import _adam_step

    model = small_model("deepfm")
    params = np_tree(lively_params(model))
    bs = batches(2, 128)
    make_scorer(model)(params, bs[0])
    stats = collect_stats(model, params, bs, progress=False)
    compress(params, stats, fixed_plan(params, stats, 4, ["mlp/dense_0"]), model=model)
    _adam_step(model, 1e-3, 0.0, "dense")
    step_flops(jax.jit(jnp.sin), jnp.ones(3))
    sizes = registered_caches()
    assert set(sizes) == {"afm_jax.inference._scorer", "afm_jax.train._adam_step",
                          "afm_jax.compress.stats._update_fn", "afm_jax.compress.stats.sites",
                          "afm_jax.compress.afm.eigen", "afm_jax.lab.train_bench.flops"}
    assert all(n > 0 for n in sizes.values()), sizes
    clear_compiled()
    assert all(n == 0 for n in registered_caches().values()), registered_caches()


def test_top_level_exports_the_composable_pieces(tmp_path):
    from afm_jax.compress.finetune import FinetuneResult

    for name in ("pack", "unpack", "make_train_step", "init_params", "export", "load_exported",
                 "load_model_dir", "with_precision", "FinetuneResult", "TrainResult"):
        assert name in afm_jax.__all__ and hasattr(afm_jax, name), name
    assert FinetuneResult._fields == ("params", "report")
    model = small_model("deepfm")
    params = np_tree(lively_params(model))
    afm_jax.save_model_dir(tmp_path / "m", model, params)
    loaded, back, _ = afm_jax.load_model_dir(tmp_path / "m")
    assert loaded == model
    jax.tree.map(np.testing.assert_array_equal, afm_jax.unpack(model, afm_jax.pack(model, back)),
                 params)
