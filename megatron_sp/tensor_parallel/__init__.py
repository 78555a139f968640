"""Tensor parallelism: layers, communication mappings, vocab-parallel cross entropy, RNG."""
from .cross_entropy import chunked_output_cross_entropy, vocab_parallel_cross_entropy
from .layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from .mappings import (copy_to_tensor_parallel_region, gather_from_sequence_parallel_region,
                       gather_from_tensor_parallel_region, reduce_from_tensor_parallel_region,
                       reduce_scatter_to_sequence_parallel_region, scatter_to_sequence_parallel_region,
                       scatter_to_tensor_parallel_region)
from .random import RNGTracker
from .sharding import full_of, init_parameters, set_tp_attributes, shard_of

__all__ = [
    "ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding", "RNGTracker",
    "vocab_parallel_cross_entropy", "chunked_output_cross_entropy", "copy_to_tensor_parallel_region",
    "reduce_from_tensor_parallel_region", "scatter_to_tensor_parallel_region",
    "gather_from_tensor_parallel_region", "scatter_to_sequence_parallel_region",
    "gather_from_sequence_parallel_region", "reduce_scatter_to_sequence_parallel_region",
    "set_tp_attributes", "shard_of", "full_of", "init_parameters",
]
