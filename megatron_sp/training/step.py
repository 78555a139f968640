"""One training step: micro-batches -> loss of the global batch -> gradients -> optimizer.

The loss is the mean over every unmasked token of the global batch: each rank divides
its masked loss sum by the token count of the whole global batch (one all-reduce over
DP x CP), and DDP *sums* gradients over DP x CP, so loss and gradients are the same in
every layout.  A CP shard with no unmasked token contributes zero, never NaN.

The model is a list of parts (``[model]``, or this rank's pipeline stages); under pipeline
parallelism a :class:`~megatron_sp.pipeline_parallel.Pipeline` schedule runs the same
micro-batches through the stages with the same micro-batch loss (:func:`masked_loss`) on the
last stage, whose loss is then broadcast over PP.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from ..distributed import allreduce_embedding_grads, allreduce_sequence_parallel_grads, grad_sync


def autocast_context(args, device):
    if args.bf16 or args.fp16:
        return torch.autocast(device.type, dtype=torch.bfloat16 if args.bf16 else torch.float16)
    return contextlib.nullcontext()


def _global_token_count(batches, mesh) -> torch.Tensor:
    count = sum(b["loss_mask"].sum() for b in batches).float().reshape(())
    if mesh.dp_cp_group is not None:
        dist.all_reduce(count, group=mesh.dp_cp_group)
    return count.clamp_min(1.0)


def masked_loss(per_token, loss_mask, tokens) -> torch.Tensor:
    """One micro-batch's share of the global-batch loss: its masked per-token loss sum / all tokens."""
    return (per_token.float() * loss_mask).sum() / tokens


def forward_backward(model_parts: list, batches, args, mesh, device, optimizer=None,
                     pipeline=None) -> torch.Tensor:
    """Loss of the global batch (the same on every rank); gradients if ``optimizer``.  Without a
    ``pipeline`` the one part runs every micro-batch; with one, its schedule runs the parts."""
    tokens = _global_token_count(batches, mesh)
    if pipeline is not None:
        total = pipeline.forward_backward(batches, tokens, optimizer)
    else:
        (model,) = model_parts
        total = torch.zeros((), dtype=torch.float32, device=device)
        for i, b in enumerate(batches):
            with grad_sync(model, last_micro_batch=i == len(batches) - 1):
                with autocast_context(args, device):
                    per_token = model(b["tokens"], b["position_ids"], b["labels"])  # [b, s_local] fp32
                loss = masked_loss(per_token, b["loss_mask"], tokens)
                if optimizer is not None:
                    optimizer.scale_loss(loss).backward()
            total += loss.detach()
    if mesh.dp_cp_group is not None:
        dist.all_reduce(total, group=mesh.dp_cp_group)
    if pipeline is not None:
        pipeline.broadcast_loss(total)
    return total


def train_step(ctx, batches) -> dict:
    ctx.optimizer.zero_grad()
    loss = forward_backward(ctx.model_parts, batches, ctx.args, ctx.mesh, ctx.device, ctx.optimizer, ctx.pipeline)
    if not torch.isfinite(loss) and ctx.args.check_for_nan_in_loss_and_grad and not ctx.args.fp16:
        raise FloatingPointError(f"lm loss is {loss.item()} at iteration {ctx.state.iteration + 1} "
                                 f"(rank {ctx.mesh.rank}); lower --lr or check the data "
                                 "(--no-check-for-nan-in-loss-and-grad to continue anyway)")
    allreduce_sequence_parallel_grads(ctx.model, ctx.mesh)
    allreduce_embedding_grads(ctx.model, ctx.mesh)
    stats = ctx.optimizer.step()
    stats["loss"] = loss.item()
    return stats
