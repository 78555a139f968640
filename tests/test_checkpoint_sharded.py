"""torch_dist checkpoints (torch.distributed.checkpoint): exact resume in every sharding mode,
resume across layouts and modes, bounded memory while saving, async saves, full disks and
the older single-file format (issue: FSDP2 / distributed checkpoint)."""
import json
import os

import pytest

from dist_utils import run_distributed
from megatron_sp import checkpointing as ckpt
from megatron_sp.training.loop import pretrain

BASE = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 100 --num-layers 2 --hidden-size 32 "
        "--num-attention-heads 4 --seq-length 32 --micro-batch-size 1 --global-batch-size 4 --lr 5e-3 "
        "--hidden-dropout 0 --attention-dropout 0 --log-interval 100 --eval-interval 0 --seed 3 "
        "--group-query-attention --num-query-groups 2 --position-embedding-type rope --swiglu "
        "--normalization RMSNorm").split()
TP2_CP2 = "--tensor-model-parallel-size 2 --sequence-parallel --context-parallel-size 2".split()


def _pretrain(rank, world, argv):
    return pretrain(argv)


def _run(world, argv, timeout=300):
    return run_distributed(_pretrain, world, BASE + argv, timeout=timeout)[-1]


@pytest.mark.parametrize("world,flags", [(4, TP2_CP2 + ["--use-torch-fsdp2"]),
                                         (4, ["--context-parallel-size", "2", "--use-distributed-optimizer",
                                              "--async-save"])])
def test_exact_resume_with_sharded_state(tmp_path, world, flags):
    save = str(tmp_path / "ck")
    full = _run(world, flags + ["--train-iters", "4"])
    first = _run(world, flags + ["--train-iters", "4", "--save", save, "--exit-interval", "2"])
    assert ckpt.read_tracker(save) == 2 and len(first) == 2
    second = _run(world, flags + ["--train-iters", "4", "--load", save, "--save", save])
    assert first + second == full  # bit for bit
    assert ckpt.read_tracker(save) == 4
    meta = ckpt.read_metadata(os.path.join(save, "iter_0000004"))
    assert meta["ckpt_format"] == "torch_dist" and meta["layout"]["cp"] == 2
    assert set(meta["checksums"]) == set(meta["files"])


@pytest.mark.parametrize("saver,loaders", [
    (TP2_CP2 + ["--use-torch-fsdp2"], [(4, ["--context-parallel-size", "4"]), (1, [])]),
    ([], [(4, TP2_CP2 + ["--use-torch-fsdp2"]), (4, ["--context-parallel-size", "2",
                                                     "--use-distributed-optimizer"])]),
    (TP2_CP2 + ["--use-distributed-optimizer", "--ckpt-format", "torch"],
     [(2, ["--context-parallel-size", "2", "--use-torch-fsdp2"])]),
])
def test_resume_across_layouts_and_sharding_modes(tmp_path, saver, loaders):
    """Saved after iteration 2 of 3 in one layout and mode, the next loss in another is the
    uninterrupted run's third loss (1e-5)."""
    save = str(tmp_path / "ck")
    world = 4 if saver else 1
    ref = _run(world, saver + ["--train-iters", "3", "--save", save, "--save-interval", "2"])
    ckpt.write_text_atomic(os.path.join(save, ckpt.TRACKER), "2\n")
    for w, flags in loaders:
        nxt = _run(w, flags + ["--train-iters", "3", "--load", save])
        assert len(nxt) == 1 and abs(nxt[0] - ref[2]) <= 1e-5 * abs(ref[2]), (flags, nxt, ref)


def _save_peak(rank, world, argv):
    """Bytes of this rank's model state, and the RSS high-water mark above the baseline during one save."""
    from megatron_sp.checkpointing import save_checkpoint
    from megatron_sp.distributed import local
    from megatron_sp.scaling.trial import PeakMeter, configure_malloc
    configure_malloc()
    _, ctx = pretrain(argv, return_context=True)
    import torch
    state = sum(local(p).numel() * 4 for p in ctx.model.parameters())
    state += sum(local(t).numel() * t.element_size() for s in ctx.optimizer.optimizer.state.values()
                 for t in s.values() if torch.is_tensor(t))
    meter = PeakMeter(ctx.device)
    meter.start()
    ctx.state.iteration += 1
    save_checkpoint(ctx)
    return state, meter.peak()


def test_no_rank_holds_more_than_its_shard_while_saving(tmp_path):
    """torch_dist: a rank's save costs bounded buffers (DCP writes from the tensors themselves, the
    checksum streams through 1 MiB), whatever its shard; the torch format gathers the whole model on rank 0."""
    model = ("--num-layers 2 --hidden-size 256 --num-attention-heads 4 --vocab-size 8000 --ffn-hidden-size 1024 "
             "--train-iters 1").split()
    argv = BASE + model + ["--context-parallel-size", "2", "--use-torch-fsdp2"]
    dist_out = run_distributed(_save_peak, 4, argv + ["--save", str(tmp_path / "a")], timeout=300)
    torch_out = run_distributed(_save_peak, 4, argv + ["--save", str(tmp_path / "b"), "--ckpt-format", "torch"],
                                timeout=300)
    full = sum(s for s, _ in dist_out)
    for shard, peak in dist_out:
        assert shard > 10 * 2 ** 20 and peak <= 4 * 2 ** 20, (shard, peak)
    assert torch_out[0][1] >= 0.8 * full, (full, torch_out[0])  # the gather on rank 0


def test_full_disk_during_a_save_stops_every_rank_with_one_line(tmp_path, monkeypatch):
    save = str(tmp_path / "ck")
    monkeypatch.setenv("MEGATRON_SP_CHECKPOINT_FAULT", "4:1:enospc")

    def run(rank, world, argv):
        try:
            pretrain(argv)
        except ValueError as exc:
            return str(exc)
        return None

    messages = run_distributed(run, 2, BASE + ["--context-parallel-size", "2", "--use-torch-fsdp2", "--train-iters",
                                               "6", "--save", save, "--save-interval", "2"])
    assert all(m and "iteration 4" in m and "No space left on device" in m and "GiB free on" in m
               and save in m for m in messages), messages
    assert ckpt.read_tracker(save) == 2
    ckpt.checkpoint_dir(save, 2)


def _full_disk_in_dcp(rank, world, argv):
    """Rank 1's DCP write of the second save fails as on a full disk (DCP then raises its
    CheckpointException, a BaseException, on every rank)."""
    import errno
    from megatron_sp.checkpointing import torch_dist
    calls, write = [], torch_dist.RecordingWriter.write_data

    def failing(self, plan, planner):
        calls.append(1)
        if rank == 1 and len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(self, plan, planner)

    torch_dist.RecordingWriter.write_data = failing
    try:
        pretrain(argv)
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("extra", [[], ["--async-save"]], ids=["sync", "async"])
def test_full_disk_inside_the_dcp_write_stops_every_rank_with_one_line(tmp_path, extra):
    save = str(tmp_path / "ck")
    messages = run_distributed(_full_disk_in_dcp, 2, BASE + extra + ["--use-distributed-optimizer", "--train-iters",
                                                                     "6", "--save", save, "--save-interval", "2"])
    assert all(m and "iteration 4" in m and "failed on rank 1" in m and "No space left on device" in m
               and "\n" not in m for m in messages), messages
    assert ckpt.read_tracker(save) == 2
    ckpt.checkpoint_dir(save, 2)


def test_an_older_single_file_checkpoint_loads(tmp_path):
    """A format-version-1 checkpoint (model_optim.pt, no checksums) loads into a sharded run."""
    save = str(tmp_path / "ck")
    ref = _run(1, ["--train-iters", "3", "--save", save, "--save-interval", "2", "--ckpt-format", "torch"])
    path = os.path.join(save, "iter_0000002")
    meta = ckpt.read_metadata(path)
    for key in ("checksums", "ckpt_format", "sharding"):
        meta.pop(key)
    meta["format_version"] = 1
    with open(os.path.join(path, ckpt.METADATA), "w") as f:
        json.dump(meta, f)
    ckpt.write_text_atomic(os.path.join(save, ckpt.TRACKER), "2\n")
    nxt = _run(2, ["--train-iters", "3", "--load", save, "--use-distributed-optimizer"])
    assert abs(nxt[0] - ref[2]) <= 1e-5 * abs(ref[2])
