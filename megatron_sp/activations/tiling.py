"""Sequence tiling with recompute: a per-token function run over chunks of the tokens.

``sequence_tiled(fn, x, per_token, params, chunk_tokens)`` computes ``fn`` on the tokens of
``x`` (``[n, ...]``, tokens first) ``chunk_tokens`` at a time.  Forward keeps only ``x`` (and
the per-token side inputs): every chunk's intermediates are freed as soon as the chunk's
output is written.  Backward recomputes one chunk at a time with autograd and returns the
gradients of ``x`` and of ``params``, so at any moment only one chunk's intermediates exist.
This is ALST's tiled compute (Arctic Long Sequence Training, 2025), used here for the MLP
(``[chunk, 2 ffn/T]`` intermediates) and for the output layer + cross entropy (``[chunk, V/T]``
logits and their fp32 softmax).

``fn`` must treat tokens independently (row ``i`` of the output depends on row ``i`` of the
inputs only) and must not draw random numbers; then the result is the untiled one up to the
rounding of matmuls over fewer rows.  Collectives inside ``fn`` are fine when every rank of the
group tiles the same number of tokens (they run again, in the same order, in backward).

Worked example: ``x`` ``[8192, 4096]``, ``chunk_tokens`` 2048, ``fn`` the MLP with ffn 14336:
forward runs 4 chunks and keeps ``x`` only; a chunk's intermediate is ``[2048, 28672]``
instead of ``[8192, 28672]``.  Under autocast ``x`` is cast once to the autocast dtype before
it is saved (what the first matmul would keep anyway), and backward recomputes under the same
autocast state as forward.
"""
from __future__ import annotations

import contextlib

import torch


def _autocast_state(device_type: str):
    if torch.is_autocast_enabled(device_type):
        return device_type, torch.get_autocast_dtype(device_type)
    return None


def _autocast(state):
    if state is None:
        return contextlib.nullcontext()
    return torch.autocast(state[0], dtype=state[1])


def _chunks(n: int, chunk: int):
    return [(start, min(n, start + chunk)) for start in range(0, n, chunk)]


class _TiledRecompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, chunk, n_per_token, x, *rest):
        # x: [n, ...]; rest: n_per_token per-token tensors [n, ...] (no gradient), then params
        per_token, params = rest[:n_per_token], rest[n_per_token:]
        ctx.fn, ctx.chunk, ctx.n_per_token = fn, chunk, n_per_token
        ctx.autocast = _autocast_state(x.device.type)
        out = None
        for start, stop in _chunks(x.shape[0], chunk):
            y = fn(x[start:stop], *(t[start:stop] for t in per_token), *params)  # [c, ...]
            if out is None:
                out = y.new_empty((x.shape[0],) + tuple(y.shape[1:]))
            out[start:stop] = y
            del y
        ctx.save_for_backward(x, *per_token, *params)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, *rest = ctx.saved_tensors
        n_tok = ctx.n_per_token
        per_token, params = rest[:n_tok], rest[n_tok:]
        need_x = ctx.needs_input_grad[3]
        need_p = ctx.needs_input_grad[4 + n_tok:]
        grad_x = torch.empty_like(x) if need_x else None
        grad_p = [None] * len(params)
        wanted = [i for i, need in enumerate(need_p) if need]
        with torch.enable_grad(), _autocast(ctx.autocast):
            for start, stop in _chunks(x.shape[0], ctx.chunk):
                _chunk_backward(ctx.fn, x, per_token, params, wanted, grad_out, start, stop, grad_x, grad_p)
        return (None, None, None, grad_x, *([None] * n_tok), *grad_p)


def _chunk_backward(fn, x, per_token, params, wanted, grad_out, start, stop, grad_x, grad_p):
    """Recompute one chunk and add its gradients (a function, so that nothing of the chunk outlives it)."""
    xc = x[start:stop].detach().requires_grad_(grad_x is not None)
    y = fn(xc, *(t[start:stop] for t in per_token), *params)
    inputs = ([xc] if grad_x is not None else []) + [params[i] for i in wanted]
    grads = list(torch.autograd.grad(y, inputs, grad_out[start:stop]))
    del y
    if grad_x is not None:
        grad_x[start:stop] = grads.pop(0)
    for i in wanted:
        g = grads.pop(0)
        grad_p[i] = g if grad_p[i] is None else grad_p[i].add_(g)


def sequence_tiled(fn, x, per_token=(), params=(), chunk_tokens: int = 0):
    """``fn(x, *per_token, *params)`` computed ``chunk_tokens`` tokens at a time, recomputed in backward.

    ``x``: ``[n, ...]`` tokens first (differentiable); ``per_token``: tensors ``[n, ...]`` chunked
    with ``x`` (labels; no gradient); ``params``: tensors passed whole (weights; their gradients
    are summed over the chunks).  ``chunk_tokens <= 0`` means one chunk.  Returns ``[n, ...]``.
    """
    chunk = x.shape[0] if chunk_tokens <= 0 else chunk_tokens
    state = _autocast_state(x.device.type)
    if state is not None and x.is_floating_point():
        x = x.to(state[1])
    if not torch.is_grad_enabled():  # evaluation: chunks, nothing to recompute
        parts = [fn(x[a:b], *(t[a:b] for t in per_token), *params) for a, b in _chunks(x.shape[0], chunk)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]
    return _TiledRecompute.apply(fn, chunk, len(per_token), x, *per_token, *params)
