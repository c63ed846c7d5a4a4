"""Inner-product PNN (Qu et al. 2016): [fields flattened, all <e_i, e_j>] -> MLP -> logit.

The input is [F d + F (F - 1) / 2]; the MLP's first Dense is the paper's product layer
(l_z + l_p + b), here with full (unfactorised) weights. Hidden units (400, 400, 400).
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from afm_jax.models.base import CTRModel, concat, stack
from afm_jax.nn import MLP, Linear, pairwise_inner_products


@dataclass(frozen=True)
class PNNConfig:
    embed_dim: int = 16
    mlp: tuple[int, ...] = (400, 400, 400)


class PNN(CTRModel):
    config: PNNConfig = PNNConfig()

    @nn.compact
    def __call__(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        prec = self.compute_dtype   # every layer computes at the model's precision
        fields = self.embed(cat, num)
        x = jnp.concatenate([concat(fields), pairwise_inner_products(stack(fields))])
        hidden = MLP(self.config.mlp, compute_dtype=prec, name="mlp")(x)
        return Linear(1, compute_dtype=prec, name="out")(hidden)[0]
