"""The dry run (megatron_sp/dry_run/) against real runs of the same commands on CPU.

Each configuration runs twice: for real (gloo ranks, real tensors) under torch's MemTracker,
and as a dry run of rank 0 (fake tensors, fake process group).  The dry run's peak must equal
the real one within 1%, its live bytes after each step must equal a direct count of the live
storages, and must not grow from step to step.  The memory model's figure is printed beside
them (tools/dry_run.py); at these toy sizes its fixed overheads dominate, so it is held to
the dry run only loosely here (BENCHMARKS.md has the comparison at scale).
"""
import pytest

from megatron_sp.dry_run import dry_run, measure
from megatron_sp.launch import run_distributed

BASE = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 256 --num-layers 2 --hidden-size 64 "
        "--num-attention-heads 4 --group-query-attention --num-query-groups 2 --swiglu --normalization RMSNorm "
        "--position-embedding-type rope --disable-bias-linear --untie-embeddings-and-output-weights "
        "--seq-length 64 --max-position-embeddings 64 --micro-batch-size 2 --lr 1e-3 "
        "--hidden-dropout 0 --attention-dropout 0 --train-iters 2 --eval-iters 0 --cross-entropy-chunk-size 0 ")
CASES = {  # name: (world size, extra flags)
    "plain": (1, ""),
    "chunked loss": (1, "--cross-entropy-chunk-size 16"),
    "tiled MLP": (1, "--tiled-mlp-chunk-size 16"),
    "activation offload": (1, "--cpu-offloading --cpu-offloading-num-layers 1 --recompute-granularity full "
                              "--recompute-method uniform"),
    "TP+SP": (2, "--tensor-model-parallel-size 2 --sequence-parallel"),
    "CP p2p": (2, "--context-parallel-size 2 --cp-comm-type p2p"),
    "CP a2a": (2, "--context-parallel-size 2 --cp-comm-type a2a"),
    "FSDP2 + optimizer offload": (2, "--use-torch-fsdp2 --optimizer-cpu-offload"),
    "PP stage 0": (2, "--pipeline-model-parallel-size 2"),
}


def _argv(name):
    world, extra = CASES[name]
    data_parallel = world if "parallel-size" not in extra else 1
    micro_batches = 2 if "pipeline" in extra else 1  # 1F1B needs as many micro-batches as stages
    return (BASE + extra).split() + ["--global-batch-size", str(2 * data_parallel * micro_batches)]


def _real(rank, world, names):
    out = {}
    for name in names:
        m = measure(_argv(name))
        out[name] = {kind: (m.peak(kind), _memory(m.after_step[-1], kind)) for kind in ("cuda", "cpu")
                     if m.peak(kind) or kind == "cuda"}
    return out


def _memory(snapshot: dict, kind: str) -> int:
    return sum(v for d, v in snapshot.items() if d.type == kind)


@pytest.mark.parametrize("world", [1, 2])
def test_dry_run_peak_equals_the_real_runs(world):
    names = [n for n, (w, _) in CASES.items() if w == world]
    real = run_distributed(_real, world, names, timeout=600)[0]  # rank 0's (PP: the first stage's)
    for name in names:
        m, est, text = dry_run(_argv(name), world, 0, cuda_kernels=False)  # the real run's CPU kernels
        # each memory apart: the accelerator's ("cuda", on CPU the bytes a GPU would hold) and the host's
        for kind, (real_peak, real_after) in real[name].items():
            peak = m.peak(kind)
            assert abs(peak - real_peak) <= 0.01 * real_peak, (name, kind, peak, real_peak, text)
            # live bytes after each step: the tracker's equal the direct count's, and do not grow
            after = [_memory(s, kind) for s in m.after_step]
            direct = [_memory(s, kind) for s in m.direct_after_step]
            # (FSDP2: the tracker misses one 8-byte scalar the direct count sees)
            assert all(abs(a - b) <= max(512, 1e-3 * b) for a, b in zip(after, direct)), (name, kind, after, direct)
            assert after[-1] <= after[0], (name, kind, after)
            assert abs(after[-1] - real_after) <= max(512, 0.01 * real_after), (name, kind, after, real_after)
        assert 0.7 * m.peak("cuda") <= est.device_peak <= 1.4 * m.peak("cuda"), (name, est.device_peak, text)
        if "offload" in name:  # what a GPU run holds in host memory: the offloaded inputs or the model state
            assert m.peak("cpu") > 0 and 0.7 * m.peak("cpu") <= est.host_total <= 1.4 * m.peak("cpu"), (name, text)
        assert "attention kernel: " in "\n".join(text) and "cpu_flash" in m.kernel, (name, m.kernel)


def test_dry_run_lists_its_stubs_and_the_phase_of_the_peak():
    m, _, text = dry_run(_argv("plain"), 1, 0)
    report = "\n".join(text)
    assert "stubbed" in report and "found_inf" in report and "train_step" in report, report
    assert "at step 2," in report and "memory model" in report, report


def test_the_fake_mode_frees_a_storage_re_viewed_with_set_():
    """Activation offload re-views storages with ``set_``; the dry run's fake mode must let them
    die (a cached fake ``set_`` keeps its storage argument in the cache key, for ever)."""
    import gc
    import weakref

    import torch

    from megatron_sp.dry_run.live import fake_mode
    with fake_mode():
        t = torch.empty(1024)
        ref = weakref.ref(t.untyped_storage())
        view = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage())
        assert view.numel() == 4096
        del t, view
        gc.collect()
        assert ref() is None


OFFLOAD = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 4096 --num-layers 4 --hidden-size 64 "
           "--num-attention-heads 4 --group-query-attention --num-query-groups 2 --swiglu --normalization RMSNorm "
           "--position-embedding-type rope --disable-bias-linear --untie-embeddings-and-output-weights "
           "--seq-length 256 --max-position-embeddings 256 --micro-batch-size 2 --global-batch-size 2 --lr 1e-3 "
           "--hidden-dropout 0 --attention-dropout 0 --train-iters 3 --eval-iters 0 --cross-entropy-chunk-size 0 "
           "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1")


def test_activation_offload_moves_what_it_packs_to_the_host_and_brings_it_back():
    """Full recompute, 4 layers, the first 3 offloaded, 3 steps, on the dry run's split accounting
    (activation offload copies to a separate host storage, as on CUDA).  Each offloaded layer
    packs its input, [s, b, h] fp32 = ``I`` bytes (the first also RoPE's cos/sin, ``R``):

    * forward: the host gains ``I`` per offloaded layer; the accelerator holds ``I`` less per
      offloaded layer once nothing else refers to its input (a layer's caller holds its input
      until it returns, and the model's forward holds layer 0's, the embedding output, until the
      decoder returns): after layer ``i`` the accelerator is ``I * max(0, i - 1)`` below the
      same run without offload;
    * backward: each offloaded layer's backward brings its input back and the host lets it go;
    * after every step the host holds nothing and the accelerator what it held without offload,
      the same after each of the three steps; the tracker equals a direct count of live storages;
    * the accelerator's peak (the loss's backward, every checkpointed input alive) is lower by
      what the memory model says (``3 I``), and the host's is the model's ``3 I + R``."""
    s, b, h, d, offloaded = 256, 2, 64, 16, 3
    I, R = s * b * h * 4, 2 * s * b * d * 4
    plain, est_plain, _ = dry_run(OFFLOAD.split(), 1, 0, steps=3)
    off, est_off, text = dry_run((OFFLOAD + f" --cpu-offloading --cpu-offloading-num-layers {offloaded}").split(),
                                 1, 0, steps=3)

    def trace(m, phase, kind):
        return [_memory(live, kind) for step, ph, _, live in m.layer_trace if step == 2 and ph == phase]

    host_fw, host_bw = trace(off, "forward", "cpu"), trace(off, "backward", "cpu")
    assert host_fw == [R + I, R + 2 * I, R + 3 * I, R + 3 * I], (host_fw, text)
    assert host_bw == [R + 3 * I, R + 2 * I, R + I, 0], (host_bw, text)  # layers 3, 2, 1, 0
    dropped = [a - c for a, c in zip(trace(plain, "forward", "cuda"), trace(off, "forward", "cuda"))]
    assert dropped == [I * max(0, i - 1) for i in range(4)], dropped
    for m in (plain, off):
        for kind in ("cuda", "cpu"):
            assert [_memory(x, kind) for x in m.after_step] == [_memory(x, kind) for x in m.direct_after_step]
    assert [_memory(x, "cpu") for x in off.after_step] == [0, 0, 0], off.after_step
    assert [_memory(x, "cuda") for x in off.after_step] == [_memory(x, "cuda") for x in plain.after_step]
    assert len({_memory(x, "cuda") for x in off.after_step}) == 1, off.after_step
    saved = plain.peak("cuda") - off.peak("cuda")
    assert saved == offloaded * I == est_plain.device_peak - est_off.device_peak, (saved, text)
    assert off.peak("cpu") == offloaded * I + R == est_off.host_total, (off.peak("cpu"), est_off.host_total, text)


def test_the_rms_norm_stand_in_allocates_as_cudas_fused_kernel():
    """Under autocast bf16 a 2-byte input is cast to fp32 (rms_norm is on autocast's fp32 list),
    the kernel saves the fp32 input and an fp32 rstd per row and returns fp32; its backward gives
    the input (through the cast) and the weight their gradients in their own dtypes.  The CPU
    composite saves more and makes five fp32 [tok, h] temporaries in backward."""
    import torch
    import torch.nn.functional as F

    from megatron_sp.dry_run.cuda_kernels import cuda_rms_norm
    from megatron_sp.dry_run.live import fake_mode
    tok, h = 512, 64
    with fake_mode():
        x = torch.randn(tok, 1, h, dtype=torch.bfloat16, requires_grad=True)
        w = torch.ones(h, dtype=torch.bfloat16, requires_grad=True)
        saved = {}

        def pack(t):
            saved[id(t.untyped_storage())] = (t.untyped_storage(), t.dtype)
            return t

        with cuda_rms_norm(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = F.rms_norm(x, (h,), w, 1e-5)
        assert y.dtype == torch.float32 and y.shape == x.shape
        assert sorted(st.nbytes() for st, _ in saved.values()) == sorted([4 * h, 4 * tok, 4 * tok * h])
        y.sum().backward()
        assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    assert F.rms_norm.__name__ == "rms_norm"  # restored
    # the model's norms cast that fp32 output back to the input's dtype (model/transformer.py), so
    # what follows (the tiled MLP saves its input as given) keeps 2 bytes, as on CPU
    from megatron_sp.model.config import GPTConfig
    from megatron_sp.model.transformer import build_norm
    norm = build_norm(GPTConfig(num_layers=1, hidden_size=h, num_attention_heads=4, normalization="RMSNorm",
                                vocab_size=64, max_position_embeddings=tok))
    with fake_mode(), cuda_rms_norm(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randn(tok, 1, h, dtype=torch.bfloat16, requires_grad=True)
        y = norm(x)
        assert y.dtype == torch.bfloat16
        y.sum().backward()
        assert x.grad.dtype == torch.bfloat16
