"""The foundation acceptance, through the real command line (torchrun, subprocesses)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCEPTANCE = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 512 --num-layers 2 --hidden-size 64 "
              "--num-attention-heads 4 --seq-length 128 --max-position-embeddings 128 --micro-batch-size 2 "
              "--global-batch-size 4 --train-iters 5 --lr 1e-3 --hidden-dropout 0 --attention-dropout 0 "
              "--log-interval 1").split()


def _run(nproc, flags, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if nproc == 1:
        cmd = [sys.executable, "pretrain_gpt.py"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--standalone", "pretrain_gpt.py"]
    return subprocess.run(cmd + flags, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _losses(stdout):
    return [float(x) for x in re.findall(r"\| lm loss: ([0-9.E+-]+) \|", stdout)]


def test_tp2_sequence_parallel_logs_the_one_rank_losses():
    one = _run(1, ACCEPTANCE)
    two = _run(2, ACCEPTANCE + ["--tensor-model-parallel-size", "2", "--sequence-parallel"])
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    ref, got = _losses(one.stdout), _losses(two.stdout)
    assert len(ref) == len(got) == 5, (one.stdout, two.stdout)
    assert abs(got[0] - ref[0]) <= 1e-5 * ref[0]
    assert abs(got[4] - ref[4]) <= 1e-4 * ref[4]
    line = next(ln for ln in two.stdout.splitlines() if "iteration        5/" in ln)
    for field in ("consumed samples:", "elapsed time per iteration (ms):", "learning rate:", "global batch size:",
                  "lm loss:", "loss scale:", "grad norm:", "number of skipped iterations:",
                  "number of nan iterations:", "throughput (tokens/s):", "TFLOP/s per device:"):
        assert field in line, field


@pytest.mark.parametrize("flags,needles", [
    ("--hidden-size 48 --num-attention-heads 3 --tensor-model-parallel-size 2", ["3", "2", "--num-attention-heads",
                                                                                "--tensor-model-parallel-size"]),
])
def test_bad_layout_exits_non_zero_with_one_clear_line_on_every_rank(flags, needles):
    argv = [a for a in ACCEPTANCE]
    for flag in ("--hidden-size", "--num-attention-heads"):
        i = argv.index(flag)
        del argv[i:i + 2]
    result = _run(2, argv + flags.split(), timeout=120)
    assert result.returncode != 0
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    # Each rank prints the same single line (torchrun may kill the second before it does;
    # tests/test_gpt_layouts.py checks every rank in-process).
    assert 1 <= len(errors) <= 2 and len(set(errors)) == 1, result.stderr[-3000:]
    assert all(n in errors[0] for n in needles), errors
