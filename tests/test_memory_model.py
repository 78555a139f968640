"""The memory and communication model: scaling properties, parameter count, and agreement with
the peak measured for a real training step (tools/scaling_experiment.py measures the same way)."""
import os
import sys

import pytest

from megatron_sp import memory as mm
from megatron_sp.memory import activations as am

TINY = ("--num-layers 4 --hidden-size 128 --num-attention-heads 8 --ffn-hidden-size 512 --vocab-size 1000 "
        "--position-embedding-type rope --attention-dropout 0").split()  # flash (dropout: the reference kernel)
MiB = 2 ** 20


@pytest.fixture(scope="module")
def spec():
    return mm.ModelSpec.from_flags(TINY)


def test_from_flags_pads_vocab_and_fills_defaults(spec):
    assert spec.vocab_size == 1024  # 1000 + EOD, padded to 128
    assert mm.ModelSpec.from_flags("--vocab-size 512 --num-layers 1 --hidden-size 16 --num-attention-heads 2".split()
                                   ).vocab_size == 512  # NullTokenizer: EOD is id 511
    assert mm.ModelSpec.from_flags("--vocab-size 512 --num-layers 1 --hidden-size 16 --num-attention-heads 2 "
                                   "--legacy-tokenizer".split()).vocab_size == 640  # 513 ids, padded to 128
    assert spec.num_query_groups == 8 and spec.kv_channels == 16 and spec.rope and spec.tied


def test_monotone_in_length_and_batch(spec):
    lay = mm.ParallelConfig()
    peaks = [mm.estimate(spec, lay, n, 1).step_peak for n in (512, 1024, 2048, 4096)]
    assert peaks == sorted(peaks) and len(set(peaks)) == 4
    assert mm.estimate(spec, lay, 1024, 2).step_peak > mm.estimate(spec, lay, 1024, 1).step_peak


def test_context_parallel_splits_activations(spec):
    one = mm.estimate(spec, mm.ParallelConfig(), 2048, 1)
    # Ulysses keeps one more tensor per layer: the attention output after the all-to-all back
    a2a_output = spec.num_layers * 2048 * spec.num_attention_heads * spec.kv_channels * 4
    for p in (2, 4, 8):
        for mode, u in (("p2p", 1), ("a2a", p), ("a2a+p2p", 2)):
            est = mm.estimate(spec, mm.ParallelConfig(cp=p, mode=mode, ulysses=u), 2048 * p, 1)
            extra = a2a_output if mode != "p2p" else 0
            assert est.activations == pytest.approx(one.activations + extra, rel=1e-9)
            assert est.params == one.params


def test_tensor_parallel_sequence_parallel_ordering(spec):
    base = mm.estimate(spec, mm.ParallelConfig(), 4096, 1).activations
    tp = mm.estimate(spec, mm.ParallelConfig(tp=4), 4096, 1).activations
    tpsp = mm.estimate(spec, mm.ParallelConfig(tp=4, sp=True), 4096, 1).activations
    cp = mm.estimate(spec, mm.ParallelConfig(cp=4), 4096, 1).activations
    assert cp < tpsp < tp < base  # TP alone leaves norms/linear inputs whole; SP splits norms only
    assert mm.local_parameters(spec, 4) < mm.local_parameters(spec, 1)


def test_rsa_scores_are_quadratic_and_max_length_grows_like_sqrt_p(spec):
    a = mm.estimate(spec, mm.ParallelConfig(cp=2, mode="rsa"), 4096, 1).activations
    b = mm.estimate(spec, mm.ParallelConfig(cp=2, mode="rsa"), 8192, 1).activations
    assert b / a > 3.0  # the N^2/P score rows dominate
    budget = 256 * MiB
    n2 = mm.max_seq_length(spec, mm.ParallelConfig(cp=2, mode="rsa"), 1, budget, 2)
    n8 = mm.max_seq_length(spec, mm.ParallelConfig(cp=8, mode="rsa"), 1, budget, 8)
    assert 1.6 < n8 / n2 < 2.4  # sqrt(8 / 2) = 2
    p8 = mm.max_seq_length(spec, mm.ParallelConfig(cp=8, mode="p2p"), 1, budget, 16)
    assert p8 > 3 * n8


def test_max_length_targets_in_the_model(spec):
    budget = 64 * MiB
    one = mm.max_seq_length(spec, mm.ParallelConfig(), 1, budget, 2)
    four = mm.max_seq_length(spec, mm.ParallelConfig(cp=4, mode="p2p"), 1, budget, 8)
    eight = mm.max_seq_length(spec, mm.ParallelConfig(cp=8, mode="a2a+p2p", ulysses=2), 1, budget, 16)
    assert four >= 3.6 * one and eight >= 7 * one
    assert mm.estimate(spec, mm.ParallelConfig(), one, 1).step_peak <= budget
    assert mm.estimate(spec, mm.ParallelConfig(), one + 2, 1).step_peak > budget
    assert mm.max_micro_batch(spec, mm.ParallelConfig(cp=4), 2048, budget) > \
        mm.max_micro_batch(spec, mm.ParallelConfig(tp=4), 2048, budget)


def test_communication_volume_by_mode(spec):
    n = 8192
    assert mm.estimate(spec, mm.ParallelConfig(), n, 1).comm_bytes == 0
    ring = mm.estimate(spec, mm.ParallelConfig(cp=4, mode="p2p"), n, 1).comm_detail
    a2a = mm.estimate(spec, mm.ParallelConfig(cp=4, mode="a2a", ulysses=4), n, 1).comm_detail
    # ring: per layer K and V of the local shard, (P-1) hops forward, (P-1) + P backward
    kv_block = n / 4 * 128 * 4
    assert ring["cp"] == pytest.approx(4 * kv_block * (2 * 3 + 2 * 3 + 2 * 4))
    # Ulysses: 4 all-to-alls of [s, h] forward and 4 backward, (U-1)/U of each leaves the rank
    assert a2a["cp"] == pytest.approx(4 * 8 * kv_block * 3 / 4)
    assert ring["grads"] == pytest.approx(2 * 3 / 4 * mm.local_parameters(spec, 1) * 4)
    tp = mm.estimate(spec, mm.ParallelConfig(tp=4), n, 1).comm_detail
    assert tp["cp"] == 0 and tp["tp"] > 0 and tp["grads"] == 0


def test_parameter_count_matches_the_model():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from megatron_sp.arguments import build_parser
    from megatron_sp.arguments import padded_vocab_size
    from megatron_sp.arguments.model_config import gpt_config
    from megatron_sp.model import GPTModel
    from megatron_sp.parallel_state import single_rank_mesh
    from megatron_sp.tensor_parallel import RNGTracker
    for extra in ([], ["--swiglu", "--disable-bias-linear", "--untie-embeddings-and-output-weights"],
                  ["--group-query-attention", "--num-query-groups", "2"]):
        flags = TINY + extra
        args = build_parser().parse_args(flags + "--seq-length 64 --micro-batch-size 1 --lr 1e-4 --mock-data "
                                                 "--train-iters 1".split())
        if not args.group_query_attention:
            args.num_query_groups = args.num_attention_heads
        args.max_position_embeddings = 64
        cfg = gpt_config(args, padded_vocab_size(args.vocab_size, 128, 1))
        model = GPTModel(cfg, single_rank_mesh(), RNGTracker(1, 0, 0, 0, "cpu"))
        assert mm.local_parameters(mm.ModelSpec.from_flags(flags), 1) == sum(p.numel() for p in model.parameters())


def test_model_agrees_with_a_measured_step():
    """Measured peak of a real step (one fresh process) within 20% of the model, at W1 and CP2, with
    the model state sharded (FSDP2: the gathered weights and unsharded gradients of the step), and at
    PP 2 (the largest stage: memory/stages.py)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
    import scaling_experiment as se
    args = se.parse_args(["--memory-budget-gb", "1", "--device", "cpu"])
    spec = se.model_config(args)
    for name, world, seq in (("p2p", 1, 2048), ("p2p", 2, 4096), ("p2p+fsdp2", 2, 4096), ("pp", 2, 2048)):
        layout = se.make_layout(name, world)
        r = se.run_trial(se.build_argv(args, layout, seq, 1), world, 1 << 30, steps=2, timeout=120)
        assert r.status == "ok", r.error
        model = mm.estimate(spec, layout.parallel, seq, 1).step_peak
        assert abs(model / r.peak_bytes - 1) < 0.2, (name, world, model / MiB, r.peak_bytes / MiB)


# --- known allocations: what the model says a forward keeps is what autograd saves -------------
SMALL = "--num-layers 2 --hidden-size 32 --num-attention-heads 4 --ffn-hidden-size 48 --vocab-size 100 " \
        "--make-vocab-size-divisible-by 8 --hidden-dropout 0 --attention-dropout 0"
LLAMA = " --swiglu --normalization RMSNorm --position-embedding-type rope --group-query-attention " \
        "--num-query-groups 2 --disable-bias-linear --untie-embeddings-and-output-weights"
KEPT_CASES = ["", LLAMA, " --hidden-dropout 0.1 --cross-entropy-chunk-size 16 --tiled-mlp-chunk-size 8",
              LLAMA + " --tiled-mlp-chunk-size 5 --cross-entropy-loss-fusion",
              " --recompute-granularity full --recompute-method uniform --cross-entropy-chunk-size 16",
              LLAMA + " --recompute-granularity selective",
              LLAMA + " --recompute-granularity full --recompute-method block --recompute-num-layers 1"]


def _build(flags, world=1, mesh=None):
    from megatron_sp.model import GPTModel
    from megatron_sp.parallel_state import single_rank_mesh
    from megatron_sp.tensor_parallel import RNGTracker
    from megatron_sp.arguments import build_parser, padded_vocab_size, validate_args
    from megatron_sp.arguments.model_config import gpt_config
    args = validate_args(build_parser().parse_args(
        flags.split() + "--seq-length 24 --micro-batch-size 2 --lr 1e-4 --mock-data --train-iters 1".split()), world)
    vocab = padded_vocab_size(args.vocab_size, args.make_vocab_size_divisible_by, args.tensor_model_parallel_size)
    mesh = mesh or single_rank_mesh()
    model = GPTModel(gpt_config(args, vocab), mesh, RNGTracker(0, mesh.tp_rank, mesh.cp_rank))
    model.init_weights(0)
    return model


def _kept_bytes(model, b, s, part=slice(None)):
    """Bytes of the distinct storages autograd saves in one training forward (inputs and weights
    excluded: they are in the baseline) + the per-token loss it returns; offloaded bytes apart."""
    import torch
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 100, (b, s + 1), generator=g)
    inp, pos, lab = tokens[:, :-1][:, part].clone(), torch.arange(s)[part].expand(b, -1), tokens[:, 1:][:, part].clone()
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), inp, pos, lab]}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skip:
            seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t
    offloader = model.decoder.offloader
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(inp, pos, lab)
    moved = offloader.packed_bytes if offloader is not None else 0
    _kept_bytes.tensors = len(seen) + 1  # and the per-token loss
    return sum(seen.values()) + out.numel() * 4, moved


@pytest.mark.parametrize("case", KEPT_CASES)
def test_kept_activations_are_what_autograd_saves(case):
    """Exact, for LayerNorm/GELU/learned and RMSNorm/SwiGLU/RoPE/GQA, dropout, chunked loss, tiled
    MLP, every recompute mode: the end-of-forward activations of the model are the saved bytes, and
    the tensors the CPU pages count (memory.activations.cpu_pages) are the saved tensors."""
    flags = SMALL + case
    kept, _ = _kept_bytes(_build(flags), 2, 24)
    spec, lay = mm.ModelSpec.from_flags(flags.split(), device="cpu"), mm.ParallelConfig()
    est = mm.estimate(spec, lay, 24, 2)
    assert est.activations == kept
    tensors = sum(am.run_tensors(spec, lay)) + am.outside_tensors(spec, lay, 48)
    assert tensors == _kept_bytes.tensors
    # the pages are on top of the bytes at the end of forward, on CPU only
    cuda = mm.estimate(mm.ModelSpec.from_flags(flags.split(), device="cuda"), lay, 24, 2)
    assert est.phases["forward_end"] - cuda.phases["forward_end"] == \
        est.activations - cuda.activations + am.PAGE * tensors


@pytest.mark.parametrize("case", ["", " --recompute-granularity full --recompute-method uniform"])
def test_offloaded_bytes_are_the_host_term(case):
    """CUDA model: the first layer's kept bytes go to the host, and RoPE's shared cos/sin once (a
    layer that is not offloaded keeps the device's).  The offloader's bookkeeping, which runs on
    CPU too, moves exactly that."""
    flags = SMALL + LLAMA + case + " --cpu-offloading --cpu-offloading-num-layers 1"
    kept, moved = _kept_bytes(_build(flags), 2, 24)
    cuda = mm.estimate(mm.ModelSpec.from_flags(flags.split(), device="cuda"), mm.ParallelConfig(), 24, 2)
    cpu = mm.estimate(mm.ModelSpec.from_flags(flags.split(), device="cpu"), mm.ParallelConfig(), 24, 2)
    rope_tables = 2 * 2 * 24 * 8 * 4
    # without recompute the CPU composite RMSNorm also keeps x * rsqrt (fp32 [tok, h]) in each of the
    # layer's two norms, which CUDA's fused kernel does not (memory/norms.py)
    per_norm = 4 * 32 * 2 * 24  # fp32 x * rsqrt of one norm
    composite = 0 if "full" in case else 2 * per_norm
    assert cuda.host_activations > rope_tables and moved == cuda.host_activations + composite
    # the hooks of this test see what the offloader left: the rest, with RoPE's tables again
    assert kept + moved == cpu.activations + rope_tables
    # CPU: one memory (the tables once)
    kept_norms = (1 if "full" in case else 2 * 2 + 1)  # the final norm's, and every layer's without recompute
    assert cpu.host_activations == 0 and \
        cpu.activations == cuda.activations + cuda.host_activations - rope_tables + kept_norms * per_norm
    assert cuda.step_peak <= cpu.step_peak


def _kept_distributed(rank, world, flags, layout):
    from megatron_sp.parallel_state import initialize_model_parallel
    tp, cp, mode = layout
    mesh = initialize_model_parallel(tp, cp, [cp, 1] if mode == "a2a" else None)
    model = _build(flags + f" --tensor-model-parallel-size {tp} --context-parallel-size {cp} --cp-comm-type {mode}",
                   world, mesh)
    s = 24 // cp
    return _kept_bytes(model, 2, 24, slice(mesh.cp_rank * s, (mesh.cp_rank + 1) * s))[0]


def test_kept_activations_under_tp_sp_and_ulysses():
    from megatron_sp.launch import run_distributed
    for extra, (tp, cp, mode), lay in (
            (" --sequence-parallel --tiled-mlp-chunk-size 7", (2, 1, "p2p"), mm.ParallelConfig(tp=2, sp=True)),
            (" --cross-entropy-chunk-size 8", (1, 2, "a2a"), mm.ParallelConfig(cp=2, mode="a2a", ulysses=2))):
        flags = SMALL + LLAMA + extra
        kept = run_distributed(_kept_distributed, 2, flags, (tp, cp, mode))[0]
        est = mm.estimate(mm.ModelSpec.from_flags(flags.split(), device="cpu"), lay, 24, 2)
        assert est.activations == kept, (extra, est.activations, kept)


def test_chunked_loss_and_tiled_mlp_terms():
    """The loss keeps no logits once chunked; the tiled MLP keeps no intermediate; both leave a
    transient of one chunk; offload on CUDA moves the kept bytes of N layers to the host."""
    spec = mm.ModelSpec.from_flags(("--num-layers 4 --hidden-size 256 --num-attention-heads 8 --ffn-hidden-size 704 "
                                    "--swiglu --vocab-size 32000 --cross-entropy-chunk-size 0 --attention-dropout 0").split())
    lay, n = mm.ParallelConfig(), 8192
    full = mm.estimate(spec, lay, n, 1)
    spec.cross_entropy_chunk_size = 1024
    chunked = mm.estimate(spec, lay, n, 1)
    V = spec.vocab_size
    assert full.activations - chunked.activations == pytest.approx(n * (4 * V + 9 - 8))
    assert chunked.phases["forward_end"] - chunked.activations == pytest.approx(1024 * V * 8)
    spec.tiled_mlp_chunk_size = 512
    tiled = mm.estimate(spec, lay, n, 1)
    assert chunked.activations - tiled.activations == pytest.approx(4 * n * 4 * 704 * 4)
    spec.cpu_offloading_num_layers, spec.recompute_granularity = 3, "full"
    off = mm.estimate(spec, lay, n, 1)
    assert off.host_activations == pytest.approx(3 * n * 256 * 4)
    assert mm.max_seq_length(spec, lay, 1, 2 ** 30, 64) > 4 * mm.max_seq_length(
        mm.ModelSpec.from_flags(("--num-layers 4 --hidden-size 256 --num-attention-heads 8 --ffn-hidden-size 704 "
                                 "--swiglu --vocab-size 32000 --cross-entropy-chunk-size 0 --attention-dropout 0").split()), lay, 1, 2 ** 30, 64)


def test_llama_features_agree_with_a_measured_step():
    """Vocabulary 32000, chunked loss + tiled MLP + full recompute, and the same without: the
    measured peak of a real step (the scaling tool's trial) within 10% of the model."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
    import scaling_experiment as se
    for extra in (["--cross-entropy-chunk-size", "0"],
                  ["--cross-entropy-chunk-size", "256", "--tiled-mlp-chunk-size", "256",
                   "--recompute-granularity", "full"]):
        args = se.parse_args(["--memory-budget-gb", "1", "--device", "cpu", "--model", "llama-32k",
                              "--model-args", "--num-layers 2", *extra])
        layout = se.make_layout("p2p", 1)
        argv = se.build_argv(args, layout, 2048, 1)
        assert all(flag in argv for flag in extra if flag.startswith("--"))
        r = se.run_trial(argv, 1, 1 << 30, steps=2, timeout=300)
        assert r.status == "ok", r.error
        model = mm.estimate(se.model_config(args), layout.parallel, 2048, 1).step_peak
        assert abs(model / r.peak_bytes - 1) < 0.1, (extra, model / MiB, r.peak_bytes / MiB)


def test_the_memory_model_the_flag_contract_and_the_planner_import_no_torch():
    """They run in the scaling tool's and the planner's parent process, before any rank: pure Python.
    Every module of megatron_sp/memory/ and megatron_sp/arguments/ is imported, so a new file there
    is guarded too (and the flags parse: the memory model reads the real parser's namespace)."""
    import subprocess
    root = os.path.join(os.path.dirname(__file__), "..")
    modules = [f"megatron_sp.{pkg}.{f[:-3]}" for pkg in ("memory", "arguments")
               for f in sorted(os.listdir(os.path.join(root, "megatron_sp", pkg))) if f.endswith(".py")]
    code = ("import sys, importlib; [importlib.import_module(m) for m in sys.argv[1:]]; "
            "import megatron_sp.scaling.planner; "
            "from megatron_sp.arguments import parse_args; "
            "parse_args('--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 "
            "--micro-batch-size 1 --lr 1e-3 --train-iters 1 --mock-data --tokenizer-type NullTokenizer "
            "--vocab-size 128'.split()); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, *modules], check=True, cwd=root)


# --- attention dropout and the offloaded optimizer step (terms the planner's commands need) -----
def test_attention_dropout_runs_the_reference_kernel_and_the_model_counts_its_scores():
    """--attention-dropout > 0 under auto runs the reference kernel: its fp32 score blocks (6 at the
    backward peak) are what a measured step adds; without the term the model is 3x too low."""
    import dataclasses
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
    import scaling_experiment as se
    args = se.parse_args(["--memory-budget-gb", "1", "--device", "cpu"])
    plain = se.model_config(args)
    dropout = dataclasses.replace(plain, attention_dropout=0.1)
    lay = mm.ParallelConfig()
    assert (mm.attention_kernel(plain, lay), mm.attention_kernel(dropout, lay)) == ("flash", "reference")
    block = 8 * 512 * 512 * 4  # [b, a, s, s] fp32 at s = 512
    assert mm.score_block(dropout, lay, 512, 1) == block
    assert mm.unfused_transient(dropout, lay, 512, 1) == 6 * block
    assert mm.unfused_transient(dropout, mm.ParallelConfig(cp=4, mode="a2a", ulysses=4), 512, 1) == 6 * block / 4 * 16
    assert mm.unfused_transient(dropout, mm.ParallelConfig(cp=4, mode="rsa"), 512, 1) == \
        mm.unfused_transient(plain, mm.ParallelConfig(cp=4, mode="rsa"), 512, 1)  # RSA: its rows, whatever the dropout
    layout = se.make_layout("p2p", 1)
    r = se.run_trial(se.build_argv(args, layout, 512, 1) + ["--attention-dropout", "0.1"], 1, 1 << 30, steps=2,
                     timeout=120)
    assert r.status == "ok", r.error
    with_term = mm.estimate(dropout, layout.parallel, 512, 1).step_peak
    without = mm.estimate(plain, layout.parallel, 512, 1).step_peak
    assert abs(with_term / r.peak_bytes - 1) < 0.1, (with_term / MiB, r.peak_bytes / MiB)
    assert without < 0.5 * r.peak_bytes, (without / MiB, r.peak_bytes / MiB)


_ADAMW_STEP = """
import sys, types, torch
from megatron_sp.scaling.trial import PeakMeter, configure_malloc
from megatron_sp.training.optimizer import _adamw
configure_malloc()
torch.set_num_threads(1)
params = [torch.nn.Parameter(torch.randn(n)) for n in (4_000_000, 3_000_000, 1_000_000, 1000)]
for p in params:
    p.grad = torch.randn_like(p)
args = types.SimpleNamespace(lr=1e-3, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8)
opt = _adamw([{"params": params, "weight_decay": 0.1}], args, on_cuda=False, sharded=True)
opt.step()  # Adam state made: the measured step is a later one, as in training
meter = PeakMeter(torch.device("cpu"))
meter.start()
opt.step()
print(meter.peak())
"""


def test_offloaded_optimizer_step_makes_no_temporary_and_the_checks_one_gradients_worth():
    """--optimizer-cpu-offload steps the fp32 shards on the host with torch's fused AdamW (what
    training/optimizer.py builds when the parameters are not on CUDA): measured, no temporary (the
    foreach AdamW it replaced made one fp32 per parameter, ~32 GB at 8B).  The model's host term of
    the step is the gradient checks on the largest shard (7 bytes an element); the planner's host
    footprint includes it."""
    import subprocess
    root = os.path.join(os.path.dirname(__file__), "..")
    out = subprocess.run([sys.executable, "-c", _ADAMW_STEP], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    n = 8_001_000
    assert int(out.stdout.split()[-1]) < 0.01 * 4.0 * n, out.stdout
    spec = mm.ModelSpec.from_flags(TINY, bf16=True)
    offload = mm.ParallelConfig(sharding="fsdp2", offload=True)
    check = mm.terms.largest_gradient_check(spec, offload)
    assert mm.host_optimizer_step(spec, offload, n) == check > 0
    assert mm.host_optimizer_step(spec, mm.ParallelConfig(sharding="fsdp2"), n) == 0  # not offloaded: the device's
    est = mm.estimate(spec, mm.ParallelConfig(dp=2, sharding="fsdp2", offload=True), 1024, 1)
    assert est.host_optimizer == mm.terms.largest_gradient_check(spec, mm.ParallelConfig(dp=2, sharding="fsdp2",
                                                                                          offload=True))
    assert est.host_total == est.host + est.host_activations + est.host_optimizer
    from megatron_sp.scaling import planner
    from megatron_sp.scaling.presets import MODEL_PRESETS
    best = planner.plan(MODEL_PRESETS["llama-3-8b"].split(), 1, 80, 250)[0]
    assert best.layout.offload and 3e9 < best.estimate.host_optimizer < 4e9  # 7 x the 128256 x 4096 output weight
    assert best.host_bytes >= best.estimate.host + best.estimate.host_activations + best.estimate.host_optimizer
