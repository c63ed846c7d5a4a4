"""DIN, Deep Interest Network (Zhou et al. 2018): target attention over a behaviour sequence.

The sequence field (a bag that `shares` the target item's table, e.g. MovieLens' "history"
sharing "movie") is not mean-pooled: each past item k_l gets a weight from a small MLP on
[q, k_l, q - k_l, q * k_l] with q the target item's vector, padding masked out, and the user's
interest is sum_l w_l k_l. As in the paper the weights are not normalized by a softmax (their
sum keeps the intensity of the user's interest); `softmax=True` normalizes them over the real
items. The interest vector takes the sequence's place among the fields, and the fields go
through the MLP (PReLU in the paper; ReLU here, as in the other models). The attention MLP's
and the MLP's Linear layers are AFM sites like any other; the attention sites' statistics count
every one of the L rows of an example, padding rows included (their outputs are masked out of
the score, so a compressed attention MLP is still exact at full rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from afm_jax.errors import AfmError
from afm_jax.models.base import CTRModel, concat
from afm_jax.nn import MLP, Linear
from afm_jax.pooling import full_bag_rows


@dataclass(frozen=True)
class DINConfig:
    embed_dim: int = 16
    mlp: tuple[int, ...] = (200, 80)
    attention_mlp: tuple[int, ...] = (80, 40)
    behavior: str | None = None     # the sequence field; None: the first bag that shares a field
    softmax: bool = False


def behavior_field(info, name: str | None = None):
    """The `BagInfo` DIN attends over: `name`, or the first bag that shares another field's
    table. AfmError when there is none (DIN needs a behaviour sequence)."""
    bags = tuple(getattr(info, "bags", ()))
    seq = [b for b in bags if b.shares is not None and (name is None or b.name == name)]
    if not seq:
        have = ", ".join(f"{b.name} (shares {b.shares})" for b in bags) or "none"
        raise AfmError("DIN attends over a behaviour sequence: a multi-valued field that shares "
                       "the target item's table (a schema \"sequence\" entry with \"shares\")"
                       + (f" named {name!r}" if name else "") + f"; this data's bag fields: {have}")
    if seq[0].shares not in info.cat_names:
        raise AfmError(f"DIN's sequence {seq[0].name!r} shares {seq[0].shares!r}, which is not a "
                       "single-valued field: the target item must be one")
    return seq[0]


class DIN(CTRModel):
    config: DINConfig = DINConfig()

    @nn.compact
    def __call__(self, cat, num: jax.Array) -> jax.Array:
        prec = self.compute_dtype
        seq = behavior_field(self.info, self.config.behavior)
        fields = self.embed(cat, num)
        n_cat = len(self.info.cat_names)
        slot = n_cat + [b.name for b in self.info.bags].index(seq.name)
        query = fields[self.info.cat_names.index(seq.shares)]                 # [d]
        keys, mask = full_bag_rows(fields, seq.name)                           # [L, d], [L]
        q = jnp.broadcast_to(query, keys.shape)
        h = jnp.concatenate([q, keys, q - keys, q * keys], axis=-1)            # [L, 4d]
        scores = self._attention(h, prec)                                     # [L]
        if self.config.softmax:
            weights = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf))
            weights = jnp.where(mask.any(), weights, 0.0)
        else:
            weights = jnp.where(mask, scores, 0.0)
        interest = weights @ keys                                              # [d]
        parts = list(fields)
        parts[slot] = interest
        hidden = MLP(self.config.mlp, compute_dtype=prec, name="mlp")(concat(parts))
        return Linear(1, compute_dtype=prec, name="out")(hidden)[0]

    def _attention(self, h: jax.Array, prec) -> jax.Array:
        """The attention MLP on each of the L rows of h [L, 4d] -> scores [L]."""
        x = h
        for i, width in enumerate(self.config.attention_mlp):
            x = jax.nn.relu(Linear(width, compute_dtype=prec, name=f"attention_{i}")(x))
        return Linear(1, compute_dtype=prec, name="attention_out")(x)[..., 0]
