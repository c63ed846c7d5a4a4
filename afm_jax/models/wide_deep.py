"""Wide & Deep (Cheng et al. 2016): a wide linear part plus an MLP over the field embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax

from afm_jax.models.base import CTRModel, concat
from afm_jax.nn import MLP, Linear


@dataclass(frozen=True)
class WideDeepConfig:
    embed_dim: int = 16
    mlp: tuple[int, ...] = (400, 400, 400)


class WideDeep(CTRModel):
    config: WideDeepConfig = WideDeepConfig()
    FOLD_INTO = "mlp/dense_0"  # the embeddings feed only the first Dense: projections fold

    @nn.compact
    def __call__(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        prec = self.compute_dtype   # every layer computes at the model's precision
        wide = self.first_order(cat, num)
        hidden = MLP(self.config.mlp, compute_dtype=prec, name="mlp")(concat(self.embed(cat, num)))
        deep = Linear(1, compute_dtype=prec, name="out")(hidden)
        return wide + deep[0]
