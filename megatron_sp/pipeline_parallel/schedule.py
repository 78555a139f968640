"""The pipeline step: this rank's stages and a ``torch.distributed.pipelining`` schedule.

``--pipeline-schedule`` picks one of the library's schedules (the default is 1F1B, or
interleaved 1F1B when the layers are cut into virtual stages)::

    name                   stages per rank   placement   the library's class
    1F1B                   1                 -           Schedule1F1B           (default)
    GPipe                  1                 -           ScheduleGPipe
    Interleaved1F1B        V >= 1            loop        ScheduleInterleaved1F1B (default with V > 1)
    LoopedBFS              V >= 1            loop        ScheduleLoopedBFS
    InterleavedZeroBubble  V >= 1            loop        ScheduleInterleavedZeroBubble
    ZBVZeroBubble          2                 v           ScheduleZBVZeroBubble
    DualPipeV              2                 v           ScheduleDualPipeV

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

The zero-bubble schedules split backward into an input pass and a weight pass, and the
library's weight pass writes ``param.grad`` directly (``stage_backward_weight``): DDP's
hooks never fire and FSDP2's sharded parameters get no gradient, so their DP x CP
reduction is silently skipped (torch 2.13).  They are therefore accepted only where
DP x CP = 1; the same layouts with 1F1B or interleaved 1F1B train correctly.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .layout import PipelineLayoutError

SINGLE_STAGE = ("1F1B", "GPipe")
SPLIT_BACKWARD = ("InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV")
LOOPED = ("Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble")
V_SHAPED = ("ZBVZeroBubble", "DualPipeV")
SCHEDULES = SINGLE_STAGE + LOOPED + V_SHAPED
_BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def _schedule_class(name: str):
    from torch.distributed import pipelining
    return getattr(pipelining, "Schedule" + name)


def schedule_name(name, virtual_size: int) -> str:
    """``--pipeline-schedule``, or its default: 1F1B, interleaved 1F1B with virtual stages."""
    return name or ("1F1B" if virtual_size == 1 else "Interleaved1F1B")


def placement(name: str) -> str:
    return "v" if name in V_SHAPED else "loop"


def check_schedule(name: str, pp: int, virtual_size: int, micro_batches: int, dp_cp: int = 1) -> None:
    """What the schedule needs of the layout and the micro-batch count (one line, from the flags)."""
    if name not in SCHEDULES:
        raise PipelineLayoutError(f"--pipeline-schedule {name}: choose one of {', '.join(SCHEDULES)}")
    if name in SPLIT_BACKWARD and dp_cp > 1:
        raise PipelineLayoutError(
            f"--pipeline-schedule {name} needs data-parallel x --context-parallel-size = 1 (got {dp_cp}): its split "
            "backward writes weight gradients that torch's pipelining never reduces over DP x CP (DDP and FSDP2 "
            "alike); use 1F1B or Interleaved1F1B")
    if name in SINGLE_STAGE and virtual_size > 1:
        raise PipelineLayoutError(f"--pipeline-schedule {name} runs one stage per rank, but the flags give "
                                  f"{virtual_size} virtual stages per rank; use Interleaved1F1B or drop "
                                  "--num-layers-per-virtual-pipeline-stage")
    if name in V_SHAPED and virtual_size != 2:
        raise PipelineLayoutError(f"--pipeline-schedule {name} runs exactly 2 virtual stages per rank: add "
                                  "--num-virtual-stages-per-pipeline-rank 2")
    need = {"1F1B": pp, "DualPipeV": 2 * pp}.get(name, 1)
    if micro_batches < need:
        raise PipelineLayoutError(
            f"--pipeline-schedule {name} at --pipeline-model-parallel-size {pp} needs at least {need} micro-batches "
            f"per step, the flags give {micro_batches} (--global-batch-size / (--micro-batch-size x DP)); raise "
            "--global-batch-size or lower --micro-batch-size")
    if name in ("Interleaved1F1B", "InterleavedZeroBubble"):
        rounds = max(1, micro_batches // pp)
        if micro_batches % rounds:
            raise PipelineLayoutError(
                f"--pipeline-schedule {name}: {micro_batches} micro-batches per step must be a multiple of "
                f"{rounds} (= max(1, micro-batches // --pipeline-model-parallel-size {pp})); a multiple of {pp} "
                "always works")


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
    """This rank's pipeline stages and their schedule; plays the role of the wrapped model in a step."""

    is_pipeline = True

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
