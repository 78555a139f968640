"""The data position is the consumed-sample count (issue 14, case 1).

Resuming with another ``--global-batch-size`` continues the data where the checkpoint
left it: a run saved at GBS 16 after 4 iterations (64 samples) and resumed at GBS 4
trains on samples 64, 65, ... -- never on samples 0.. again.  A dataset that cannot
provide a position stops the run with a message instead of wrapping around.
"""
import types

import pytest
import torch

import megatron_sp.training.loop as loop
from megatron_sp.data.mock_dataset import sample_dict
from megatron_sp.parallel_state import single_rank_mesh
from megatron_sp.training.batches import build_datasets, global_batches, micro_batches
from megatron_sp.training.loop import pretrain

TINY = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 128 --num-layers 1 --hidden-size 16 "
        "--num-attention-heads 2 --seq-length 16 --micro-batch-size 4 --lr 1e-3 --log-interval 100 "
        "--eval-interval 0 --hidden-dropout 0 --attention-dropout 0").split()


def _recording(monkeypatch):
    """Record (start sample, tokens) of every training batch the loop takes."""
    seen = []

    def spy(dataset, start, count, args, mesh, device, schedule=None):
        for i, batches in enumerate(global_batches(dataset, start, count, args, mesh, device, schedule)):
            seen.append((start + i * args.global_batch_size, torch.cat([b["tokens"] for b in batches])))
            yield batches

    monkeypatch.setattr(loop, "global_batches", spy)
    return seen


def test_resume_with_another_global_batch_size_continues_the_data(tmp_path, monkeypatch):
    save = str(tmp_path / "ck")
    pretrain(TINY + ["--global-batch-size", "16", "--train-iters", "4", "--save", save])
    seen = _recording(monkeypatch)
    _, ctx = pretrain(TINY + ["--global-batch-size", "4", "--train-iters", "7", "--load", save, "--save", save,
                             "--override-opt_param-scheduler"],
                      return_context=True)
    assert ctx.state.consumed_samples == 64 + 3 * 4
    reference = build_datasets(ctx.args, ctx.tokenizer, train_samples=1000)[0]  # sample i: the same in a longer one
    assert [start for start, _ in seen] == [64, 68, 72]
    for start, tokens in seen:
        expected = torch.stack([reference[start + i]["tokens"] for i in range(4)])
        assert torch.equal(tokens, expected), f"the batch at consumed samples {start} is not samples {start}.."


def test_a_dataset_that_cannot_provide_the_position_stops_with_a_message():
    args = types.SimpleNamespace(micro_batch_size=2, num_micro_batches=1, seq_length=8, cp_comm_type="p2p",
                                 global_batch_size=2)
    short = [sample_dict(torch.arange(9) + i) for i in range(6)]
    micro_batches(short, 4, args, single_rank_mesh(), torch.device("cpu"))  # samples 4, 5: fine
    with pytest.raises(ValueError, match=r"6 samples.*samples \[6, 8\)"):
        micro_batches(short, 6, args, single_rank_mesh(), torch.device("cpu"))
