"""DCN-V2 (Wang et al. 2021): full-matrix cross layers (each a Linear site) and an MLP in parallel."""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from afm_jax.models.base import CTRModel, concat
from afm_jax.nn import MLP, CrossNetV2, Linear


@dataclass(frozen=True)
class DCNv2Config:
    embed_dim: int = 16
    mlp: tuple[int, ...] = (400, 400, 400)
    cross_layers: int = 3


class DCNv2(CTRModel):
    config: DCNv2Config = DCNv2Config()

    @nn.compact
    def __call__(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        prec = self.compute_dtype   # every layer computes at the model's precision
        x0 = concat(self.embed(cat, num))
        cross = CrossNetV2(self.config.cross_layers, compute_dtype=prec, name="cross")(x0)
        deep = MLP(self.config.mlp, compute_dtype=prec, name="mlp")(x0)
        return Linear(1, compute_dtype=prec, name="out")(jnp.concatenate([cross, deep]))[0]
