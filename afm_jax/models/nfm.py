"""NFM (He & Chua 2017): bi-interaction pooling of the fields [F, d] -> [d], then an MLP.

logit = first-order terms + out(MLP(sum_{i<j} e_i * e_j)). The paper found one hidden layer
enough; the default here is the library's (400, 400, 400) so that NFM compares with DeepFM and
DCN-V2 at the same depth (pass mlp=(d,) for the paper's setting). No batch norm or dropout.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax

from afm_jax.models.base import CTRModel, stack
from afm_jax.nn import MLP, Linear, bi_interaction


@dataclass(frozen=True)
class NFMConfig:
    embed_dim: int = 16
    mlp: tuple[int, ...] = (400, 400, 400)


class NFM(CTRModel):
    config: NFMConfig = NFMConfig()

    @nn.compact
    def __call__(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        prec = self.compute_dtype   # every layer computes at the model's precision
        pooled = bi_interaction(stack(self.embed(cat, num)))
        first = self.first_order(cat, num)
        hidden = MLP(self.config.mlp, compute_dtype=prec, name="mlp")(pooled)
        return first + Linear(1, compute_dtype=prec, name="out")(hidden)[0]
