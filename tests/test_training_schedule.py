"""Loss scaler (skip, backoff, growth; every rank agrees), LR schedule values, fp16/bf16 convergence."""
import math
import types

import pytest
import torch

from dist_utils import run_distributed
from megatron_sp.training.loss_scaler import DynamicLossScaler, build_loss_scaler
from megatron_sp.training.lr_scheduler import LRScheduler

TINY = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 128 --num-layers 2 --hidden-size 32 "
        "--num-attention-heads 4 --seq-length 32 --micro-batch-size 1 --global-batch-size 4 "
        "--hidden-dropout 0 --attention-dropout 0 --log-interval 100 --eval-interval 0").split()


# --- LR schedule -----------------------------------------------------------------------
def _sched(style, warmup=10, decay=100, lr=1e-3, min_lr=1e-4):
    opt = types.SimpleNamespace(param_groups=[{"lr": 0.0}])
    return LRScheduler(opt, lr, min_lr, warmup, decay, style), opt


@pytest.mark.parametrize("style", ["constant", "linear", "cosine"])
def test_lr_schedule_values(style):
    s, opt = _sched(style)
    assert opt.param_groups[0]["lr"] == 0.0  # iteration 0 of the warmup
    assert math.isclose(s.get_lr(5), 5e-4)
    assert math.isclose(s.get_lr(10), 1e-3)
    expected_55 = {"constant": 1e-3, "linear": 1e-4 + 0.5 * 9e-4,
                   "cosine": 1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * 0.5))}[style]
    assert math.isclose(s.get_lr(55), expected_55, rel_tol=1e-12)
    assert math.isclose(s.get_lr(100), 1e-3 if style == "constant" else 1e-4)
    assert math.isclose(s.get_lr(1000), 1e-3 if style == "constant" else 1e-4)
    for _ in range(55):
        s.step()
    assert math.isclose(opt.param_groups[0]["lr"], expected_55)
    # the state round-trips: a fresh scheduler resumes the same curve
    s2, opt2 = _sched(style)
    s2.load_state_dict(s.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


# --- loss scaler -----------------------------------------------------------------------
def test_dynamic_loss_scaler_hysteresis_backoff_growth():
    s = DynamicLossScaler(initial_scale=2.0 ** 16, min_scale=1.0, window=3, hysteresis=2)
    s.update(True)
    assert s.scale == 2.0 ** 16  # first overflow: hysteresis absorbs it
    s.update(True)
    assert s.scale == 2.0 ** 15  # second in a row: back off
    s.update(True)
    assert s.scale == 2.0 ** 14  # hysteresis is only re-armed by growth
    for _ in range(3):
        s.update(False)
    assert s.scale == 2.0 ** 15  # window clean steps: grow
    s.update(True)
    assert s.scale == 2.0 ** 15
    tiny = DynamicLossScaler(initial_scale=2.0, min_scale=1.0, window=10, hysteresis=1)
    for _ in range(5):
        tiny.update(True)
    assert tiny.scale == 1.0  # never below --min-loss-scale
    restored = DynamicLossScaler(initial_scale=8.0, window=3, hysteresis=2)
    restored.load_state_dict(s.state_dict())
    assert restored.state_dict() == s.state_dict()


def test_build_loss_scaler_from_flags():
    ns = types.SimpleNamespace(fp16=False, loss_scale=None, initial_loss_scale=2.0 ** 32, min_loss_scale=1.0,
                               loss_scale_window=1000, hysteresis=2)
    assert build_loss_scaler(ns).scale == 1.0 and not build_loss_scaler(ns).dynamic
    ns.fp16 = True
    assert build_loss_scaler(ns).dynamic and build_loss_scaler(ns).scale == 2.0 ** 32
    ns.loss_scale = 128.0
    assert not build_loss_scaler(ns).dynamic and build_loss_scaler(ns).scale == 128.0


def _overflow_on_one_rank(rank, world):
    from megatron_sp.parallel_state import initialize_model_parallel
    from megatron_sp.arguments import parse_args
    from megatron_sp.training.optimizer import MixedPrecisionOptimizer
    mesh = initialize_model_parallel(1, 1)
    args = parse_args(TINY + ["--train-iters", "1", "--lr", "1e-2", "--fp16", "--initial-loss-scale", "1024",
                              "--hysteresis", "1", "--loss-scale-window", "2"], world)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    opt = MixedPrecisionOptimizer(model, args, mesh)
    out = []
    for step in range(4):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        opt.scale_loss(model(torch.ones(2, 4)).sum()).backward()
        if step == 0 and rank == 1:  # an overflow on one rank only
            model.weight.grad[0, 0] = float("inf")
        stats = opt.step()
        changed = any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        out.append((stats["skipped"], changed, opt.loss_scale))
    return out


def test_overflow_skips_the_step_on_every_rank():
    results = run_distributed(_overflow_on_one_rank, 2)
    assert results[0] == results[1]
    (skip0, changed0, scale0), (skip1, changed1, scale1), (_, _, scale2), (_, _, scale3) = results[0]
    assert skip0 and not changed0 and scale0 == 512.0  # skipped everywhere, no parameter moved, backed off
    assert not skip1 and changed1 and scale1 == 512.0
    assert scale2 == 1024.0 and scale3 == 1024.0  # grew after --loss-scale-window 2 clean steps


# --- mixed precision converges at T2 x P2 ----------------------------------------------
def _train(rank, world, extra):
    from megatron_sp.training.loop import pretrain
    losses, ctx = pretrain(TINY + extra, return_context=True)
    return losses, ctx.state.skipped_iterations, ctx.optimizer.loss_scale


@pytest.mark.parametrize("precision", ["--bf16", "--fp16"])
def test_mixed_precision_converges_at_t2p2(precision):
    extra = ["--train-iters", "12", "--lr", "1e-2", "--lr-decay-style", "constant", precision,
             "--tensor-model-parallel-size", "2", "--sequence-parallel", "--context-parallel-size", "2"]
    if precision == "--fp16":
        extra += ["--initial-loss-scale", str(2.0 ** 22), "--hysteresis", "1"]
    losses, skipped, scale = run_distributed(_train, 4, extra)[0]
    assert all(math.isfinite(x) for x in losses), losses
    if precision == "--fp16":
        # 2^22 overflows fp16 gradients at first: those steps are skipped and counted, and the scale backs off
        assert 1 <= skipped <= 6 and scale < 2.0 ** 22
    else:
        assert skipped == 0
    assert losses[-1] < losses[0] - 0.1, losses


def test_recompute_activations_is_selective_recompute():
    """Megatron's --recompute-activations = --recompute-granularity selective: same flags, same losses."""
    from megatron_sp.arguments import ArgumentError, build_parser, validate_args
    from megatron_sp.training.loop import pretrain
    argv = TINY + ["--lr", "1e-3", "--train-iters", "3"]
    args = validate_args(build_parser().parse_args(argv + ["--recompute-activations"]), 1)
    assert args.recompute_granularity == "selective"
    with pytest.raises(ArgumentError, match="--recompute-activations .* --recompute-granularity full"):
        validate_args(build_parser().parse_args(argv + ["--recompute-activations", "--recompute-granularity",
                                                        "full", "--recompute-method", "uniform"]), 1)
    assert pretrain(argv + ["--recompute-activations"]) == pretrain(argv)
