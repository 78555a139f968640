"""AdamW with fp32 parameters, loss scaling, a skip on overflow, and global-norm clipping.

Mixed precision here is *autocast with fp32 parameters*: parameters, gradients,
their DP x CP reduction and the optimizer state stay fp32; matmuls and attention
run in bf16/fp16 under ``torch.autocast``.  For fp16 the loss is multiplied by the
loss scale before backward and the gradients divided by it before the step; an
inf/NaN on any rank makes every rank skip the step (no parameter changes).

Weight decay skips biases and norm weights (every 1-D parameter), as Megatron does.
apex's FusedAdam is used when apex is importable and parameters are on CUDA; else
torch's fused (CUDA) or foreach (CPU) AdamW.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..distributed.grads import clip_grad_norm
from .loss_scaler import build_loss_scaler


def _param_groups(model, weight_decay, decoupled_lr=None, decoupled_min_lr=None):
    """No weight decay on 1-D parameters; with ``--decoupled-lr`` the embedding and output layer
    (``is_embedding_or_output_parameter``) get their own ``max_lr``/``min_lr`` (lr_scheduler.py)."""
    groups = {}
    for p in model.parameters():
        if p.requires_grad:
            decoupled = decoupled_lr is not None and getattr(p, "is_embedding_or_output_parameter", False)
            groups.setdefault((p.ndim == 1, decoupled), []).append(p)
    out = []
    for (no_decay, decoupled), params in sorted(groups.items()):
        group = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        if decoupled:
            group["max_lr"] = decoupled_lr
            if decoupled_min_lr is not None:
                group["min_lr"] = decoupled_min_lr
        out.append(group)
    return out


def _adamw(groups, args, on_cuda):
    kw = dict(lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps)
    if on_cuda:
        try:
            from apex.optimizers import FusedAdam  # optional; never a requirement
            return FusedAdam(groups, adam_w_mode=True, **kw)
        except ImportError:
            return torch.optim.AdamW(groups, fused=True, **kw)
    return torch.optim.AdamW(groups, foreach=True, **kw)


class MixedPrecisionOptimizer:
    def __init__(self, model: torch.nn.Module, args, mesh):
        self.model, self.mesh, self.clip = model, mesh, args.clip_grad
        self.params = [p for p in model.parameters() if p.requires_grad]
        on_cuda = bool(self.params) and self.params[0].is_cuda
        groups = _param_groups(model, args.weight_decay, getattr(args, "decoupled_lr", None),
                               getattr(args, "decoupled_min_lr", None))
        self.optimizer = _adamw(groups, args, on_cuda)
        self.scaler = build_loss_scaler(args)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def loss_scale(self) -> float:
        return self.scaler.scale

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def scale_loss(self, loss):
        return loss * self.scaler.scale if self.scaler.scale != 1.0 else loss

    def _found_inf(self) -> bool:
        flag = torch.zeros((), dtype=torch.float32)
        for p in self.params:
            if p.grad is not None and not torch.isfinite(p.grad).all():
                flag.fill_(1.0)
                break
        if dist.is_initialized() and dist.get_world_size() > 1:
            flag = flag.to(self.params[0].device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank must agree to skip
        return bool(flag.item())

    @torch.no_grad()
    def step(self) -> dict:
        """Unscale, check for overflow, clip, step. Returns ``grad_norm`` and ``skipped``."""
        if self.scaler.scale != 1.0:
            for p in self.params:
                if p.grad is not None:
                    p.grad.div_(self.scaler.scale)
        found_inf = self._found_inf()
        self.scaler.update(found_inf)
        if found_inf:
            self.zero_grad()
            return {"grad_norm": None, "skipped": True}
        norm = clip_grad_norm(self.params, self.clip, self.mesh)
        self.optimizer.step()
        return {"grad_norm": norm, "skipped": False}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "loss_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["loss_scaler"])
