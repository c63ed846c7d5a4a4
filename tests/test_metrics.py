import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from afm_jax import metrics


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_logloss_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    y = rng.integers(0, 2, n)
    # rounded scores create many ties, which must count one half
    p = np.clip(np.round(rng.uniform(0.01, 0.99, n), 1 + seed % 3), 0.01, 0.99)
    assert metrics.auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert metrics.logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-9)


def test_auc_one_class_is_nan():
    assert np.isnan(metrics.auc(np.ones(5), np.arange(5.0)))
