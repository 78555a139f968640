"""Log sinks and exits: Megatron's validation line, clear messages for missing optional packages,
--exit-duration-in-mins saving before it stops."""
import importlib.util
import os

import pytest
import torch

from megatron_sp.sequence_parallel import attention_summary
from megatron_sp import checkpointing as ckpt
from megatron_sp.training.logging import MetricsWriter, eval_line
from megatron_sp.training.loop import pretrain

TINY = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 128 --num-layers 1 --hidden-size 32 "
        "--num-attention-heads 4 --seq-length 32 --micro-batch-size 2 --global-batch-size 2 --lr 1e-3 "
        "--log-interval 1 --hidden-dropout 0 --attention-dropout 0").split()


def test_validation_line_format():
    text = eval_line(10, 2.0)
    assert " validation loss at iteration 10 | lm loss value: 2.000000E+00 | lm loss PPL: 7.389056E+00 | " in text


def test_eval_interval_prints_validation_loss_and_the_test_set_at_the_end(capsys):
    pretrain(TINY + ["--train-iters", "2", "--eval-interval", "1", "--eval-iters", "2"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "validation loss at iteration" in ln]
    assert [ln.split("|")[0].strip() for ln in lines] == [
        "validation loss at iteration 1", "validation loss at iteration 2",
        "validation loss at iteration 2 on test set"]  # Megatron's end-of-training test evaluation
    assert all("lm loss PPL" in ln for ln in lines)


def _fp16_backoff_log(capsys, log_interval):
    argv = TINY + ["--train-iters", "12", "--log-interval", str(log_interval), "--eval-interval", "0", "--fp16",
                   "--initial-loss-scale", str(2 ** 22)]
    losses, ctx = pretrain(argv, return_context=True)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(" iteration ")]
    skipped = [int(ln.split("number of skipped iterations:")[1].split("|")[0]) for ln in lines]
    logged = [float(ln.split("lm loss:")[1].split("|")[0]) if "lm loss:" in ln else None for ln in lines]
    return losses, ctx.state.skipped_iterations, skipped, logged


def test_log_line_counts_per_interval_and_averages_advanced_iterations(capsys):
    """As Megatron: skipped / NaN counts are per log interval; lm loss is the mean over the
    interval's advanced iterations and is left out when every one was skipped."""
    losses, _, each, _ = _fp16_backoff_log(capsys, 1)  # which iterations advance (deterministic)
    advanced = [n == 0 for n in each]
    same, total, skipped, logged = _fp16_backoff_log(capsys, 4)
    assert same == losses and len(skipped) == 3
    assert skipped == [4 - sum(advanced[k:k + 4]) for k in (0, 4, 8)] and sum(skipped) == total
    assert skipped[0] == 4 and logged[0] is None  # the scale backs off: nothing advanced, no lm loss
    assert 0 < skipped[1] < 4, skipped  # a mixed interval: its mean must leave the skipped steps out
    for k in (1, 2):
        mine = [x for x, adv in zip(losses[4 * k:4 * k + 4], advanced[4 * k:4 * k + 4]) if adv]
        assert abs(logged[k] - sum(mine) / len(mine)) <= 1e-6 * logged[k], (k, logged, mine)


def _real_data_run(tmp_path, capsys, split):
    from test_data_common import make_data
    prefix, _ = make_data(tmp_path / "d", n_docs=30)  # token ids below 31000
    argv = [a for a in TINY if a != "--mock-data"]
    argv[argv.index("--vocab-size") + 1] = "31000"
    pretrain(argv + ["--data-path", prefix, "--split", split, "--data-cache-path", str(tmp_path / "c"),
                     "--train-iters", "2", "--eval-interval", "1", "--eval-iters", "1"])
    return capsys.readouterr().out


def test_a_split_of_weight_zero_has_no_dataset_and_no_evaluation(tmp_path, capsys):
    out = _real_data_run(tmp_path, capsys, "1,2")  # no test split: trains, validates, no test line
    assert "no test split (--split 1,2 gives it weight 0)" in out
    assert out.count("validation loss at iteration") == 2 and "on test set" not in out
    out = _real_data_run(tmp_path, capsys, "100,0,0")
    assert "no validation split (--split 100,0,0 gives it weight 0)" in out
    assert "validation loss" not in out and "iteration        2/" in out


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_startup_summary_names_the_attention_kernel(capsys):
    pretrain(TINY + ["--train-iters", "1", "--eval-interval", "0"])
    out = capsys.readouterr().out
    assert "> attention: --cp-comm-type p2p over CP 1: block kernel cpu_flash" in out
    assert "WARNING: --attention-dropout" not in out


def test_attention_dropout_falling_back_to_the_quadratic_kernel_is_said(capsys):
    argv = [a for a in TINY]
    argv[argv.index("--attention-dropout") + 1] = "0.1"
    pretrain(argv + ["--train-iters", "1", "--eval-interval", "0"])
    out = capsys.readouterr().out
    assert "block kernel reference" in out
    assert "WARNING: --attention-dropout 0.1 > 0 runs attention through the reference kernel" in out
    assert "--attention-dropout 0 for the flash kernels" in out
    # what it costs, from the memory model: 6 fp32 blocks [b 2, heads 4, 32, 32] at a layer's backward
    assert f"({6 * 2 * 4 * 32 * 32 * 4 / 1e9:.3g} GB at a layer's backward at this length)" in out


def test_attention_summary_of_rsa_and_of_a_forced_kernel():
    line, warning = attention_summary("rsa", 4, torch.device("cpu"), torch.float32, 0.1)
    assert "full score rows [s/4 x s]" in line and warning is None
    line, warning = attention_summary("a2a", 2, torch.device("cpu"), torch.float32, 0.1, kernel="reference")
    assert "block kernel reference (fp32 scores of each block materialised" in line and warning is None  # asked for


def test_missing_tensorboard_is_a_clear_error(tmp_path, capsys):
    import pretrain_gpt
    rc = pretrain_gpt.main(TINY + ["--train-iters", "1", "--tensorboard-dir", str(tmp_path)])
    assert rc == 2 and "pip install tensorboard" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_missing_wandb_is_a_clear_error():
    import types
    args = types.SimpleNamespace(tensorboard_dir=None, wandb_project="p", wandb_exp_name=None, wandb_save_dir=None,
                                 save=None)
    with pytest.raises(ValueError, match="--wandb-project p needs the wandb package"):
        MetricsWriter(args, True)


def test_exit_duration_saves_then_stops(tmp_path, capsys):
    save = str(tmp_path / "ck")
    losses, ctx = pretrain(TINY + ["--train-iters", "50", "--eval-interval", "0", "--save", save,
                                   "--exit-duration-in-mins", "0"], return_context=True)
    assert len(losses) == 1 and ckpt.read_tracker(save) == 1
    assert "--exit-duration-in-mins 0.0 reached" in capsys.readouterr().out
    ckpt.checkpoint_dir(save, 1)
    assert os.path.isdir(os.path.join(save, "iter_0000001", "rng"))
