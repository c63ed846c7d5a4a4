"""Data: schemas, streaming readers, encoder, synthetic generator, batching.

load_dataset("criteo:PATH") -> Dataset with train/valid/test EncodedSplits (int32 cat ids, float32
numeric, float32 labels, and padded ids + lengths for multi-valued fields), the fitted Encoder and
a report; iterate_batches yields model batches (their layout: `afm_jax.data.splits`).

Modules, bottom floor first (each imports only those before it): hashing, schema, bags, readers,
encoder, splits, build, synthetic, dataset; batching sits on splits and hashing.
"""

from afm_jax.data.batching import iterate_batches
from afm_jax.data.dataset import DATASET_DEFAULTS, Dataset, EncodedSplit, load_dataset, parse_data_spec
from afm_jax.data.encoder import Encoder
from afm_jax.data.readers import RawChunk
from afm_jax.data.schema import BagInfo, BagSpec, FeatureInfo, Schema
from afm_jax.data.synthetic import SyntheticBags, synthetic_dataset

__all__ = ["Schema", "BagSpec", "BagInfo", "FeatureInfo", "EncodedSplit", "Dataset", "Encoder", "RawChunk",
           "load_dataset", "synthetic_dataset", "SyntheticBags", "iterate_batches", "parse_data_spec",
           "DATASET_DEFAULTS"]
