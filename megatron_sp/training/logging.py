"""Megatron's iteration log line, throughput (tokens/s, TFLOP/s per device, MFU) and memory."""
from __future__ import annotations

import resource
import sys

import torch

# Dense bf16/fp16 tensor-core peak per device, TFLOP/s (datasheet, no sparsity), used for MFU.
_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(device: torch.device, override: float | None = None) -> tuple[float | None, str]:
    if override:
        return override, f"--peak-tflops {override}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in _PEAK_TFLOPS.items():
            if key in name:
                return value, f"{name} dense bf16 datasheet"
    return None, "unknown (pass --peak-tflops for MFU)"


def flops_per_iteration(args, vocab_size: int) -> float:
    """Model FLOPs of one training iteration (forward + backward = 3 x forward), whole global batch.

    Per token and layer, forward: QKV and output projections ``2 h (nq + 2 ng) d + 2 nq d h``,
    attention scores and weighted sum ``4 s nq d`` (full, non-causal count, as Megatron),
    MLP ``2 h f (3 if SwiGLU else 2)``; plus the output layer ``2 h V``.
    """
    h, s, L = args.hidden_size, args.seq_length, args.num_layers
    nq, ng = args.num_attention_heads, args.num_query_groups
    d = args.kv_channels or h // nq
    f = args.ffn_hidden_size or 4 * h
    per_layer = 2 * h * (nq + 2 * ng) * d + 2 * nq * d * h + 4 * s * nq * d + 2 * h * f * (3 if args.swiglu else 2)
    per_token = L * per_layer + 2 * h * vocab_size
    return 3.0 * per_token * s * args.global_batch_size


def memory_mb(device: torch.device) -> str:
    if device.type == "cuda":
        return (f"mem allocated (MB): {torch.cuda.memory_allocated(device) / 2**20:.1f} | "
                f"max allocated (MB): {torch.cuda.max_memory_allocated(device) / 2**20:.1f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return f"max rss (MB): {rss:.1f}"


def memory_bytes(device: torch.device) -> dict:
    """Memory scalars of ``--log-memory-to-tensorboard``."""
    if device.type == "cuda":
        return {"mem-allocated-bytes": torch.cuda.memory_allocated(device),
                "mem-max-allocated-bytes": torch.cuda.max_memory_allocated(device),
                "mem-reserved-bytes": torch.cuda.memory_reserved(device)}
    return {"mem-max-rss-bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def log_line(*, iteration, train_iters, consumed, elapsed_ms, lr, global_batch, loss, loss_scale, grad_norm,
             skipped, nans, tokens_per_s, tflops, mfu, memory, num_zeros=None, params_norm=None) -> str:
    parts = [
        f" iteration {iteration:8d}/{train_iters:8d}",
        f"consumed samples: {consumed:12d}",
        f"elapsed time per iteration (ms): {elapsed_ms:.1f}",
        f"learning rate: {lr:.6E}",
        f"global batch size: {global_batch:5d}",
    ]
    if loss is not None:  # the mean over the interval's advanced iterations; none when all were skipped
        parts.append(f"lm loss: {loss:.6E}")
    parts.append(f"loss scale: {loss_scale:.1f}")
    if grad_norm is not None:
        parts.append(f"grad norm: {grad_norm:.3f}")
    if num_zeros is not None:  # --log-num-zeros-in-grad
        parts.append(f"num zeros: {num_zeros}")
    if params_norm is not None:  # --log-params-norm
        parts.append(f"params norm: {params_norm:.3f}")
    parts += [f"number of skipped iterations: {skipped:3d}", f"number of nan iterations: {nans:3d}",
              f"throughput (tokens/s): {tokens_per_s:.1f}", f"TFLOP/s per device: {tflops:.3f}"]
    if mfu is not None:
        parts.append(f"MFU: {100 * mfu:.1f}%")
    parts.append(memory)
    return " | ".join(parts) + " |"


def print_rank_last(msg: str, is_last: bool) -> None:
    if is_last:
        print(msg, flush=True)
        sys.stdout.flush()


def eval_line(iteration: int, loss: float, where: str | None = None, name: str = "validation") -> str:
    """Megatron's validation line, e.g. ``validation loss at iteration 10 | lm loss value: ... | lm loss PPL: ... |``
    (``validation-0 loss at ...`` for the first of --multiple-validation-sets)."""
    import math
    ppl = math.exp(min(20.0, loss))
    head = f"{name} loss at {where or f'iteration {iteration}'}"
    text = f" {head} | lm loss value: {loss:.6E} | lm loss PPL: {ppl:.6E} | "
    bar = "-" * len(text)
    return f"{bar}\n{text}\n{bar}"


class MetricsWriter:
    """Optional sinks beside the log line: TensorBoard (``--tensorboard-dir``) and Weights & Biases
    (``--wandb-project``; offline unless ``WANDB_MODE``/``wandb login`` says otherwise).

    Only the writing rank (the last, which also prints the log line) opens them.  A sink asked
    for but not installed is an error naming the flag and the package, raised on every rank
    before training starts.
    """

    # Megatron's TensorBoard switches: scalar names each one turns off when it is off (or not given)
    SWITCHES = {"log_learning_rate_to_tensorboard": ("learning-rate",),
                "log_loss_scale_to_tensorboard": ("loss-scale",),
                "log_validation_ppl_to_tensorboard": ("validation lm loss PPL", "test lm loss PPL")}

    def __init__(self, args, is_writer: bool):
        self.tb = self.wandb = None
        self.off = {name for flag, names in self.SWITCHES.items() if not getattr(args, flag, True) for name in names}
        if args.tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError(f"--tensorboard-dir {args.tensorboard_dir} needs the tensorboard package: "
                                 "pip install tensorboard (or drop the flag)") from None
            if is_writer:
                self.tb = SummaryWriter(log_dir=args.tensorboard_dir,
                                        max_queue=getattr(args, "tensorboard_queue_size", 1000))
        if args.wandb_project:
            try:
                import wandb
            except ImportError:
                raise ValueError(f"--wandb-project {args.wandb_project} needs the wandb package: pip install wandb "
                                 "(or drop the flag)") from None
            if is_writer:
                import os
                os.environ.setdefault("WANDB_MODE", "offline")
                save_dir = args.wandb_save_dir or (os.path.join(args.save, "wandb") if args.save else None)
                if save_dir:
                    os.makedirs(save_dir, exist_ok=True)
                self.wandb = wandb.init(project=args.wandb_project, name=args.wandb_exp_name, dir=save_dir,
                                        entity=getattr(args, "wandb_entity", None),
                                        config={k: v for k, v in vars(args).items()
                                                if isinstance(v, (int, float, str, bool, list, type(None)))})

    def scalars(self, iteration: int, values: dict) -> None:
        """Write ``values`` (None values and the ones Megatron's switches turn off are left out)."""
        values = {k: v for k, v in values.items() if v is not None and k not in self.off}
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, iteration)
        if self.wandb is not None:
            self.wandb.log(values, step=iteration)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
