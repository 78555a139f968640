"""One GPU, whole runs: a bf16 Llama-shaped training smoke (RoPE, SwiGLU, GQA, RMSNorm) whose first
loss is the CPU run's within bf16 tolerance; activation offload (--cpu-offloading) lowering
torch.cuda.memory_allocated by the bytes it moved, with the same gradients; FSDP2 with
--optimizer-cpu-offload training the same first loss.  Skipped without CUDA (``make gpu-check``)."""
import pytest
import torch

from megatron_sp.training.loop import pretrain

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")]

LLAMA = ("--num-layers 2 --hidden-size 128 --num-attention-heads 8 --group-query-attention --num-query-groups 2 "
         "--swiglu --normalization RMSNorm --position-embedding-type rope --disable-bias-linear "
         "--untie-embeddings-and-output-weights --ffn-hidden-size 352 --vocab-size 1000 --seq-length 256 "
         "--max-position-embeddings 256 --micro-batch-size 2 --global-batch-size 2 --train-iters 2 --lr 1e-3 "
         "--hidden-dropout 0 --attention-dropout 0 --mock-data --tokenizer-type NullTokenizer --bf16 "
         "--log-interval 1 --eval-interval 0 --seed 1234").split()
BF16_RTOL = 1e-2


def test_bf16_llama_smoke_first_loss_is_the_cpu_runs():
    cpu = pretrain(LLAMA + ["--distributed-backend", "gloo"])  # gloo: the CPU device
    gpu, ctx = pretrain(LLAMA, return_context=True)
    assert ctx.device.type == "cuda" and next(ctx.model.parameters()).is_cuda
    assert all(x == x for x in gpu), gpu
    assert gpu[0] == pytest.approx(cpu[0], rel=BF16_RTOL), (gpu, cpu)
    assert gpu[1] < gpu[0] + 0.5  # a step of training, not a divergence


def test_fsdp2_with_optimizer_offload_trains_the_same_first_loss():
    plain = pretrain(LLAMA)
    offloaded, ctx = pretrain(LLAMA + ["--use-torch-fsdp2", "--optimizer-cpu-offload"], return_context=True)
    assert offloaded[0] == pytest.approx(plain[0], rel=BF16_RTOL), (offloaded, plain)
    assert all(x == x for x in offloaded)
    # the fp32 shards and the Adam state live on the host
    from megatron_sp.distributed import local
    p = next(ctx.model.parameters())
    assert local(p).device.type == "cpu"
    assert all(t.device.type == "cpu" for s in ctx.optimizer.optimizer.state.values() for t in s.values()
               if torch.is_tensor(t) and t.dim() > 0)


def _model(offload_layers: int):
    from megatron_sp.arguments.preflight import parse_model_flags, model_of
    from megatron_sp.model import GPTModel
    from megatron_sp.parallel_state import single_rank_mesh
    from megatron_sp.tensor_parallel import RNGTracker
    flags = ("--num-layers 4 --hidden-size 256 --num-attention-heads 8 --swiglu --normalization RMSNorm "
             "--position-embedding-type rope --disable-bias-linear --vocab-size 1000 --hidden-dropout 0 "
             "--attention-dropout 0 --seq-length 2048").split()
    if offload_layers:
        flags += ["--cpu-offloading", "--cpu-offloading-num-layers", str(offload_layers)]
    cfg = model_of(parse_model_flags(flags))
    model = GPTModel(cfg, single_rank_mesh(), RNGTracker(0, 0, 0))
    model.init_weights(0)
    return model.cuda()


def _forward_backward(model):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 1000, (2, 2049), generator=g).cuda()
    inp, lab = tokens[:, :-1], tokens[:, 1:]
    pos = torch.arange(2048, device="cuda").expand(2, -1)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(inp, pos, lab).float().mean()
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - before
    loss.backward()
    return kept, loss.item(), [p.grad.float().clone() for p in model.parameters()]


def test_activation_offload_frees_device_memory_with_the_same_gradients():
    plain_kept, plain_loss, plain_grads = _forward_backward(_model(0))
    model = _model(3)
    kept, loss, grads = _forward_backward(model)
    moved = model.decoder.offloader.packed_bytes
    assert moved > 0.3 * plain_kept, (moved, plain_kept)
    # what was moved is no longer allocated on the device (within 5% of the moved bytes)
    assert plain_kept - kept == pytest.approx(moved, rel=0.05), (plain_kept, kept, moved)
    assert loss == plain_loss
    for a, b in zip(grads, plain_grads):
        assert torch.equal(a, b)


def _saved_bytes(fn):
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_dry_runs_rms_norm_stand_in_saves_what_cudas_kernel_saves(dtype):
    """The dry run replaces the CPU composite RMSNorm by a stand-in that allocates as CUDA's
    fused kernel under autocast (megatron_sp/dry_run/cuda_kernels.py): same saved bytes, same
    output dtype, same gradient dtypes as the real kernel."""
    import torch.nn.functional as F

    from megatron_sp.dry_run.cuda_kernels import cuda_rms_norm
    x = torch.randn(4096, 1, 1024, device="cuda", dtype=dtype, requires_grad=True)
    w = torch.ones(1024, device="cuda", dtype=dtype, requires_grad=True)

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return F.rms_norm(x, (1024,), w + 1, 1e-5)

    real, real_saved = _saved_bytes(run)
    with cuda_rms_norm():
        stand_in, stand_in_saved = _saved_bytes(run)
    assert stand_in_saved == real_saved and stand_in.dtype == real.dtype and stand_in.shape == real.shape
    torch.autograd.grad(stand_in.sum(), (x, w))  # the stand-in's backward runs on CUDA too
