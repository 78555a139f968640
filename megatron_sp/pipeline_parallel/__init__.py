"""Pipeline parallelism on ``torch.distributed.pipelining`` (DESIGN.md section 1, PP).

``layout``: which decoder layers each (virtual) stage holds; ``schedule_rules``: the library's
schedules, what each needs of the layout and what it costs (in-flight micro-batches, bubble);
``memory``: per-stage memory of a step; ``stage``: one stage of the GPT as a module the
library runs; ``schedule``: the stages and the library's schedule, one training or
evaluation step.  ``layout``, ``schedule_rules`` and ``memory`` import no torch (the memory
model and the scaling tool's parent process use them); the rest is imported on first use.
"""
from .layout import PipelineLayout, PipelineLayoutError, build_layout
from .schedule_rules import (SCHEDULES, bubble_fraction, check_schedule, in_flight_chunks, placement,
                             schedule_name)

__all__ = ["PipelineLayout", "PipelineLayoutError", "build_layout", "SCHEDULES", "bubble_fraction",
           "check_schedule", "in_flight_chunks", "placement", "schedule_name", "layout_from_args",
           "Pipeline", "StageModule", "stage_modules"]


def __getattr__(name):  # the torch parts, on first use
    if name == "Pipeline":
        from .schedule import Pipeline
        return Pipeline
    if name in ("StageModule", "stage_modules"):
        from . import stage
        return getattr(stage, name)
    raise AttributeError(name)


def layout_from_args(args) -> PipelineLayout:
    """The layer split the flags give, checked against the schedule and the micro-batch count
    (raises :class:`PipelineLayoutError`, one line, from the flags alone)."""
    pp = args.pipeline_model_parallel_size
    per_virtual = args.num_layers_per_virtual_pipeline_stage
    per_rank = args.num_virtual_stages_per_pipeline_rank
    name = schedule_name(args.pipeline_schedule, 1 if per_virtual is None and per_rank is None else 2)
    layout = build_layout(args.num_layers, pp, per_virtual, per_rank, args.decoder_first_pipeline_num_layers,
                          args.decoder_last_pipeline_num_layers, placement(name))
    if pp > 1:
        sharding = next((flag for flag, on in (("--use-torch-fsdp2", getattr(args, "use_torch_fsdp2", False)),
                                               ("--use-distributed-optimizer",
                                                getattr(args, "use_distributed_optimizer", False))) if on), None)
        check_schedule(name, pp, layout.virtual_size, args.num_micro_batches,
                       args.data_parallel_size * args.context_parallel_size, sharding)
    elif args.pipeline_schedule:
        raise PipelineLayoutError(f"--pipeline-schedule {args.pipeline_schedule} schedules pipeline stages: it needs "
                                  "--pipeline-model-parallel-size > 1")
    args.pipeline_schedule = name if pp > 1 else None
    return layout
