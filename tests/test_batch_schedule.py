"""The batch-size schedule (arguments/batch_schedule.py): Megatron-LM's ramp-up and step schedules
and Megatron-DeepSpeed's token lengths, asked by the flags, the batches, the LR schedule, the loop
and resume alike.

Reference numbers are worked by hand from Megatron's calculators: ``--rampup-batch-size 4 4 24
--global-batch-size 12``: two increments of 12 samples; batches 4 (consumed 0), 4 (4), 4 (8),
8 (12), 8 (20), 12 (28 > 24), 12 ...
"""
import pytest
import torch

from dist_utils import run_distributed
from megatron_sp.arguments import build_parser, validate_args
from megatron_sp.arguments.batch_schedule import BatchSchedule, parse_step_schedule
from megatron_sp.training.loop import pretrain

TINY = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 128 --num-layers 1 --hidden-size 16 "
        "--num-attention-heads 2 --seq-length 16 --micro-batch-size 2 --lr 1e-3 --min-lr 1e-4 "
        "--lr-decay-style cosine --log-interval 1 --eval-interval 0 --hidden-dropout 0 --attention-dropout 0 "
        "--seed 7").split()
RAMP = ["--global-batch-size", "12", "--rampup-batch-size", "4", "4", "24"]


def _validate(words, world=1):
    return validate_args(build_parser().parse_args(words), world)


def _log(out):
    """(global batch size, consumed samples, learning rate) of every log line."""
    rows = []
    for ln in out.splitlines():
        if ln.startswith(" iteration"):
            f = {k.strip(): v.strip() for k, v in (p.split(":", 1) for p in ln.split("|")[1:] if ":" in p)}
            rows.append((int(f["global batch size"]), int(f["consumed samples"]), float(f["learning rate"])))
    return rows


def test_rampup_follows_megatrons_calculator():
    s = BatchSchedule(12, 2, 1, rampup=(4, 4, 24))
    consumed, sizes = 0, []
    for _ in range(7):
        sizes.append(s.global_batch_size(consumed))
        consumed += sizes[-1]
    assert sizes == [4, 4, 4, 8, 8, 12, 12]
    assert s.consumed_after(7) == consumed == 52 and s.consumed_after(2, 12) == 28
    # --train-samples: the ramp while consumed <= 24 (6 batches, 40 samples), then whole batches of 12
    assert s.iterations_for_samples(100) == 6 + (100 - 40) // 12
    assert s.iterations_for_samples(10) == 3  # 0, 4, 8 <= 10: Megatron counts the batch that passes it
    assert _validate(TINY + RAMP + ["--train-samples", "100"]).train_iters == 11


def test_rampup_flag_errors_are_one_line():
    for extra, needle in ((["--global-batch-size", "10", "--rampup-batch-size", "4", "4", "24"],
                           "--global-batch-size 10 must be START \\+ a whole number of INCR"),
                          (["--global-batch-size", "12", "--rampup-batch-size", "3", "3", "24"],
                           "--rampup-batch-size: global batch size 3 is not divisible by --micro-batch-size 2"),
                          (RAMP + ["--step-batch-size-schedule", "0:4"], "are exclusive")):
        with pytest.raises(ValueError, match=needle):
            _validate(TINY + extra + ["--train-iters", "3"])


def test_rampup_trains_the_ramp_with_the_lr_schedule_in_samples(capsys):
    losses, ctx = pretrain(TINY + RAMP + ["--train-samples", "60", "--lr-warmup-samples", "8"],
                           return_context=True)
    rows = _log(capsys.readouterr().out)
    assert [r[0] for r in rows] == [4, 4, 4, 8, 8, 12, 12] and [r[1] for r in rows] == [4, 8, 12, 20, 28, 40, 52]
    s = ctx.scheduler  # the LR of a log line is the one its step used: the schedule at the samples before it
    assert [r[2] for r in rows] == pytest.approx([s.lr_at_samples(c - b) for b, c, _ in rows], rel=1e-6)
    assert s.num_samples == ctx.state.consumed_samples == 52 and len(losses) == 7


def _ramp_run(rank, world, argv):
    return pretrain(argv)


def test_rampup_batches_are_exact_against_the_one_rank_run():
    """DP 2 takes disjoint micro-batches of the same ramped global batches: same losses as one rank."""
    argv = TINY + RAMP + ["--train-iters", "6"]
    one = pretrain(argv)
    two = run_distributed(_ramp_run, 2, argv)[0]
    assert two == pytest.approx(one, rel=1e-5)


def test_a_checkpoint_is_saved_where_the_batch_size_changes(tmp_path):
    save = tmp_path / "ck"
    pretrain(TINY + RAMP + ["--train-iters", "6", "--save", str(save)])
    # batches 4, 4, 4 | 8, 8 | 12: the count changes before iterations 4 and 6 (as Megatron); the end saves 6
    assert sorted(p.name for p in save.iterdir() if p.name.startswith("iter_")) == [
        "iter_0000003", "iter_0000005", "iter_0000006"]


def test_resume_in_the_middle_of_a_ramp(tmp_path, capsys):
    save = str(tmp_path / "ck")
    full = pretrain(TINY + RAMP + ["--train-iters", "6"])
    capsys.readouterr()
    pretrain(TINY + RAMP + ["--train-iters", "3", "--lr-decay-iters", "6", "--save", save])
    resumed = pretrain(TINY + RAMP + ["--train-iters", "6", "--load", save])
    rows = _log(capsys.readouterr().out)
    assert [r[:2] for r in rows[-3:]] == [(8, 20), (8, 28), (12, 40)]  # the ramp goes on from 12 samples
    assert resumed == pytest.approx(full[3:], rel=1e-5)


def test_step_schedule_in_tokens_as_megatron():
    assert parse_step_schedule("0:16 2.4B:320 4.8B:624", 2048) == [(0, 16), (2400000000 // 2048, 320),
                                                                   (4800000000 // 2048, 624)]
    with pytest.raises(ValueError, match="the first threshold must be 0"):
        parse_step_schedule("10K:16", 2048)
    with pytest.raises(ValueError, match="must not decrease"):
        parse_step_schedule("0:16 10K:8", 2048)
    # seq 16: 64 tokens = 4 samples, 160 tokens = 10 samples
    args = _validate(TINY + ["--step-batch-size-schedule", "0:2 64:4 160:6", "--train-samples", "30"])
    assert args.global_batch_size == 6
    # batches 2 (0), 2 (2), 4 (4), 4 (8), 6 (12), 6 (18), 6 (24): while consumed < 30
    assert args.train_iters == 7
    with pytest.raises(ValueError, match="--global-batch-size 8 disagrees with --step-batch-size-schedule"):
        _validate(TINY + ["--step-batch-size-schedule", "0:2 64:4", "--global-batch-size", "8",
                          "--train-iters", "2"])


def test_step_schedule_trains(capsys):
    pretrain(TINY + ["--step-batch-size-schedule", "0:2 64:4 160:6", "--train-samples", "30"])
    assert [r[0] for r in _log(capsys.readouterr().out)] == [2, 2, 4, 4, 6, 6, 6]


def test_token_lengths_are_megatron_deepspeeds():
    # seq 16: 320 tokens = 20 samples; --train-tokens stops at the first batch that reaches it
    args = _validate(TINY + ["--global-batch-size", "4", "--train-samples", "400", "--train-tokens", "330"])
    assert args.train_iters == 6  # 6 x 4 x 16 = 384 >= 330 > 320
    tokens = _validate(TINY + ["--global-batch-size", "4", "--train-samples", "400", "--lr-warmup-tokens", "128",
                               "--lr-decay-tokens", "1024"])
    samples = _validate(TINY + ["--global-batch-size", "4", "--train-samples", "400", "--lr-warmup-samples", "8",
                                "--lr-decay-samples", "64"])
    assert (tokens.lr_warmup_steps, tokens.lr_decay_steps) == (samples.lr_warmup_steps, samples.lr_decay_steps)
    with pytest.raises(ValueError, match="--lr-warmup-tokens 2048 must be smaller"):
        _validate(TINY + ["--train-iters", "4", "--lr-warmup-tokens", "2048", "--lr-decay-tokens", "1024"])
    a = pretrain(TINY + ["--global-batch-size", "4", "--train-samples", "400", "--train-tokens", "330",
                         "--lr-warmup-tokens", "128", "--lr-decay-tokens", "1024"])
    b = pretrain(TINY + ["--global-batch-size", "4", "--train-samples", "24", "--lr-warmup-samples", "8",
                         "--lr-decay-samples", "64"])
    assert a == b and len(a) == 6


def test_rampup_under_pipeline_parallelism_matches_one_rank():
    """PP 2: each micro-batch count of the ramp gets its schedule; losses as the one-rank run."""
    argv = TINY + ["--num-layers", "2", "--global-batch-size", "8", "--rampup-batch-size", "4", "2", "8",
                   "--train-iters", "4"]
    one = pretrain(argv)
    two = run_distributed(_ramp_run, 2, argv + ["--pipeline-model-parallel-size", "2"])
    assert two[-1] == pytest.approx(one, rel=1e-5)  # the last stage reports the loss
