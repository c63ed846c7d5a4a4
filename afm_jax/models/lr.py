"""Logistic regression on one-hot fields (the baseline every CTR model must beat)."""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax

from afm_jax.models.base import CTRModel


@dataclass(frozen=True)
class LRConfig:
    embed_dim: int = 1  # unused; kept so every config has the field


class LR(CTRModel):
    config: LRConfig = LRConfig()

    @nn.compact
    def __call__(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        return self.first_order(cat, num)
