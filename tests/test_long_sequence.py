"""Chunked loss, tiled MLP and activation offload (issue 11): exact against the unchunked,
untiled, resident computation, forward and backward, on one rank and under TP, TP+SP and CP.

fp32 throughout; the chunked loss and the tiled MLP only change how many rows a matmul sees,
so loss and gradients agree to rounding (<= 1e-6 relative); offload on CPU moves nothing and
is bit-exact.
"""
import pytest
import torch
import torch.nn.functional as F

from dist_utils import rel_err, run_distributed
from megatron_sp.activations import ActivationOffloader, sequence_tiled
from megatron_sp.activations.offload import _is_weight
from megatron_sp.model import GPTConfig, GPTModel
from megatron_sp.parallel_state import initialize_model_parallel, single_rank_mesh
from megatron_sp.tensor_parallel import RNGTracker, chunked_output_cross_entropy, vocab_parallel_cross_entropy
from megatron_sp.tensor_parallel.sharding import full_of
from megatron_sp.distributed.grads import allreduce_sequence_parallel_grads
from megatron_sp.arguments import ArgumentError, parse_args


# --- the chunked loss ------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 7, 24, 1000])
def test_chunked_loss_matches_full_logits(chunk):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 2, 16, generator=g, requires_grad=True)  # [s, b, h]
    w = torch.randn(50, 16, generator=g, requires_grad=True)  # [V, h]
    target = torch.randint(0, 50, (12, 2), generator=g)
    upstream = torch.rand(12, 2, generator=g)  # a loss mask / token weights
    ref = vocab_parallel_cross_entropy(F.linear(x, w), target)
    ref_gx, ref_gw = torch.autograd.grad((ref * upstream).sum(), (x, w))
    out = chunked_output_cross_entropy(x, w, target, None, chunk)
    gx, gw = torch.autograd.grad((out * upstream).sum(), (x, w))
    assert rel_err(out, ref) <= 1e-6 and rel_err(gx, ref_gx) <= 1e-6 and rel_err(gw, ref_gw) <= 1e-6
    with torch.no_grad():  # evaluation: chunks without the recompute machinery
        assert rel_err(chunked_output_cross_entropy(x, w, target, None, chunk), ref) <= 1e-6


def test_chunked_loss_under_bf16_autocast_recomputes_in_bf16():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, 32, generator=g, requires_grad=True)
    w = torch.randn(96, 32, generator=g, requires_grad=True)
    target = torch.randint(0, 96, (64, 1), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = vocab_parallel_cross_entropy(F.linear(x, w), target)
    ref_gx, ref_gw = torch.autograd.grad(ref.sum(), (x, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = chunked_output_cross_entropy(x, w, target, None, 16)
    gx, gw = torch.autograd.grad(out.sum(), (x, w))
    assert out.dtype == torch.float32 and gx.dtype == x.dtype and gw.dtype == w.dtype
    # same bf16 matmuls per row: the loss agrees to bf16 rounding of the sums, not worse
    assert rel_err(out, ref) <= 1e-3 and rel_err(gx, ref_gx) <= 2e-2 and rel_err(gw, ref_gw) <= 2e-2


# --- the tiled MLP ---------------------------------------------------------------------
def _layer_model(**kw):
    base = dict(num_layers=3, hidden_size=32, num_attention_heads=4, vocab_size=96, ffn_hidden_size=48,
                max_position_embeddings=40, hidden_dropout=0.0, attention_dropout=0.0, cross_entropy_chunk_size=0)
    base.update(kw)
    model = GPTModel(GPTConfig(**base), single_rank_mesh(), RNGTracker(5))
    model.init_weights(11)
    return model


def _step(model, b=2, s=40):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 96, (b, s + 1), generator=g)
    loss = model(tokens[:, :-1], torch.arange(s).expand(b, s), tokens[:, 1:])
    (loss * torch.linspace(0.5, 1.5, s)).sum().backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same(got, ref, tol):
    assert rel_err(got[0], ref[0]) <= tol
    for name, grad in ref[1].items():
        assert rel_err(got[1][name], grad) <= tol, name


LLAMA = dict(swiglu=True, normalization="RMSNorm", add_bias_linear=False, position_embedding_type="rope",
             num_query_groups=2, untie_embeddings_and_output_weights=True)


@pytest.mark.parametrize("arch", [{}, LLAMA], ids=["gelu-bias", "swiglu"])
@pytest.mark.parametrize("recompute", [None, "selective", "full"])
def test_tiled_mlp_and_chunked_loss_match_the_plain_model(arch, recompute):
    rc = dict(recompute_granularity=recompute, recompute_method="uniform" if recompute == "full" else None)
    ref = _step(_layer_model(**arch, **rc))
    got = _step(_layer_model(**arch, **rc, tiled_mlp_chunk_size=23, cross_entropy_chunk_size=17))
    _assert_same(got, ref, 1e-6)


def test_tiled_mlp_with_dropout_replays_the_same_masks():
    """Hidden dropout around the tiled MLP, with full recompute: the same masks as untiled."""
    kw = dict(hidden_dropout=0.2, recompute_granularity="full", recompute_method="block", recompute_num_layers=2)
    ref = _step(_layer_model(**kw))  # building a model seeds its streams: each steps right after
    no_dropout = _step(_layer_model(**{**kw, "hidden_dropout": 0.0}))
    got = _step(_layer_model(**kw, tiled_mlp_chunk_size=9))
    _assert_same(got, ref, 1e-6)
    assert rel_err(no_dropout[0], ref[0]) > 1e-3  # dropout really is on


def test_sequence_tiled_in_evaluation():
    x = torch.randn(10, 4)
    w = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.allclose(sequence_tiled(lambda xc, wc: xc @ wc.t(), x, params=(w,), chunk_tokens=3), x @ w.t())


# --- activation offload ----------------------------------------------------------------
@pytest.mark.parametrize("recompute", [None, "selective", "full"])
def test_offload_is_exact_and_moves_what_the_layers_keep(recompute):
    rc = dict(recompute_granularity=recompute, recompute_method="uniform" if recompute == "full" else None)
    ref = _step(_layer_model(**LLAMA, **rc))
    model = _layer_model(**LLAMA, **rc, cpu_offloading_num_layers=2)
    got = _step(model)
    _assert_same(got, ref, 0.0)  # CPU: nothing moves, bit-exact
    moved = model.decoder.offloader.packed_bytes
    x_bytes = 40 * 2 * 32 * 4  # one [s, b, h] fp32 layer input
    if recompute == "full":  # the two checkpointed inputs, and RoPE's cos/sin once
        assert moved == 2 * x_bytes + 2 * 40 * 2 * 8 * 4
    else:
        assert moved > 10 * x_bytes


def test_offload_never_moves_weights():
    w = torch.nn.Parameter(torch.randn(4, 4))
    x = torch.randn(3, 4, requires_grad=True)
    assert _is_weight(w) and _is_weight(w.t()) and not _is_weight(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = w.to(torch.bfloat16)
    assert _is_weight(cast) and _is_weight(cast.t()) and not _is_weight((x * 2).t())
    off = ActivationOffloader()
    with off.layer(0):
        F.linear(x, w).sum().backward()
    assert off.packed_bytes == x.numel() * 4  # x only, once


# --- flags -----------------------------------------------------------------------------
BASE = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 100 --num-layers 2 --hidden-size 32 "
        "--num-attention-heads 4 --seq-length 32 --micro-batch-size 1 --lr 1e-3 --train-iters 1").split()


@pytest.mark.parametrize("flags,needle", [
    ("--cpu-offloading-num-layers 1", "does nothing without --cpu-offloading"),
    ("--cpu-offloading --cpu-offloading-num-layers 2", "--cpu-offloading-num-layers 2"),
    ("--cpu-offloading", "--cpu-offloading-num-layers 0"),
    ("--tiled-mlp-chunk-size -1", "--tiled-mlp-chunk-size: -1 is not an integer >= 0"),
    ("--cross-entropy-loss-fusion --cross-entropy-chunk-size 0", "--cross-entropy-loss-fusion"),
])
def test_bad_memory_flags_fail_in_one_line(flags, needle):
    with pytest.raises(ArgumentError, match=needle) as info:
        parse_args(BASE + flags.split())
    assert "\n" not in str(info.value)


# --- TP, TP + SP, CP -------------------------------------------------------------------
def _grads(model, mesh, tokens):
    b, s = tokens.shape[0], tokens.shape[1] - 1
    cp, r = mesh.cp_size, mesh.cp_rank
    part = slice(r * s // cp, (r + 1) * s // cp)  # contiguous CP shard (a2a)
    loss = model(tokens[:, :-1][:, part], torch.arange(s)[part].expand(b, -1), tokens[:, 1:][:, part])
    loss.sum().backward()
    allreduce_sequence_parallel_grads(model, mesh)
    grads = {}
    for n, p in model.named_parameters():
        g = full_of(p.grad, p, mesh.tp_group, mesh.tp_size)
        if mesh.cp_group is not None:
            torch.distributed.all_reduce(g, group=mesh.cp_group)
        grads[n] = g
    full = [torch.zeros_like(loss) for _ in range(cp)]
    if mesh.cp_group is not None:
        torch.distributed.all_gather(full, loss.detach().contiguous(), group=mesh.cp_group)
    else:
        full = [loss.detach()]
    return torch.cat(full, dim=1), grads


def _check_layouts(rank, world):
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 96, (2, 33), generator=g)
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=96, ffn_hidden_size=48,
                max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0, cross_entropy_chunk_size=0,
                **LLAMA)
    ref_model = GPTModel(GPTConfig(**base), single_rank_mesh(), RNGTracker(1))
    ref_model.init_weights(9)
    ref = _grads(ref_model, single_rank_mesh(), tokens)
    on = dict(cross_entropy_chunk_size=11, tiled_mlp_chunk_size=13, cpu_offloading_num_layers=1)
    results = []
    for tp, cp, sp, mode, extra in ((2, 1, False, "p2p", {}), (2, 1, True, "p2p", {}),
                                    (1, 2, False, "a2a", dict(recompute_granularity="full",
                                                              recompute_method="uniform"))):
        mesh = initialize_model_parallel(tp, cp, [cp, 1] if mode == "a2a" else None)
        model = GPTModel(GPTConfig(**{**base, **on, **extra, "sequence_parallel": sp, "cp_comm_type": mode}),
                         mesh, RNGTracker(1, mesh.tp_rank, mesh.cp_rank))
        model.init_weights(9)
        loss, grads = _grads(model, mesh, tokens)
        results.append((rel_err(loss, ref[0]), max(rel_err(grads[n], ref[1][n]) for n in ref[1])))
    return results


def test_all_features_exact_under_tp_sp_and_cp():
    for layout in run_distributed(_check_layouts, 2)[0]:
        assert layout[0] <= 1e-6 and layout[1] <= 1e-5, layout


# --- composed with sharded model state and pipeline parallelism ---------------------------
COMPOSE = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 100 --num-layers 2 --hidden-size 32 "
           "--num-attention-heads 4 --group-query-attention --num-query-groups 2 --position-embedding-type rope "
           "--swiglu --normalization RMSNorm --seq-length 32 --micro-batch-size 1 --global-batch-size 4 "
           "--lr 5e-3 --hidden-dropout 0 --attention-dropout 0 --log-interval 100 --eval-interval 0 --seed 7 "
           "--train-iters 4").split()
# chunks smaller than the local tokens of every layout, so that the loss and the MLP are really tiled
FEATURES = "--cross-entropy-chunk-size 5 --tiled-mlp-chunk-size 6 --cpu-offloading --cpu-offloading-num-layers 1"


def _pretrain(rank, world, argv):
    from megatron_sp.training.loop import pretrain
    return pretrain(argv)


@pytest.mark.parametrize("layout", ["--context-parallel-size 2 --use-torch-fsdp2",
                                    "--use-distributed-optimizer",
                                    "--pipeline-model-parallel-size 2"])  # the loss on the last stage
def test_features_compose_with_sharded_state_and_pipeline(layout):
    """Chunked loss, tiled MLP and offload on FSDP2 (CP 2), the distributed optimizer (DP 2) and
    PP 2 train the plain one-rank model: first loss within 1e-5, the next within 1e-4."""
    ref = run_distributed(_pretrain, 1, COMPOSE)[0]
    losses = run_distributed(_pretrain, 2, COMPOSE + FEATURES.split() + layout.split(), timeout=300)[-1]
    assert len(losses) == len(ref) == 4
    assert abs(losses[0] - ref[0]) <= 1e-5 * abs(ref[0]), (losses, ref)
    for mine, theirs in zip(losses, ref):
        assert abs(mine - theirs) <= 1e-4 * abs(theirs), (losses, ref)
