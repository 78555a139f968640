"""Pipeline parallelism on ``torch.distributed.pipelining`` (docs/ARCHITECTURE.md, "pipeline_parallel").

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
           "check_schedule", "in_flight_chunks", "placement", "schedule_name",
           "Pipeline", "StageModule", "stage_modules"]


def __getattr__(name):  # the torch parts, on first use
    if name == "Pipeline":
        from .schedule import Pipeline
        return Pipeline
    if name in ("StageModule", "stage_modules"):
        from . import stage
        return getattr(stage, name)
    raise AttributeError(name)
