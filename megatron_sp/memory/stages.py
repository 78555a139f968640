"""Per-stage memory of a pipeline-parallel step (the memory model's PP part; torch-free).

PP rank ``r`` of ``K`` holds ``L / K`` layers (V chunks of ``L / (K V)``), the embedding on
the first stage, the final norm and the output layer (or the tied embedding's copy) on the
last, and at its peak the activations of the chunks its schedule keeps in flight
(:func:`~megatron_sp.pipeline_parallel.schedule_rules.in_flight_chunks`)::

    activations  = chunks x (L / (K V) layers' saved tensors + the chunk's output [s(/T), b, h],
                             which the library keeps for the chunk's backward)
                 + the one layer recomputed at a time (full / RSA-selective recompute)
                 + on the last stage, the head's tensors (final norm, output layer, logits)
                   for each of its in-flight micro-batches (1, or m for GPipe / LoopedBFS)
    buffers      = receive buffers the library allocates once for every micro-batch and keeps:
                   m activations per chunk that is not the first, m gradients per chunk that is
                   not the last, [s(/T), b, h] each (fp32, or the compute dtype with sharded state)
    model state  = terms.model_state of the stage's parameters; with sharded state the
                   library keeps every layer's compute weights gathered and accumulates unsharded
                   fp32 gradients from the first backward to the last (both modes, schedule.py)
    transient    = the larger of a layer's backward working set (the MLP and attention
                   transients, one tile's under the tiled MLP; activations.layer_working)
                   and, on the last stage, the loss's transients (the logits, or one chunk of
                   them with the chunked loss).  A recomputed run is counted once on top of the
                   in-flight activations; ``--cpu-offloading`` layers (global indices) keep theirs in host
                   memory (``host_activations``).  The stage's gradients count as
                   persistent whatever holds them (1F1B's steady state runs after the first
                   backward, so they are alive at the peak, and a step's baseline holds the
                   previous step's), except the distributed optimizer's shards: it reduces
                   the unsharded gradients (in the transient) once, after the last
                   micro-batch, and ``zero_grad`` frees the shards before the next step

Layers split evenly (``--decoder-first/last-pipeline-num-layers`` are not modelled).
:func:`stage_estimates` gives one :class:`~megatron_sp.memory.Estimate` per PP rank;
``memory.estimate`` returns the one with the largest step peak (what a scaling trial
measures: the maximum over ranks).

Worked example, 80 layers, K = 8, m = 16, 1F1B: rank 0 keeps 8 micro-batches of 10 layers
(80 layer-activations: one micro-batch through the whole model), rank 7 keeps 1 micro-batch
of 10 layers plus the logits; with V = 2 (5 layers a chunk) rank 0 keeps
min(32, 8 + 14 + 1) = 23 chunks = 115 layer-activations.
"""
from __future__ import annotations

from dataclasses import replace

from . import activations as activation_memory
from . import terms as mt
from ..pipeline_parallel.schedule_rules import in_flight_chunks


def stage_parameters(spec: "mt.ModelSpec", tp: int, layers: int, first: bool, last: bool) -> float:
    """Parameters on one TP rank of a stage: its layers, embedding (first), final norm and output
    weight or tied copy (last)."""
    h, V = spec.hidden_size, spec.vocab_size
    n = layers * mt.layer_parameters(spec, tp)
    if first:
        n += V * h / tp + spec.position_rows * h
    if last:
        n += 2 * h + (V * h / tp if (not spec.tied or not first) else 0)
    return n


def _stage_chunks(pp: int, virtual: int, schedule: str, rank: int) -> list:
    """Virtual stage indices of PP rank ``rank`` (loop placement, or V-shaped for those schedules)."""
    if schedule in ("ZBVZeroBubble", "DualPipeV"):
        return [rank, 2 * pp - 1 - rank]
    return [c * pp + rank for c in range(virtual)]


def stage_estimates(spec: "mt.ModelSpec", lay: "mt.ParallelConfig", seq_length: int, micro_batch: int) -> list:
    """One :class:`~megatron_sp.memory.Estimate` per PP rank (module doc)."""
    K, V, m = lay.pp, lay.virtual, lay.micro_batches
    n_stages = K * V
    if spec.num_layers % n_stages:
        raise ValueError(f"{spec.num_layers} layers do not split evenly over {K} x {V} pipeline stages")
    per_chunk = spec.num_layers // n_stages
    s, b, h, T = seq_length / lay.cp, micro_batch, spec.hidden_size, lay.tp
    s_hidden = s / T if (lay.sp and T > 1) else s
    e_hidden = 2 if (spec.bf16 and lay.sharded) else 4
    out = []
    for r in range(K):
        chunks = _stage_chunks(K, V, lay.schedule, r)
        first, last = 0 in chunks, n_stages - 1 in chunks
        layers = per_chunk * len(chunks)
        stage_spec = replace(spec, num_layers=layers)
        n = stage_parameters(spec, T, layers, first, last)
        flight = in_flight_chunks(lay.schedule, K, V, m, r)
        # per chunk (its global layers: recompute runs restart per chunk, offload goes by global index)
        pieces = [activation_memory.chunk_kept(spec, lay, s, b, c * per_chunk, per_chunk) for c in chunks]
        kept = sum(p[0] for p in pieces) / len(pieces)
        host = flight * sum(p[1] for p in pieces) / len(pieces)
        once = max(p[2] for p in pieces)
        acts = flight * (kept + s_hidden * b * h * e_hidden) + once
        if last:
            acts += (m if lay.schedule in ("GPipe", "LoopedBFS") else 1) * mt.outside_saved(spec, lay, s, b)
        hop = s_hidden * b * h * e_hidden
        buffers = m * hop * (sum(c != 0 for c in chunks) + sum(c != n_stages - 1 for c in chunks))
        state = mt.model_state(stage_spec, lay, n)
        if lay.sharded:
            state.update(gathered=(2 if spec.bf16 else 4) * n, unsharded_grads=4.0 * n)
        comm = mt.comm(stage_spec, lay, seq_length, b, n)
        comm["pp"] = 2 * hop * (sum(c != n_stages - 1 for c in chunks) + sum(c != 0 for c in chunks))
        # a layer's backward (recomputed run in ``once``), or the loss's transients on the last stage
        transient = max(activation_memory.layer_working(spec, lay, s, b),
                        max(activation_memory.loss_transients(spec, lay, s, b)) if last else 0.0)
        if lay.sharded:
            transient = state["gathered"] + max(transient, state["unsharded_grads"])
        # CPU pages of the tensors in flight (activation_memory.cpu_pages): layers, chunk outputs, the head
        tensors = flight * (sum(activation_memory.run_tensors(spec, lay, per_chunk)) + 1) \
            + (activation_memory.outside_tensors(spec, lay, s * b) if last else 0)
        transient += activation_memory.cpu_pages(spec, tensors)
        out.append(mt.Estimate(params=state["params"], grads=state["grads"], adam=state["adam"], activations=acts,
                               transient=transient, grads_in_baseline=lay.sharding != "dist-opt",
                               early_grads=0.0,
                               comm_bytes=sum(comm.values()), comm_detail=comm, host=state["host"],
                               buffers=buffers, host_activations=host,
                               host_optimizer=mt.host_optimizer_step(spec, lay, n)))
    return out
