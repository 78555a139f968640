"""Gradient reduction and model-state sharding over the DP x CP group (docs/ARCHITECTURE.md, "distributed").

``fsdp``: the model state sharded with torch FSDP2 (``--use-torch-fsdp2``,
``--use-distributed-optimizer``, ``--optimizer-cpu-offload``); ``grads``: the one
gradient path of every mode (DDP or FSDP2 over DP x CP, Megatron-SP gradients over
TP, the clipping norm, the overflow check).
"""
from .fsdp import describe_model_state, ensure_process_group, is_sharded, shard_model
from .grads import (allreduce_embedding_grads, allreduce_sequence_parallel_grads, clip_grad_norm, found_inf,
                    grad_norm, grad_sync, local, wrap_data_parallel)

__all__ = ["describe_model_state", "ensure_process_group", "is_sharded", "shard_model",
           "allreduce_embedding_grads", "allreduce_sequence_parallel_grads", "clip_grad_norm", "found_inf",
           "grad_norm", "grad_sync", "local", "wrap_data_parallel"]
