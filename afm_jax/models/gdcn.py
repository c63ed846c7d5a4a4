"""GDCN (Wang et al. 2023): gated cross network and an MLP, parallel (GDCN-P) or stacked (GDCN-S).

x0 = concatenated fields [F d]; each of the 3 gated cross layers computes
c_{l+1} = x0 * (W_l c_l + b_l) * sigmoid(G_l c_l) + c_l, W_l and G_l both [F d, F d] Linear
sites. "parallel": out(concat(cross(x0), MLP(x0))); "stacked": out(MLP(cross(x0))). The
paper's field-level dimension optimisation is not included (all fields keep dim d).
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from afm_jax.errors import AfmError
from afm_jax.models.base import CTRModel, concat
from afm_jax.nn import MLP, GatedCrossNet, Linear


@dataclass(frozen=True)
class GDCNConfig:
    embed_dim: int = 16
    mlp: tuple[int, ...] = (400, 400, 400)
    cross_layers: int = 3
    structure: str = "parallel"   # or "stacked"


class GDCN(CTRModel):
    config: GDCNConfig = GDCNConfig()

    @nn.compact
    def __call__(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        prec = self.compute_dtype   # every layer computes at the model's precision
        x0 = concat(self.embed(cat, num))
        cross = GatedCrossNet(self.config.cross_layers, compute_dtype=prec, name="cross")(x0)
        if self.config.structure == "parallel":
            x = jnp.concatenate([cross, MLP(self.config.mlp, compute_dtype=prec, name="mlp")(x0)])
        elif self.config.structure == "stacked":
            x = MLP(self.config.mlp, compute_dtype=prec, name="mlp")(cross)
        else:
            raise AfmError(f"GDCN structure {self.config.structure!r}: use 'parallel' or 'stacked'")
        return Linear(1, compute_dtype=prec, name="out")(x)[0]
