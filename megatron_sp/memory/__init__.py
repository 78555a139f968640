"""The memory model: every byte a rank holds in a training step, device and host, from the flags.

    from megatron_sp import memory
    est = memory.estimate(spec, memory.ParallelConfig(tp=1, cp=4), seq_length=8192, micro_batch=1)

Modules: ``terms`` (the specs, ``Estimate``, model state and communication), ``activations``
(what each layer keeps and the transients of each phase), ``stages`` (per pipeline stage),
``estimate`` (the whole step, and the largest length or batch that fits).  One model serves the
planner, the scaling tool and the checks against measurement; nothing here imports torch.
"""
from .activations import UNFUSED_BACKENDS, probs_bytes, unfused_transient
from .estimate import estimate, largest, max_micro_batch, max_seq_length
from .stages import stage_estimates
from .terms import (Estimate, ParallelConfig, ModelSpec, comm, layer_parameters, local_parameters, model_state,
                    optimizer_peak, outside_saved, parameter_tensors)

__all__ = ["UNFUSED_BACKENDS", "Estimate", "ParallelConfig", "ModelSpec", "comm", "estimate", "largest",
           "layer_parameters", "local_parameters", "max_micro_batch", "max_seq_length", "model_state",
           "optimizer_peak", "outside_saved", "parameter_tensors", "probs_bytes", "stage_estimates",
           "unfused_transient"]
