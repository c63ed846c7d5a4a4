"""Data: schemas, streaming readers, encoder, synthetic generator, batching.

load_dataset("criteo:PATH") -> Dataset with train/valid/test EncodedSplits (int32 cat ids, float32
numeric, float32 labels), the fitted Encoder and a report; iterate_batches yields model batches.
"""

from afm_jax.data.batching import iterate_batches
from afm_jax.data.dataset import DATASET_DEFAULTS, Dataset, EncodedSplit, load_dataset, parse_data_spec
from afm_jax.data.encoder import Encoder
from afm_jax.data.readers import RawChunk
from afm_jax.data.schema import FeatureInfo, Schema
from afm_jax.data.synthetic import synthetic_dataset

__all__ = ["Schema", "FeatureInfo", "EncodedSplit", "Dataset", "Encoder", "RawChunk", "load_dataset",
           "synthetic_dataset", "iterate_batches", "parse_data_spec", "DATASET_DEFAULTS"]
