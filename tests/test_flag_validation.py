"""No flag value reaches a raw traceback (issue 14, errors users read).

* Every numeric flag of pretrain_gpt.py and of the tools has a range (megatron_sp/arguments/types.py);
  a value outside it -- or not a number, or nan/inf -- is refused at parse time with one
  line ``error: argument --flag: ...`` and exit code 2 (the sweep below fails for a new
  numeric flag without a range).
* Values on the edge of every range run, or stop with one ``error:`` line: never a raw
  ZeroDivisionError/TypeError/AttributeError or a torch message.
* Impossible combinations and empty splits are reported as the user typed them.
* Under torchrun every rank prints the line.
"""
import contextlib
import io
import os
import subprocess
import sys

import pytest

from test_data_common import ROOT, make_data, tool
from megatron_sp.arguments.types import Range
from megatron_sp.arguments import build_parser

BASE = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 64 --num-layers 1 --hidden-size 16 "
        "--num-attention-heads 2 --seq-length 16 --micro-batch-size 2 --global-batch-size 2 --train-iters 2 "
        "--lr 1e-3 --log-interval 1 --eval-interval 1 --eval-iters 1 --hidden-dropout 0 "
        "--attention-dropout 0").split()


def numeric_actions(parser):
    """Numeric flags that do something: Megatron flags kept only to be noted or refused (dest
    ``compat_*``, arguments/megatron_compat.py) never reach the code, whatever their value."""
    return [a for a in parser._actions if a.option_strings and not a.dest.startswith("compat_")
            and (a.type in (int, float) or isinstance(a.type, Range))]


def bad_values(rng: Range) -> list:
    """Texts just outside ``rng``, plus ones that are no number or not finite."""
    out = ["abc", "nan", "inf", "-inf"]
    step = 1 if rng.kind is int else 1e-3
    if rng.lo is not None:
        out.append(str(rng.lo if rng.lo_open else rng.lo - step))
    if rng.hi is not None:
        out.append(str(rng.hi if rng.hi_open else rng.hi + step))
    if rng.kind is int:
        out.append("1.5")
    return out


def edge_values(rng: Range) -> list:
    """Texts on the inside edges of ``rng`` (what must run or stop with a line, never crash)."""
    step = 1 if rng.kind is int else 1e-3
    out = []
    if rng.lo is not None:
        out.append(rng.lo + step if rng.lo_open else rng.lo)
    if rng.hi is not None:
        out.append(rng.hi - step if rng.hi_open else rng.hi)
    return [str(v) for v in out]


def _without(argv, flag):
    argv = list(argv)
    if flag in argv:
        i = argv.index(flag)
        del argv[i:i + 2]
    return argv


def _parse_error(parse, argv):
    """(exit code, stderr lines) of parse(argv); exit code None when it parsed.  pretrain_gpt.py's
    parser raises its one line as a ValueError, which pretrain_gpt.main prints with exit code 2."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parse(argv)
        except SystemExit as exc:
            return exc.code, err.getvalue().strip().splitlines()
        except ValueError as exc:
            return 2, [f"error: {exc}"]
    return None, err.getvalue().strip().splitlines()


def _sweep(parser, parse, base):
    """Every numeric flag of ``parser``: a Range type, and one error line for each bad value."""
    actions = numeric_actions(parser)
    assert actions
    problems = []
    for a in actions:
        flag = a.option_strings[0]
        if not isinstance(a.type, Range):
            problems.append(f"{flag}: type {a.type.__name__} has no range (use megatron_sp.arguments.types)")
            continue
        n = a.nargs if isinstance(a.nargs, int) else 1
        for bad in bad_values(a.type):
            code, lines = _parse_error(parse, _without(base, flag) + [flag] + [bad] * n)
            if code != 2 or len(lines) != 1 or not lines[0].startswith(f"error: argument {flag}") \
                    or "Traceback" in "\n".join(lines):
                problems.append(f"{flag} {bad}: exit {code}, {lines[-3:]}")
    assert not problems, "\n".join(problems)


def test_every_pretrain_flag_is_range_checked_at_parse_time():
    _sweep(build_parser(), build_parser().parse_args, BASE)


def _run_main(argv):
    import pretrain_gpt
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = pretrain_gpt.main(argv)
        except SystemExit as exc:
            rc = exc.code
    return rc, err.getvalue().strip().splitlines()


# what each edge needs around it to be a meaningful run (fp16 for the loss-scale flags, ...)
CONTEXT = {"--hierarchical-context-parallel-sizes": ["--cp-comm-type", "a2a+p2p"],
           "--train-samples": ["--train-iters"], "--group-query-attention": [],
           "--recompute-num-layers": ["--recompute-granularity", "full", "--recompute-method", "block"]}
FP16 = ("--loss-scale", "--initial-loss-scale", "--min-loss-scale", "--loss-scale-window", "--hysteresis",
        "--max-skips-at-min-loss-scale")


def test_edge_values_of_every_pretrain_flag_run_or_stop_with_one_line(tmp_path):
    """One in-process run (2 iterations, evaluation on) per edge value of every numeric flag."""
    problems = []
    for a in numeric_actions(build_parser()):
        flag = a.option_strings[0]
        n = a.nargs if isinstance(a.nargs, int) else 1
        for value in edge_values(a.type):
            argv = _without(BASE, flag) + [flag] + [value] * n
            extra = CONTEXT.get(flag, [])
            if extra[:1] == ["--train-iters"]:
                argv, extra = _without(argv, "--train-iters"), []
            argv += extra + (["--fp16"] if flag in FP16 else [])
            if flag in ("--save-interval", "--keep-last-n-checkpoints"):
                argv += ["--save", str(tmp_path / f"ck{len(problems)}_{flag}_{value}")]
            rc, lines = _run_main(argv)
            if rc != 0 and not (len(lines) == 1 and lines[0].startswith("error: ")):
                problems.append(f"{flag} {value}: rc {rc}: {lines[-3:]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("flags,needle", [
    ("--lr 1e-3 --min-lr 1e-2", "--min-lr 0.01 is larger than --lr 0.001"),
    ("--lr-warmup-iters 5 --lr-decay-iters 5", "--lr-warmup-iters 5 must be smaller than --lr-decay-iters 5"),
    ("--lr-warmup-fraction 1", "--lr-warmup-fraction 1.0 of --lr-decay-iters (default: --train-iters 2) leaves nothing"),
    ("--cp-comm-type a2a+p2p --hierarchical-context-parallel-sizes 2 2",
     "--hierarchical-context-parallel-sizes 2 2: U x R = 4 must equal --context-parallel-size 1"),
    ("--train-samples 8", "give exactly one of --train-iters and --train-samples"),
])
def test_impossible_combinations_are_reported_as_typed(flags, needle):
    rc, lines = _run_main(BASE + flags.split())
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


def test_empty_splits_are_named(tmp_path):
    prefix, _ = make_data(tmp_path / "d", n_docs=20)
    data = [a for a in BASE if a != "--mock-data"]
    data[data.index("--vocab-size") + 1] = "30000"
    data += ["--data-path", prefix, "--data-cache-path", str(tmp_path / "c")]
    for split, needle in (("0,1,0", "--split 0,1,0 gives the train split weight 0"),
                          ("1000,1,0", "the valid split has no tokens (0 of 20 documents)"),
                          ("1,0,0,1", "--split '1,0,0,1' is malformed")):
        rc, lines = _run_main(data + ["--split", split])
        assert rc == 2 and len(lines) == 1 and needle in lines[0], (split, lines)


# --- the tools ------------------------------------------------------------------------------
def _tool_parser(name):
    mod = tool(name)
    return mod.build_parser()


TOOL_BASES = {
    "generate_text": ["--load", "ck"],
    "scaling_experiment": ["--memory-budget-gb", "1", "--device", "cpu"],
    "preprocess_data": ["--input", "x.jsonl", "--output-prefix", "out", "--tokenizer-type", "NullTokenizer",
                        "--vocab-size", "10"],
    "inspect_dataset": ["--data-path", "d"],
}


@pytest.mark.parametrize("name", sorted(TOOL_BASES))
def test_every_tool_flag_is_range_checked_at_parse_time(name):
    parser = _tool_parser(name)
    parse = getattr(tool(name), "parse_args", None) or parser.parse_args
    _sweep(parser, parse, TOOL_BASES[name])


def test_tools_report_bad_combinations_in_one_line(tmp_path):
    se = tool("scaling_experiment")
    code, lines = _parse_error(se.parse_args, TOOL_BASES["scaling_experiment"] + ["--layouts", "p2p", "zigzag"])
    assert code == 2 and len(lines) == 1 and "unknown layout 'zigzag'" in lines[0], lines
    for model_args, needle in (("--hidden-size 0", "argument --hidden-size: 0 is not an integer >= 1"),
                               ("--num-attention-heads 3", "--hidden-size 128 is not divisible by "
                                                           "--num-attention-heads 3")):
        code, lines = _parse_error(se.parse_args, TOOL_BASES["scaling_experiment"] + ["--model-args", model_args])
        assert code == 2 and len(lines) == 1 and needle in lines[0], lines
    prefix, _ = make_data(tmp_path / "d", n_docs=5)
    code, lines = _parse_error(tool("inspect_dataset").main, ["--data-path", prefix, "--sample", "0",
                                                             "--split", "0,1"])
    assert len(lines) == 1 and lines[0].startswith("error: --split 0,1 gives the train split weight 0"), lines
    code, lines = _parse_error(tool("generate_text").main, ["--load", str(tmp_path), "--device", "tpu"])
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: argument --device"), lines


# --- every rank, under torchrun ---------------------------------------------------------------
@pytest.mark.parametrize("flags,needle", [
    ("--log-interval 0", "error: argument --log-interval: 0 is not an integer >= 1"),
    ("--context-parallel-size 2 --cp-comm-type a2a+p2p --hierarchical-context-parallel-sizes 1 1",
     "--hierarchical-context-parallel-sizes 1 1: U x R = 1 must equal --context-parallel-size 2"),
])
def test_every_rank_prints_the_line_under_torchrun(flags, needle):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "pretrain_gpt.py"] + BASE + flags.split()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode != 0
    # each rank prints the same line (torchrun may stop the second before it does)
    assert 1 <= len(errors) <= 2 and len(set(errors)) == 1 and needle in errors[0], r.stderr[-3000:]
    assert "pretrain_gpt.py\", line" not in r.stderr and "megatron_sp/" not in r.stderr, r.stderr[-3000:]


def test_nccl_without_gpus_is_one_line(monkeypatch):
    import torch
    from megatron_sp.parallel_state import init_distributed
    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun; fails before any rendezvous
    with pytest.raises(ValueError, match="nccl needs CUDA GPUs .* use --distributed-backend gloo"):
        init_distributed("nccl")
