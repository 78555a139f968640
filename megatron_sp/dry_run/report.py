"""The dry run's report: live bytes at each memory's peak by category, beside the memory model.

Accelerator and host are reported separately.  On CPU the two are one memory, so the count
keeps them apart by who made each storage (``live.Placement``): what a GPU run puts in host
memory (activation offload's copies, the state and step of ``--optimizer-cpu-offload``) is
``cpu``, every other storage is the accelerator's, keyed ``cuda`` and rounded to CUDA's 512-byte
blocks; the model's figures beside them are its device peak and its host bytes.  Every figure
on the left is counted from the tensors the step made; only the column headed "model" comes
from ``megatron_sp.memory``.
"""
from __future__ import annotations

import torch

MiB = 2 ** 20
# MemTracker's categories, in the words of the report
CATEGORIES = (("Parameter", "parameters"), ("Buffer", "buffers"), ("Gradient", "gradients"),
              ("Optstate", "optimizer state"), ("Activation", "activations (forward)"),
              ("Temp", "temporaries (backward)"), ("Other", "other"))


def model_estimate(args, mesh, device_type: str):
    """The memory model's estimate for this parsed command and this rank's pipeline stage."""
    from .. import memory as mm
    from ..arguments.parallel import ParallelConfig
    spec = mm.ModelSpec.from_args(args, device=device_type)
    lay = ParallelConfig.from_args(args, mesh.world_size)
    if lay.pp > 1:
        return mm.stage_estimates(spec, lay, args.seq_length, args.micro_batch_size)[mesh.pp_rank]
    return mm.estimate(spec, lay, args.seq_length, args.micro_batch_size)


def split(measurement) -> tuple:
    """``(accelerator, host)``: each a dict of category -> bytes at that memory's peak (with
    'Total'), or None; the CPU is the accelerator when no other device took part."""
    by_type = {}
    for dev, snap in measurement.peaks.items():
        kind = torch.device(dev).type
        if kind != "meta" and snap.get("Total", 0) >= by_type.get(kind, {}).get("Total", -1):
            by_type[kind] = snap
    accel = next((k for k in by_type if k != "cpu"), None)
    if accel is None:
        return ("cpu", by_type.get("cpu")), ("cpu", None)
    return (accel, by_type[accel]), ("cpu", by_type.get("cpu"))


def model_figures(est, accelerator_type: str) -> tuple:
    """``(accelerator bytes, host bytes)`` by the model (module doc: one memory on CPU)."""
    if accelerator_type == "cpu":
        return est.device_peak + est.host_total, 0.0
    return est.device_peak, est.host_total


def _where(measurement, kind):
    return next((w for d, w in measurement.peak_where.items() if torch.device(d).type == kind), "-")


def _diff(measured, modelled) -> str:
    if not measured:
        return "-"
    return f"{(modelled - measured) / MiB:+,.1f} MiB ({modelled / measured - 1:+.1%})"


def _names(args, host: bool) -> dict:
    """Category names that say more for this command: sharded weights' shards and gathered copies,
    offloaded activations."""
    offload = getattr(args, "optimizer_cpu_offload", False)
    if host:
        return {"Parameter": "parameters (shards)", "Activation": "activations (offloaded)",
                "Gradient": "gradients (shards)"}
    if getattr(args, "use_torch_fsdp2", False):
        return {"Parameter": "parameters (gathered)" if offload else "parameters (shards + gathered)"}
    return {}


def lines(measurement, est, world: int, rank: int) -> list:
    """The printed report (module doc)."""
    a, m = measurement.args, measurement.mesh
    (accel, acc_snap), (_, host_snap) = split(measurement)
    model_acc, model_host = model_figures(est, accel) if est is not None else (None, None)
    out = [f"dry run: rank {rank} of a world of {world} ({m.describe()}), {a.seq_length:,} tokens x micro-batch "
           f"{a.micro_batch_size} x {a.num_micro_batches} micro-batches, "
           f"{'bf16' if a.bf16 else 'fp16' if a.fp16 else 'fp32'}, {len(measurement.after_step)} steps, "
           f"{measurement.seconds:.1f} s",
           f"attention kernel: {measurement.kernel}"]
    for title, kind, snap, modelled in ((f"accelerator ({accel})", accel, acc_snap, model_acc),
                                        ("host (cpu)", "cpu", host_snap, model_host)):
        if snap is None:
            if accel != "cpu":
                out.append(f"{title}: nothing allocated")
            continue
        out.append(f"{title}: peak {snap['Total'] / MiB:,.1f} MiB at {_where(measurement, kind)}")
        names = _names(a, host=kind == "cpu" and accel != "cpu")
        for key, name in CATEGORIES:
            if snap.get(key):
                out.append(f"  {names.get(key, name):<26} {snap[key] / MiB:>12,.1f} MiB")
        if modelled is not None:
            out.append(f"  {'memory model':<26} {modelled / MiB:>12,.1f} MiB   model - dry run: "
                       f"{_diff(snap['Total'], modelled)}")
    for i, (tracked, direct) in enumerate(zip(measurement.after_step, measurement.direct_after_step), 1):
        cells = ", ".join(f"{torch.device(d).type} {v / MiB:,.1f} MiB" for d, v in tracked.items()
                          if torch.device(d).type != "meta")
        check = ", ".join(f"{torch.device(d).type} {v / MiB:,.1f} MiB" for d, v in direct.items()
                          if torch.device(d).type != "meta")
        out.append(f"live after step {i}: {cells} (direct count of live storages: {check or 'off'})")
    if measurement.stubs:
        out.append("stubbed (a dry run has no values):")
        out.extend(f"  - {s}" for s in measurement.stubs)
    return out
