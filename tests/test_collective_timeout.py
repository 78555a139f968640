"""A hung rank times out (issue 14, case 4).

One rank of a torchrun job stops (SIGSTOP: to its peers it looks like a hung kernel or a
frozen node).  With ``--distributed-timeout-minutes 0.2`` its peers used to wait forever
in the CP ring P2P or in the DP gradient all-reduce: the timeout reached only the
default process group, not the subgroups those collectives use.  Now every group of the
mesh has the timeout, the waiting rank stops within it with one line naming the
collective and the group, and torchrun tears the job down.
"""
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 64 --num-layers 1 --hidden-size 16 "
         "--num-attention-heads 2 --seq-length 16 --micro-batch-size 1 --train-iters 50 --lr 1e-3 "
         "--log-interval 1 --eval-interval 0 --hidden-dropout 0 --attention-dropout 0 "
         "--distributed-timeout-minutes 0.2").split()
TIMEOUT_S = 12.0


def _reader(stream, name, q):
    for line in stream:
        q.put((time.monotonic(), name, line.rstrip("\n")))
    q.put((time.monotonic(), name, None))


def _hang(flags, fault, start_budget=150.0, budget=45.0):
    """Run 2 ranks where rank 1 stops at ``fault``; return (seconds from the stop to the error
    line, the error lines, torchrun's exit code, every line).  The job must reach the stop within
    ``start_budget`` seconds (start-up: slow only on a loaded machine) and end within ``budget``
    seconds after it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MEGATRON_SP_STOP_FAULT=fault)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "pretrain_gpt.py"] + FLAGS + flags
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    q = queue.Queue()
    for stream, name in ((proc.stdout, "out"), (proc.stderr, "err")):
        threading.Thread(target=_reader, args=(stream, name, q), daemon=True).start()
    lines, stopped_at, stopped_pid, errors, error_at, closed = [], None, None, [], None, 0
    deadline = time.monotonic() + start_budget
    try:
        while closed < 2 and time.monotonic() < deadline:
            try:
                t, name, line = q.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                closed += 1
                continue
            lines.append(line)
            m = re.search(r"fault: rank 1 \(pid (\d+)\) stops itself", line)
            if m:
                stopped_at, stopped_pid = t, int(m.group(1))
                deadline = t + budget
            if line.startswith("error:"):
                errors.append(line)
                error_at = error_at or t
            if stopped_pid and "closing signal SIGTERM" in line:
                os.kill(stopped_pid, signal.SIGCONT)  # let torchrun's SIGTERM reach the stopped rank
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert stopped_at is not None, "\n".join(lines[-30:])
    assert rc is not None, "the job was still running %.0f s after the stop:\n%s" % (budget, "\n".join(lines[-30:]))
    return (error_at - stopped_at if error_at else None), errors, rc, lines


@pytest.mark.parametrize("layout,fault,what", [
    (["--context-parallel-size", "2", "--cp-comm-type", "p2p", "--global-batch-size", "1"], "1:2:attention",
     r"send/recv \(ring P2P\) over the CP group \(global ranks 0, 1\)"),
    (["--global-batch-size", "2"], "1:2:backward",
     r"all_reduce \(gradient all-reduce, DDP\) over the DP x CP group \(global ranks 0, 1\)"),
], ids=["cp-ring-p2p", "dp-gradient-all-reduce"])
def test_a_stopped_rank_times_out_its_peers_and_torchrun_ends_the_job(layout, fault, what):
    waited, errors, rc, lines = _hang(layout, fault)
    text = "\n".join(lines[-40:])
    assert rc != 0, text
    assert waited is not None and waited < TIMEOUT_S + 15, (waited, text)
    assert len(errors) == 1 and errors[0].startswith("error: rank 0: "), text
    assert re.search(what, errors[0]) and "timed out after 12 s (--distributed-timeout-minutes 0.2)" in errors[0], \
        errors[0]
    assert any("closing signal SIGTERM" in ln for ln in lines), text  # torchrun tore the job down
    # no traceback from the ranks (torchrun prints its own ChildFailedError report)
    assert not any("pretrain_gpt.py\", line" in ln or "megatron_sp" in ln for ln in lines), text


def _sync_timeout(rank, world):
    import torch
    import torch.distributed as dist
    from megatron_sp.collective_errors import explain
    from megatron_sp.parallel_state import initialize_model_parallel
    mesh = initialize_model_parallel(2, 1, timeout_s=1.0)
    if rank == 1:
        time.sleep(2.5)  # never joins the all-reduce below
        return None
    try:
        dist.all_reduce(torch.ones(3), group=mesh.tp_group)
    except RuntimeError as exc:
        return explain(exc)
    return "no timeout"


def test_every_mesh_group_has_the_timeout_and_a_blocking_collective_is_named():
    """In-process (forked gloo ranks): the TP group's all-reduce ends after the mesh's 1 s timeout,
    and explain() names the collective and the group from the traceback."""
    from dist_utils import run_distributed
    message = run_distributed(_sync_timeout, 2)[0]
    assert message.startswith("rank 0: all_reduce over the TP group (global ranks 0, 1) timed out after 1 s "
                              "(--distributed-timeout-minutes 0.0166667)"), message


@pytest.mark.parametrize("layout", [
    "--num-layers 2 --pipeline-model-parallel-size 2",
    "--num-layers 4 --pipeline-model-parallel-size 2 --num-layers-per-virtual-pipeline-stage 1",
], ids=["pp2", "pp2-virtual-stages"])
def test_a_killed_pipeline_rank_gives_its_peer_one_line(layout):
    """kill -9 of one pipeline rank: the survivor, waiting in the pipelining library's P2P, prints
    the one "lost a peer" line naming the PP group (it used to print gloo's raw traceback)."""
    at = FLAGS.index("--num-layers")
    flags = FLAGS[:at] + FLAGS[at + 2:]  # the layout gives --num-layers
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MEGATRON_SP_STOP_FAULT="1:2:attention:kill")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "pretrain_gpt.py"] + flags + ["--global-batch-size", "2"] + layout.split()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    lines = (proc.stdout + proc.stderr).splitlines()
    text = "\n".join(lines[-40:])
    assert proc.returncode != 0, text
    assert any("stops itself with SIGKILL" in ln for ln in lines), text
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: rank 0: send/recv (pipeline P2P) over the PP group "
                                                     "(global ranks 0, 1) lost a peer"), text
    assert not any(ln.startswith("[rank0]:") for ln in lines), text  # no raw traceback from the survivor
