"""Faults in real torchrun jobs: kill -9 of a rank during a save, SIGTERM with --exit-signal-handler."""
import os
import re
import signal
import subprocess
import sys
import time

from megatron_sp import checkpointing as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 128 --num-layers 2 --hidden-size 32 "
         "--num-attention-heads 4 --seq-length 32 --micro-batch-size 2 --global-batch-size 4 --lr 1e-3 "
         "--hidden-dropout 0 --attention-dropout 0 --log-interval 1 --eval-interval 0 "
         "--tensor-model-parallel-size 2 --sequence-parallel").split()


def _cmd(*extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            os.path.join(ROOT, "pretrain_gpt.py"), *FLAGS, *extra]


def _env(fault=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MEGATRON_SP_CHECKPOINT_FAULT", None)
    if fault:
        env["MEGATRON_SP_CHECKPOINT_FAULT"] = fault
    return env


def _run(*extra, fault=None):
    return subprocess.run(_cmd(*extra), env=_env(fault), cwd=ROOT, capture_output=True, text=True, timeout=240)


def _losses(stdout):
    return {int(m.group(1)): float(m.group(2))
            for m in re.finditer(r"iteration\s+(\d+)/\s*\d+ \|.*?lm loss: (\S+) \|", stdout)}


def test_kill_9_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    save = str(tmp_path / "ck")
    common = ["--train-iters", "6", "--save", save, "--save-interval", "2"]
    # rank 1 is SIGKILLed after writing its files of iteration 4, before the rename
    r = _run(*common, fault="4:1:files")
    assert r.returncode != 0
    assert ckpt.read_tracker(save) == 2
    ckpt.checkpoint_dir(save, 2)  # complete and loadable
    assert not os.path.exists(os.path.join(save, "iter_0000004"))
    first = _losses(r.stdout)
    # resume; this time rank 0 dies after renaming iteration 6, before the tracker update
    r = _run(*common, "--load", save, fault="6:0:rename")
    assert r.returncode != 0
    assert ckpt.read_tracker(save) == 4
    second = _losses(r.stdout)
    assert min(second) == 3 and second[3] == first[3]  # resumed at the data position of iteration 2
    assert max(second) == 6  # it trained to the end; only the tracker update of 6 was lost
    assert os.path.isdir(os.path.join(save, "iter_0000006"))  # complete but unreferenced: a rerun replaces it
    # (tests/test_checkpoint.py::test_stale_tmp_and_unreferenced_dirs_are_replaced covers that rerun)


def test_sigterm_saves_and_load_continues(tmp_path):
    save = str(tmp_path / "ck")
    log = open(tmp_path / "out.txt", "w+")
    proc = subprocess.Popen(_cmd("--train-iters", "100000", "--save", save, "--exit-signal-handler"),
                            env=_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and "iteration        2/" not in open(log.name).read():
            assert proc.poll() is None, open(log.name).read()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # torchrun forwards it to every worker
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = open(log.name).read()
    assert "exiting program at iteration" in out and "received SIGTERM" in out, out[-3000:]
    it = ckpt.read_tracker(save)
    assert it is not None and it >= 2
    ckpt.checkpoint_dir(save, it)
    r = _run("--train-iters", str(it + 1), "--load", save, "--override-opt_param-scheduler")  # shorter run
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"loaded checkpoint {os.path.join(save, ckpt.iter_dir_name(it))}" in r.stdout
    assert list(_losses(r.stdout)) == [it + 1]
