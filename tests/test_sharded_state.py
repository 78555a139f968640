"""Model state sharded over DP x CP (--use-torch-fsdp2, --use-distributed-optimizer) trains the
one-rank model, holds 1/(DP x CP) of the master weights and Adam state, and its gradients
are the one-rank gradients (issue: FSDP2 / distributed checkpoint)."""
import pytest
import torch

from dist_utils import rel_err, run_distributed
from megatron_sp.checkpointing.state import model_entries
from megatron_sp.checkpointing.torch_legacy import _gather_full
from megatron_sp.distributed import allreduce_sequence_parallel_grads, grad_norm, local
from megatron_sp.tensor_parallel.sharding import local_pieces
from megatron_sp.training import loop
from megatron_sp.training.batches import micro_batches
from megatron_sp.training.loop import pretrain
from megatron_sp.training.step import forward_backward

BASE = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 100 --num-layers 2 --hidden-size 32 "
        "--num-attention-heads 4 --seq-length 32 --micro-batch-size 1 --global-batch-size 8 --lr 5e-3 "
        "--hidden-dropout 0 --attention-dropout 0 --log-interval 100 --eval-interval 0 --seed 7 "
        "--group-query-attention --num-query-groups 2 --position-embedding-type rope --swiglu "
        "--normalization RMSNorm").split()
ITERS = ["--train-iters", "10"]

LAYOUTS = {  # name: (world, flags)
    "DP2": (2, ""),
    "CP2": (2, "--context-parallel-size 2 --recompute-granularity selective"),
    "DP2xCP2": (4, "--context-parallel-size 2 --cp-comm-type a2a"),
    "TP2xCP2": (4, "--tensor-model-parallel-size 2 --sequence-parallel --context-parallel-size 2 "
                   "--recompute-granularity full --recompute-method uniform"),
    "TP2xDP2xCP2": (8, "--tensor-model-parallel-size 2 --context-parallel-size 2"),
}
MODES = {"fsdp2": "--use-torch-fsdp2", "dist-opt": "--use-distributed-optimizer"}


def _train(rank, world, argv):
    return pretrain(argv)


@pytest.fixture(scope="module")
def reference():
    return run_distributed(_train, 1, BASE + ITERS)[0]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mode", list(MODES))
def test_every_sharding_mode_trains_the_one_rank_model(mode, layout, reference):
    world, flags = LAYOUTS[layout]
    losses = run_distributed(_train, world, BASE + ITERS + [MODES[mode]] + flags.split(), timeout=300)[-1]
    assert len(losses) == len(reference) == 10
    assert abs(losses[0] - reference[0]) <= 1e-5 * abs(reference[0]), (losses, reference)
    for mine, ref in zip(losses, reference):
        assert abs(mine - ref) <= 1e-4 * abs(ref), (losses, reference)
    assert reference[-1] < reference[0]


def _one_step_gradients(rank, world, argv):
    """Loss and full gradients (gathered from the shards) of one global batch, no optimizer step."""
    args = loop.build_parser().parse_args(argv)
    ctx = loop.setup(args)
    batches = micro_batches(ctx.datasets[0], 0, args, ctx.mesh, ctx.device)

    class _Backward:
        def scale_loss(self, loss):
            return loss

    loss = forward_backward(ctx.model_parts, batches, args, ctx.mesh, ctx.device, _Backward(), ctx.pipeline)
    allreduce_sequence_parallel_grads(ctx.model, ctx.mesh)
    grads = {}
    for name, (p, shape, _) in model_entries(ctx.model, ctx.mesh).items():
        pieces = local_pieces(p, ctx.mesh.tp_rank, ctx.mesh.tp_size, tensor=p.grad)
        grads[name] = _gather_full(shape, pieces, ctx.mesh.checkpoint_group, rank)
    return loss, grads, grad_norm(list(ctx.model.parameters()), ctx.mesh)


@pytest.mark.parametrize("mode", list(MODES))
def test_sharded_gradients_equal_the_one_rank_gradients(mode):
    argv = BASE + ["--train-iters", "1"]
    ref_loss, ref_grads, ref_norm = run_distributed(_one_step_gradients, 1, argv)[0]
    flags = LAYOUTS["TP2xDP2xCP2"][1].split() + ["--sequence-parallel", MODES[mode]]
    loss, grads, norm = run_distributed(_one_step_gradients, 8, argv + flags, timeout=300)[0]
    assert rel_err(loss, ref_loss) <= 1e-5
    assert abs(norm - ref_norm) <= 1e-5 * ref_norm, (norm, ref_norm)  # each element counted once
    for name, g in ref_grads.items():
        assert rel_err(grads[name], g) <= 1e-5, name


def _state_bytes(rank, world, argv):
    _, ctx = pretrain(argv, return_context=True)
    params = [p for p in ctx.model.parameters()]
    weights = sum(local(p).numel() * local(p).element_size() for p in params)
    adam = sum(local(t).numel() * local(t).element_size() for p in params
               for t in ctx.optimizer.optimizer.state[p].values() if torch.is_tensor(t) and t.dim() > 0)
    return weights, adam, sum(p.numel() for p in params)


@pytest.mark.parametrize("extra", [["--use-torch-fsdp2"], ["--use-distributed-optimizer", "--optimizer-cpu-offload"]])
def test_master_weights_and_adam_state_are_sharded_over_dp_x_cp(extra):
    argv = BASE[:BASE.index("--hidden-size")] + ["--hidden-size", "64"] + BASE[BASE.index("--hidden-size") + 2:]
    argv = argv + ["--train-iters", "1"]
    full_weights, full_adam, n = run_distributed(_state_bytes, 1, argv)[0]
    assert full_weights == 4 * n and full_adam == 8 * n  # fp32 weights, Adam m and v
    per_rank = run_distributed(_state_bytes, 4, argv + ["--context-parallel-size", "2"] + extra)
    for weights, adam, _ in per_rank:
        assert abs(weights - full_weights / 4) <= 0.05 * full_weights / 4, (weights, full_weights)
        assert abs(adam - full_adam / 4) <= 0.05 * full_adam / 4, (adam, full_adam)


@pytest.mark.parametrize("precision", ["--bf16", "--fp16"])
def test_mixed_precision_with_sharded_state_converges(precision):
    mode = "--use-torch-fsdp2" if precision == "--bf16" else "--use-distributed-optimizer"
    argv = BASE + ["--train-iters", "12", "--lr", "1e-2", precision, mode, "--context-parallel-size", "2"]
    losses = run_distributed(_train, 4, argv, timeout=300)[-1]
    finite = [x for x in losses if x == x]
    assert len(finite) == len(losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses


def test_sharding_flags_are_checked():
    from megatron_sp.arguments import ArgumentError, parse_args
    for extra, needle in ((["--use-torch-fsdp2", "--use-distributed-optimizer"], "exclusive"),
                          (["--optimizer-cpu-offload"], "--optimizer-cpu-offload"),
                          (["--overlap-param-gather"], "--overlap-param-gather"),
                          (["--async-save", "--ckpt-format", "torch"], "--async-save")):
        with pytest.raises(ArgumentError, match=needle):
            parse_args(BASE + ["--train-iters", "1"] + extra)
