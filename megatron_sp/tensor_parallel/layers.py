"""Tensor-parallel layers: column- and row-parallel linear, vocab-parallel embedding.

Activations are sequence-first, ``[s, b, h]``.  Each linear has a communication
*mode* rather than a copy-pasted class per variant:

* ``sequence_parallel=False`` (plain TP): the replicated side is entered with
  ``copy_to_tensor_parallel_region`` and left with an all-reduce;
* ``sequence_parallel=True`` (Megatron-SP): the replicated side holds a sequence
  shard ``[s/T, b, h]``; it is entered with an all-gather along the sequence and
  left with a reduce-scatter along the sequence.

Worked example, T = 2, h = 4, ffn = 8: ``ColumnParallelLinear(4, 8)`` holds rows
0-3 (rank 0) or 4-7 (rank 1) of the ``[8, 4]`` weight, maps ``[s, b, 4]`` to
``[s, b, 4]`` (its half of the outputs); ``RowParallelLinear(8, 4)`` holds columns
0-3 or 4-7 of the ``[4, 8]`` weight, maps the half ``[s, b, 4]`` to a partial
``[s, b, 4]`` and sums the two partials (all-reduce or reduce-scatter).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..parallel_state import group_rank, group_size
from .mappings import (copy_to_tensor_parallel_region, gather_from_sequence_parallel_region,
                       gather_from_tensor_parallel_region, reduce_from_tensor_parallel_region,
                       reduce_scatter_to_sequence_parallel_region)
from .sharding import set_tp_attributes


def _divide(n: int, d: int, what: str) -> int:
    if n % d:
        raise ValueError(f"{what} ({n}) is not divisible by --tensor-model-parallel-size ({d})")
    return n // d


class ColumnParallelLinear(torch.nn.Module):
    """``Y = X A^T + b`` with ``A``'s output rows split across TP: ``[.., in] -> [.., out/T]``."""

    def __init__(self, input_size: int, output_size: int, tp_group=None, bias: bool = True,
                 gather_output: bool = False, sequence_parallel: bool = False,
                 chunks: int = 1, init_kind: str = "normal", skip_weight: bool = False):
        super().__init__()
        self.tp_group, self.tp_size = tp_group, group_size(tp_group)
        self.gather_output, self.sequence_parallel = gather_output, sequence_parallel
        self.output_size_per_partition = _divide(output_size, self.tp_size, f"output size of {type(self).__name__}")
        # skip_weight: the weight is passed to forward() (tied output embedding).
        self.weight = None if skip_weight else set_tp_attributes(
            torch.nn.Parameter(torch.empty(self.output_size_per_partition, input_size)), 0, chunks, init_kind)
        self.bias = set_tp_attributes(torch.nn.Parameter(torch.empty(self.output_size_per_partition)),
                                      0, chunks, "zeros") if bias else None

    def gather_input(self, x):
        """Enter the TP region: ``[s/T, b, in]`` all-gathered under sequence parallelism, else
        ``[s, b, in]`` as is (its gradient all-reduced).  Callers that run the local matmul
        themselves (tiled MLP, chunked loss) use this and ``weight``/``bias`` directly."""
        if self.sequence_parallel:
            return gather_from_sequence_parallel_region(x, self.tp_group)
        return copy_to_tensor_parallel_region(x, self.tp_group)

    def forward(self, x, weight=None):
        # x: [s, b, in] (or [s/T, b, in] under sequence parallelism)
        weight = self.weight if weight is None else weight
        x = self.gather_input(x)
        y = F.linear(x, weight, self.bias)  # [s, b, out/T]
        if self.gather_output:
            y = gather_from_tensor_parallel_region(y, self.tp_group)
        return y


class RowParallelLinear(torch.nn.Module):
    """``Y = X A^T + b`` with ``A``'s input columns split across TP: ``[.., in/T] -> [.., out]``."""

    def __init__(self, input_size: int, output_size: int, tp_group=None, bias: bool = True,
                 sequence_parallel: bool = False, init_kind: str = "scaled_normal"):
        super().__init__()
        self.tp_group, self.tp_size = tp_group, group_size(tp_group)
        self.sequence_parallel = sequence_parallel
        in_local = _divide(input_size, self.tp_size, f"input size of {type(self).__name__}")
        self.weight = set_tp_attributes(torch.nn.Parameter(torch.empty(output_size, in_local)), 1, 1, init_kind)
        # The bias is added after the reduction, so it is replicated over TP; under
        # sequence parallelism its gradient comes from a sequence shard and needs a TP all-reduce.
        self.bias = set_tp_attributes(torch.nn.Parameter(torch.empty(output_size)), None, 1, "zeros",
                                      sequence_parallel=sequence_parallel) if bias else None

    def forward(self, x):
        # x: [s, b, in/T] -> [s, b, out] (or [s/T, b, out] under sequence parallelism)
        return self.reduce_output(F.linear(x, self.weight))

    def reduce_output(self, y):
        """Leave the TP region: sum the partial ``[s, b, out]`` over TP (reduce-scatter along the
        sequence under sequence parallelism), then add the bias."""
        if self.sequence_parallel:
            y = reduce_scatter_to_sequence_parallel_region(y, self.tp_group)
        else:
            y = reduce_from_tensor_parallel_region(y, self.tp_group)
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(torch.nn.Module):
    """Embedding table split along the vocabulary: rank r holds rows ``[r V/T, (r+1) V/T)``.

    Each rank looks up the ids in its range (others give zeros) and the partial
    embeddings are summed over TP.  Output is sequence-first ``[s, b, h]``; with
    ``sequence_parallel`` the sum is a reduce-scatter that leaves ``[s/T, b, h]``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, tp_group=None,
                 sequence_parallel: bool = False):
        super().__init__()
        self.tp_group, self.tp_size = tp_group, group_size(tp_group)
        self.sequence_parallel = sequence_parallel
        per = _divide(num_embeddings, self.tp_size, "padded vocabulary size")
        self.vocab_start = group_rank(tp_group) * per
        self.vocab_end = self.vocab_start + per
        self.weight = set_tp_attributes(torch.nn.Parameter(torch.empty(per, embedding_dim)), 0, 1, "normal")

    def forward(self, ids):
        # ids: [b, s] -> [s, b, h]
        ids = ids.t()
        if self.tp_size > 1:
            outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
            local = (ids - self.vocab_start).masked_fill(outside, 0)
            out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        else:
            out = F.embedding(ids, self.weight)
        if self.sequence_parallel:
            return reduce_scatter_to_sequence_parallel_region(out, self.tp_group)
        return reduce_from_tensor_parallel_region(out, self.tp_group)
