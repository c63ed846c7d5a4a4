"""DeepFM (Guo et al. 2017): FM and an MLP share the field embeddings; logits add."""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax

from afm_jax.models.base import CTRModel, concat, stack
from afm_jax.nn import MLP, Linear, fm_interaction


@dataclass(frozen=True)
class DeepFMConfig:
    embed_dim: int = 16
    mlp: tuple[int, ...] = (400, 400, 400)


class DeepFM(CTRModel):
    config: DeepFMConfig = DeepFMConfig()

    @nn.compact
    def __call__(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        prec = self.compute_dtype   # every layer computes at the model's precision
        fields = self.embed(cat, num)
        first = self.first_order(cat, num)
        hidden = MLP(self.config.mlp, compute_dtype=prec, name="mlp")(concat(fields))
        deep = Linear(1, compute_dtype=prec, name="out")(hidden)[0]
        return first + fm_interaction(stack(fields)) + deep
