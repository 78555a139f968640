"""AdamW with fp32 master weights, loss scaling, a skip on overflow, and global-norm clipping.

Mixed precision keeps fp32 parameters (the master weights), fp32 gradients, an fp32
DP x CP reduction and fp32 optimizer state; matmuls and attention run in bf16/fp16
under ``torch.autocast``.  With replicated state (no sharding flag) the parameters
are the fp32 weights every rank holds whole; under ``--use-torch-fsdp2`` /
``--use-distributed-optimizer`` they are fp32 *shards* over DP x CP and FSDP2 gathers
bf16/fp16 compute weights from them (distributed/fsdp.py), so the Adam state is
created on the shards too.  For fp16 the loss is multiplied by the
loss scale before backward and the gradients divided by it before the step; an
inf/NaN on any rank makes every rank skip the step (no parameter changes).

Weight decay skips biases and norm weights (every 1-D parameter), as Megatron does.
apex's FusedAdam is used when apex is importable and parameters are on CUDA; else
torch's fused (CUDA) or foreach (CPU) AdamW.
"""
from __future__ import annotations

import torch

from ..distributed import clip_grad_norm, found_inf, local
from ..placement import host_memory
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


def _adamw(groups, args, on_cuda, sharded):
    kw = dict(lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps)
    if on_cuda:
        try:
            if sharded:  # apex knows nothing of DTensor shards
                raise ImportError
            from apex.optimizers import FusedAdam  # optional; never a requirement
            return FusedAdam(groups, adam_w_mode=True, **kw)
        except ImportError:
            return torch.optim.AdamW(groups, fused=True, **kw)
    try:  # torch's fused CPU AdamW: the same numbers as foreach, without foreach's fp32 copy of every
        # parameter's sqrt(v) (32 GB of host memory at 8B under --optimizer-cpu-offload)
        return torch.optim.AdamW(groups, fused=True, **kw)
    except RuntimeError:  # a torch without the fused CPU kernel
        return torch.optim.AdamW(groups, foreach=True, **kw)


class MixedPrecisionOptimizer:
    def __init__(self, model: torch.nn.Module, args, mesh):
        self.model, self.mesh, self.clip = model, mesh, args.clip_grad
        self.params = [p for p in model.parameters() if p.requires_grad]
        on_cuda = bool(self.params) and local(self.params[0]).is_cuda  # False under --optimizer-cpu-offload
        self.device = local(self.params[0]).device if self.params else torch.device("cpu")
        self.on_host = bool(getattr(args, "optimizer_cpu_offload", False))  # its state and step: host memory
        sharded = any(hasattr(p, "device_mesh") for p in self.params)
        groups = _param_groups(model, args.weight_decay, getattr(args, "decoupled_lr", None),
                               getattr(args, "decoupled_min_lr", None))
        self.optimizer = _adamw(groups, args, on_cuda, sharded)
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

    @torch.no_grad()
    def step(self) -> dict:
        """Unscale, check for overflow, clip, step. Returns ``grad_norm`` and ``skipped``."""
        with host_memory(self.on_host):  # --optimizer-cpu-offload: the step runs in host memory
            return self._step()

    def _step(self) -> dict:
        if self.scaler.scale != 1.0:
            for p in self.params:
                if p.grad is not None:
                    local(p.grad).div_(self.scaler.scale)
        overflow = found_inf(self.params, self.device)
        self.scaler.update(overflow)
        if overflow:
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
