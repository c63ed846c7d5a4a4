"""The six interaction models (FiBiNET, NFM, AutoInt, GDCN, xDeepFM, PNN): every Dense they hold
is a compressible site, with one output vector per application, and each learns synthetic data.

Shapes, AFM identities and param counts of these models are covered by the REGISTRY-wide tests
in test_models.py and test_compress.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from afm_jax.compress.stats import list_sites
from afm_jax.data import synthetic_dataset
from afm_jax.inference import count_params
from afm_jax.models import build_model
from afm_jax.nn import bi_interaction, pairwise_inner_products
from afm_jax.train import TrainConfig, init_params, train
from tests.helpers import INFO, random_batch

F, D = len(INFO.cat_names) + len(INFO.num_names), 8          # 6 fields of dim 8
PAIRS = F * (F - 1) // 2

# model -> (small config, {site: (output dim, output vectors per example)} that must be present)
ZOO = {
    "fibinet": ({"embed_dim": D, "mlp": (32,), "reduction_ratio": 3},
                {"senet/reduce": (2, 1), "senet/expand": (F, 1), "bilinear/weight": (D, F),
                 "bilinear_senet/weight": (D, F), "mlp/dense_0": (32, 1), "out": (1, 1)}),
    "nfm": ({"embed_dim": D, "mlp": (32, 16)},
            {"mlp/dense_0": (32, 1), "mlp/dense_1": (16, 1), "out": (1, 1)}),
    "autoint": ({"embed_dim": D, "attention_layers": 2, "num_heads": 2, "head_dim": 4},
                {**{f"attention_{i}/{p}": (8, F) for i in range(2)
                    for p in ("query", "key", "value", "residual")}, "out": (1, 1)}),
    "gdcn": ({"embed_dim": D, "mlp": (32,), "cross_layers": 2},
             {"cross/cross_0": (F * D, 1), "cross/gate_0": (F * D, 1),
              "cross/cross_1": (F * D, 1), "cross/gate_1": (F * D, 1),
              "mlp/dense_0": (32, 1), "out": (1, 1)}),
    "xdeepfm": ({"embed_dim": D, "mlp": (32,), "cin": (12, 10)},
                {"cin/conv_0": (12, D), "cin/conv_1": (10, D), "mlp/dense_0": (32, 1),
                 "out": (1, 1)}),
    "pnn": ({"embed_dim": D, "mlp": (32,)}, {"mlp/dense_0": (32, 1), "out": (1, 1)}),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_dense_is_a_site(name):
    config, expected = ZOO[name]
    model = build_model(name, INFO, **config)
    params = init_params(model, INFO)
    b = random_batch(5)
    sites = list_sites(model, params, {"cat": b["cat"], "num": b["num"]})
    for site, shape in expected.items():
        assert sites.get(site) == shape, (site, sites.get(site), shape)
    assert {s for s in sites if s.startswith("embed/")} == {f"embed/{n}" for n in INFO.cat_names}
    # nothing Dense hides outside the sites: every 2-D non-embedding param is a site's kernel
    def kernels(tree, path=()):
        for k, v in tree.items():
            if isinstance(v, dict):
                yield from kernels(v, path + (k,))
            elif k == "kernel":
                yield "/".join(path)
    assert set(kernels(params)) <= set(sites)


def test_nfm_pnn_interactions_match_explicit_pairs():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(5, 3)).astype(np.float32)
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    np.testing.assert_allclose(bi_interaction(e), sum(e[i] * e[j] for i, j in pairs), rtol=1e-5)
    np.testing.assert_allclose(pairwise_inner_products(e), [e[i] @ e[j] for i, j in pairs],
                               rtol=1e-5)


def test_default_configs_have_expected_param_counts():
    # FiBiNET on 6 fields, d=16: first Dense reads 2 * 15 pairs * 16 = 480 inputs
    model = build_model("fibinet", INFO)
    params = init_params(model, INFO)
    assert params["mlp"]["dense_0"]["kernel"].shape == (2 * PAIRS * 16, 400)
    assert params["senet"]["reduce"]["kernel"].shape == (F, F // 3)
    # IPNN reads F d + F (F - 1) / 2; xDeepFM's CIN layer 2 reads 200 * F
    pnn = init_params(build_model("pnn", INFO), INFO)
    assert pnn["mlp"]["dense_0"]["kernel"].shape == (F * 16 + PAIRS, 400)
    xd = init_params(build_model("xdeepfm", INFO), INFO)
    assert xd["cin"]["conv_0"]["kernel"].shape == (F * F, 200)
    assert xd["cin"]["conv_1"]["kernel"].shape == (200 * F, 200)
    assert count_params(xd) > count_params(pnn)


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_dataset(20_000, seed=0)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_learns_synthetic_data(name, synthetic):
    config, _ = ZOO[name]
    model = build_model(name, synthetic.info, **config)
    # 63 steps of 256 rows at a raised learning rate: 16 steps of 1024 at 1e-3 are too few here
    result = train(model, synthetic, TrainConfig(epochs=1, batch_size=256, learning_rate=1e-2),
                   progress=False)
    assert result.best_valid["auc"] > 0.55, result.best_valid
