"""``make gpu-check`` on a machine without a GPU, and the GPU tests' one-process CP harness on CPU.

The CUDA tests themselves (tests/gpu) skip here; what can be checked without a GPU is that the
gpu-check refuses in one line with a non-zero status, and that the harness the CP-mode GPU test
uses (P simulated ranks in threads over the real ring / Ulysses code) reproduces full attention."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make gpu-check runs")
def test_gpu_check_without_a_gpu_is_one_line_and_fails(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_check.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU"), lines
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("mode,p", [("p2p", 4), ("a2a+p2p", 4), ("rsa", 2)])
def test_the_simulated_cp_ranks_reproduce_full_attention_on_cpu(mode, p):
    sys.path.insert(0, os.path.join(ROOT, "tests", "gpu"))
    try:
        import test_gpu_cp_modes as sim
    finally:
        sys.path.pop(0)
    got = sim.simulate(mode, p, torch.float32, "cpu")
    g = torch.Generator().manual_seed(p)
    q, dout = (torch.randn(sim.N, sim.B, sim.HQ, sim.D, generator=g) for _ in range(2))
    k, v = (torch.randn(sim.N, sim.B, sim.HKV, sim.D, generator=g) for _ in range(2))
    for a, b in zip(got, sim._full_reference(q, k, v, dout, True)):
        assert sim._rel(a, b) < 1e-5
