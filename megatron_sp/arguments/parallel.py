"""The parallel layout of a run, derived once from the flags: ``ParallelConfig``.

Every question about the layout is answered here and nowhere else: the sizes, the CP mode and
what follows from it (zigzag, the Ulysses x ring degrees, the sequence-length divisor), the
sharding mode (one spelling), pipeline parallelism on or off and its virtual stages.  The
memory model takes the same object as its layout, and the scaling tool and the planner turn
it back into flags with :meth:`ParallelConfig.flags`.

Worked example, 16 ranks::

    --tensor-model-parallel-size 2 --sequence-parallel --context-parallel-size 4
    --cp-comm-type a2a+p2p --hierarchical-context-parallel-sizes 2 2 --use-torch-fsdp2

    pc = ParallelConfig.from_args(args, world_size=16)
    pc.tp, pc.cp, pc.dp, pc.pp            # 2, 4, 2, 1
    pc.ulysses, pc.ring                   # 2, 2   (Ulysses over 2 ranks x a ring of 2)
    pc.zigzag                             # True   (causal ring: the sequence in 2 x 4 chunks)
    pc.seq_divisor                        # 16     (2 x CP, x TP under --sequence-parallel)
    pc.sharding, pc.sharded               # "fsdp2", True  (model state over DP x CP = 8 ranks)

Imports no torch (docs/ARCHITECTURE.md, "arguments").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..pipeline_parallel import (PipelineLayout, PipelineLayoutError, build_layout, check_schedule, placement,
                                schedule_name)
from ..sequence_parallel.config import RING, HIERARCHICAL_MODES, ROW_MODES, cp_sizes, ulysses_degree, uses_zigzag

# Model-state sharding over the DP x CP group: the flag of each mode ("replicated": none, DDP).
SHARDING_FLAGS = {"replicated": [], "dist-opt": ["--use-distributed-optimizer"], "fsdp2": ["--use-torch-fsdp2"]}
SHARDING_MODES = tuple(SHARDING_FLAGS)


def sharding_of(args) -> str:
    """The sharding mode the flags give: ``"fsdp2"``, ``"dist-opt"`` or ``"replicated"``."""
    if getattr(args, "use_torch_fsdp2", False):
        return "fsdp2"
    if getattr(args, "use_distributed_optimizer", False):
        return "dist-opt"
    return "replicated"


@dataclass(frozen=True)
class ParallelConfig:
    tp: int = 1
    cp: int = 1
    dp: int = 1
    mode: str = RING           # --cp-comm-type (sequence_parallel/config.py: CP_COMM_TYPES)
    sp: bool = False           # --sequence-parallel (Megatron-SP inside the TP group)
    ulysses: int = 1           # the Ulysses degree U of --hierarchical-context-parallel-sizes (a2a: = cp)
    sharding: str = "replicated"  # replicated | dist-opt | fsdp2 (model state over DP x CP)
    offload: bool = False      # --optimizer-cpu-offload
    micro_batches: int = 1     # gradient accumulation steps per global batch
    pp: int = 1                # pipeline stages
    virtual: int = 1           # virtual stages (model chunks) per pipeline rank
    schedule: str = "1F1B"     # --pipeline-schedule (resolved)

    def __post_init__(self):
        if self.sharding not in SHARDING_MODES:
            raise ValueError(f"unknown sharding mode {self.sharding!r}: choose one of {', '.join(SHARDING_MODES)}")

    @classmethod
    def from_args(cls, args, world_size: Optional[int] = None) -> "ParallelConfig":
        """From validated flags (``validate_args`` filled ``data_parallel_size`` and the schedule)."""
        tp, cp, pp = args.tensor_model_parallel_size, args.context_parallel_size, args.pipeline_model_parallel_size
        dp = args.data_parallel_size if world_size is None else world_size // (tp * cp * pp)
        hier = args.hierarchical_context_parallel_sizes
        _, u, _ = cp_sizes(args.cp_comm_type, tuple(hier) if hier else cp)
        virtual = getattr(args, "num_virtual_stages_per_pipeline_rank", None) or 1
        if getattr(args, "num_layers_per_virtual_pipeline_stage", None) and pp > 1:
            virtual = args.num_layers // (pp * args.num_layers_per_virtual_pipeline_stage)
        return cls(tp=tp, cp=cp, dp=dp, mode=args.cp_comm_type, sp=bool(args.sequence_parallel) and tp > 1,
                   ulysses=u, sharding=sharding_of(args), offload=bool(getattr(args, "optimizer_cpu_offload", False)),
                   micro_batches=getattr(args, "num_micro_batches", 1) or 1, pp=pp, virtual=virtual,
                   schedule=getattr(args, "pipeline_schedule", None) or "1F1B")

    # --- what follows from the sizes ----------------------------------------------------
    @property
    def world(self) -> int:
        return self.pp * self.dp * self.cp * self.tp

    @property
    def dp_cp(self) -> int:
        """The group replicated weights are reduced over, and sharded state is sharded over."""
        return self.dp * self.cp

    @property
    def ulysses_degree(self) -> int:
        """U: the ranks of one all-to-all (1 for the rings, CP for a2a)."""
        return ulysses_degree(self.mode, self.cp, self.ulysses)

    @property
    def ring(self) -> int:
        """The ring degree R (rsa and p2p: CP; a2a: 1)."""
        return self.cp // self.ulysses_degree

    ring_degree = ring

    @property
    def hierarchical(self) -> bool:
        """Ulysses x ring (USP): the mode takes --hierarchical-context-parallel-sizes U R."""
        return self.cp > 1 and self.mode in HIERARCHICAL_MODES

    @property
    def rsa(self) -> bool:
        """Ring Self-Attention (the paper's algorithm: two ring passes, no block kernel)."""
        return self.mode in ROW_MODES

    @property
    def score_rows(self) -> bool:
        """RSA over more than one rank: each rank materialises full score rows ``[s/P, s]``."""
        return self.rsa and self.cp > 1

    @property
    def zigzag(self) -> bool:
        """Causal ring modes lay the sequence out in 2P zigzag chunks."""
        return uses_zigzag(self.mode, True) and self.ring > 1

    @property
    def seq_divisor(self) -> int:
        """``--seq-length`` must be a multiple of this: 2P under zigzag (the loop keeps 2 even at
        P = 1), else P; times TP under --sequence-parallel."""
        g = 2 * self.cp if (uses_zigzag(self.mode, True) or self.cp == 1) else self.cp
        return g * self.tp if self.sp else g

    @property
    def sharded(self) -> bool:
        return self.sharding != "replicated"

    @property
    def pipelined(self) -> bool:
        return self.pp > 1

    # --- back to flags ------------------------------------------------------------------
    def flags(self) -> list:
        """The ``pretrain_gpt.py`` flags of this layout (sizes, CP mode, sharding, PP)."""
        f = ["--tensor-model-parallel-size", str(self.tp), "--context-parallel-size", str(self.cp),
             "--cp-comm-type", self.mode]
        if self.sp:
            f.append("--sequence-parallel")
        if self.hierarchical:
            f += ["--hierarchical-context-parallel-sizes", str(self.ulysses), str(self.ring)]
        f += SHARDING_FLAGS[self.sharding]
        if self.pp > 1:
            f += ["--pipeline-model-parallel-size", str(self.pp)]
        return f + (["--optimizer-cpu-offload"] if self.offload else [])

    def describe(self) -> str:
        parts = ([f"PP{self.pp}"] if self.pp > 1 else []) + [f"TP{self.tp}" + ("+SP" if self.sp else "")]
        if self.cp > 1:
            parts.append(f"CP{self.cp} {self.mode}" + (f" (U{self.ulysses}xR{self.ring})" if self.hierarchical
                                                        else ""))
        if self.dp > 1:
            parts.append(f"DP{self.dp}")
        state = {"fsdp2": " FSDP2", "dist-opt": " dist-opt"}.get(self.sharding, "")
        return " x ".join(parts) + state + (" +offload" if self.offload else "")


def pipeline_layout(args) -> PipelineLayout:
    """The layer split the flags give, checked against the schedule and the micro-batch count
    (raises :class:`PipelineLayoutError`, one line, from the flags alone)."""
    pp = args.pipeline_model_parallel_size
    per_virtual = args.num_layers_per_virtual_pipeline_stage
    per_rank = args.num_virtual_stages_per_pipeline_rank
    name = schedule_name(args.pipeline_schedule, 1 if per_virtual is None and per_rank is None else 2)
    layout = build_layout(args.num_layers, pp, per_virtual, per_rank, args.decoder_first_pipeline_num_layers,
                          args.decoder_last_pipeline_num_layers, placement(name))
    if pp > 1:
        sharding = (SHARDING_FLAGS[sharding_of(args)] or [None])[0]
        check_schedule(name, pp, layout.virtual_size, args.num_micro_batches,
                       args.data_parallel_size * args.context_parallel_size, sharding)
    elif args.pipeline_schedule:
        raise PipelineLayoutError(f"--pipeline-schedule {args.pipeline_schedule} schedules pipeline stages: it needs "
                                  "--pipeline-model-parallel-size > 1")
    args.pipeline_schedule = name if pp > 1 else None
    return layout
