"""Scoring precision: bfloat16 Linear products with float32 accumulation, and int8 x int8 ->
int32 products for int8-stored kernels (issue 16, part 2)."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afm_jax.inference import export, load_exported, logits_fn, make_scorer
from afm_jax.models import with_precision
from afm_jax.packing import pack
from tests.helpers import lively_params, random_batch, small_model

BF16 = jnp.bfloat16


def _batch(n: int = 256, seed: int = 0) -> dict:
    b = random_batch(n, seed)
    return {"cat": b["cat"], "num": b["num"]}


def _low_dots(hlo: str) -> list[str]:
    """The dot instructions of compiled HLO text whose two operands are both bf16 (HLO names
    are unique in a module, so an operand's type is that of the line defining it)."""
    bf16 = set(re.findall(r"%([\w.\-]+) = bf16\[", hlo))
    bf16 |= set(re.findall(r"[(,]\s*([\w.\-]+): bf16\[", hlo))   # computation parameters
    dots = re.findall(r"= f32\[[^\]]*\][^=]*? dot\(%([\w.\-]+), %([\w.\-]+)\)", hlo)
    return [f"{a}, {b}" for a, b in dots if a in bf16 and b in bf16]


@pytest.mark.parametrize("name", ["deepfm", "dcnv2"])
def test_bf16_scores_close_to_float32(name):
    model = small_model(name)
    params = lively_params(model)
    f32, low = make_scorer(model), make_scorer(model, compute_dtype=BF16)
    assert low is make_scorer(with_precision(model, "bfloat16"))
    for p in (params, pack(model, params)):   # per-field and packed params
        batch = _batch()
        a, b = np.asarray(f32(p, batch)), np.asarray(low(p, batch))
        assert b.dtype == np.float32
        diff = np.abs(a - b).max()
        assert 0 < diff < 2e-2, diff   # bfloat16 did run, and stayed close


def test_float32_scorer_unchanged_by_the_knob():
    """The float32 scorer is exactly the plain logits, before and after a bf16 one traced."""
    model = small_model("deepfm")
    params = lively_params(model)
    batch = _batch(64)
    plain = np.asarray(jax.nn.sigmoid(jax.jit(logits_fn(model))(params, batch)))
    make_scorer(model, compute_dtype=BF16)(params, batch)
    np.testing.assert_array_equal(np.asarray(make_scorer(model)(params, batch)), plain)
    np.testing.assert_array_equal(
        np.asarray(make_scorer(model, compute_dtype=jnp.float32)(params, batch)), plain)


def test_int8_forms_under_bf16():
    from afm_jax.quantize import quantize

    model = small_model("deepfm")
    params = jax.tree.map(np.asarray, lively_params(model))
    q = quantize(params)
    batch = _batch()
    a = np.asarray(make_scorer(model)(q, batch))
    b = np.asarray(make_scorer(model, compute_dtype=BF16)(q, batch))
    assert np.abs(a - b).max() < 2e-2


def test_compiled_bf16_scorer_has_bf16_dots():
    model = small_model("deepfm")
    params = pack(model, lively_params(model))
    batch = _batch(64)

    def compiled(dtype) -> str:
        return jax.jit(logits_fn(model, compute_dtype=dtype)).lower(params, batch).compile().as_text()

    low = compiled(BF16)
    assert len(_low_dots(low)) >= 2, _low_dots(low)   # mlp dense_0, dense_1 (at least)
    plain = compiled(None)
    assert _low_dots(plain) == [] and "bf16[" not in plain
    # every Linear product's inputs are bf16 with an f32 result, as lowered
    lowered = jax.jit(logits_fn(model, compute_dtype=BF16)).lower(params, batch).as_text()
    assert re.search(r"dot_general .*\(tensor<\d+x\d+xbf16>, tensor<\d+x\d+xbf16>\) -> "
                     r"tensor<\d+x\d+xf32>", lowered)


def test_cache_is_per_dtype():
    model = small_model("dcnv2")
    f32 = make_scorer(model)
    low = make_scorer(model, compute_dtype=BF16)
    assert low is not f32
    assert make_scorer(model, compute_dtype="bfloat16") is low
    assert make_scorer(model, compute_dtype=jnp.float32) is f32
    assert make_scorer(model, compute_dtype="float32") is f32
    params, batch = lively_params(model), _batch(32)
    f32(params, batch), low(params, batch)
    assert not np.array_equal(np.asarray(f32(params, batch)), np.asarray(low(params, batch)))
    assert make_scorer(model, compute_dtype="int8") is make_scorer(model.clone(compute_dtype="int8"))
    assert with_precision(model, jnp.int8).compute_dtype == "int8"
    assert with_precision(model, "float32") is model
    with pytest.raises(ValueError, match="float32, bfloat16, int8"):
        make_scorer(model, compute_dtype=jnp.int16)


def test_export_bakes_precision(tmp_path):
    model = small_model("deepfm")
    params = jax.tree.map(np.asarray, lively_params(model))
    batch = _batch(40)
    export(model, params, tmp_path / "x", compute_dtype=BF16)
    score = load_exported(tmp_path / "x")
    assert score.signature["precision"]["compute"] == "bfloat16"
    live = np.asarray(make_scorer(model, compute_dtype=BF16)(params, batch))
    np.testing.assert_allclose(np.asarray(score(batch["cat"], batch["num"])), live, atol=1e-6)
    export(model, params, tmp_path / "y")
    sig = json.loads((tmp_path / "y" / "signature.json").read_text())
    assert sig["precision"]["compute"] == "float32"


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> str:
    """A tiny DeepFM model directory, trained once for the CLI tests below."""
    from afm_jax.cli import main

    d = str(tmp_path_factory.mktemp("precision") / "d")
    assert main(["train", "--data", "synthetic:3000", "--model", "deepfm", "--mlp", "16",
                 "--epochs", "1", "--out", d, "--no-progress"]) == 0
    return d


def _cli_evaluate(model_dir: str, precisions, capsys) -> dict:
    """`afm-jax evaluate --json` of `model_dir` at each precision -> {precision: result}."""
    from afm_jax.cli import main

    capsys.readouterr()
    res = {}
    for precision in precisions:
        assert main(["evaluate", "--model-dir", model_dir, "--precision", precision, "--json",
                     "--no-progress"]) == 0
        res[precision] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert res[precision]["precision"] == precision
    return res


def test_cli_evaluate_bfloat16(trained_dir, tmp_path, capsys):
    from afm_jax.cli import main

    d = trained_dir
    res = _cli_evaluate(d, ("float32", "bfloat16"), capsys)
    assert res["bfloat16"]["auc"] == pytest.approx(res["float32"]["auc"], abs=5e-3)
    assert res["bfloat16"]["logloss"] == pytest.approx(res["float32"]["logloss"], abs=5e-3)
    assert main(["evaluate", "--model-dir", d, "--precision", "bfloat16", "--no-progress"]) == 0
    assert "bfloat16" in capsys.readouterr().out
    assert main(["export", "--model-dir", d, "--out", str(tmp_path / "x"), "--precision",
                 "bfloat16", "--no-progress"]) == 0
    sig = json.loads((tmp_path / "x" / "signature.json").read_text())
    assert sig["precision"]["compute"] == "bfloat16"


def _np_int8_affine(x: np.ndarray, q: np.ndarray, k_scale: np.ndarray, bias: np.ndarray):
    """numpy reference: x quantized per row (round half to even, as jnp.round), an exact
    integer product, then both scales."""
    peak = np.abs(x).max(axis=-1, keepdims=True)
    s = np.where(peak > 0, peak / np.float32(127), 1).astype(np.float32)
    xq = np.clip(np.rint(x / s), -127, 127).astype(np.int64)
    acc = xq @ q.astype(np.int64)
    return acc.astype(np.float32) * s * k_scale + bias


def test_int8_product_equals_numpy_reference():
    from afm_jax.nn import _affine, quantize_rows
    from afm_jax.quantize import quantize

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 40)).astype(np.float32)
    x[3] = 0                                   # an all-zero row keeps scale 1 and scores 0
    lin = {"kernel": rng.normal(size=(40, 24)).astype(np.float32),
           "bias": rng.normal(size=24).astype(np.float32)}
    p = quantize({"mlp": {"dense_0": lin}})["mlp"]["dense_0"]

    got = np.asarray(jax.jit(lambda p, x: _affine(p, x, "int8"))(p, x))
    per_row = np.asarray(jax.jit(jax.vmap(lambda x: _affine(p, x, "int8")))(x))
    want = _np_int8_affine(x, np.asarray(p["kernel_q"]), np.asarray(p["kernel_scale"]),
                           np.asarray(p["bias"]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(per_row, want, rtol=1e-5, atol=1e-5)   # as the scorer runs it
    np.testing.assert_array_equal(got[3], np.asarray(p["bias"]))
    q, s = quantize_rows(jnp.asarray(x))
    assert q.dtype == jnp.int8
    assert np.all(np.abs(np.asarray(q) * np.asarray(s) - x) <= np.asarray(s) / 2 + 1e-7)
    # the int8 path really differs from dequantize-then-float32 (the activations were rounded)
    f32 = np.asarray(_affine(p, x))
    assert 0 < np.abs(f32 - got).max() < 0.05 * np.abs(f32).max()


@pytest.mark.parametrize("name", ["deepfm", "dcnv2"])
def test_int8_scorer_on_quantized_params(name):
    from afm_jax.quantize import quantize

    model = small_model(name)
    q = quantize(jax.tree.map(np.asarray, lively_params(model)))
    f32, low = make_scorer(model), make_scorer(model, compute_dtype="int8")
    batch = _batch()
    for p in (q, pack(model, q)):
        a, b = np.asarray(f32(p, batch)), np.asarray(low(p, batch))
        assert 0 < np.abs(a - b).max() < 2e-2
    # float kernels under int8 keep float32 products: the original scores exactly as float32
    params = lively_params(model)
    np.testing.assert_array_equal(np.asarray(low(params, batch)), np.asarray(f32(params, batch)))
    hlo = jax.jit(logits_fn(model, compute_dtype=jnp.int8)).lower(
        pack(model, q), batch).compile().as_text()
    assert re.search(r"= s32\[[^\]]*\][^=]*? dot\(", hlo), "no int8 x int8 -> int32 product"


def test_cli_evaluate_int8(trained_dir, tmp_path, capsys):
    from afm_jax.cli import PRECISIONS as CLI_PRECISIONS
    from afm_jax.cli import main
    from afm_jax.inference import PRECISIONS

    assert CLI_PRECISIONS == PRECISIONS
    q = str(tmp_path / "q")
    assert main(["quantize", "--model-dir", trained_dir, "--out", q]) == 0
    res = _cli_evaluate(q, ("float32", "int8"), capsys)
    assert res["int8"]["auc"] == pytest.approx(res["float32"]["auc"], abs=5e-3)
    assert main(["export", "--model-dir", q, "--out", str(tmp_path / "x"), "--precision",
                 "int8", "--no-progress"]) == 0
    sig = json.loads((tmp_path / "x" / "signature.json").read_text())
    assert sig["precision"]["compute"] == "int8"
