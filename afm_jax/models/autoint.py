"""AutoInt (Song et al. 2019): stacked multi-head self-attention over the fields [F, d].

Paper defaults: 3 interacting layers, 2 heads of 32 dims each (so every layer outputs
[F, 64]), residual projections, relu. The last layer's [F, 64] is flattened into the output
Dense. Attention scores are scaled by 1/sqrt(head_dim) (the paper uses the plain inner
product). `mlp` empty is AutoInt; a non-empty `mlp` adds the parallel DNN of AutoInt+ on the
concatenated embeddings, its last layer joining the output Dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from afm_jax.models.base import CTRModel, concat, stack
from afm_jax.nn import MLP, InteractingLayer, Linear


@dataclass(frozen=True)
class AutoIntConfig:
    embed_dim: int = 16
    attention_layers: int = 3
    num_heads: int = 2
    head_dim: int = 32
    mlp: tuple[int, ...] = ()


class AutoInt(CTRModel):
    config: AutoIntConfig = AutoIntConfig()

    @nn.compact
    def __call__(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        prec = self.compute_dtype   # every layer computes at the model's precision
        fields = self.embed(cat, num)
        x = stack(fields)
        for i in range(self.config.attention_layers):
            x = InteractingLayer(self.config.num_heads, self.config.head_dim,
                                 compute_dtype=prec, name=f"attention_{i}")(x)
        parts = [x.reshape(-1)]
        if self.config.mlp:
            parts.append(MLP(self.config.mlp, compute_dtype=prec, name="mlp")(concat(fields)))
        return Linear(1, compute_dtype=prec, name="out")(jnp.concatenate(parts))[0]
