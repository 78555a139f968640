"""This rank's model parts: the GPT it holds, sharded or wrapped for data parallelism, and under
pipeline parallelism its stages and their schedule (docs/ARCHITECTURE.md, "training").

    model, parts, pipeline = build_model_parts(args, cfg, parallel, mesh, rng, device, layout)

``parts`` has one shape with and without PP (torchtitan's model parts): ``[model]`` or this
rank's stages, each DDP-wrapped over DP x CP when the state is replicated; ``pipeline`` is the
schedule that runs them under PP, else None.
"""
from __future__ import annotations

import torch

from ..arguments.parallel import ParallelConfig
from ..distributed import shard_model, wrap_data_parallel
from ..model import GPTConfig, GPTModel
from ..pipeline_parallel import Pipeline, stage_modules
from ..placement import host_memory
from ..tensor_parallel.sharding import keeping_tp_attributes
from .step import autocast_context, masked_loss


def compute_dtype(args):
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def build_model(args, cfg: GPTConfig, mesh, rng, device, layout=None, sharding: str = "replicated") -> tuple:
    """``(model, stages)``: the GPT of this rank with its weights initialised, its state sharded
    over DP x CP under a sharding flag, and under pipeline parallelism (``layout``) the
    :class:`~megatron_sp.pipeline_parallel.StageModule` of each of its virtual stages (else
    None).  Built on the meta device, sharded, then only this rank's elements are allocated
    and initialised (layout-invariant: the full tensor of each parameter from ``--seed`` and
    its name, then this rank's pieces)."""
    mode = sharding if sharding != "replicated" else None
    low = None if compute_dtype(args) == torch.float32 else compute_dtype(args)
    stages = None
    with torch.device("meta"):
        if layout is None:
            model = GPTModel(cfg, mesh, rng)
        else:
            ids = layout.stages_of(mesh.pp_rank)
            model = GPTModel(cfg, mesh, rng, layout.layers_of(mesh.pp_rank), pre_process=0 in ids,
                             post_process=layout.num_stages - 1 in ids)
            hidden_dtype = low if (mode and low is not None) else torch.float32  # what the one-stage model passes
            stages = stage_modules(model, layout, mesh.pp_rank, lambda: autocast_context(args, device), hidden_dtype)
    roots = stages if (stages and mode) else [model]
    if mode:
        shard_model(model, mesh, mode, device, low, args.optimizer_cpu_offload, roots=roots)
    with host_memory(args.optimizer_cpu_offload):  # --optimizer-cpu-offload: the state is host memory
        with keeping_tp_attributes(model):
            for root in roots:
                root.to_empty(device=torch.device("cpu") if args.optimizer_cpu_offload else device)
        model.init_weights(args.seed)
    return model, stages


def build_model_parts(args, cfg: GPTConfig, parallel: ParallelConfig, mesh, rng, device, layout=None) -> tuple:
    """``(model, parts, pipeline)`` of this rank (module doc): the parts are ``[model]`` or this
    rank's pipeline stages, each DDP-wrapped over DP x CP when the state is replicated (FSDP2
    already reduces a sharded one); under PP the schedule runs them."""
    model, stages = build_model(args, cfg, mesh, rng, device, layout, parallel.sharding)
    parts = stages if parallel.pipelined else [model]
    if not parallel.sharded:
        parts = [wrap_data_parallel(p, mesh) for p in parts]
    if not parallel.pipelined:
        return model, parts, None
    pipeline = Pipeline(stages, parts, layout, mesh, device, masked_loss, args.pipeline_schedule,
                        args.num_micro_batches, args.micro_batch_size, args.seq_length // mesh.cp_size,
                        args.hidden_size, stages[0].hidden_dtype)
    return model, parts, pipeline
