"""Cross entropy over logits whose vocabulary is split across TP ranks.

With logits ``[s, b, V/T]`` on each rank, the loss of token ``t`` with target ``y``
is ``log sum_v exp(z_v) - z_y``.  Three all-reduces over TP make it exact without
gathering ``V``: the max (for stability), the target logit (only the owner of ``y``
contributes, others add 0) and the sum of exponentials.  Backward is local:
``softmax - onehot(y)`` on each rank's vocabulary slice.

``chunked_output_cross_entropy`` fuses the output layer with it over chunks of the tokens,
recomputed in backward, so full-length logits never exist (``--cross-entropy-chunk-size``).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..activations.tiling import sequence_tiled
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


def chunked_output_cross_entropy(x, weight, target, tp_group=None, chunk_tokens: int = 2048):
    """The output layer and the vocab-parallel cross entropy, ``chunk_tokens`` tokens at a time.

    ``x``: the output layer's input ``[s, b, h]`` (already gathered over TP under Megatron-SP),
    ``weight``: ``[V/T, h]``, ``target``: ``[s, b]``.  Returns the per-token loss ``[s, b]``
    (fp32), equal to ``vocab_parallel_cross_entropy(x @ weight.T, target)``; but the logits
    ``[c, V/T]`` and their fp32 softmax exist for one chunk of ``c`` tokens at a time, in
    forward and again in backward (recomputed), never for the whole sequence.  Forward keeps
    ``x`` only.  Example: 64K local tokens, Llama-3 vocabulary (128256) on one TP rank: 31 GiB
    of fp32 softmax unchunked, 1 GiB per 2048-token chunk.
    """
    s, b, h = x.shape

    def logits_loss(xc, tc, w):  # xc: [c, h], tc: [c] -> [c]
        return vocab_parallel_cross_entropy(F.linear(xc, w), tc, tp_group)

    loss = sequence_tiled(logits_loss, x.reshape(s * b, h), per_token=(target.reshape(s * b),),
                          params=(weight,), chunk_tokens=chunk_tokens)
    return loss.view(s, b)
