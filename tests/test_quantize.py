"""int8 storage: round trip within half a step per row, the int8 scorer equals scoring the
dequantized params, every model scores int8 params (original and AFM), packed int8 tables, and
int8 model directories save, load and export."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from afm_jax import forms
from afm_jax.checkpoint import load_model_dir, save_model_dir, validate_params
from afm_jax.compress import collect_stats, compress, fixed_plan
from afm_jax.inference import count_bytes, count_params, export, load_exported, make_scorer
from afm_jax.models import NEEDS_SEQUENCE, REGISTRY
from afm_jax.packing import pack, unpack
from afm_jax.quantize import dequantize, quantize
from tests.helpers import batches, lively_params, logits, np_tree, random_batch, small_model

MODELS = sorted(set(REGISTRY) - NEEDS_SEQUENCE)


def _afm(name: str, params):
    """AFM-compressed params of every site (dense rank 3, tables rank 3)."""
    model = small_model(name)
    stats = collect_stats(model, params, batches(1), progress=False)
    return np_tree(compress(params, stats, fixed_plan(params, stats, 3, list(stats)), model=model))


def _assert_close(got, want, what: str) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=what)


def test_round_trip_within_half_a_step_per_row_and_channel():
    model = small_model("deepfm")
    params = jax.tree.map(np.array, lively_params(model))   # writable copies
    params["embed"]["a"]["embedding"][3] = 0.0          # a zero row: scale guard, no NaN
    q = quantize(params)
    back = dequantize(q)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for name in ("a", "b", "c", "d"):
        node = q["embed"][name]
        assert forms.is_int8(node) and node["embedding_q"].dtype == np.int8
        scale = node["embedding_scale"]
        assert scale.dtype == np.float32 and scale.shape == (node["embedding_q"].shape[0],)
        err = np.abs(back["embed"][name]["embedding"] - params["embed"][name]["embedding"])
        assert np.all(err.max(1) <= scale / 2 * (1 + 1e-6)), name
    assert np.all(back["embed"]["a"]["embedding"][3] == 0)
    dense = q["mlp"]["dense_0"]
    assert set(dense) == {"kernel_q", "kernel_scale", "bias"} and dense["kernel_q"].dtype == np.int8
    err = np.abs(back["mlp"]["dense_0"]["kernel"] - params["mlp"]["dense_0"]["kernel"])
    assert np.all(err.max(0) <= dense["kernel_scale"] / 2 * (1 + 1e-6))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(back))
    # forms still read the int8 sites as the float ones
    assert forms.linear_form(dense) == "full" and forms.table_form(q["embed"]["a"]) == "full"
    assert forms.table_width(q["embed"]["a"]) == 8
    np.testing.assert_array_equal(forms.kernel_of(dense), back["mlp"]["dense_0"]["kernel"])
    # composable and idempotent; packing carries int8 tables exactly
    assert jax.tree.all(jax.tree.map(np.array_equal, quantize(q), q))
    packed = pack(model, q)
    assert packed["embed"]["table_8"].dtype == np.int8 and "scale_8" in packed["embed"]
    assert jax.tree.all(jax.tree.map(np.array_equal, unpack(model, packed), q))
    assert count_params(q) > count_params(params) - 1 and count_bytes(q) < count_bytes(params) / 2


@pytest.mark.parametrize("name", MODELS)
def test_every_model_scores_int8_as_its_dequantized_params(name):
    """int8 scorer (per-field and packed) == float scorer on dequantize(quantize(p)), for the
    original params and AFM-compressed ones."""
    model = small_model(name)
    batch = random_batch(64, seed=5)
    params = np_tree(lively_params(model))
    cases = {"original": params} if name == "lr" else {"original": params,
                                                        "afm": _afm(name, params)}
    for form, p in cases.items():
        q = quantize(p)
        want = logits(model, dequantize(q), batch)
        _assert_close(logits(model, q, batch), want, f"{name} {form} per-field")
        _assert_close(logits(model, pack(model, q), batch), want, f"{name} {form} packed")
        # quantizing the packed params equals packing the quantized ones
        qp = quantize(pack(model, p))
        assert jax.tree.all(jax.tree.map(np.array_equal, qp, pack(model, q))), f"{name} {form}"
        validate_params(model, q, where=f"{name} {form}")


def test_int8_model_dir_saves_loads_and_exports(tmp_path):
    model = small_model("dcnv2")
    params = _afm("dcnv2", np_tree(lively_params(model)))
    q = quantize(params)
    save_model_dir(tmp_path / "m", model, q)
    model2, loaded, _ = load_model_dir(tmp_path / "m")   # validates
    leaves = jax.tree.leaves(q)
    got = jax.tree.leaves(loaded)
    assert [np.asarray(x).dtype for x in got] == [np.asarray(x).dtype for x in leaves]
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), q, loaded))
    batch = random_batch(50, seed=7)
    live = np.asarray(make_scorer(model2)(loaded, {k: v for k, v in batch.items()
                                                  if k != "label"}))
    export(model2, loaded, tmp_path / "exp")
    score = load_exported(tmp_path / "exp")
    np.testing.assert_allclose(np.asarray(score(batch["cat"], batch["num"])), live,
                               rtol=1e-5, atol=1e-6)


def test_cli_quantize_on_a_tiny_trained_model(tmp_path, capsys):
    from afm_jax.cli import main

    d, d8 = tmp_path / "m", tmp_path / "m8"
    assert main(["train", "--data", "synthetic:3000", "--model", "deepfm", "--mlp", "16",
                 "--epochs", "1", "--out", str(d), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["quantize", "--model-dir", str(d), "--out", str(d8), "--no-progress",
                 "--json"]) == 0
    import json
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["bytes_after"] < res["bytes_before"] / 2
    assert abs(res["auc"] - res["auc_before"]) < 0.01
    _, loaded, _ = load_model_dir(d8)
    assert any(np.asarray(x).dtype == np.int8 for x in jax.tree.leaves(loaded))
    # compress --int8: AFM, then int8 storage, in one model directory
    assert main(["compress", "--model-dir", str(d), "--plan", "rank:4", "--int8", "--out",
                 str(tmp_path / "m9"), "--no-progress", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["bytes_after"] < res["bytes_before"] / 2
    _, loaded, meta = load_model_dir(tmp_path / "m9")
    assert meta["compression"]["int8"] and forms.is_int8(loaded["mlp"]["dense_0"]["v"])


def test_int8_only_where_it_stores_smaller():
    """A rank-1 table or a 1-input kernel would grow as int8 (a 4-byte scale per 1-byte value):
    they stay float32, and quantize never makes a model larger."""
    from afm_jax.quantize import smaller_as_int8

    assert not smaller_as_int8((1000, 1), axis=1) and smaller_as_int8((1000, 2), axis=1)
    assert not smaller_as_int8((1, 64), axis=0) and smaller_as_int8((2, 64), axis=0)
    model = small_model("deepfm")
    params = np_tree(lively_params(model))
    stats = collect_stats(model, params, batches(1), progress=False)
    rank1 = np_tree(compress(params, stats, fixed_plan(params, stats, 1, list(stats)),
                             model=model))
    q = quantize(rank1)
    assert count_bytes(q) <= count_bytes(rank1)
    field = next(iter(rank1["embed"]))
    assert forms.table_form(rank1["embed"][field]) == "compressed"
    assert not forms.is_int8(q["embed"][field])                      # [V, 1] stays float
    assert forms.is_int8(q["mlp"]["dense_0"]["u"])                   # [in, 1] gets int8
    assert not forms.is_int8(q["mlp"]["dense_0"]["v"])               # [1, out] stays float
    packed = quantize(pack(model, rank1))
    assert "scale_1" not in packed["embed"]
    batch = random_batch(64, 0)
    np.testing.assert_allclose(logits(model, unpack(model, packed), batch),
                               logits(model, q, batch), rtol=1e-5, atol=1e-6)
