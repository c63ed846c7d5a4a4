"""Packed tables: exact round trip, same logits as per-field params for every model and form,
and one gather per table width in the compiled scorer."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from afm_jax.compress import collect_stats, compress, fixed_plan, svd_compress
from afm_jax.compress.ttrec import tt_tables
from afm_jax.forms import PackedLayout, is_packed
from afm_jax.inference import logits_fn
from afm_jax.models import NEEDS_SEQUENCE, REGISTRY
from afm_jax.packing import pack, unpack
from tests.helpers import INFO, batches, lively_params, np_tree, random_batch, small_model

MODELS = sorted(set(REGISTRY) - NEEDS_SEQUENCE)


def _forms(name: str) -> dict:
    """Every params form of one small model: original, AFM (dense, embed, both, relu; folded
    where the model folds), weight SVD and TT-Rec."""
    model = small_model(name)
    params = np_tree(lively_params(model))
    forms = {"original": params}
    if name == "lr":
        return forms
    stats = collect_stats(model, params, batches(2), progress=False)
    dense = fixed_plan(params, stats, 3, [s for s in stats if not s.startswith("embed/")])
    embed = fixed_plan(params, stats, 3, [s for s in stats if s.startswith("embed/")])
    forms["afm_dense"] = compress(params, stats, dense, model=model)
    forms["afm_embed"] = compress(params, stats, embed, model=model)
    forms["afm_both"] = compress(params, stats, {**dense, **embed}, model=model)
    forms["afm_relu"] = compress(params, stats, dense, model=model, activation="relu")
    forms["svd_both"] = svd_compress(params, {**dense, **embed})
    forms["ttrec"] = tt_tables(params, {"embed/a": 2, "embed/b": 2}, seed=0)
    return {k: np_tree(v) for k, v in forms.items()}


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return (jax.tree.structure(a) == jax.tree.structure(b)
            and all(np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
                    for x, y in zip(la, lb, strict=True)))


def _gathers(compiled) -> int:
    return len(re.findall(r"\bgather\(", compiled.as_text()))


def _compiled(model, params, batch):
    return jax.jit(logits_fn(model)).lower(params, batch).compile()


@pytest.mark.parametrize("name", MODELS)
def test_packed_form_round_trips_scores_equal_and_gathers_once_per_width(name):
    """For every form: unpack(pack(p)) == p exactly, pack is idempotent, packed logits equal
    per-field logits (out-of-range ids included), and the compiled packed scorer holds at most
    one gather per table width plus the first-order lookup."""
    model = small_model(name)
    batch = random_batch(64, seed=3)
    batch["cat"][:3, 0] = [-1, INFO.vocab_sizes[0], 10**6]   # out of range: the field's row 0
    batch = {k: jax.numpy.asarray(v) for k, v in batch.items() if k != "label"}
    forms = _forms(name)
    # gathers of the model's own (constant pair indices of FiBiNET, PNN): per field and the
    # first order aside, they stay as they are
    per_field = _gathers(_compiled(model, forms["original"], batch))
    own = (per_field - len(INFO.cat_names) * ("embed" in forms["original"])
           - ("linear" in forms["original"]))
    for form, params in forms.items():
        packed = pack(model, params)
        assert name == "lr" or is_packed(packed["embed"]), form
        assert _leaves_equal(unpack(model, packed), params), form
        assert _leaves_equal(pack(model, packed), packed), form
        want = np.asarray(_compiled(model, params, batch)(params, batch))
        fn = _compiled(model, packed, batch)
        got = np.asarray(fn(packed, batch))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max(),
                                   err_msg=f"{name} {form}")
        if form != "ttrec":   # TT rows are products of cores, gathered core by core
            widths = len(packed["embed"]["layout"].widths()) if "embed" in packed else 0
            gathers = _gathers(fn) - own
            assert gathers <= widths + 1, f"{name} {form}: {gathers} gathers of tables"


def test_layout_is_static_and_jit_accepts_packed_params():
    model = small_model("deepfm")
    packed = pack(model, np_tree(lively_params(model)))
    layout = packed["embed"]["layout"]
    assert isinstance(layout, PackedLayout) and not jax.tree.leaves(layout)
    assert [f.name for f in layout.fields] == list(INFO.cat_names)
    assert [f.offset for f in layout.fields] == [0, 40, 100, 125]
    assert packed["embed"]["table_8"].shape == (sum(INFO.vocab_sizes), 8)
    assert packed["embed"]["numeric"].shape == (2, 8)


def test_pack_runs_under_jit_on_device_arrays():
    model = small_model("dcnv2")
    params = lively_params(model)
    packed = jax.jit(lambda p: pack(model, p))(params)
    assert _leaves_equal(np_tree(unpack(model, packed)), np_tree(params))
