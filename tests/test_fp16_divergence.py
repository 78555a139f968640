"""A diverged fp16 run stops (issue 14, case 3).

Once the loss is NaN every fp16 step overflows and is skipped; the scale falls to
--min-loss-scale and sits there.  The run used to go on to --train-iters and exit 0.
Now, after --max-skips-at-min-loss-scale consecutive skipped iterations at the minimum
scale (default 10), every rank stops with one error line, and no checkpoint is written
while the run skips at the minimum scale.
"""
import os

import pytest

from megatron_sp import checkpointing as ckpt
from megatron_sp.training.loop import pretrain

TINY = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 128 --num-layers 1 --hidden-size 16 "
        "--num-attention-heads 2 --seq-length 16 --micro-batch-size 2 --global-batch-size 2 "
        "--log-interval 1 --eval-interval 0 --hidden-dropout 0 --attention-dropout 0").split()
# lr 1e10: the first step throws the weights to ~1e10, every fp16 forward after it overflows
DIVERGING = TINY + ["--fp16", "--lr", "1e10", "--initial-loss-scale", "4", "--hysteresis", "1",
                    "--train-iters", "40"]


def test_a_diverged_fp16_run_stops_after_the_default_bound(capsys):
    import pretrain_gpt
    rc = pretrain_gpt.main(DIVERGING)
    out, err = capsys.readouterr()
    assert rc == 3, out[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "10 consecutive iterations skipped at the minimum loss scale 1" in lines[0]
    assert "--max-skips-at-min-loss-scale" in lines[0]
    # iteration 1 advances, 2 and 3 back the scale off 4 -> 2 -> 1, then 10 skips at the minimum
    assert " iteration       13/" in out and " iteration       14/" not in out


def test_the_bound_is_a_flag_and_nothing_is_saved_while_skipping_at_the_minimum(tmp_path):
    save = str(tmp_path / "ck")
    with pytest.raises(FloatingPointError, match="3 consecutive iterations skipped .* iterations 4-6"):
        pretrain(DIVERGING + ["--max-skips-at-min-loss-scale", "3", "--save", save, "--save-interval", "1"])
    assert ckpt.read_tracker(save) == 3  # iterations 4.. skipped at the minimum scale: not saved
    assert not os.path.exists(os.path.join(save, "iter_0000004"))
    losses = pretrain(DIVERGING + ["--max-skips-at-min-loss-scale", "0", "--train-iters", "8"])  # 0: off
    assert len(losses) == 8


def _diverge(rank, world, argv):
    try:
        pretrain(argv)
    except FloatingPointError as exc:
        return str(exc)
    return "ran to the end"


def test_every_rank_stops_at_the_same_iteration():
    from dist_utils import run_distributed
    out = run_distributed(_diverge, 2, DIVERGING + ["--global-batch-size", "4", "--max-skips-at-min-loss-scale", "3"])
    assert out[0] == out[1] and "iterations 4-6" in out[0], out
