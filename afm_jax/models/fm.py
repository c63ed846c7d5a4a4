"""Factorization machine (Rendle 2010): first order + pairwise dot products of field embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax

from afm_jax.models.base import CTRModel, stack
from afm_jax.nn import fm_interaction


@dataclass(frozen=True)
class FMConfig:
    embed_dim: int = 16


class FM(CTRModel):
    config: FMConfig = FMConfig()

    @nn.compact
    def __call__(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        first = self.first_order(cat, num)
        return first + fm_interaction(stack(self.embed(cat, num)))
