"""The pipeline step: this rank's stages and a ``torch.distributed.pipelining`` schedule.

One step (:meth:`Pipeline.forward_backward`): the micro-batches of the global batch are
concatenated along the batch dimension and handed to ``schedule.step``, which cuts them
back into the same micro-batches; the first stage gets the tokens, every stage the
position ids and labels (keyword arguments), the last stage's loss function the loss
mask.  The loss of a micro-batch is the one-stage model's: the masked sum of the
per-token loss divided by the token count of the whole global batch (times the fp16
loss scale for backward), so the schedule sums gradients over micro-batches without
rescaling (``scale_grads=False``).  The stages' inputs and outputs are declared
statically (shape, dtype), so the library runs no shape-inference step.

Gradients over DP x CP: DDP- or FSDP2-wrapped stage modules, synchronised by the library
after each stage's last micro-batch (with FSDP2 both modes accumulate unsharded
gradients over the micro-batches and reduce-scatter once: the library's behaviour).
Which schedules exist and what they need: schedule_rules.py.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .schedule_rules import SINGLE_STAGE

_BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def _schedule_class(name: str):
    from torch.distributed import pipelining
    return getattr(pipelining, "Schedule" + name)


class MaskedLoss:
    """The schedule's loss function: the one-stage model's micro-batch loss (``loss_of``), scaled by
    the fp16 loss scale for backward; the unscaled values are kept for the step's loss."""

    def __init__(self, loss_of):
        self.loss_of = loss_of
        self.tokens, self.scale, self.values = None, 1.0, []

    def start(self, tokens: torch.Tensor, scale: float) -> None:
        self.tokens, self.scale, self.values = tokens, scale, []

    def __call__(self, per_token, loss_mask):
        loss = self.loss_of(per_token, loss_mask, self.tokens)
        self.values.append(loss.detach())
        return loss * self.scale if self.scale != 1.0 else loss


class Pipeline:
    """The schedule over this rank's pipeline stages (the loop's model parts under PP)."""

    def __init__(self, modules: list, wrapped: list, layout, mesh, device, loss_of, schedule: str,
                 micro_batches: int, micro_batch_size: int, seq_local: int, hidden_size: int, hidden_dtype):
        from torch.distributed.pipelining import PipelineStage
        self.modules, self.wrapped, self.layout, self.mesh, self.device = modules, wrapped, layout, mesh, device
        self.name = schedule
        self.loss = MaskedLoss(loss_of)
        seq_hidden = seq_local // mesh.tp_size if modules[0].gpt.sequence_parallel else seq_local
        hidden = torch.empty(seq_hidden, micro_batch_size, hidden_size, dtype=hidden_dtype, device=device,
                             requires_grad=True)  # [s(/T), b, h]
        tokens = torch.empty(micro_batch_size, seq_local, dtype=torch.long, device=device)
        per_token = torch.empty(micro_batch_size, seq_local, dtype=torch.float32, device=device,
                                requires_grad=True)
        self.stages = [PipelineStage(w, m.stage_index, layout.num_stages, device,
                                     input_args=tokens if m.is_first else hidden,
                                     output_args=per_token if m.is_last else hidden, group=mesh.pp_group)
                       for m, w in zip(modules, wrapped)]
        cls = _schedule_class(schedule)
        target = self.stages[0] if schedule in SINGLE_STAGE else self.stages
        self.schedule = cls(target, micro_batches, loss_fn=self.loss, scale_grads=False)
        self.has_first = any(m.is_first for m in modules)
        self.has_last = any(m.is_last for m in modules)

    def forward_backward(self, batches: list, tokens: torch.Tensor, optimizer=None) -> torch.Tensor:
        """Run the schedule over this rank's micro-batches; returns this rank's share of the global
        batch loss (the sum of its micro-batch losses on the last stage, 0 elsewhere).  Backward
        and gradients when ``optimizer`` is given (its loss scale is applied), else forward only."""
        cat = {k: torch.cat([b[k] for b in batches]) for k in _BATCH_KEYS}  # [m * b, s]
        self.loss.start(tokens, optimizer.loss_scale if optimizer is not None else 1.0)
        args = (cat["tokens"],) if self.has_first else ()
        target = cat["loss_mask"] if self.has_last else None
        run = self.schedule.step if optimizer is not None else self.schedule.eval
        run(*args, target=target, return_outputs=False, position_ids=cat["position_ids"], labels=cat["labels"])
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        for value in self.loss.values:
            total += value
        self.loss.values = []
        return total

    def broadcast_loss(self, total: torch.Tensor) -> torch.Tensor:
        """The last stage's loss on every stage of this PP line (in place)."""
        last = self.layout.rank_of_stage(self.layout.num_stages - 1)
        dist.broadcast(total, src=self.mesh.pp_ranks[last], group=self.mesh.pp_group)
        return total

    def describe(self) -> str:
        return f"{self.layout.describe()}; schedule {self.name} ({type(self.schedule).__name__})"
