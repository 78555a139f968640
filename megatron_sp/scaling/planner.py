"""What fits: layouts ranked by the longest sequence one training step can run, by the memory model.

Given a model (``pretrain_gpt.py`` flags, or a preset of :mod:`.presets`), ``N`` devices of
``M`` GB with ``H`` GB of host memory each, :func:`plan` enumerates every layout this code can
run on them (TP (within a node, dividing heads, groups, FFN and vocabulary), PP (dividing the
layers), CP and its mode (p2p, a2a, a2a+p2p), DP, model state replicated / distributed optimizer
/ FSDP2 with or without ``--optimizer-cpu-offload``, no / selective / full recompute, the
chunked loss, the tiled MLP, ``--cpu-offloading`` of up to all layers but the last), asks
``memory/estimate.py`` (the one model: :func:`~megatron_sp.memory.estimate`, its model-state
and pipeline-stage terms) for the longest sequence whose *device* footprint (persistent state +
the step's peak + a reserve for the CUDA context and fragmentation) and *host* footprint
(offloaded state and activations) both fit, and ranks the layouts by it (ties: the layout
that recomputes, tiles and offloads least, then the smallest TP).  A plan knows the
``pretrain_gpt.py`` flags and the ``torchrun`` command that run it.

    plans = plan(MODEL_PRESETS["llama-3-8b"].split(), devices=8, device_gb=80, host_gb=250)
    plans[0].seq_length, plans[0].describe(), plans[0].command()

The command sets everything the model assumed: where the model flags are silent, no hidden or
attention dropout (``pretrain_gpt.py``'s defaults are 0.1, and attention dropout runs the
reference kernel, whose fp32 scores are O(s^2) per rank) and the attention backend the model
counted (:func:`planned_model_flags`).  Model flags that ask for dropout are planned with it, the
reference kernel's scores included.

``features`` restricts the issue-11 options (``{"loss", "mlp", "offload"}``; ``()`` plans for
the code without them: full logits, untiled MLP, activations on the device).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

from .. import memory as mm
from ..arguments.validate import padded_vocab_size
from ..sequence_parallel.config import RING, ULYSSES, USP
from .layouts import Layout, long_sequence_flags

GB = 1e9
FEATURES = ("loss", "mlp", "offload")
RECOMPUTE = (None, "selective", "full")
SHARDING = (("replicated", False), ("dist-opt", False), ("fsdp2", False), ("dist-opt", True), ("fsdp2", True))


class PlanError(ValueError):
    """Bad planner input, in one line."""


@dataclass(frozen=True)
class Options:
    """The long-sequence options of one candidate (0: off)."""
    recompute: Optional[str] = None
    loss_chunk: int = 0
    mlp_chunk: int = 0
    offload_layers: int = 0

    def flags(self) -> list:
        return long_sequence_flags(self.recompute, self.loss_chunk, self.mlp_chunk, self.offload_layers)

    def cost(self) -> int:
        """How much extra work the options cost (ranking ties go to the cheapest)."""
        return ({None: 0, "selective": 1, "full": 3}[self.recompute] + (1 if self.mlp_chunk else 0)
                + (1 if self.offload_layers else 0))


@dataclass
class Plan:
    layout: Layout
    options: Options
    seq_length: int
    device_bytes: float      # the largest pipeline stage's device footprint at that length
    host_bytes: float        # its host footprint (offloaded state and activations)
    estimate: "mm.Estimate"  # the stage with the largest device footprint
    model_flags: list = field(default_factory=list)
    bf16: bool = True
    node_size: int = 8
    spec: Optional["mm.ModelSpec"] = None  # the model's input (vocabulary padded for the layout, options set)

    @property
    def world(self) -> int:
        return self.layout.tp * self.layout.cp * self.layout.dp * self.layout.pp

    def describe(self) -> str:
        o = self.options
        extra = [f"recompute {o.recompute}" if o.recompute else "",
                 f"loss chunks {o.loss_chunk}" if o.loss_chunk else "full logits",
                 f"MLP tiles {o.mlp_chunk}" if o.mlp_chunk else "",
                 f"activation offload {o.offload_layers} layers" if o.offload_layers else ""]
        return f"{self.layout.describe()}; " + ", ".join(e for e in extra if e)

    def attention(self) -> str:
        """Which kernel the command's attention runs and what it costs, in one line."""
        return attention_text(self.spec, self.layout.parallel, self.seq_length)

    def argv(self, data_flags=None, train_flags=None) -> list:
        """``pretrain_gpt.py`` flags of this plan (mock data and a short schedule unless given)."""
        lay = self.layout
        data = data_flags if data_flags is not None else ["--mock-data", "--tokenizer-type", "NullTokenizer"]
        train = train_flags if train_flags is not None else ["--lr", "3e-4", "--min-lr", "3e-5",
                                                            "--lr-decay-style", "cosine", "--train-iters", "1000"]
        return (list(self.model_flags) + lay.flags() + self.options.flags()
                + ["--seq-length", str(self.seq_length), "--max-position-embeddings", str(self.seq_length),
                   "--micro-batch-size", "1", "--global-batch-size", str(lay.dp * lay.micro_batches)]
                + (["--bf16"] if self.bf16 else []) + data + train)

    def command(self, data_flags=None, train_flags=None) -> str:
        """The ``torchrun`` command line (multi-node: run it on every node with its --node-rank)."""
        per_node = min(self.world, self.node_size)
        nodes = math.ceil(self.world / per_node)
        launch = f"torchrun --nproc-per-node {per_node}"
        if nodes > 1:
            launch += (f" --nnodes {nodes} --node-rank $NODE_RANK --rdzv-backend c10d "
                       "--rdzv-endpoint $MASTER_ADDR:29500")
        return f"{launch} pretrain_gpt.py " + " ".join(self.argv(data_flags, train_flags))

    def breakdown(self) -> list:
        """``(term, GB, where)`` rows of the footprint at the planned length (GB = 1e9 bytes, as the budgets)."""
        est, gib = self.estimate, GB
        state_where = "host" if est.host else "device"
        rows = [("fp32 weights (shard)", est.params / gib, state_where),
                ("gradients (shard)", est.grads / gib, state_where if (est.grads_in_baseline or est.host)
                 else "device, in step"),
                ("Adam m, v (shard)", est.adam / gib, state_where),
                ("pipeline receive buffers", est.buffers / gib, "device"),
                ("activations kept at the end of forward", est.activations / gib, "device"),
                ("activations offloaded (--cpu-offloading)", est.host_activations / gib, "host"),
                ("optimizer step: checks of the largest gradient", est.host_optimizer / gib, "host, in step")]
        if self.spec is not None and mm.attention_kernel(self.spec, self.layout.parallel) == "reference":
            rows.append(("attention scores (reference kernel, in a layer's backward)",
                         mm.unfused_transient(self.spec, self.layout.parallel, self.seq_length / self.layout.cp,
                                              1) / gib, "device, in step"))
        for name, value in (est.phases or {}).items():
            rows.append((f"step phase: {name}", value / gib, "device (peak candidate)"))
        rows += [("step peak (largest phase)", est.step_peak / gib, "device"),
                 ("device footprint (+ the reserve)", self.device_bytes / gib, "device"),
                 ("host footprint", self.host_bytes / gib, "host")]
        return [r for r in rows if r[1] > 0]


def _flag_value(flags: list, name: str) -> Optional[str]:
    """The value of the last ``name VALUE`` / ``name=VALUE`` in ``flags`` (None if absent)."""
    value = None
    for i, word in enumerate(flags):
        if word == name and i + 1 < len(flags):
            value = flags[i + 1]
        elif word.startswith(name + "="):
            value = word.split("=", 1)[1]
    return value


def planned_model_flags(model_flags, bf16: bool = True, device: str = "cuda") -> list:
    """``model_flags`` plus what the model assumes where they are silent, so that the printed command
    runs what was planned: ``--hidden-dropout 0 --attention-dropout 0`` (pretrain_gpt.py's defaults
    are 0.1), and ``--attention-backend``: ``flash`` without attention dropout (bf16, or any dtype on
    CPU; ``fused``, the memory-efficient kernel, for fp32 on CUDA), which start-up refuses in one line
    where that kernel does not work instead of running another; ``auto`` with attention dropout,
    which runs the reference kernel the model then counts (the flash kernels cannot apply dropout)."""
    flags = list(model_flags)
    for name in ("--hidden-dropout", "--attention-dropout"):
        if _flag_value(flags, name) is None:
            flags += [name, "0"]
    if _flag_value(flags, "--attention-backend") is None:
        try:
            dropout = float(_flag_value(flags, "--attention-dropout"))
        except ValueError:
            raise PlanError(f"--attention-dropout {_flag_value(flags, '--attention-dropout')}: give a probability "
                            "in [0, 1)") from None
        flags += ["--attention-backend",
                  "auto" if dropout > 0 else ("flash" if bf16 or device == "cpu" else "fused")]
    return flags


def attention_text(spec: "mm.ModelSpec", lay: "mm.ParallelConfig", seq_length: int) -> str:
    """One line: the kernel a layer's attention runs (``memory.attention_kernel``) and its score memory."""
    kernel, s = mm.attention_kernel(spec, lay), seq_length / lay.cp
    gb = lambda x: f"{x / GB:.2f} GB"  # noqa: E731
    backend = f"--attention-backend {spec.attention_backend}"
    if kernel == "flash":
        return f"{backend}: a flash kernel, O(s) memory (no scores materialised), no attention dropout"
    if kernel == "reference":
        why = (f"--attention-dropout {spec.attention_dropout:g} > 0 (the flash kernels cannot apply it)"
               if spec.attention_backend == "auto" else "unfused inside a ring")
        return (f"{backend}: the reference kernel, because {why}: fp32 scores of each block, "
                f"{gb(mm.score_block(spec, lay, s, 1))} for the largest, "
                f"{gb(mm.unfused_transient(spec, lay, s, 1))} at a layer's backward: O(s^2) per rank")
    return (f"{backend}: {'RSA score rows' if kernel == 'rsa' else 'fp32 probabilities'} kept for backward, "
            f"{gb(mm.probs_bytes(spec, lay, s, 1))} per layer: O(s^2) per rank")


def _divisors(n: int) -> list:
    return [d for d in range(1, n + 1) if n % d == 0]


def _padded_vocab(spec: "mm.ModelSpec", tp: int, divisible_by: int = 128) -> int:
    """The vocabulary as pretrain_gpt.py pads it at TP ``tp`` (``spec``'s is padded at TP 1)."""
    return padded_vocab_size(spec.vocab_size, divisible_by, tp)


def _tp_ok(spec: "mm.ModelSpec", tp: int) -> bool:
    return all(v % tp == 0 for v in (spec.num_attention_heads, spec.num_query_groups, spec.ffn_hidden_size))


def _cp_modes(spec: "mm.ModelSpec", tp: int, cp: int, node_size: int) -> list:
    """``(mode, Ulysses degree)`` for CP ``cp``: the ring always; Ulysses where it divides the heads
    (query and K/V) of a TP rank; the hybrid with the largest Ulysses degree that does and stays
    within a node."""
    if cp == 1:
        return [(RING, 1)]
    heads, groups = spec.num_attention_heads // tp, spec.num_query_groups // tp
    ok = [u for u in _divisors(cp) if heads % u == 0 and (groups % u == 0 or u % groups == 0)]
    modes = [(RING, 1)]
    if cp in ok:
        modes.append((ULYSSES, cp))
    hybrid = [u for u in ok if 1 < u < cp and u * tp <= node_size]
    if hybrid:
        modes.append((USP, max(hybrid)))
    return modes


def layouts(spec: "mm.ModelSpec", devices: int, node_size: int = 8) -> list:
    """Every parallel layout of ``devices`` ranks this code can run the model on."""
    out = []
    for tp in _divisors(devices):
        if tp > node_size or not _tp_ok(spec, tp):
            continue
        for pp in _divisors(devices // tp):
            if spec.num_layers % pp or (pp > 1 and spec.num_layers // pp < 1):
                continue
            for dp in _divisors(devices // (tp * pp)):
                cp = devices // (tp * pp * dp)
                for mode, u in _cp_modes(spec, tp, cp, node_size):
                    for sharding, offload in SHARDING:
                        out.append(Layout(f"plan-{len(out)}", tp, cp, dp, mode, tp > 1, u, sharding, offload, pp))
    return out


def offload_counts(layers: int) -> tuple:
    """``--cpu-offloading-num-layers`` values tried: none, all but the last, and a few in between
    (fewer layers on the host when host memory, not the device, is what runs out)."""
    if layers < 2:
        return (0,)
    return tuple(sorted({0, layers - 1, max(1, layers - 2), max(1, layers - 4), max(1, 3 * layers // 4),
                         max(1, layers // 2), max(1, layers // 4)}))


def options(spec: "mm.ModelSpec", pp: int, features, loss_chunk: int, mlp_chunk: int) -> list:
    """The recompute / chunking / offload combinations for a layout."""
    out = []
    for recompute in RECOMPUTE:
        for tile in ((0, mlp_chunk) if "mlp" in features else (0,)):
            for off in (offload_counts(spec.num_layers) if "offload" in features else (0,)):
                out.append(Options(recompute, loss_chunk if "loss" in features else 0, tile, off))
    return out


def footprint(spec: "mm.ModelSpec", lay: "mm.ParallelConfig", seq: int, reserve: float) -> tuple:
    """``(device bytes, host bytes, estimate)`` of the worst rank: the pipeline stage with the
    largest device footprint (every stage under PP), plus ``reserve`` on the device."""
    if lay.pp > 1:
        from ..memory import stage_estimates
        ests = stage_estimates(spec, lay, seq, 1)
    else:
        ests = [mm.estimate(spec, lay, seq, 1)]
    worst = max(ests, key=lambda e: e.device_peak)
    return worst.device_peak + reserve, max(e.host_total for e in ests), worst


def at_length(spec: "mm.ModelSpec", n: int) -> "mm.ModelSpec":
    """The model of the plan's command at length ``n``: it sets ``--max-position-embeddings n`` (a
    learned position table of n rows)."""
    return replace(spec, max_position_embeddings=n)


def _longest(spec, lay, granularity: int, device: float, host: float, reserve: float, limit: int) -> int:
    def fits(n):
        d, h, _ = footprint(at_length(spec, n), lay, n, reserve)
        return d <= device and h <= host
    return mm.largest(fits, granularity, limit)


def plan(model_flags, devices: int, device_gb: float, host_gb: float, node_size: int = 8, bf16: bool = True,
         reserve_gb: float = 2.0, features=FEATURES, loss_chunk: int = 2048, mlp_chunk: int = 4096,
         limit: int = 1 << 28, top: Optional[int] = None, device: str = "cuda") -> list:
    """Plans ranked by the longest sequence that fits (module doc); layouts where nothing fits are left out."""
    model_flags = list(model_flags)
    _check_inputs(model_flags, devices, device_gb, host_gb, node_size, reserve_gb, features)
    model_flags = planned_model_flags(model_flags, bf16, device)
    base = mm.ModelSpec.from_flags(model_flags, bf16=bf16, device=device)
    divisible_by = int(_flag_value(model_flags, "--make-vocab-size-divisible-by") or 128)
    dev, host, reserve = device_gb * GB, host_gb * GB, reserve_gb * GB
    plans = []
    for layout in layouts(base, devices, node_size):
        spec_tp = replace(base, vocab_size=_padded_vocab(base, layout.tp, divisible_by))
        lay = layout.parallel
        for opt in options(base, layout.pp, features, loss_chunk, mlp_chunk):
            spec = replace(spec_tp, recompute_granularity=opt.recompute,
                           recompute_method="uniform" if opt.recompute == "full" else None, recompute_num_layers=1,
                           cross_entropy_chunk_size=opt.loss_chunk, cross_entropy_loss_fusion=False,
                           tiled_mlp_chunk_size=opt.mlp_chunk, cpu_offloading_num_layers=opt.offload_layers)
            n = _longest(spec, lay, layout.seq_granularity(), dev, host, reserve, limit)
            if n:
                d, h, est = footprint(at_length(spec, n), lay, n, reserve)
                plans.append(Plan(layout, opt, n, d, h, est, model_flags, bf16, node_size,
                                  at_length(spec, n)))
    plans.sort(key=lambda p: (-p.seq_length, p.options.cost(), p.layout.offload, p.layout.tp, p.layout.pp,
                              p.layout.parallel.sharded, p.layout.dp))
    return plans[:top] if top else plans


def _check_inputs(model_flags, devices, device_gb, host_gb, node_size, reserve_gb, features) -> None:
    for name, value in (("--devices", devices), ("--node-size", node_size)):
        if not isinstance(value, int) or value < 1:
            raise PlanError(f"{name} {value}: give a whole number of devices >= 1")
    for name, value in (("--device-memory-gb", device_gb), ("--host-memory-gb", host_gb)):
        if not value > 0:
            raise PlanError(f"{name} {value}: give the memory of one device (GB, > 0)")
    if not 0 <= reserve_gb < device_gb:
        raise PlanError(f"--reserve-gb {reserve_gb}: give a reserve between 0 and --device-memory-gb {device_gb}")
    bad = [f for f in features if f not in FEATURES]
    if bad:
        raise PlanError(f"--features {bad[0]}: choose from {', '.join(FEATURES)}")
    words = set(model_flags)
    missing = [f for f in ("--num-layers", "--hidden-size", "--num-attention-heads", "--vocab-size")
               if f not in words and not any(w.startswith(f + "=") for w in words)]
    if missing:
        raise PlanError(f"the model flags lack {missing[0]}: give a --model preset or all of --num-layers, "
                        "--hidden-size, --num-attention-heads and --vocab-size")


def refusal(p: Plan, world: int) -> str:
    """pretrain_gpt.py's start-up error for the plan's command line, or '' when it runs."""
    from ..arguments.preflight import refusal as preflight_refusal
    return preflight_refusal(p.argv(), world)


def runnable(plans: list, count: int) -> list:
    """The first ``count`` plans whose command line pretrain_gpt.py accepts (its own checks)."""
    out = []
    for p in plans:
        if not refusal(p, p.world):
            out.append(p)
            if len(out) == count:
                break
    return out
