"""The memory planner (megatron_sp/scaling/planner.py, tools/plan_memory.py): its best layout fits
the budget by the memory model, its command line is one pretrain_gpt.py accepts, more devices
never plan a shorter sequence, and bad input is one line."""
import os
import subprocess
import sys

import pytest

from megatron_sp import memory as mm
from megatron_sp.scaling import planner
from megatron_sp.arguments import build_parser, validate_args
from megatron_sp.arguments.model_config import gpt_config
from megatron_sp.arguments.preflight import check_layout

ROOT = os.path.join(os.path.dirname(__file__), "..")
SMALL = ("--num-layers 4 --hidden-size 256 --num-attention-heads 8 --group-query-attention --num-query-groups 4 "
         "--ffn-hidden-size 704 --swiglu --normalization RMSNorm --disable-bias-linear "
         "--untie-embeddings-and-output-weights --vocab-size 32000 --position-embedding-type rope").split()
DEV_GB, HOST_GB = 0.5, 1.0


@pytest.fixture(scope="module")
def plans():
    return {n: planner.plan(SMALL, n, DEV_GB, HOST_GB, reserve_gb=0.05) for n in (1, 2, 4, 8)}


def test_best_layout_fits_its_budget_by_the_model(plans):
    for n, ps in plans.items():
        best = ps[0]
        assert best.world == n and best.seq_length > 0
        assert best.device_bytes <= DEV_GB * 1e9 and best.host_bytes <= HOST_GB * 1e9
        # the model again, from the plan's own flags: the same footprint, and one granule more does not fit
        args = build_parser().parse_args(best.argv())
        spec = mm.ModelSpec.from_flags(best.argv(), bf16=True)
        lay = best.layout.parallel
        spec.vocab_size = planner._padded_vocab(spec, lay.tp)
        d, h, _ = planner.footprint(spec, lay, args.seq_length, 0.05e9)
        assert d == pytest.approx(best.device_bytes) and h == pytest.approx(best.host_bytes)
        d2, h2, _ = planner.footprint(spec, lay, args.seq_length + best.layout.seq_granularity(), 0.05e9)
        assert d2 > DEV_GB * 1e9 or h2 > HOST_GB * 1e9
        assert [p.seq_length for p in ps] == sorted((p.seq_length for p in ps), reverse=True)


def test_command_line_parses_through_pretrain_gpt(plans):
    for n, ps in plans.items():
        for p in planner.runnable(ps, 3):
            args = validate_args(build_parser().parse_args(p.argv()), n)
            check_layout(args, gpt_config(args, 32000))
            assert args.seq_length == p.seq_length and args.context_parallel_size == p.layout.cp
            assert p.command().startswith(f"torchrun --nproc-per-node {n} pretrain_gpt.py ")


def test_more_devices_never_plan_shorter(plans):
    lengths = [plans[n][0].seq_length for n in (1, 2, 4, 8)]
    assert lengths == sorted(lengths) and lengths[-1] > 4 * lengths[0], lengths


def test_features_lengthen_the_plan():
    without = planner.plan(SMALL, 2, DEV_GB, HOST_GB, reserve_gb=0.05, features=())[0]
    assert without.options.loss_chunk == 0 and not without.options.mlp_chunk and not without.options.offload_layers
    assert "--cross-entropy-chunk-size 0" in " ".join(without.argv())
    with_all = planner.plan(SMALL, 2, DEV_GB, HOST_GB, reserve_gb=0.05)[0]
    assert with_all.seq_length > 2 * without.seq_length


def _cli(*argv):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "plan_memory.py"), *argv],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.parametrize("argv,needle", [
    (["--model", "llama-32k", "--devices", "0", "--device-memory-gb", "80", "--host-memory-gb", "1"], "--devices"),
    (["--model", "llama-32k", "--devices", "2", "--device-memory-gb", "-1", "--host-memory-gb", "1"],
     "--device-memory-gb"),
    (["--model", "llama-32k", "--devices", "2", "--device-memory-gb", "8", "--host-memory-gb", "1",
      "--reserve-gb", "9"], "--reserve-gb 9"),
    (["--model-args", "--hidden-size 64", "--devices", "2", "--device-memory-gb", "8", "--host-memory-gb", "1"],
     "--num-layers"),
    (["--devices", "2", "--device-memory-gb", "8", "--host-memory-gb", "1"], "no model"),
    (["--model", "nope", "--devices", "2", "--device-memory-gb", "8", "--host-memory-gb", "1"], "--model"),
])
def test_bad_input_is_one_line(argv, needle):
    r = _cli(*argv)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr


def test_cli_prints_ranking_breakdown_and_command():
    r = _cli("--model", "llama-32k", "--devices", "2", "--device-memory-gb", "0.5", "--host-memory-gb", "1",
             "--reserve-gb", "0.05", "--top", "3")
    assert r.returncode == 0, r.stderr
    assert "breakdown of the best" in r.stdout and "step peak" in r.stdout
    assert "torchrun --nproc-per-node 2 pretrain_gpt.py" in r.stdout
