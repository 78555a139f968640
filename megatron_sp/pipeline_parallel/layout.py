"""Which decoder layers each pipeline stage holds (``--pipeline-model-parallel-size`` and friends).

The layers are cut into ``K x V`` *virtual stages* (``V`` = model chunks per rank, 1 without
interleaving), numbered in pipeline order; the embedding goes with virtual stage 0, the
final norm, output layer and loss with the last one.  Layer indices stay global.

* even split: every virtual stage holds ``L / (K V)`` consecutive layers;
* ``--decoder-first-pipeline-num-layers F`` / ``--decoder-last-pipeline-num-layers E``
  (Megatron's flags, V = 1): stage 0 holds F layers, stage K-1 holds E, the others share the
  rest evenly;
* placement: virtual stage ``s`` runs on PP rank ``s mod K`` ("loop", Megatron's interleaving),
  or for the V-shaped zero-bubble schedules rank ``r`` holds stages ``r`` and ``2K-1-r`` ("v").

Worked example, ``--num-layers 8 --pipeline-model-parallel-size 2
--num-layers-per-virtual-pipeline-stage 2``: V = 8 / 2 / 2 = 2 chunks per rank, four virtual
stages ``[0,1] [2,3] [4,5] [6,7]``; rank 0 holds stages 0 and 2 (layers 0, 1, 4, 5, and the
embedding), rank 1 stages 1 and 3 (layers 2, 3, 6, 7, and the output layer).

Every error names the flags and the numbers, and is raised from the flags alone (on every
rank, before any collective).
"""
from __future__ import annotations

from dataclasses import dataclass


class PipelineLayoutError(ValueError):
    """A layer split or schedule the flags cannot give; one line naming the flags."""


@dataclass(frozen=True)
class PipelineLayout:
    num_layers: int
    pp_size: int
    virtual_size: int
    stage_layers: tuple  # per virtual stage (pipeline order): the global layer indices it holds
    placement: str = "loop"  # "loop" | "v"

    @property
    def num_stages(self) -> int:
        return self.pp_size * self.virtual_size

    def stages_of(self, pp_rank: int) -> list:
        """Virtual stage indices PP rank ``pp_rank`` runs, in its chunk order."""
        k = self.pp_size
        if self.placement == "v":
            return [pp_rank, 2 * k - 1 - pp_rank]
        return [c * k + pp_rank for c in range(self.virtual_size)]

    def rank_of_stage(self, stage: int) -> int:
        """The PP rank that runs virtual stage ``stage``."""
        return next(r for r in range(self.pp_size) if stage in self.stages_of(r))

    def layers_of(self, pp_rank: int) -> list:
        return sorted(i for s in self.stages_of(pp_rank) for i in self.stage_layers[s])

    def describe(self) -> str:
        sizes = [len(x) for x in self.stage_layers]
        even = len(set(sizes)) == 1
        split = f"{sizes[0]} layers each" if even else "layers " + "/".join(map(str, sizes))
        chunks = f", {self.virtual_size} virtual stages per rank ({self.placement})" if self.virtual_size > 1 else ""
        return f"{self.num_stages} stages over PP {self.pp_size}{chunks}: {split}"


def _fail(msg: str):
    raise PipelineLayoutError(msg)


def _virtual_size(num_layers: int, pp: int, per_virtual, virtual_per_rank) -> int:
    if per_virtual is not None and virtual_per_rank is not None:
        _fail("--num-layers-per-virtual-pipeline-stage and --num-virtual-stages-per-pipeline-rank are two ways to "
              "say the same thing: give one")
    if per_virtual is None and virtual_per_rank is None:
        return 1
    if pp == 1:
        flag = ("--num-layers-per-virtual-pipeline-stage" if per_virtual is not None
                else "--num-virtual-stages-per-pipeline-rank")
        _fail(f"{flag} interleaves pipeline stages: it needs --pipeline-model-parallel-size > 1")
    if virtual_per_rank is not None:
        if virtual_per_rank < 1 or num_layers % (pp * virtual_per_rank):
            _fail(f"--num-layers {num_layers} is not divisible by --pipeline-model-parallel-size {pp} x "
                  f"--num-virtual-stages-per-pipeline-rank {virtual_per_rank}; choose sizes whose product divides it")
        return virtual_per_rank
    per_stage = num_layers // pp
    if per_virtual < 1 or num_layers % pp or per_stage % per_virtual:
        _fail(f"--num-layers-per-virtual-pipeline-stage {per_virtual} does not divide the {num_layers} / "
              f"{pp} = {num_layers / pp:g} layers of each pipeline stage (--num-layers {num_layers}, "
              f"--pipeline-model-parallel-size {pp}); choose a divisor of {per_stage}" if per_stage else
              f"--num-layers {num_layers} gives no layer to some of --pipeline-model-parallel-size {pp} stages")
    return per_stage // per_virtual


def _uneven_sizes(num_layers: int, pp: int, first, last) -> list:
    given = [x for x in (first, last) if x is not None]
    if any(x < 1 for x in given):
        _fail(f"--decoder-first-pipeline-num-layers / --decoder-last-pipeline-num-layers must be >= 1 "
              f"(got {given})")
    middle = pp - len(given)
    rest = num_layers - sum(given)
    if middle and rest < middle:
        named = " + ".join(f"--decoder-{w}-pipeline-num-layers {x}" for w, x in (("first", first), ("last", last))
                           if x is not None)
        total = f" = {sum(given)}" if len(given) == 2 else ""
        _fail(f"{named}{total} > --num-layers {num_layers}: more layers than the model has" if rest < 0 else
              f"{named} leaves {rest} of --num-layers {num_layers} for the other {middle} pipeline stage(s), "
              "which need at least one layer each; lower them or raise --num-layers")
    if middle == 0:
        if rest != 0:
            _fail(f"--decoder-first-pipeline-num-layers {first} + --decoder-last-pipeline-num-layers {last} must "
                  f"equal --num-layers {num_layers} at --pipeline-model-parallel-size {pp}")
        return [first, last]
    if rest < middle or rest % middle:
        _fail(f"--num-layers {num_layers} minus the first/last stage's layers ({rest}) cannot be split evenly over "
              f"the other {middle} pipeline stages (--pipeline-model-parallel-size {pp}); change "
              "--decoder-first-pipeline-num-layers / --decoder-last-pipeline-num-layers")
    sizes = [rest // middle] * pp
    if first is not None:
        sizes[0] = first
    if last is not None:
        sizes[-1] = last
    return sizes


def build_layout(num_layers: int, pp: int, num_layers_per_virtual_stage=None, virtual_stages_per_rank=None,
                 first_stage_layers=None, last_stage_layers=None, placement: str = "loop") -> PipelineLayout:
    """The split of ``num_layers`` over ``pp`` ranks (see the module doc); raises on a bad one."""
    if pp < 1:
        _fail(f"--pipeline-model-parallel-size {pp} must be >= 1")
    uneven = first_stage_layers is not None or last_stage_layers is not None
    if uneven and pp == 1:
        _fail("--decoder-first-pipeline-num-layers / --decoder-last-pipeline-num-layers split layers between "
              "pipeline stages: they need --pipeline-model-parallel-size > 1")
    v = _virtual_size(num_layers, pp, num_layers_per_virtual_stage, virtual_stages_per_rank)
    if uneven and v > 1:
        _fail("uneven pipeline stages (--decoder-first/last-pipeline-num-layers) with interleaving (virtual "
              "stages) are not supported here; use one or the other")
    if placement == "v" and v != 2:
        _fail(f"the V-shaped schedules hold exactly 2 virtual stages per rank; got {v} (set "
              "--num-virtual-stages-per-pipeline-rank 2)")
    if uneven:
        sizes = _uneven_sizes(num_layers, pp, first_stage_layers, last_stage_layers)
    else:
        if num_layers % (pp * v):
            _fail(f"--num-layers {num_layers} is not divisible by --pipeline-model-parallel-size {pp}"
                  + (f" x {v} virtual stages" if v > 1 else "")
                  + "; choose a size that divides it, or split unevenly with --decoder-first-pipeline-num-layers"
                  " / --decoder-last-pipeline-num-layers")
        sizes = [num_layers // (pp * v)] * (pp * v)
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    stages = tuple(tuple(range(bounds[i], bounds[i + 1])) for i in range(len(sizes)))
    return PipelineLayout(num_layers, pp, v, stages, placement)
