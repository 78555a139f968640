"""Cross entropy over logits whose vocabulary is split across TP ranks.

With logits ``[s, b, V/T]`` on each rank, the loss of token ``t`` with target ``y``
is ``log sum_v exp(z_v) - z_y``.  Three all-reduces over TP make it exact without
gathering ``V``: the max (for stability), the target logit (only the owner of ``y``
contributes, others add 0) and the sum of exponentials.  Backward is local:
``softmax - onehot(y)`` on each rank's vocabulary slice.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..parallel_state import group_rank, group_size


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, tp_group):
        # logits: [s, b, V/T] (any float dtype; computed in fp32), target: [s, b]
        logits = logits.float()
        tp = group_size(tp_group)
        logits_max = logits.max(dim=-1).values
        if tp > 1:
            dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=tp_group)
        logits = logits - logits_max.unsqueeze(-1)

        per = logits.shape[-1]
        start = group_rank(tp_group) * per
        outside = (target < start) | (target >= start + per)
        local_target = (target - start).masked_fill(outside, 0)
        predicted = logits.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)

        exp = logits.exp_()
        sum_exp = exp.sum(dim=-1)
        if tp > 1:
            both = torch.stack([predicted, sum_exp])
            dist.all_reduce(both, group=tp_group)
            predicted, sum_exp = both[0], both[1]
        loss = sum_exp.log() - predicted

        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local_target, outside)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local_target, outside = ctx.saved_tensors
        grad = softmax  # reuse: softmax is not needed after this
        grad.scatter_add_(-1, local_target.unsqueeze(-1), -(~outside).float().unsqueeze(-1))
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad, None, None


def vocab_parallel_cross_entropy(logits, target, tp_group=None):
    """Per-token loss ``[s, b]`` (fp32) from vocab-sharded ``logits`` ``[s, b, V/T]``."""
    return _VocabParallelCrossEntropy.apply(logits, target, tp_group)
