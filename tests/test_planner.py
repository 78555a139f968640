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
from megatron_sp.arguments.parallel import ParallelConfig
from megatron_sp.arguments.preflight import check_layout, preflight

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


# --- plans that run as printed: the command's parsed values are the model's inputs ---------------
def _parsed(command: str):
    """The namespace pretrain_gpt.py builds from a printed command (its parser and start-up checks)."""
    import shlex
    words = shlex.split(command)
    argv = words[words.index("pretrain_gpt.py") + 1:]
    world = int(words[words.index("--nproc-per-node") + 1])
    if "--nnodes" in words:
        world *= int(words[words.index("--nnodes") + 1])
    return preflight(argv, world, on_this_machine=False).args


def _differences(a, b) -> dict:
    import dataclasses
    return {f.name: (getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
            if getattr(a, f.name) != getattr(b, f.name)}


# every preset at one device (llama-3-70b, which needs more, at 8 with the chunked loss only: fast)
PRESET_CASES = [(name, 1, planner.FEATURES) for name in ("tiny", "small", "llama-32k", "gpt-345m", "gpt-1.3b",
                                                          "gpt-7b", "llama-3-8b")] + [("llama-3-70b", 8, ("loss",))]


@pytest.mark.parametrize("preset,devices,features", PRESET_CASES)
def test_printed_command_parses_to_the_models_inputs(preset, devices, features):
    from megatron_sp.scaling.presets import MODEL_PRESETS
    plans = planner.plan(MODEL_PRESETS[preset].split(), devices, 80, 250, features=features)
    best = planner.runnable(plans, 2)
    assert best, preset
    for p in best:
        args = _parsed(p.command())
        # the model's inputs (spec, layout, length, batch) are what the run builds from the parsed flags
        assert p.spec == mm.ModelSpec.from_args(args), _differences(p.spec, mm.ModelSpec.from_args(args))
        assert p.layout.parallel == ParallelConfig.from_args(args)
        assert (args.seq_length, args.micro_batch_size) == (p.seq_length, 1)
        # what the planner assumed unless told: no dropout, a flash kernel (pretrain_gpt.py's defaults: 0.1, auto)
        assert args.hidden_dropout == args.attention_dropout == 0.0 and args.attention_backend == "flash"
        assert mm.attention_kernel(p.spec, p.layout.parallel) == "flash" and "flash kernel" in p.attention()


def test_every_kind_of_plan_parses_to_the_models_inputs(plans):
    """Not only the best: one plan of every recompute x tiling x offload x state-sharding kind."""
    seen = set()
    for p in plans[2]:
        kind = (p.options.recompute, bool(p.options.mlp_chunk), bool(p.options.offload_layers), p.layout.sharding,
                p.layout.offload)
        if kind in seen or planner.refusal(p, p.world):
            continue
        seen.add(kind)
        args = _parsed(p.command())
        assert p.spec == mm.ModelSpec.from_args(args), (kind, _differences(p.spec, mm.ModelSpec.from_args(args)))
        assert p.layout.parallel == ParallelConfig.from_args(args), kind
    assert len(seen) >= 30, seen


def test_attention_dropout_is_planned_with_the_reference_kernels_scores():
    """Model flags that ask for attention dropout: the command keeps it and runs ``auto`` (the reference
    kernel), the model counts its O(s^2) scores, so the plan is much shorter, and says why."""
    without = planner.plan(SMALL, 2, DEV_GB, HOST_GB, reserve_gb=0.05)[0]
    plans = planner.plan(SMALL + ["--attention-dropout", "0.1"], 2, DEV_GB, HOST_GB, reserve_gb=0.05)
    best = planner.runnable(plans, 1)[0]
    args = _parsed(best.command())
    assert (args.attention_dropout, args.hidden_dropout, args.attention_backend) == (0.1, 0.0, "auto")
    assert best.spec == mm.ModelSpec.from_args(args)
    assert best.spec.attention_dropout == 0.1 and mm.attention_kernel(best.spec, best.layout.parallel) == "reference"
    assert "reference kernel" in best.attention() and "O(s^2)" in best.attention()
    assert any(r[0].startswith("attention scores (reference kernel") for r in best.breakdown())
    assert best.seq_length < without.seq_length / 2, (best.seq_length, without.seq_length)


def test_fp32_plans_name_the_memory_efficient_kernel():
    p = planner.plan(SMALL, 1, DEV_GB, HOST_GB, reserve_gb=0.05, bf16=False)[0]
    assert "--attention-backend fused" in p.command() and "--bf16" not in p.command()
    assert planner.planned_model_flags(SMALL, bf16=False, device="cpu")[-1] == "flash"  # CPU: torch's flash op


def test_verify_dry_runs_the_plan_and_says_whether_it_fits():
    """``--verify`` dry-runs the chosen command (the fused attention it plans for fp32 is CUDA only:
    the CPU flash kernel stands in, and the report says so) and ends with a verdict whose exit
    status is 1 when the measured peak plus the reserve exceeds the budget."""
    import re
    import subprocess
    import sys
    cmd = [sys.executable, "tools/plan_memory.py", "--model-args",
           "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --vocab-size 256 --ffn-hidden-size 128",
           "--devices", "2", "--device-memory-gb", "0.05", "--host-memory-gb", "0.1", "--reserve-gb", "0",
           "--fp32", "--top", "1", "--verify"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                                "OMP_NUM_THREADS": "1"})
    verdict = re.search(r"verdict: (fits|does NOT fit): device ([\d.]+) GB .* of 0.05, host ([\d.]+) GB of 0.1",
                        run.stdout)
    assert verdict, run.stdout[-2000:] + run.stderr[-2000:]
    fits = float(verdict.group(2)) <= 0.05 and float(verdict.group(3)) <= 0.1
    assert (verdict.group(1) == "fits") == fits and run.returncode == (0 if fits else 1)
    assert "torch's CPU flash kernel stands in" in run.stdout
