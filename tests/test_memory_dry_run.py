"""The memory model against the dry run where the model's terms were missing (CPU, bf16 under FSDP2).

Under FSDP2's bf16 mixed precision the residual stream is 2-byte, and on CPU torch's RMSNorm runs
as its fp32 composite: each norm keeps an fp32 upcast of its input and its backward makes five
fp32 ``[tok, h]`` temporaries, more than a tiled MLP's backward (memory/norms.py
``norm_backward``).  The gradient shards do not persist: ``train_step`` starts with
``zero_grad`` (memory/estimate.py ``grad_shards``).  A toy model with a long sequence makes
the per-token terms dominate (the first two cases), a larger vocabulary the gradients and the
loss's backward (the last two).  The model before these terms: 0.70, 0.91, 1.08 and 1.07 of
the dry run's peak.
"""
import pytest
import torch

from megatron_sp.dry_run import dry_run
from megatron_sp.memory.norms import COMPOSITE_NORM_BACKWARD

BASE = ("--mock-data --tokenizer-type NullTokenizer --num-layers 2 --hidden-size 64 --ffn-hidden-size 224 "
        "--num-attention-heads 4 --group-query-attention --num-query-groups 2 --swiglu --normalization RMSNorm "
        "--position-embedding-type rope --disable-bias-linear --untie-embeddings-and-output-weights "
        "--micro-batch-size 1 --global-batch-size 1 --lr 1e-3 --bf16 --use-torch-fsdp2 --optimizer-cpu-offload "
        "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1 "
        "--hidden-dropout 0 --attention-dropout 0 --train-iters 2 --eval-iters 0 --cross-entropy-chunk-size 512 ")
CASES = {  # name: (vocabulary, tokens, MLP tile); where the dry run's peak is
    "tiled MLP": (256, 8192, 512),  # the last layer's pre-MLP norm's backward
    "untiled MLP": (256, 8192, 0),  # the last layer's MLP backward
    "large vocabulary": (16384, 8192, 512),  # the loss's backward: the output weight's bf16 gradient
    "large vocabulary, longer": (16384, 16384, 512),
}


@pytest.mark.parametrize("name", list(CASES))
def test_model_equals_the_dry_run_under_fsdp2_bf16(name):
    vocab, tokens, tile = CASES[name]
    argv = (BASE + f"--vocab-size {vocab} --seq-length {tokens} --max-position-embeddings {tokens} "
            f"--tiled-mlp-chunk-size {tile}").split()
    m, est, text = dry_run(argv, 1, 0, direct=False, split_host=False)  # a CPU run: one memory, CPU kernels
    peak = m.peak("cpu")
    assert "step 2, backward" in "\n".join(text), text
    model = est.device_peak + est.host_total  # CPU: one memory (dry_run/report.py)
    assert abs(model - peak) <= 0.03 * peak, (name, model, peak, text)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_composite_rmsnorm_keeps_and_makes_what_the_model_counts(dtype):
    """One RMSNorm on CPU: kept until backward, its fp32 upcast (bf16 input; the input itself in
    fp32), x * rsqrt and rsqrt; at its backward's peak, the upcast and 5 fp32 temporaries."""
    from torch.distributed._tools.mem_tracker import MemTracker
    n, h = 512, 128
    x0 = torch.randn(n, h, dtype=dtype, requires_grad=True)
    norm = torch.nn.RMSNorm(h, dtype=dtype)
    grad = torch.randn(n, h, dtype=dtype)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = norm(x0 * 1)
    fp32 = n * h * 4
    kept = {s.untyped_storage().data_ptr(): s.untyped_storage().nbytes() for s in saved if s.numel() == n * h}
    assert sum(kept.values()) == 2 * fp32, kept  # the fp32 input (upcast) and x * rsqrt
    del saved, kept, y
    tracker = MemTracker()  # forward and backward: the temporaries are those backward makes
    with tracker:
        norm(x0 * 1).backward(grad)
    snapshot = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    peak = {str(getattr(k, "value", k)): v for k, v in snapshot.items()}
    assert abs(peak["Temp"] - COMPOSITE_NORM_BACKWARD * fp32) <= 0.01 * fp32, (peak["Temp"] / fp32, peak)
