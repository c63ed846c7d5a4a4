"""FiBiNET (Huang et al. 2019): SENET field reweighting and bilinear pair interactions -> MLP.

Fields E [F, d] and their SENET reweighting each go through a "field_all" bilinear layer (one
shared W [d, d] per layer) giving [F (F - 1) / 2, d] each; both are flattened, concatenated and
fed to the MLP. With the paper's reduction ratio 3 and (400, 400, 400) hidden units. The first
Dense reads 2 * F (F - 1) / 2 * d inputs (23,712 on Criteo's 39 fields): the paper's design.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from afm_jax.models.base import CTRModel, stack
from afm_jax.nn import MLP, BilinearInteraction, Linear, SENETLayer


@dataclass(frozen=True)
class FiBiNETConfig:
    embed_dim: int = 16
    mlp: tuple[int, ...] = (400, 400, 400)
    reduction_ratio: int = 3


class FiBiNET(CTRModel):
    config: FiBiNETConfig = FiBiNETConfig()

    @nn.compact
    def __call__(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        prec = self.compute_dtype   # every layer computes at the model's precision
        fields = stack(self.embed(cat, num))
        first = self.first_order(cat, num)
        reweighted = SENETLayer(self.config.reduction_ratio, compute_dtype=prec, name="senet")(fields)
        plain_pairs = BilinearInteraction(compute_dtype=prec, name="bilinear")(fields)
        senet_pairs = BilinearInteraction(compute_dtype=prec, name="bilinear_senet")(reweighted)
        x = jnp.concatenate([plain_pairs.reshape(-1), senet_pairs.reshape(-1)])
        hidden = MLP(self.config.mlp, compute_dtype=prec, name="mlp")(x)
        return first + Linear(1, compute_dtype=prec, name="out")(hidden)[0]
