"""Megatron-FSDP's flags mapped onto this codebase's model-state sharding (distributed/fsdp.py).

Megatron-LM's own FSDP (``--use-megatron-fsdp``) shards by ``--data-parallel-sharding-strategy``;
each strategy has an equivalent here with the same math (model state sharded over DP x CP):

    no_shard            -> plain data parallelism (DDP)
    optim               -> --use-distributed-optimizer (which also shards the gradients: ZeRO-2)
    optim_grads         -> --use-distributed-optimizer (ZeRO-2)
    optim_grads_params  -> --use-torch-fsdp2 (ZeRO-3)

and ``--ckpt-format fsdp_dtensor`` (Megatron-FSDP's DTensor checkpoint on
torch.distributed.checkpoint) is written as ``torch_dist``, this codebase's DCP format.
DeepSpeed's ZeRO stage (``--deepspeed_config``'s zero_optimization.stage) maps the same way:
1 and 2 -> --use-distributed-optimizer, 3 -> --use-torch-fsdp2.  Each mapping prints one
start-up note.  Imports no torch.
"""
from __future__ import annotations

from .checks import ArgumentError

STRATEGIES = ("no_shard", "optim", "optim_grads", "optim_grads_params")
_TARGET = {"no_shard": "plain data parallelism (DDP, nothing sharded)",
           "optim": "--use-distributed-optimizer (fp32 weights and Adam state sharded over DP x CP, and the "
                    "gradients too, which ZeRO-1 leaves whole: the same math, less memory)",
           "optim_grads": "--use-distributed-optimizer (gradients and fp32 weights and Adam state sharded over "
                          "DP x CP, ZeRO-2)",
           "optim_grads_params": "--use-torch-fsdp2 (weights, gradients and Adam state sharded over DP x CP by "
                                 "torch FSDP2, ZeRO-3)"}


def apply_megatron_fsdp(args) -> list:
    """Rewrite the Megatron-FSDP flags into this codebase's; return the start-up notes."""
    notes = []
    strategy = args.data_parallel_sharding_strategy
    if args.use_megatron_fsdp:
        strategy = strategy or "no_shard"  # Megatron's default
        if args.use_torch_fsdp2 and strategy != "optim_grads_params":
            raise ArgumentError(f"--use-megatron-fsdp --data-parallel-sharding-strategy {strategy} and "
                                "--use-torch-fsdp2 ask for different sharding; drop one")
        dropped = ""
        if strategy == "optim_grads_params":
            if args.use_distributed_optimizer:
                dropped = "; --use-distributed-optimizer is part of it (FSDP2 shards the optimizer state)"
            args.use_torch_fsdp2, args.use_distributed_optimizer = True, False
        elif strategy in ("optim", "optim_grads"):
            args.use_distributed_optimizer = True
        else:
            args.use_distributed_optimizer = False
        notes.append(f"--use-megatron-fsdp --data-parallel-sharding-strategy {strategy} runs as "
                     f"{_TARGET[strategy]}{dropped}")
    elif strategy is not None:
        notes.append(f"--data-parallel-sharding-strategy {strategy} has no effect here: Megatron-LM reads it "
                     "only with --use-megatron-fsdp (sharding here is --use-distributed-optimizer or "
                     "--use-torch-fsdp2)")
    if args.ckpt_format == "fsdp_dtensor":
        args.ckpt_format = "torch_dist"
        notes.append("--ckpt-format fsdp_dtensor is written as torch_dist here: torch.distributed.checkpoint "
                     "shards, as Megatron-FSDP's format, keyed by global parameter names and loadable in any "
                     "layout")
    return notes


def apply_zero_stage(args, stage: int) -> list:
    """DeepSpeed's ZeRO ``stage`` (from its config file) as the sharding here; the start-up note."""
    if stage == 0:
        return []
    strategy = {1: "optim", 2: "optim_grads", 3: "optim_grads_params"}[stage]
    if args.use_torch_fsdp2 and stage != 3:
        raise ArgumentError(f"--deepspeed_config's ZeRO stage {stage} and --use-torch-fsdp2 ask for different "
                            "sharding; drop one")
    args.use_torch_fsdp2, args.use_distributed_optimizer = stage == 3, stage != 3
    return [f"--deepspeed_config: ZeRO stage {stage} runs as {_TARGET[strategy]}"]
