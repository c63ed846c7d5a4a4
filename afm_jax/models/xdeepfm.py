"""xDeepFM (Lian et al. 2018): first-order terms + CIN over the fields [F, d] + an MLP.

The CIN's layer k maps the [H_{k-1} F] outer products, per embedding dimension, to H_k feature
maps with the Linear site "cin/conv_k" (d output vectors per example); every layer's maps are
sum-pooled and, with the MLP's last layer, read by the output Dense. Defaults are the paper's:
CIN (200, 200, 200) with identity activation and MLP (400, 400, 400). That CIN is the costliest
model here (on Criteo's 39 fields each of the last two layers is a [7800, 200] Dense applied 16
times per example); pass cin=(100, 100, 100) for a cheaper run.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from afm_jax.models.base import CTRModel, concat, stack
from afm_jax.nn import CIN, MLP, Linear


@dataclass(frozen=True)
class XDeepFMConfig:
    embed_dim: int = 16
    mlp: tuple[int, ...] = (400, 400, 400)
    cin: tuple[int, ...] = (200, 200, 200)


class XDeepFM(CTRModel):
    config: XDeepFMConfig = XDeepFMConfig()

    @nn.compact
    def __call__(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        prec = self.compute_dtype   # every layer computes at the model's precision
        fields = self.embed(cat, num)
        first = self.first_order(cat, num)
        pooled = CIN(self.config.cin, compute_dtype=prec, name="cin")(stack(fields))
        deep = MLP(self.config.mlp, compute_dtype=prec, name="mlp")(concat(fields))
        return first + Linear(1, compute_dtype=prec, name="out")(jnp.concatenate([pooled, deep]))[0]
