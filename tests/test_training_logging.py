"""Log sinks and exits: Megatron's validation line, clear messages for missing optional packages,
--exit-duration-in-mins saving before it stops."""
import importlib.util
import os

import pytest
import torch

from megatron_sp.sequence_parallel import attention_summary
from megatron_sp.training import checkpointing as ckpt
from megatron_sp.training.logging import MetricsWriter, eval_line
from megatron_sp.training.loop import pretrain

TINY = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 128 --num-layers 1 --hidden-size 32 "
        "--num-attention-heads 4 --seq-length 32 --micro-batch-size 2 --global-batch-size 2 --lr 1e-3 "
        "--log-interval 1 --hidden-dropout 0 --attention-dropout 0").split()


def test_validation_line_format():
    text = eval_line(10, 2.0)
    assert " validation loss at iteration 10 | lm loss value: 2.000000E+00 | lm loss PPL: 7.389056E+00 | " in text


def test_eval_interval_prints_validation_loss(capsys):
    pretrain(TINY + ["--train-iters", "2", "--eval-interval", "1", "--eval-iters", "2"])
    out = capsys.readouterr().out
    assert out.count("validation loss at iteration") == 2 and "lm loss PPL" in out


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


def test_attention_summary_of_rsa_and_of_a_forced_kernel():
    line, warning = attention_summary("rsa", 4, torch.device("cpu"), torch.float32, 0.1)
    assert "full score rows [s/4 x s]" in line and warning is None
    line, warning = attention_summary("a2a", 2, torch.device("cpu"), torch.float32, 0.1, kernel="reference")
    assert line.endswith("block kernel reference") and warning is None  # asked for: no warning


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
