"""What every model shares: the fields it reads and its embedding of one example."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from afm_jax.nn import FieldEmbedding, FirstOrder


class FieldsInfo(Protocol):
    """The part of `afm_jax.data.FeatureInfo` a model needs."""

    cat_names: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    num_names: tuple[str, ...]


class CTRModel(nn.Module):
    """Base of every model: `__call__(cat int32[Fc], num float32[Fn]) -> logit` for ONE example.

    `FOLD_INTO` names the Linear that reads the concatenated field embeddings directly and
    exclusively (None when an interaction layer also reads them): AFM may fold each field's
    projection into that layer.
    """

    info: Any
    config: Any
    FOLD_INTO: ClassVar[str | None] = None

    def first_order(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        """The logistic-regression term over all fields (params at "linear") -> scalar."""
        return FirstOrder(self.info.vocab_sizes, len(self.info.num_names), name="linear")(cat, num)

    def embed(self, cat: jax.Array, num: jax.Array) -> list[jax.Array]:
        return FieldEmbedding(self.info.cat_names, self.info.vocab_sizes, self.info.num_names,
                              self.config.embed_dim, name="embed")(cat, num)


def stack(fields: list[jax.Array]) -> jax.Array:
    """[F] list of [d] -> [F, d] (all fields must still have the full dim d). Packed lookups
    hand over their rows already stacked (`packing.Fields`)."""
    stacked = getattr(fields, "stacked", None)
    return stacked if stacked is not None else jnp.stack(fields)


def concat(fields: list[jax.Array]) -> jax.Array:
    """[F] list of [d_f] -> [sum d_f]; the MLP input."""
    stacked = getattr(fields, "stacked", None)
    if stacked is not None:
        return stacked.reshape(-1)
    return jnp.concatenate(fields) if fields else jnp.zeros((0,))
