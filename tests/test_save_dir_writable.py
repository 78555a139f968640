"""An unwritable --save is found at start-up, on every rank (issue 14, errors users read).

It used to surface at the first save -- after hours of training -- as a raw
PermissionError / NotADirectoryError traceback from rank 0.  Now every rank probes the
directory (every rank writes its own files there at each save) before the first
iteration, and if any rank cannot write, every rank stops with one line naming the
rank, the path and the cause.
"""
import os

from dist_utils import run_distributed
from megatron_sp import checkpointing as ckpt
from megatron_sp.checkpointing import files
from megatron_sp.training.loop import pretrain

TINY = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 128 --num-layers 1 --hidden-size 16 "
        "--num-attention-heads 2 --seq-length 16 --micro-batch-size 2 --global-batch-size 2 --lr 1e-3 "
        "--log-interval 1 --eval-interval 0 --hidden-dropout 0 --attention-dropout 0 --train-iters 2").split()


def test_save_under_a_file_stops_before_the_first_iteration(tmp_path, capsys):
    import pretrain_gpt
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    rc = pretrain_gpt.main(TINY + ["--save", str(blocker / "ck"), "--save-interval", "1"])
    out, err = capsys.readouterr()
    assert rc == 2 and " iteration " not in out, out
    assert err.startswith(f"error: --save {blocker / 'ck'} is not writable") and err.count("\n") == 1, err


def _check_as_unprivileged(path):
    """check_save_dir(path) in a child process without write permission on ``path``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            if os.geteuid() == 0:  # root ignores permission bits: drop to nobody
                os.setgid(65534)
                os.setuid(65534)
            files.check_save_dir(path, 0)
            msg = "no error"
        except BaseException as exc:  # noqa: BLE001
            msg = f"{type(exc).__name__}: {exc}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        msg = f.read()
    os.waitpid(pid, 0)
    return msg


def test_a_read_only_save_dir_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        msg = _check_as_unprivileged(str(ro / "ck"))
        assert msg.startswith(f"CheckpointError: --save {ro / 'ck'} is not writable"), msg
        assert "Permission denied" in msg
        msg = _check_as_unprivileged(str(ro))
        assert msg.startswith(f"CheckpointError: --save {ro} is not writable"), msg
    finally:
        os.chmod(ro, 0o755)
    assert os.listdir(ro) == []  # the probe leaves nothing behind


def _one_rank_cannot_write(rank, world, argv, monkeypatch_rank):
    if rank == monkeypatch_rank:
        def denied(path):
            raise PermissionError(13, "Permission denied", os.path.join(path, "probe"))
        files._probe_writable = denied
    try:
        pretrain(argv)
    except ckpt.CheckpointError as exc:
        return str(exc)
    return "trained"


def test_every_rank_stops_when_one_rank_cannot_write(tmp_path):
    out = run_distributed(_one_rank_cannot_write, 2, TINY + ["--global-batch-size", "4", "--save",
                                                             str(tmp_path / "ck")], 1)
    assert out[0] == out[1] and "rank 1" in out[0] and "Permission denied" in out[0], out
    assert not os.path.exists(tmp_path / "ck" / ckpt.TRACKER)
