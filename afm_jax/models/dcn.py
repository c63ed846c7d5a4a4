"""Deep & Cross Network (Wang et al. 2017): cross network v1 and an MLP in parallel."""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from afm_jax.models.base import CTRModel, concat
from afm_jax.nn import MLP, CrossNetV1, Linear


@dataclass(frozen=True)
class DCNConfig:
    embed_dim: int = 16
    mlp: tuple[int, ...] = (400, 400, 400)
    cross_layers: int = 3


class DCN(CTRModel):
    config: DCNConfig = DCNConfig()

    @nn.compact
    def __call__(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        prec = self.compute_dtype   # every layer computes at the model's precision
        x0 = concat(self.embed(cat, num))
        cross = CrossNetV1(self.config.cross_layers, name="cross")(x0)
        deep = MLP(self.config.mlp, compute_dtype=prec, name="mlp")(x0)
        return Linear(1, compute_dtype=prec, name="out")(jnp.concatenate([cross, deep]))[0]
