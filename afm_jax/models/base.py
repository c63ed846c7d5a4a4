"""What every model shares: the fields it reads and its embedding of one example."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from afm_jax.nn import FieldEmbedding, FirstOrder, precision_key


class FieldsInfo(Protocol):
    """The part of `afm_jax.data.FeatureInfo` a model needs."""

    cat_names: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    num_names: tuple[str, ...]


class CTRModel(nn.Module):
    """Base of every model: `__call__(cat int32[Fc], num float32[Fn]) -> logit` for ONE example.

    With bag fields (`info.bags`), cat is the Mapping of `pooling.model_inputs` ({"raw": ids,
    "bags", "bag_len"}); `embed` then gives one pooled vector per bag after the categorical
    fields (so FM, cross layers, attention and the MLP see one more field each) and
    `first_order` pools the bags' first-order weights.

    `FOLD_INTO` names the Linear that reads the concatenated field embeddings directly and
    exclusively (None when an interaction layer also reads them): AFM may fold each field's
    projection into that layer.

    compute_dtype: the precision of every product of the model (None: float32, "bfloat16",
    "int8"; see `afm_jax.nn`), passed down to each layer. It is part of the model object (its
    hash and equality), so every cache keyed on the model keys on it; `with_precision` gives the
    same model at another precision. It is a property of a run, not of the trained model: the
    model JSON (`model_to_json`) does not hold it.
    """

    info: Any
    config: Any
    compute_dtype: str | None = None
    FOLD_INTO: ClassVar[str | None] = None

    def first_order(self, cat: jax.Array, num: jax.Array) -> jax.Array:
        """The logistic-regression term over all fields (params at "linear") -> scalar."""
        bags = tuple(getattr(self.info, "bags", ()))
        return FirstOrder(self.info.vocab_sizes, len(self.info.num_names), bags,
                          self.info.cat_names if bags else (), name="linear")(cat, num)

    def embed(self, cat: jax.Array, num: jax.Array) -> list[jax.Array]:
        """The field vectors: categorical fields, pooled bags, numeric fields (`FieldEmbedding`)."""
        return FieldEmbedding(self.info.cat_names, self.info.vocab_sizes, self.info.num_names,
                              self.config.embed_dim, self.compute_dtype,
                              tuple(getattr(self.info, "bags", ())), name="embed")(cat, num)


def with_precision(model: CTRModel, compute_dtype) -> CTRModel:
    """`model` computing at `compute_dtype` (jnp.bfloat16, "bfloat16", "int8", None or
    "float32"): the model itself when it already does, else a clone with that field. Raises
    ValueError for another dtype."""
    key = precision_key(compute_dtype)
    if getattr(model, "compute_dtype", None) == key:
        return model
    if not hasattr(model, "compute_dtype"):
        raise ValueError(f"{type(model).__name__} has no compute_dtype field: it computes in "
                         "float32 only")
    return model.clone(compute_dtype=key)


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
