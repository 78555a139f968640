"""The library's schedules: what each needs of the layout, and what it costs (torch-free).

``--pipeline-schedule`` picks one of ``torch.distributed.pipelining``'s schedules (the
default is 1F1B, or interleaved 1F1B when the layers are cut into virtual stages)::

    name                   stages per rank   placement   the library's class
    1F1B                   1                 -           Schedule1F1B           (default)
    GPipe                  1                 -           ScheduleGPipe
    Interleaved1F1B        V >= 1            loop        ScheduleInterleaved1F1B (default with V > 1)
    LoopedBFS              V >= 1            loop        ScheduleLoopedBFS
    InterleavedZeroBubble  V >= 1            loop        ScheduleInterleavedZeroBubble
    ZBVZeroBubble          2                 v           ScheduleZBVZeroBubble
    DualPipeV              2                 v           ScheduleDualPipeV

The zero-bubble schedules split backward into an input pass and a weight pass, and the
library's weight pass writes ``param.grad`` directly (``stage_backward_weight``): DDP's
hooks never fire and FSDP2's sharded parameters get no gradient, so their DP x CP
reduction is silently skipped (torch 2.13); with FSDP2 even one rank's gradients are lost
(the weight pass differentiates the sharded parameters, which the forward never used).
They are therefore accepted only with replicated state and DP x CP = 1; the same layouts
with 1F1B or interleaved 1F1B train correctly.

Memory and time (:func:`in_flight_chunks`, :func:`bubble_fraction`): PP rank ``r`` of ``K``
with ``V`` virtual stages and ``m`` micro-batches keeps the activations of this many
*chunks* (one micro-batch through one of its virtual stages) at its peak::

    GPipe                  m                  every forward, then every backward
    1F1B                   min(m, K - r)      K - r warm-up forwards, then one forward per backward
    Interleaved1F1B        min(V m, W_r + 1)  W_r = (V - 1) M + 2 (K - 1 - r), M = m / max(1, m // K)
    InterleavedZeroBubble  as Interleaved1F1B (the same warm-up)
    LoopedBFS              V m                every micro-batch through a chunk before the next
    ZBVZeroBubble, DualPipeV  min(2 m, 2 K)   chunk 0: 2(K - r) - 1 + r warm-up forwards, chunk 1: r + 1

(the warm-up counts are the library's, read from its schedule code).  The idle fraction
of a step (the bubble, equal stage times, no communication cost) is ``(K - 1) / (m + K - 1)``
for GPipe and 1F1B and ``(K - 1) / (V m + K - 1)`` for interleaved 1F1B (Narayanan et al.
2021); the zero-bubble schedules aim at 0 when forward, input-backward and weight-backward
take equal time.

Worked example, K = 4, m = 8, 1F1B: rank 0 keeps 4 micro-batches' activations of its L/4
layers (as much as one micro-batch through all L layers), rank 3 keeps 1; the bubble is
3 / 11 = 27% of the step.  Interleaved with V = 2: M = 4, rank 0 keeps
min(16, 4 + 6 + 1) = 11 chunks of L/8 layers (1.4x 1F1B's) and the bubble is 3 / 19 = 16%.
"""
from __future__ import annotations

from .layout import PipelineLayoutError

SINGLE_STAGE = ("1F1B", "GPipe")
SPLIT_BACKWARD = ("InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV")
LOOPED = ("Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble")
V_SHAPED = ("ZBVZeroBubble", "DualPipeV")
SCHEDULES = SINGLE_STAGE + LOOPED + V_SHAPED


def schedule_name(name, virtual_size: int) -> str:
    """``--pipeline-schedule``, or its default: 1F1B, interleaved 1F1B with virtual stages."""
    return name or ("1F1B" if virtual_size == 1 else "Interleaved1F1B")


def placement(name: str) -> str:
    return "v" if name in V_SHAPED else "loop"


def check_schedule(name: str, pp: int, virtual_size: int, micro_batches: int, dp_cp: int = 1,
                   sharding_flag=None) -> None:
    """What the schedule needs of the layout and the micro-batch count (one line, from the flags)."""
    if name not in SCHEDULES:
        raise PipelineLayoutError(f"--pipeline-schedule {name}: choose one of {', '.join(SCHEDULES)}")
    if name in SPLIT_BACKWARD and sharding_flag:
        raise PipelineLayoutError(
            f"--pipeline-schedule {name} cannot run with {sharding_flag}: its split backward differentiates the "
            "sharded parameters, which torch's pipelining leaves without gradients; use 1F1B or Interleaved1F1B")
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




def in_flight_chunks(name: str, pp: int, virtual_size: int, micro_batches: int, rank: int) -> int:
    """Chunks whose activations PP rank ``rank`` holds at its peak (module doc)."""
    k, v, m = pp, virtual_size, micro_batches
    if name == "GPipe":
        return m
    if name == "1F1B":
        return min(m, k - rank)
    if name == "LoopedBFS":
        return v * m
    if name in V_SHAPED:
        return min(2 * m, 2 * k)
    per_round = m // max(1, m // k)
    warmup = (v - 1) * per_round + 2 * (k - 1 - rank)
    return min(v * m, warmup + 1)


def bubble_fraction(name: str, pp: int, virtual_size: int, micro_batches: int):
    """Idle fraction of a step by the schedule's formula (None for the zero-bubble schedules)."""
    k, m = pp, micro_batches
    if name in ("GPipe", "1F1B"):
        return (k - 1) / (m + k - 1)
    if name in ("Interleaved1F1B", "LoopedBFS"):
        return (k - 1) / (virtual_size * m + k - 1)
    return None
