"""A dry run of the real training step: rank ``r`` of a world of ``W``, with fake tensors.

Any ``pretrain_gpt.py`` command is built through ``training.loop.setup`` and runs its
training steps under ``FakeTensorMode`` in a fake process group: no value is computed and
no memory is taken, but every tensor the step makes has its real shape, dtype and device,
so the live bytes are the real run's.  Modules: ``world`` (the fake process group), ``live``
(torch's MemTracker with the phase of each peak, a direct count of live storages, the fake
mode's settings), ``stubs`` (values read back to Python), ``cuda_kernels`` (CUDA's allocations
where the CPU build's kernel differs: RMSNorm), ``run`` (one :func:`measure` for
real and dry runs), ``report`` (the printed comparison with the memory model).

    from megatron_sp.dry_run import dry_run
    measurement, estimate, text = dry_run(argv, world_size=8, rank=0)
"""
from __future__ import annotations

from .report import lines, model_estimate
from .run import Measurement, measure
from .world import fake_world


def dry_run(argv, world_size: int = 1, rank: int = 0, steps: int = 2, direct: bool = True,
            cuda_kernels: bool = True, split_host: bool = True):
    """``(Measurement, memory-model Estimate, report lines)`` of ``steps`` dry-run steps of ``argv``
    as a GPU run would allocate them; ``cuda_kernels=False`` keeps the CPU kernels (to compare with
    a real CPU run), ``split_host=False`` also counts one memory, as a CPU run has it."""
    with fake_world(world_size, rank):
        m = measure(argv, steps=steps, fake=True, direct=direct, cuda_kernels=cuda_kernels, split_host=split_host)
    accel = next((d.type for d in map(_device, m.peaks) if d.type not in ("cpu", "meta")), "cpu")
    est = model_estimate(m.args, m.mesh, accel)
    return m, est, lines(m, est, world_size, rank)


def _device(d):
    import torch
    return torch.device(d)


__all__ = ["Measurement", "dry_run", "fake_world", "measure"]
