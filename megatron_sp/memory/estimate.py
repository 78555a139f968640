"""Per-rank memory and per-step communication of a GPT training step, by layout.

    spec = ModelSpec.from_flags("--num-layers 4 --hidden-size 128 ...".split())
    est = estimate(spec, ParallelConfig(tp=1, cp=4), seq_length=8192, micro_batch=1)
    est.step_peak        # bytes the step adds above the post-setup baseline (what the scaling tool measures)
    est.breakdown()      # params / grads / adam / activations / transients / phases / host / comm
    est.host             # activation bytes offloaded to pinned host memory (--cpu-offloading, CUDA)

The model counts the tensors this code base keeps, not a generic transformer: the
per-layer terms are the tensors autograd saves in ``model/transformer.py`` (Korthikanti et
al. 2022 give the same accounting for Megatron: ``sbh(34 + 5as/h)`` bytes per layer in fp16;
ours differs because of RoPE, fused QKV, flash attention and fp32).
Notation: ``s`` tokens of this CP rank (N/P), ``b`` micro-batch, ``h`` hidden, ``f`` FFN
width, ``a``/``g`` query heads / query groups, ``d`` head dim, ``T`` TP size, ``V`` padded
vocabulary, ``e`` bytes per activation element (4 fp32, 2 under bf16/fp16 autocast).
Tensors in the Megatron-SP region (norms, residual) are divided by ``T`` under
``--sequence-parallel``; everything after the column-parallel linears is divided by ``T``.

Activations (``memory/activations.py``) are counted phase by phase: what each layer keeps
for backward (by recompute mode; the tiled MLP keeps no intermediate; offloaded layers keep
theirs in host memory on CUDA), the final norm and the loss (the fp32 softmax unfused,
nothing chunk-sized once chunked), and the transients of the loss, a layer's backward (MLP
gradients or one tile, attention's dq/dk/dv, the CP buffers and RSA's score copies) and the
optimizer step.  ``tests/test_memory_model.py`` checks that the bytes a forward keeps are exactly
what autograd saves, and the step peak against measured steps.

Attention scores exist for ``rsa`` with P > 1: full rows ``[b, a/T, s, N]`` in fp32
saved per layer, plus two more copies at the backward peak of a layer (``d_probs`` and the
softmax-backward product).  With the flash kernels (``--attention-backend auto`` / ``flash``)
no other mode materialises scores, unless ``--attention-dropout`` > 0: then ``auto`` runs the
reference block kernel (the flash kernels here cannot apply dropout), whose fp32 scores of the
largest block (``[b, a/(T U), sU, sU]``, the whole local sequence in a ring of one) are a
transient of a layer's backward, six of them with the dropout mask
(``activation_memory.attention_kernel``, ``unfused_transient``).  ``--attention-backend unfused``
(or ``local``) does, see
``activation_memory.probs_bytes`` and ``unfused_transient``: where attention is a ring of one (CP 1,
and Ulysses after its all-to-all) it keeps the fp32 probabilities ``[b, a/(T U), sU, sU]``
of every layer, exactly RSA's algorithm over a ring of one (same two extra copies in a layer's
backward); inside a ring of R > 1 it materialises each block's scores transiently.  Ring modes keep
double-buffered K/V blocks and travelling dK/dV accumulators (a transient of the layer in
backward).  Outside the layers: the logits (kept as the softmax by the cross entropy),
the final norm and output-layer inputs, and the output layer's gradient in backward.

Model state, per local parameter (parameters of the TP-sharded linears and the vocabulary
are divided by ``T``; ``D`` = DP x CP, ``c`` = bytes of a compute weight: 2 under
bf16/fp16, else 4; :func:`model_state`)::

    replicated (DDP)        4 weight + 4 gradient + 8 Adam m, v            = 16
    --use-distributed-opt.  (4 + 4 + 8) / D, all layers' gathered compute weights (c) in the
                            step, and with gradient accumulation the unsharded fp32
                            gradients (4) from the first micro-batch's backward to the last
    --use-torch-fsdp2       (4 + 4 + 8) / D, the root's weights (embeddings, output layer)
                            gathered (c) in the step, plus two layers gathered (c) at a time
    both, without           in a layer's backward its unsharded gradients (c) and the previous
    accumulation            layer's fp32 reduce-scatter input (4); the output weight's
                            unsharded gradient (c) from the loss's backward to the end
    --optimizer-cpu-offload the (4 + 4 + 8) / D shards live in host memory instead

The sharded gradients (4 / D) are not persistent: ``train_step`` begins with ``zero_grad``
(every ``.grad`` None), so they are made in backward, a layer's at its reduce-scatter, and
read by the optimizer step (:func:`grad_shards`); the phases count those made by then.

The persistent state exists before the measured step (the scaling tool takes its baseline
after a warm-up step), so the step's peak counts gradients, activations and transients;
``device_peak`` adds the persistent device state, and ``host`` is the host memory a rank
holds for the model state.  AdamW is torch's fused kernel (CPU and CUDA): the optimizer step
adds only the gradient checks on the largest gradient (``terms.largest_gradient_check``); with
DDP's buckets (DP x CP > 1) the gradients are in the baseline, otherwise backward makes them
again (sharded: their shards).

Host memory per rank (``Estimate.host_total``): the model state under
``--optimizer-cpu-offload`` (``host``), the activations ``--cpu-offloading`` moves
(``host_activations``) and the offloaded optimizer step's gradient checks (``host_optimizer``);
the last two are 0 on CPU, where host and device are one memory (the step's peak counts the
checks there).

Communication per step and rank (bytes sent, forward + backward):

* ring (p2p, the ring of a2a+p2p): forward ``(R-1)`` K/V blocks per layer; backward ``(R-1)``
  K/V blocks again plus ``R`` hops of the dK/dV accumulators;
* rsa: forward ``(P-1)`` K and ``(P-1)`` V blocks; backward the same plus ``P`` hops of dK and dV;
* a2a: 4 all-to-alls (q, k, v, out) forward and 4 backward, each sending ``(U-1)/U`` of its tensor;
* TP: 2 all-reduces of ``[s, b, h]`` per layer forward and 2 backward (ring all-reduce sends
  ``2(T-1)/T`` of it); with SP all-gather + reduce-scatter pairs (``(T-1)/T`` each);
* gradients: a ring all-reduce over DP x CP of the local gradients, ``2(n-1)/n`` of them.

Pipeline parallelism (``ParallelConfig.pp > 1``): a stage holds only its layers, and the
activations of the micro-batches its schedule keeps in flight; ``memory/stages.py``
builds the per-stage estimate from the pieces in ``memory/terms.py`` and ``memory/activations.py``, and :func:`estimate` returns its largest stage.
"""
from __future__ import annotations

from . import activations as activation_memory
from .stages import stage_estimates
from .terms import (Estimate, ParallelConfig, ModelSpec, comm, host_optimizer_step, layer_parameters,
                    local_parameters, model_state, optimizer_peak, parameter_tensors)


def estimate(spec: ModelSpec, lay: ParallelConfig, seq_length: int, micro_batch: int) -> Estimate:
    """Memory (bytes, per rank) and communication of one training step (see module doc); under
    pipeline parallelism the stage with the largest step peak (memory/stages.py)."""
    if lay.pp > 1:
        return max(stage_estimates(spec, lay, seq_length, micro_batch), key=lambda e: e.step_peak)
    s = seq_length / lay.cp
    b = micro_batch
    n = local_parameters(spec, lay.tp)
    traffic = comm(spec, lay, seq_length, b, n)
    state = model_state(spec, lay)
    layer = 4.0 * layer_parameters(spec, lay.tp)
    if not lay.sharded:
        ddp = lay.dp * lay.cp > 1
        # made before the last layer's backward peaks: the output weight's, the final norm's, that layer's
        early = 0.0 if ddp else 4.0 * (spec.vocab_size / lay.tp * spec.hidden_size + 2 * spec.hidden_size) + layer
        peaks, kept, host = activation_memory.phases(spec, lay, s, b, early, 0.0 if ddp else layer,
                                                     param_tensors=parameter_tensors(spec))
    else:  # sharded: see grad_shards
        ddp = True  # for optimizer_peak: no whole gradients (the shards are added to it below)
        early, shard_layer, shard_all, host_grads = grad_shards(spec, lay, n, state)
        peaks, kept, host = activation_memory.phases(spec, lay, s, b, early, shard_layer, state["gathered"],
                                                     state["unsharded_grads"])
        state = dict(state, host=state["host"] - host_grads)
    optimizer = optimizer_peak(spec, lay, n, ddp) + (shard_all if lay.sharded else 0.0)
    peaks["optimizer_step"] = optimizer
    return Estimate(params=state["params"], grads=state["grads"], adam=state["adam"],
                    activations=kept, transient=max(peaks.values()) - kept, comm_bytes=sum(traffic.values()),
                    grads_in_baseline=ddp and not lay.sharded, early_grads=early, comm_detail=traffic,
                    host=state["host"],
                    optimizer=optimizer, host_activations=host, phases=peaks,
                    host_optimizer=host_optimizer_step(spec, lay, n))


def grad_shards(spec: ModelSpec, lay: ParallelConfig, n: float, state: dict) -> tuple:
    """Where the gradients of sharded state (FSDP2, dist-opt) exist in the step.  ``train_step`` starts
    with ``zero_grad`` (``training/optimizer.py``: every ``.grad`` set to None), so no gradient shard
    exists in the forward; backward makes each layer's shard when that layer's unsharded gradients are
    reduce-scattered (the root's, embeddings and output layer, at the end of backward); the optimizer
    step reads them all.  Meanwhile the output weight's unsharded gradient (compute dtype, ``c V h/T``),
    made by the loss's backward, waits for the root's reduce-scatter through every layer's backward.

    Returns ``(early, per layer, all, host)``: the bytes alive before the last layer's backward peaks
    (the output weight's unsharded gradient), one layer's shard and every shard where they count in
    the device's phases (0 when ``--optimizer-cpu-offload`` keeps them in host memory on CUDA), and
    the shards' bytes to take out of the persistent host state (on CPU, where host and device are one
    memory, the phases count them)."""
    shards = lay.dp * lay.cp
    c = 2 if spec.bf16 else 4
    out_grad = c * spec.vocab_size / lay.tp * spec.hidden_size  # tied: into the embedding's, as unsharded
    on_host = lay.offload and spec.device != "cpu"
    shard_layer = 0.0 if on_host else 4.0 * layer_parameters(spec, lay.tp) / shards
    shard_all = 0.0 if on_host else 4.0 * n / shards
    host_grads = state["grads"] if (lay.offload and not on_host) else 0.0
    return out_grad, shard_layer, shard_all, host_grads


def largest(fits, granularity: int, limit: int) -> int:
    """Largest multiple of ``granularity`` <= limit with ``fits`` true (fits is monotone)."""
    lo, hi = 0, limit // granularity
    if hi == 0 or not fits(granularity):
        return 0
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid * granularity):
            lo = mid
        else:
            hi = mid - 1
    return lo * granularity


def max_seq_length(spec: ModelSpec, lay: ParallelConfig, micro_batch: int, budget_bytes: float,
                   granularity: int = 1, limit: int = 1 << 24, device: bool = False) -> int:
    """The longest sequence (a multiple of ``granularity``) whose step peak fits the budget
    (with ``device``: whose whole device footprint, persistent state included, fits it)."""
    def fits(n):
        est = estimate(spec, lay, n, micro_batch)
        return (est.device_peak if device else est.step_peak) <= budget_bytes
    return largest(fits, granularity, limit)


def max_micro_batch(spec: ModelSpec, lay: ParallelConfig, seq_length: int, budget_bytes: float,
                    limit: int = 1 << 16) -> int:
    """The largest micro-batch whose step peak fits the budget."""
    return largest(lambda b: estimate(spec, lay, seq_length, b).step_peak <= budget_bytes, 1, limit)
