"""Parallel layouts of the scaling experiments: what a name like ``tp2+sp+p2p`` means at a world size.

    tp        TP = W                      tp+sp     TP = W with --sequence-parallel
    rsa, p2p, a2a                         CP = W with that --cp-comm-type
    a2a+p2p   CP = W, Ulysses 2 x ring W/2 (ring only below W = 4)
    tp2+p2p   TP = 2 x CP = W/2 (p2p), likewise tp2+sp+p2p, tp2+a2a ...
    dp        DP = W (max batch only: every rank holds the whole model)

Any of them may end in a model-state option: ``+fsdp2`` (--use-torch-fsdp2), ``+distopt``
(--use-distributed-optimizer), and after either ``+offload`` (--optimizer-cpu-offload):
``p2p+fsdp2``, ``tp2+sp+p2p+distopt+offload``, ``dp+fsdp2``.

Any of them may start with a pipeline option ``ppK+`` (--pipeline-model-parallel-size K, 1F1B
with K micro-batches per step): the rest of the name is the layout of the W / K ranks of each
stage, e.g. ``pp2+p2p`` at W = 8 is PP 2 x CP 4, ``pp4+tp2+sp+p2p+distopt`` at W = 16 is
PP 4 x TP 2 x CP 2; ``pp`` alone is PP = W.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from ..arguments.parallel import ParallelConfig
from ..sequence_parallel.config import CP_COMM_TYPES, RING, effective_mode, ulysses_degree


# --- layouts ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    name: str
    tp: int
    cp: int
    dp: int
    mode: str = RING
    sp: bool = False
    ulysses: int = 1  # Ulysses degree U (a2a: U = CP; a2a+p2p: hierarchical U)
    sharding: str = "replicated"  # replicated | dist-opt | fsdp2 (model state over DP x CP)
    offload: bool = False
    pp: int = 1  # pipeline stages (1F1B, pp micro-batches per step)

    @property
    def parallel(self) -> ParallelConfig:
        """The layout as the one parallel-config object (the memory model's layout, the flags)."""
        return ParallelConfig(tp=self.tp, cp=self.cp, dp=self.dp, mode=self.mode, sp=self.sp, ulysses=self.ulysses,
                              sharding=self.sharding, offload=self.offload, micro_batches=self.micro_batches,
                              pp=self.pp)

    @property
    def ring(self) -> int:
        return self.parallel.ring

    def flags(self) -> list:
        return self.parallel.flags()

    @property
    def micro_batches(self) -> int:
        """Micro-batches per step: 1, or one per pipeline stage (the fewest 1F1B accepts)."""
        return self.pp

    def seq_granularity(self) -> int:
        """Sequence lengths must be multiples of this (zigzag 2P, else P; x TP under SP)."""
        return self.parallel.seq_divisor

    def key(self) -> tuple:
        """Layouts with the same key run the same program (e.g. every layout at world 1)."""
        pc = self.parallel
        mode = effective_mode(self.mode, self.cp, self.ulysses) if self.cp > 1 else "-"
        return (self.tp, self.cp, self.dp, mode, pc.sp and pc.tp > 1, pc.ulysses_degree, self.sharding, self.offload, self.pp)

    def describe(self) -> str:
        return self.parallel.describe()


_STATE_SUFFIXES = {"+fsdp2": "fsdp2", "+distopt": "dist-opt"}


def long_sequence_flags(recompute: Optional[str] = None, loss_chunk: Optional[int] = None, mlp_chunk: int = 0,
                        offload_layers: int = 0) -> list:
    """``pretrain_gpt.py`` flags of the recompute and long-sequence options (None / 0: the default,
    no flag), e.g. ``long_sequence_flags("full", 2048)`` -> ``--recompute-granularity full
    --recompute-method uniform --recompute-num-layers 1 --cross-entropy-chunk-size 2048``."""
    f = []
    if recompute:
        f += ["--recompute-granularity", recompute]
        if recompute == "full":
            f += ["--recompute-method", "uniform", "--recompute-num-layers", "1"]
    if loss_chunk is not None:
        f += ["--cross-entropy-chunk-size", str(loss_chunk)]
    if mlp_chunk:
        f += ["--tiled-mlp-chunk-size", str(mlp_chunk)]
    if offload_layers:
        f += ["--cpu-offloading", "--cpu-offloading-num-layers", str(offload_layers)]
    return f


def make_layout(name: str, world: int) -> Optional[Layout]:
    """The layout called ``name`` at ``world`` ranks, or None where it does not exist."""
    rest, sharding, offload, pp = name, "replicated", False, 1
    head, _, tail = rest.partition("+")
    if head == "pp" and not tail:
        return Layout(name, 1, 1, 1, pp=world)
    if head.startswith("pp") and head[2:].isdigit() and tail:
        pp, rest = int(head[2:]), tail
        if world % pp or world // pp < 1:
            return None
        world //= pp
    if rest.endswith("+offload"):
        rest, offload = rest[:-len("+offload")], True
    for suffix, mode in _STATE_SUFFIXES.items():
        if rest.endswith(suffix):
            rest, sharding = rest[:-len(suffix)], mode
    if offload and sharding == "replicated":
        raise ValueError(f"layout {name!r}: +offload needs +fsdp2 or +distopt before it")
    layout = _make_parallel_layout(name, rest, world)
    return replace(layout, sharding=sharding, offload=offload, pp=pp) if layout else None


def _make_parallel_layout(name: str, rest: str, world: int) -> Optional[Layout]:
    tp, sp = 1, False
    if rest == "dp":
        return Layout(name, 1, 1, world)
    if rest in ("tp", "tp+sp"):
        return Layout(name, world, 1, 1, RING, rest == "tp+sp")
    if rest.startswith("tp") and rest[2:3].isdigit():  # mixes: tp2+p2p, tp2+sp+a2a ...
        head, _, rest = rest.partition("+")
        tp = int(head[2:])
        if rest.startswith("sp+"):
            sp, rest = True, rest[3:]
    if rest not in CP_COMM_TYPES:
        raise ValueError(f"unknown layout {name!r}: use tp, tp+sp, rsa, p2p, a2a, a2a+p2p, tpN+<cp mode>, "
                         f"tpN+sp+<cp mode>, dp, each optionally ending in +fsdp2 or +distopt (then +offload)")
    if world % tp or (tp > 1 and world // tp < 2):
        return None
    cp = world // tp
    return Layout(name, tp, cp, 1, rest, sp and tp > 1, ulysses_degree(rest, cp))
