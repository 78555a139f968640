"""The rank mesh ``world = PP x DP x CP x TP`` and its process groups.

Rank order (docs/ARCHITECTURE.md, "parallel_state.py"): TP varies fastest, then CP, then DP, then PP;
inside CP the Ulysses degree varies fastest, then the ring degree::

    rank = tp_rank + T * (cp_rank + P * (dp_rank + D * pp_rank)),   cp_rank = ulysses_rank + U * ring_rank

Why this order: the groups that talk most (TP: several all-reduces per layer; CP:
K/V every layer) get neighbouring ranks, so they share a node (NVLink); DP x CP
reduces gradients once per step; PP sends one activation per micro-batch to the
next stage, the least traffic of all, so its neighbours are a whole DP x CP x TP
block away (the next node(s)).  It is Megatron's default order (``tp-cp-ep-dp-pp``)
with CP inside DP.  PP outermost also makes the last rank a last-stage rank: the
one that prints the log line holds the loss.

Worked example, world 8 = DP 2 x CP 2 x TP 2::

    rank : 0 1 2 3 4 5 6 7
    tp   : 0 1 0 1 0 1 0 1     TP groups   {0,1} {2,3} {4,5} {6,7}
    cp   : 0 0 1 1 0 0 1 1     CP groups   {0,2} {1,3} {4,6} {5,7}
    dp   : 0 0 0 0 1 1 1 1     DP groups   {0,4} {1,5} {2,6} {3,7}

and world 8 = PP 2 x CP 2 x TP 2: ranks 0-3 are stage 0, ranks 4-7 stage 1, the PP
groups {0,4} {1,5} {2,6} {3,7}.  Every group but PP (and the embedding group) lies
inside one stage.  The *embedding group* of a PP line joins its first and last stage
(Megatron's name): tied input/output embeddings sum their gradients over it.

There is no global singleton: :func:`initialize_model_parallel` returns a
:class:`ParallelMesh` which is passed to whatever needs a group.  Every rank
creates every group in the same order, as ``torch.distributed.new_group``
requires.  Every group gets the timeout (``--distributed-timeout-minutes``; by
default the default group's), so a hung peer ends a wait in any of them, and a
``group_desc`` (``tp``, ``cp``, ``dp``, ``dp_cp``, ``tp_cp``, ``ulysses``, ``ring``)
by which error messages name it (collective_errors.py, NCCL's watchdog).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.distributed as dist


class LayoutError(ValueError):
    """An invalid parallel layout; the message names the flags and the numbers."""


@dataclass
class ParallelMesh:
    world_size: int
    rank: int
    tp_size: int
    cp_size: int
    dp_size: int
    ulysses_size: int
    ring_size: int
    pp_size: int = 1
    tp_group: Optional[dist.ProcessGroup] = None
    cp_group: Optional[dist.ProcessGroup] = None
    dp_group: Optional[dist.ProcessGroup] = None
    dp_cp_group: Optional[dist.ProcessGroup] = None
    tp_cp_group: Optional[dist.ProcessGroup] = None
    ulysses_group: Optional[dist.ProcessGroup] = None
    ring_group: Optional[dist.ProcessGroup] = None
    pp_group: Optional[dist.ProcessGroup] = None
    # first and last stage of this rank's PP line (None on middle stages and at PP 1)
    embedding_group: Optional[dist.ProcessGroup] = None
    # Every rank, on gloo: checkpoint planning and --async-save's background collectives,
    # kept off the groups the training step uses.
    checkpoint_group: Optional[dist.ProcessGroup] = None
    # Global ranks of this rank's groups, in group-rank order (P2P needs global ranks).
    tp_ranks: list = field(default_factory=list)
    cp_ranks: list = field(default_factory=list)
    dp_ranks: list = field(default_factory=list)
    ulysses_ranks: list = field(default_factory=list)
    ring_ranks: list = field(default_factory=list)
    pp_ranks: list = field(default_factory=list)

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def cp_rank(self) -> int:
        return (self.rank // self.tp_size) % self.cp_size

    @property
    def dp_rank(self) -> int:
        return (self.rank // (self.tp_size * self.cp_size)) % self.dp_size

    @property
    def pp_rank(self) -> int:
        return self.rank // (self.tp_size * self.cp_size * self.dp_size)

    @property
    def ulysses_rank(self) -> int:
        return self.cp_rank % self.ulysses_size

    @property
    def ring_rank(self) -> int:
        return self.cp_rank // self.ulysses_size

    def describe(self) -> str:
        pp = f"PP {self.pp_size} x " if self.pp_size > 1 else ""
        return (f"world {self.world_size} = {pp}DP {self.dp_size} x CP {self.cp_size} "
                f"(Ulysses {self.ulysses_size} x ring {self.ring_size}) x TP {self.tp_size}")


def rank_of(tp: int, cp: int, dp: int, tp_size: int, cp_size: int, pp: int = 0, dp_size: int = 1) -> int:
    return tp + tp_size * (cp + cp_size * (dp + dp_size * pp))


def check_layout(world_size: int, tp_size: int, cp_size: int,
                 hierarchical_cp_sizes: Optional[Sequence[int]] = None, pp_size: int = 1) -> tuple:
    """Validate sizes; return ``(dp_size, ulysses_size, ring_size)``."""
    if tp_size < 1 or cp_size < 1 or pp_size < 1:
        raise LayoutError(f"--tensor-model-parallel-size ({tp_size}), --context-parallel-size ({cp_size}) and "
                          f"--pipeline-model-parallel-size ({pp_size}) must be >= 1")
    if world_size % (tp_size * cp_size * pp_size) != 0:
        raise LayoutError(
            f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp_size} x "
            f"--context-parallel-size {cp_size} x --pipeline-model-parallel-size {pp_size} = "
            f"{tp_size * cp_size * pp_size}; choose sizes whose product divides the number of ranks")
    if hierarchical_cp_sizes:
        if len(hierarchical_cp_sizes) != 2:
            raise LayoutError(f"--hierarchical-context-parallel-sizes takes two numbers U R "
                              f"(Ulysses x ring), got {list(hierarchical_cp_sizes)}")
        u, r = (int(x) for x in hierarchical_cp_sizes)
        if u * r != cp_size:
            raise LayoutError(f"--hierarchical-context-parallel-sizes {u} {r}: U x R = {u * r} must "
                              f"equal --context-parallel-size {cp_size}")
    else:
        u, r = 1, cp_size
    return world_size // (tp_size * cp_size * pp_size), u, r


def _groups(world: int, tp: int, cp: int, dp: int, u: int, r: int, pp: int = 1) -> dict:
    """All rank lists of every group kind, in a fixed order (every group but PP and the
    embedding group lies inside one pipeline stage)."""
    kinds = {k: [] for k in ("tp", "cp", "dp", "dp_cp", "tp_cp", "ulysses", "ring", "pp", "embedding")}
    for s in range(pp):
        def at(t, c, d):
            return rank_of(t, c, d, tp, cp, s, dp)
        for d in range(dp):
            for c in range(cp):
                kinds["tp"].append([at(t, c, d) for t in range(tp)])
            for t in range(tp):
                kinds["cp"].append([at(t, c, d) for c in range(cp)])
                for ri in range(r):
                    kinds["ulysses"].append([at(t, ui + u * ri, d) for ui in range(u)])
                for ui in range(u):
                    kinds["ring"].append([at(t, ui + u * ri, d) for ri in range(r)])
            kinds["tp_cp"].append([at(t, c, d) for c in range(cp) for t in range(tp)])
        for c in range(cp):
            for t in range(tp):
                kinds["dp"].append([at(t, c, d) for d in range(dp)])
        for t in range(tp):
            kinds["dp_cp"].append([at(t, c, d) for d in range(dp) for c in range(cp)])
    if pp > 1:
        for first in range(world // pp):  # the ranks of stage 0, one PP line each
            line = [first + s * (world // pp) for s in range(pp)]
            kinds["pp"].append(line)
            if pp > 2:  # at PP 2 the PP group is the embedding group
                kinds["embedding"].append([line[0], line[-1]])
    return kinds


def _default_group_timeout() -> Optional[datetime.timedelta]:
    """The default group's timeout (a private torch attribute; None if it moves)."""
    from .collective_errors import group_timeout_s
    seconds = group_timeout_s(None)
    return datetime.timedelta(seconds=seconds) if seconds else None


def initialize_model_parallel(tensor_model_parallel_size: int = 1,
                              context_parallel_size: int = 1,
                              hierarchical_context_parallel_sizes: Optional[Sequence[int]] = None,
                              pipeline_model_parallel_size: int = 1,
                              timeout_s: Optional[float] = None,
                              ) -> ParallelMesh:
    """Build the mesh on an initialised default process group (or world 1 without one).

    ``timeout_s`` (``--distributed-timeout-minutes`` x 60) applies to every group created;
    None gives them the default group's timeout.
    """
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        world, rank = 1, 0
    dp, u, r = check_layout(world, tensor_model_parallel_size, context_parallel_size,
                            hierarchical_context_parallel_sizes, pipeline_model_parallel_size)
    mesh = ParallelMesh(world, rank, tensor_model_parallel_size, context_parallel_size, dp, u, r,
                        pipeline_model_parallel_size)
    if not dist.is_initialized():
        for kind in ("tp", "cp", "dp", "ulysses", "ring", "pp"):
            setattr(mesh, f"{kind}_ranks", [0])
        return mesh
    timeout = datetime.timedelta(seconds=timeout_s) if timeout_s is not None else _default_group_timeout()
    if mesh.pp_size == 1:
        mesh.pp_ranks = [rank]
    for kind, rank_lists in _groups(world, mesh.tp_size, mesh.cp_size, dp, u, r, mesh.pp_size).items():
        for ranks in rank_lists:
            # collective: every rank creates every group
            group = dist.new_group(ranks, timeout=timeout, group_desc=kind)
            if rank in ranks:
                setattr(mesh, f"{kind}_group", group)
                if hasattr(mesh, f"{kind}_ranks"):
                    setattr(mesh, f"{kind}_ranks", list(ranks))
    if mesh.pp_size == 2:
        mesh.embedding_group = mesh.pp_group
    mesh.checkpoint_group = dist.new_group(list(range(world)), backend="gloo", timeout=timeout,
                                           group_desc="checkpoint")
    return mesh


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(backend: Optional[str] = None, timeout_s: float = 600.0) -> None:
    """Initialise the default group from torchrun's environment (no-op without it); a NCCL request
    without GPUs is refused in one line either way."""
    if backend == "nccl" and not torch.cuda.is_available():
        raise LayoutError("--distributed-backend nccl needs CUDA GPUs and this process sees none; use "
                          "--distributed-backend gloo (the default without GPUs)")
    if dist.is_initialized() or "WORLD_SIZE" not in os.environ:
        return
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def group_size(group) -> int:
    """Size of ``group``; ``None`` means no group (size 1), never the default group."""
    return dist.get_world_size(group) if group is not None and dist.is_initialized() else 1


def group_rank(group) -> int:
    return dist.get_rank(group) if group is not None and dist.is_initialized() else 0


def single_rank_mesh() -> ParallelMesh:
    """A world-of-one mesh with no groups (the single-process reference, generation)."""
    return ParallelMesh(1, 0, 1, 1, 1, 1, 1, tp_ranks=[0], cp_ranks=[0], dp_ranks=[0],
                        ulysses_ranks=[0], ring_ranks=[0], pp_ranks=[0])
