"""The GPT trains identically under every TP x CP x DP layout (issue: composition).

Against the one-rank model from the same weights, fp32, dropout 0:
* one step: the global-batch loss and every full gradient within 1e-5 relative;
* ten steps of ``pretrain_gpt`` (mock data): the per-iteration loss within 1e-4, with the
  long-sequence memory features on in the distributed run (chunked loss, tiled MLP, offload
  of the first layer; issue 11) and off in the one-rank reference.
"""
import pytest
import torch

from dist_utils import rel_err, run_distributed
from megatron_sp.model import GPTModel
from megatron_sp.parallel_state import initialize_model_parallel, single_rank_mesh
from megatron_sp.tensor_parallel import RNGTracker
from megatron_sp.tensor_parallel.sharding import full_of
from megatron_sp.arguments import build_parser, padded_vocab_size, validate_args
from megatron_sp.distributed.grads import allreduce_sequence_parallel_grads, wrap_data_parallel
from megatron_sp.training.batches import build_datasets, build_tokenizer, micro_batches
from megatron_sp.arguments.model_config import gpt_config
from megatron_sp.training.loop import pretrain
from megatron_sp.training.step import forward_backward

BASE = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 100 --num-layers 2 --hidden-size 32 "
        "--num-attention-heads 4 --seq-length 32 --micro-batch-size 1 --global-batch-size 4 --lr 5e-3 "
        "--hidden-dropout 0 --attention-dropout 0 --log-interval 100 --eval-interval 0 --seed 7").split()
GQA_ROPE = "--group-query-attention --num-query-groups 2 --position-embedding-type rope --swiglu --normalization RMSNorm".split()

# (world, layout flags, model flags)
LAYOUTS = {
    "T2xP2-p2p": (4, "--tensor-model-parallel-size 2 --context-parallel-size 2 --cp-comm-type p2p", GQA_ROPE),
    "T2sp-xP2-rsa": (4, "--tensor-model-parallel-size 2 --sequence-parallel --context-parallel-size 2 "
                        "--cp-comm-type rsa", []),
    "P4-a2a": (4, "--context-parallel-size 4 --cp-comm-type a2a", []),
    "P4-a2a+p2p": (4, "--context-parallel-size 4 --cp-comm-type a2a+p2p "
                      "--hierarchical-context-parallel-sizes 2 2", GQA_ROPE),
    "T2xP2xDP2-p2p": (8, "--tensor-model-parallel-size 2 --context-parallel-size 2 --cp-comm-type p2p "
                         "--recompute-granularity full --recompute-method uniform", []),
    "P8-p2p": (8, "--context-parallel-size 8 --cp-comm-type p2p --recompute-granularity selective",
               "--position-embedding-type rope".split()),
    "DP2xP2-rsa": (4, "--context-parallel-size 2 --cp-comm-type rsa", GQA_ROPE),
}


def _args(argv, world):
    return validate_args(build_parser().parse_args(argv), world)


def _one_step(args, mesh):
    """Loss and full gradients of one global batch (no optimizer step)."""
    tokenizer = build_tokenizer(args)
    cfg = gpt_config(args, padded_vocab_size(tokenizer.vocab_size, args.make_vocab_size_divisible_by,
                                               args.tensor_model_parallel_size))
    model = GPTModel(cfg, mesh, RNGTracker(args.seed, mesh.tp_rank, mesh.cp_rank, mesh.dp_rank))
    model.init_weights(args.seed)
    ddp = wrap_data_parallel(model, mesh)
    batches = micro_batches(build_datasets(args, tokenizer)[0], 0, args, mesh, torch.device("cpu"))

    class _Backward:  # forward_backward's optimizer interface, without a step
        def scale_loss(self, loss):
            return loss

    loss = forward_backward([ddp], batches, args, mesh, torch.device("cpu"), _Backward())
    allreduce_sequence_parallel_grads(model, mesh)
    return loss, {n: full_of(p.grad, p, mesh.tp_group, mesh.tp_size) for n, p in model.named_parameters()}


def _check_one_step(rank, world, argv):
    args = _args(argv, world)
    mesh = initialize_model_parallel(args.tensor_model_parallel_size, args.context_parallel_size,
                                     args.hierarchical_context_parallel_sizes)
    loss, grads = _one_step(args, mesh)
    ref_argv = [a for a in argv]  # same model flags, one rank, contiguous layout
    ref_loss, ref_grads = _one_step(_args(_strip_layout(ref_argv), 1), single_rank_mesh())
    assert rel_err(loss, ref_loss) <= 1e-5, (loss, ref_loss)
    for name, g in ref_grads.items():
        assert rel_err(grads[name], g) <= 1e-5, name


def _strip_layout(argv):
    out, skip = [], 0
    takes = {"--tensor-model-parallel-size": 1, "--context-parallel-size": 1, "--cp-comm-type": 1,
             "--hierarchical-context-parallel-sizes": 2, "--recompute-granularity": 1, "--recompute-method": 1}
    for a in argv:
        if skip:
            skip -= 1
        elif a in takes:
            skip = takes[a]
        elif a != "--sequence-parallel":
            out.append(a)
    return out


def _argv(name, iters=1):
    world, layout, model = LAYOUTS[name]
    return world, BASE + model + layout.split() + ["--train-iters", str(iters)]


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_one_step_loss_and_gradients_match_single_rank(name):
    world, argv = _argv(name)
    run_distributed(_check_one_step, world, argv)


def _train(rank, world, argv):
    return pretrain(argv)


# chunks smaller than every layout's local tokens (4 at CP 8), so that each is really tiled
MEMORY_FEATURES = ("--cross-entropy-chunk-size 3 --tiled-mlp-chunk-size 3 --cpu-offloading "
                   "--cpu-offloading-num-layers 1").split()


@pytest.mark.parametrize("name", ["T2xP2-p2p", "T2sp-xP2-rsa", "P4-a2a", "P4-a2a+p2p", "T2xP2xDP2-p2p", "P8-p2p"])
def test_ten_iteration_loss_trajectory_matches_single_rank(name):
    world, argv = _argv(name, iters=10)
    losses = run_distributed(_train, world, argv + MEMORY_FEATURES, timeout=300)[-1]
    ref = run_distributed(_train, 1, _strip_layout(argv))[0]
    assert len(losses) == len(ref) == 10
    assert abs(losses[0] - ref[0]) <= 1e-5 * abs(ref[0])
    for mine, theirs in zip(losses, ref):
        assert abs(mine - theirs) <= 1e-4 * abs(theirs), (losses, ref)
    assert ref[-1] < ref[0]  # it trains


def _fails(rank, world, argv):
    try:
        pretrain(argv)
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("layout,needle", [
    ("--context-parallel-size 8 --cp-comm-type a2a", "--num-attention-heads"),
    ("--context-parallel-size 2 --cp-comm-type p2p --seq-length 30", "--seq-length 30"),
    ("--context-parallel-size 4 --cp-comm-type a2a+p2p", "--hierarchical-context-parallel-sizes"),
])
def test_impossible_layouts_fail_at_start_up_on_every_rank(layout, needle):
    world = 8 if "size 8" in layout else 4 if "size 4" in layout else 2
    argv = BASE + ["--train-iters", "1"] + layout.split()
    messages = run_distributed(_fails, world, argv, timeout=60)
    assert all(m is not None and needle in m for m in messages), messages


def test_dropout_streams_follow_the_layout():
    """Default stream: same across TP (replicated activations), different across CP and DP
    (different tokens). TP stream: different on every rank (sharded heads / SP shards)."""
    def draws(tp, cp, dp):
        rng = RNGTracker(1234, tp_rank=tp, cp_rank=cp, dp_rank=dp)
        default = torch.rand(16)
        with rng.fork():
            forked = torch.rand(16)
        return default, forked

    coords = [(t, c, d) for t in range(2) for c in range(2) for d in range(2)]
    got = {xyz: draws(*xyz) for xyz in coords}
    for a in coords:
        for b in coords:
            if a == b:
                continue
            same_default = torch.equal(got[a][0], got[b][0])
            assert same_default == (a[1:] == b[1:]), (a, b)  # equal iff same CP and DP rank
            assert not torch.equal(got[a][1], got[b][1]), (a, b)


def test_dropout_run_is_reproducible_for_a_fixed_layout():
    world, argv = _argv("T2xP2-p2p", iters=3)
    argv = [("0.1" if prev in ("--hidden-dropout", "--attention-dropout") else a)
            for prev, a in zip([""] + argv[:-1], argv)]
    first = run_distributed(_train, world, argv)[-1]
    second = run_distributed(_train, world, argv)[-1]
    no_dropout = run_distributed(_train, world, _argv("T2xP2-p2p", iters=3)[1])[-1]
    assert first == second
    assert first != no_dropout  # dropout really is on


@pytest.mark.parametrize("dtype,percent", [(torch.float32, 1.0), (torch.float32, 0.5), (torch.bfloat16, 1.0)])
def test_rope_matches_the_autograd_expression_and_keeps_only_cos_sin(dtype, percent):
    """model/rope.py's rotation (a custom function with the transposed rotation as its backward)
    against the plain expression differentiated by autograd: same output and input gradient; for
    backward it keeps cos and sin only (autograd kept fp32 copies of the input)."""
    from megatron_sp.model.rope import RotaryEmbedding, apply_rotary

    def reference(x, cos, sin):
        rot = cos.shape[-1]
        x_rot, x_pass = x[..., :rot].float(), x[..., rot:]
        x1, x2 = x_rot.chunk(2, dim=-1)
        out = (x_rot * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)
        return torch.cat([out, x_pass], dim=-1) if rot < x.shape[-1] else out

    cos, sin = RotaryEmbedding(16, rotary_percent=percent)(torch.arange(3, 15).unsqueeze(0))  # [12, 1, 1, r]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 1, 4, 16, generator=g).to(dtype).requires_grad_()
    dout = torch.randn(12, 1, 4, 16, generator=g).to(dtype)
    ref = reference(x, cos, sin)
    (ref_grad,) = torch.autograd.grad(ref, x, dout)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = apply_rotary(x, cos, sin)
    (grad,) = torch.autograd.grad(out, x, dout)
    tol = 0.0 if dtype == torch.bfloat16 else 1e-6
    assert (out.float() - ref.float()).abs().max() <= tol and (grad.float() - ref_grad.float()).abs().max() <= tol
    assert len(saved) == 2 and saved[0] is cos and saved[1] is sin
