"""Checkpoints: exact resume, resume into another layout, retention, load flags, clear errors."""
import json
import os

import pytest
import torch

from dist_utils import run_distributed
from megatron_sp import checkpointing as ckpt
from megatron_sp.checkpointing import torch_dist
from megatron_sp.training.loop import pretrain

TINY = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 128 --num-layers 2 --hidden-size 32 "
        "--num-attention-heads 4 --seq-length 32 --micro-batch-size 1 --global-batch-size 4 --lr 1e-3 "
        "--log-interval 100 --eval-interval 0").split()
NO_DROPOUT = ["--hidden-dropout", "0", "--attention-dropout", "0"]


def _pretrain(rank, world, argv):
    losses, ctx = pretrain(argv, return_context=True)
    return losses, ctx.state.iteration, ctx.state.consumed_samples


def test_exact_resume_bit_for_bit(tmp_path):
    """2N iterations == N, exit, resume N more in new processes (dropout on: RNG streams restored too;
    evaluation in between must not disturb them)."""
    layout = ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--hidden-dropout", "0.1",
              "--attention-dropout", "0.1", "--train-iters", "6", "--eval-interval", "2", "--eval-iters", "1"]
    full, _, _ = run_distributed(_pretrain, 2, TINY + layout)[0]
    save = str(tmp_path / "ck")
    first, it, consumed = run_distributed(_pretrain, 2, TINY + layout + ["--save", save, "--exit-interval", "3"])[0]
    assert (it, consumed) == (3, 12) and len(first) == 3
    assert ckpt.read_tracker(save) == 3
    second, it, consumed = run_distributed(_pretrain, 2, TINY + layout + ["--load", save, "--save", save])[0]
    assert (it, consumed) == (6, 24)
    assert first + second == full  # bit for bit
    assert ckpt.read_tracker(save) == 6


def test_resume_into_other_layouts(tmp_path):
    """Saved at TP2 x CP2, loaded at CP4 and at 1 rank: the same next-iteration loss (1e-5)."""
    save = str(tmp_path / "ck")
    base = TINY + NO_DROPOUT + ["--train-iters", "3"]
    ref, _, _ = run_distributed(_pretrain, 4, base + ["--tensor-model-parallel-size", "2", "--sequence-parallel",
                                                      "--context-parallel-size", "2", "--save", save,
                                                      "--save-interval", "2"])[0]
    os.remove(os.path.join(save, ckpt.TRACKER))  # point the tracker back at iteration 2
    ckpt.write_text_atomic(os.path.join(save, ckpt.TRACKER), "2\n")
    cp4, it, _ = run_distributed(_pretrain, 4, base + ["--context-parallel-size", "4", "--load", save])[0]
    assert it == 3 and len(cp4) == 1
    one, _, _ = _pretrain(0, 1, base + ["--load", save])
    assert abs(cp4[0] - ref[2]) <= 1e-5 * abs(ref[2]), (cp4, ref)
    assert abs(one[0] - ref[2]) <= 1e-5 * abs(ref[2]), (one, ref)


def _single(tmp_path, *extra, iters=2):
    return pretrain(TINY + NO_DROPOUT + ["--train-iters", str(iters), *extra], return_context=True)


def test_keep_last_n_and_load_flags(tmp_path):
    save = str(tmp_path / "ck")
    _single(tmp_path, "--save", save, "--save-interval", "1", "--keep-last-n-checkpoints", "2", iters=4)
    assert sorted(os.listdir(save)) == ["iter_0000003", "iter_0000004", ckpt.TRACKER]
    meta = ckpt.read_metadata(os.path.join(save, "iter_0000004"))
    assert meta["iteration"] == 4 and meta["consumed_samples"] == 16 and meta["layout"]["tp"] == 1
    model = ckpt.read_full_model(os.path.join(save, "iter_0000004"))
    assert model["embedding.weight"].shape == (128, 32)  # global shape, by name (NullTokenizer: V ids)
    keys = torch_dist.saved_keys(os.path.join(save, "iter_0000004"))
    assert {f"optimizer.embedding.weight.{k}" for k in ("exp_avg", "exp_avg_sq", "step")} <= set(keys)

    _, ctx = _single(tmp_path, "--load", save, "--finetune", iters=0)
    assert ctx.state.iteration == 0 and ctx.state.consumed_samples == 0
    assert all(not s for s in ctx.optimizer.optimizer.state.values())  # model only
    torch.testing.assert_close(dict(ctx.model.named_parameters())["embedding.weight"].detach(),
                               model["embedding.weight"], rtol=0, atol=0)
    _, ctx = _single(tmp_path, "--load", save, "--no-load-optim", "--no-load-rng", iters=4)
    assert ctx.state.iteration == 4 and not ctx.optimizer.optimizer.state


@pytest.mark.parametrize("fmt", ["torch_dist", "torch"])
def test_corrupt_or_incomplete_checkpoints_give_clear_errors(tmp_path, capsys, fmt):
    save = str(tmp_path / "ck")
    _single(tmp_path, "--save", save, "--ckpt-format", fmt, iters=1)
    good = os.path.join(save, "iter_0000001")

    # no tracker at all: a fresh start with a warning (as Megatron)
    losses, ctx = _single(tmp_path, "--load", str(tmp_path / "empty"), iters=1)
    assert ctx.state.iteration == 1 and "starting from iteration 0" in capsys.readouterr().out

    tracker = os.path.join(save, ckpt.TRACKER)
    ckpt.write_text_atomic(tracker, "7\n")
    with pytest.raises(ckpt.CheckpointError, match="iter_0000007 does not exist"):
        _single(tmp_path, "--load", save)
    ckpt.write_text_atomic(tracker, "seven\n")
    with pytest.raises(ckpt.CheckpointError, match="not an iteration number"):
        _single(tmp_path, "--load", save)
    ckpt.write_text_atomic(tracker, "1\n")

    with pytest.raises(ckpt.CheckpointError, match="--hidden-size 32, this run has 64"):
        pretrain(TINY[:TINY.index("--hidden-size")] + ["--hidden-size", "64"] + TINY[TINY.index("--hidden-size") + 2:]
                 + ["--train-iters", "2", "--load", save])

    name = ckpt.MODEL_FILE if fmt == "torch" else "__0_0.distcp"
    data_file = os.path.join(good, name)
    data = open(data_file, "rb").read()
    with open(data_file, "wb") as f:  # truncated, as by a full disk
        f.write(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match=f"{name} has .* bytes"):
        _single(tmp_path, "--load", save)
    with open(data_file, "wb") as f:  # same size, one byte flipped: only the checksum sees it
        f.write(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(ckpt.CheckpointError, match=f"corrupt: {name} has CRC-32"):
        _single(tmp_path, "--load", save)
    with open(data_file, "wb") as f:
        f.write(data)

    os.remove(os.path.join(good, ckpt.METADATA))
    with pytest.raises(ckpt.CheckpointError, match="incomplete: metadata.json"):
        _single(tmp_path, "--load", save)

    # and pretrain_gpt.py turns it into one line and exit code 2
    import pretrain_gpt
    rc = pretrain_gpt.main(TINY + ["--train-iters", "2", "--load", save])
    assert rc == 2 and "incomplete" in capsys.readouterr().err


def test_stale_tmp_and_unreferenced_dirs_are_replaced(tmp_path):
    """What a kill during a save leaves behind (a *.tmp dir, a renamed dir the tracker does not name yet)."""
    save = str(tmp_path / "ck")
    _single(tmp_path, "--save", save, "--save-interval", "1", iters=2)
    os.rename(os.path.join(save, "iter_0000002"), os.path.join(save, "iter_0000003.tmp"))  # half-written
    ckpt.write_text_atomic(os.path.join(save, ckpt.TRACKER), "1\n")
    os.makedirs(os.path.join(save, "iter_0000002"))  # renamed but tracker never updated (here: junk)
    # 3 iterations instead of 2 change the default --lr-decay-iters: say which schedule wins (as Megatron)
    losses, ctx = _single(tmp_path, "--load", save, "--save", save, "--save-interval", "1",
                          "--override-opt_param-scheduler", iters=3)
    assert len(losses) == 2 and ckpt.read_tracker(save) == 3
    assert sorted(os.listdir(save)) == ["iter_0000001", "iter_0000002", "iter_0000003", ckpt.TRACKER]
    for it in (2, 3):
        ckpt.checkpoint_dir(save, it)  # complete
    assert json.load(open(os.path.join(save, "iter_0000002", ckpt.METADATA)))["iteration"] == 2


def test_a_run_that_would_overwrite_checkpoints_it_did_not_resume_from_stops(tmp_path):
    """The same command rerun without --load, or --finetune into the directory it loads from,
    stops at start-up with the fix; nothing on disk changes."""
    save = str(tmp_path / "ck")
    run = TINY + NO_DROPOUT + ["--train-iters", "2", "--save", save, "--save-interval", "1"]
    pretrain(run)
    before = {name: os.path.getmtime(os.path.join(save, name)) for name in os.listdir(save)}
    for extra in ([], ["--load", save, "--finetune"]):
        with pytest.raises(ckpt.CheckpointError, match=r"--save .*ck already holds checkpoints up to iteration 2 .*"
                                                       r"starts at iteration 0.*Resume with --load"):
            pretrain(run + extra)
        assert {n: os.path.getmtime(os.path.join(save, n)) for n in os.listdir(save)} == before
    losses = pretrain(TINY + NO_DROPOUT + ["--train-iters", "3", "--save", save, "--load", save,  # resuming is fine
                                           "--override-opt_param-scheduler"])  # (a longer run: new decay length)
    assert len(losses) == 1 and ckpt.read_tracker(save) == 3
