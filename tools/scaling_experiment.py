#!/usr/bin/env python
"""Scaling experiments: the largest micro-batch and the longest sequence that fit, and their speed.

For a model config and a list of layouts at world sizes 1, 2, 4, 8, find by search

* ``--experiment max-seq``:   the maximum ``--seq-length`` at a fixed ``--micro-batch-size``,
* ``--experiment max-batch``: the maximum ``--micro-batch-size`` at a fixed ``--seq-length``,

whose training step (forward, backward, optimizer) fits the per-rank memory budget, and
report throughput (tokens/s, TFLOP/s per device) at those points.  Next to every
measurement the memory and communication model (:mod:`megatron_sp.memory`) prints
its prediction, so the two can be compared.

    python tools/scaling_experiment.py --experiment max-seq --worlds 1 2 4 \
        --layouts tp tp+sp rsa p2p a2a a2a+p2p --memory-budget-gb 0.125 --out-dir docs/scaling

Layouts (at world size W; DP = W / (TP x CP))::

    tp        TP = W                           tp+sp     TP = W with --sequence-parallel
    rsa, p2p, a2a                              CP = W with that --cp-comm-type
    a2a+p2p   CP = W, Ulysses 2 x ring W/2 (ring only below W = 4)
    tp2+p2p   TP = 2 x CP = W/2 (p2p), likewise tp2+sp+p2p, tp2+a2a ...
    dp        DP = W (max batch only: every rank holds the whole model)
    pp2+p2p   PP 2 x (the layout p2p at W / 2): any layout after ppK+; pp alone is PP = W

A layout the model cannot run (TP above the head count or not dividing it, a Ulysses degree
that does not divide the heads, flash kernels asked of RSA) is not searched: its cell says
``refused`` and the table lists pretrain_gpt.py's one-line error.  ``--attention-backend``
(Megatron's values) applies to every layout; ``unfused`` materialises the scores and keeps the
probabilities, as the TP baseline of the RSA paper did.

**The paper's setting** (``--experiment paper``, megatron_sp/scaling/paper.py): for the
BERT-Base-like and BERT-Large-like presets, max batch and max sequence length of RSA against TP
with unfused attention, the same tables for p2p / a2a / a2a+p2p with flash kernels beside them,
the ratios RSA / TP, and the memory model's extrapolation to the paper's 64 devices:

    python tools/scaling_experiment.py --experiment paper --memory-budget-gb 0.0625 --out-dir docs/scaling

**What is measured.**  The trials of one search (one layout at one world size) run in one set
of ``W`` processes (forked from a forkserver that has imported torch but never computed, so a
parent that already used OpenMP threads cannot deadlock them; a gloo group on a private
FileStore; NCCL and spawn on GPU): ``megatron_sp/scaling/trial.TrialSession``.  The first trial
builds the model, optimizer and batches (``loop.setup``); a later one, which differs only in the
batch shape, keeps them.  A failed trial (error, out-of-memory, timeout) ends the set, so it
cannot poison the next trial, which starts fresh processes.  Each trial runs ``--steps``
training steps (default 2) at its size.  The first is a warm-up: it allocates the Adam state
and loads every kernel's code, and the first step at a new shape peaks higher than the next
(under DDP, in a set's first trial, one more comes first, on the smallest batch: DDP reallocates
its gradient buckets at the second forward, and a step measured there would be lighter than a
steady one).  The
*baseline* is taken just before the last step, after the previous step's gradients are freed
and malloc's free memory is given back to the OS (``malloc_trim``: a block the step takes from
malloc's free lists then counts as well), and holds what persists between steps (weights, Adam
state, DDP's gradient buckets when DP x CP > 1, the batches, the interpreter and libraries).  The number compared with the budget is the **peak of the
last step (forward, backward, optimizer) above that baseline**, the maximum over ranks;
that step is also the one timed:

* CPU: the kernel's resident-set high-water mark.  Before the step the rank writes ``5``
  to ``/proc/self/clear_refs``, which resets ``VmHWM`` to the current RSS; after the
  step ``VmHWM - VmRSS(baseline)`` is the peak of resident memory the step added, kept
  by the kernel at page granularity (no sampling that could miss a short peak).  glibc
  is told (``mallopt``) to serve every block >= 16 KiB with its own ``mmap`` and give it
  back on ``free``, with at most 2 arenas, so RSS follows the live tensor bytes instead
  of malloc's cached free lists; ``tests/test_scaling_experiment.py`` checks that known
  allocations (one 64 MiB tensor, 128 x 256 KiB, 8 x 16 MiB allocated and freed in turn)
  are measured to within 5%.  As a safety net for the shared machine, ``RLIMIT_DATA`` caps
  each rank at ``setup + 2 x budget + 512 MiB``:
  a step far over budget fails with an allocation error (recorded as ``oom``) instead
  of swapping the host.
* GPU: ``torch.cuda.max_memory_allocated() - memory_allocated()`` at the baseline; with
  ``--memory-budget-gb`` the caching allocator is capped to the baseline plus the budget
  (``set_per_process_memory_fraction``), without it the whole card is the budget and a
  trial fits when it does not raise ``OutOfMemoryError``.

**Search.**  Values are multiples of the granularity the layout needs (sequence: 2P for
zigzag modes, P otherwise, times TP under --sequence-parallel; batch: 1).  From a
start (95% of the memory model's prediction, or ``--start``) the value grows by
``--growth`` (1.15 from the model's start, 2 otherwise; ``--bracket granule``, the paper's
default: by one granule, doubling each time) until a trial fails, or shrinks until one fits,
then bisects until the bracket is within ``--rel-tol`` (default 3%) or one granule.  Layouts that run the same program (every layout at world 1) are searched
once.  Throughput comes from the timed step of the largest trial that fit.

Outputs under ``--out-dir``: ``<name>.csv`` (one row per layout x world size),
``<name>.md`` (the paper's form: rows world size, columns layout; cells the max value and
throughput, then the model-vs-measured table), ``<name>_trials.csv`` (every trial) and
PNG plots (max length or batch vs devices; throughput vs length).
"""
from __future__ import annotations

import argparse
import time
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from megatron_sp import memory as mm  # noqa: E402  (pure python: imports no torch)
from megatron_sp.sequence_parallel.config import ATTENTION_BACKENDS  # noqa: E402
from megatron_sp.arguments.types import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, ArgumentParser, Range, in_range  # noqa: E402
from megatron_sp.scaling.layouts import Layout, long_sequence_flags, make_layout  # noqa: E402,F401
from megatron_sp.scaling.presets import MODEL_PRESETS  # noqa: E402
from megatron_sp.scaling.paper import PAPER_MICRO_BATCH, PAPER_PRESETS, PAPER_SEQ_LENGTH, run_paper  # noqa: E402
from megatron_sp.scaling.report import _read_trials, markdown_table, write_outputs  # noqa: E402,F401
from megatron_sp.scaling.search import SearchResult, search_max  # noqa: E402,F401
from megatron_sp.scaling.trial import (PeakMeter, TrialError, TrialResult, TrialSession,  # noqa: E402,F401
                                       _mp_context, configure_malloc, proc_status_bytes, run_trial)

MiB = 2 ** 20

# --- model presets (flags as pretrain_gpt.py takes them) ---------------------------------
PRESETS = {
    **MODEL_PRESETS,  # tiny, small, llama-32k, gpt-*, llama-3-* (megatron_sp/scaling/presets.py)
    **PAPER_PRESETS,  # bert-base-like, bert-large-like (megatron_sp/scaling/paper.py)
}
COMMON = ("--mock-data --tokenizer-type NullTokenizer --lr 1e-4 --min-lr 1e-5 --lr-decay-style constant "
          "--hidden-dropout 0.0 --attention-dropout 0.0 --log-interval 1000000 --eval-iters 0 --eval-interval 0")


# --- experiment driver -------------------------------------------------------------------
def model_flags(args) -> str:
    return f"{PRESETS[args.model] if args.model else ''} {args.model_args or ''}".strip()


def build_argv(args, layout: Layout, seq: int, mbs: int) -> list:
    argv = f"{model_flags(args)} {COMMON}".split() + layout.flags()
    argv += ["--seq-length", str(seq), "--micro-batch-size", str(mbs),
             "--global-batch-size", str(mbs * layout.dp * layout.micro_batches), "--train-iters", str(args.steps),
             "--seed", "1234"]
    if args.bf16:
        argv.append("--bf16")
    return argv + memory_flags(args)


def memory_flags(args) -> list:
    """Attention backend, recompute, chunked loss, tiled MLP and offload flags of the trials (the
    model reads the same)."""
    argv = []
    if args.attention_backend != "auto":
        argv += ["--attention-backend", args.attention_backend]
    return argv + long_sequence_flags(args.recompute_granularity, args.cross_entropy_chunk_size,
                                      args.tiled_mlp_chunk_size, args.cpu_offloading_num_layers)


def model_config(args) -> mm.ModelSpec:
    """The model the trials run, read from their flags by the real parser."""
    return mm.ModelSpec.from_flags(f"{model_flags(args)} {COMMON}".split() + memory_flags(args), bf16=args.bf16,
                                   device=args.device)


def layout_refusal(args, layout: Layout) -> str:
    """pretrain_gpt.py's start-up error for this layout (at any length), or '' if it can run."""
    from megatron_sp.arguments.preflight import refusal
    return refusal(build_argv(args, layout, layout.seq_granularity() * layout.tp, 1), layout.parallel.world)


def _fmt_mb(b):
    return f"{b / MiB:.1f}"


def run_experiment(args) -> list:
    """Every (world, layout) search; returns the summary rows and writes the outputs."""
    budget = int(args.memory_budget_gb * 2 ** 30) if args.memory_budget_gb else None
    device = args.device
    spec = model_config(args)
    rows, all_trials, done, reused = [], [], {}, set()
    os.makedirs(args.out_dir, exist_ok=True)
    started = time.monotonic()
    combos = [(w, name, make_layout(name, w)) for w in args.worlds for name in args.layouts]
    combos = [c for c in combos if c[2] is not None]
    print(f"[scaling] {args.experiment}: model {args.model or ''} {args.model_args or ''}| budget "
          f"{'whole device' if budget is None else _fmt_mb(budget) + ' MiB per rank (peak above baseline)'} | "
          f"{len(combos)} searches | device {device}", flush=True)
    for n, (world, name, layout) in enumerate(combos, 1):
        lay = layout.parallel
        # the search's trials share their ranks (started by the first trial, none for a refused layout)
        session = TrialSession(world, budget, args.steps, args.trial_timeout, device, args.threads)
        if args.experiment == "max-seq":
            g = layout.seq_granularity()
            predicted = mm.max_seq_length(spec, lay, args.micro_batch_size, budget, g) if budget else None
            start = args.start or (int(predicted * (args.start_fraction or 0.95)) if predicted else 1024 * layout.cp)
            limit = args.max_value or 1 << 22

            def trial(v, layout=layout, session=session):
                return session.run(build_argv(args, layout, v, args.micro_batch_size))
        else:
            g = 1
            predicted = mm.max_micro_batch(spec, lay, args.seq_length, budget) if budget else None
            start = args.start or (max(1, int(predicted * (args.start_fraction or 0.9))) if predicted else 1)
            limit = args.max_value or 4096

            def trial(v, layout=layout, session=session):
                return session.run(build_argv(args, layout, args.seq_length, v))

        def traced(v, layout=layout, world=world, trial=trial):
            seq = v if args.experiment == "max-seq" else args.seq_length
            mbs = args.micro_batch_size if args.experiment == "max-seq" else v
            est = mm.estimate(spec, lay, seq, mbs)
            r = trial(v)
            r.value = v
            all_trials.append(dict(world=world, layout=layout.name, seq_length=seq, micro_batch_size=mbs,
                                   status=r.status, peak_mb=round(r.peak_bytes / MiB, 2),
                                   model_peak_mb=round(est.step_peak / MiB, 2),
                                   step_time_s=round(r.step_time, 4), tokens_per_s=round(r.tokens_per_s, 1),
                                   tflops_per_device=round(r.tflops_per_device, 5), wall_s=round(r.wall_s, 1),
                                   cpu_s=round(r.cpu_s, 1), error=r.error))
            print(f"  [{time.monotonic() - started:6.0f}s] W={world} {layout.name:<10} "
                  f"{'seq' if args.experiment == 'max-seq' else 'mbs'}={v:<7d} {r.status:<7} "
                  f"peak {_fmt_mb(r.peak_bytes):>7} MiB (model {_fmt_mb(est.step_peak):>7})"
                  + (f"  {r.tokens_per_s:9.1f} tok/s  {r.step_time:6.2f} s/step" if r.fits else "")
                  + (f"  {r.error[:100]}" if r.error else ""), flush=True)
            if r.status in ("error", "timeout"):
                raise TrialError(f"{r.status}: {r.error}")
            return r

        refused = layout_refusal(args, layout)
        if refused:
            predicted = None
        print(f"[{n}/{len(combos)}] world {world}, {layout.name} = {layout.describe()}: granularity {g}, "
              f"model predicts {predicted if predicted is not None else '-'}", flush=True)
        seeded = args.start is None and predicted
        error = ""
        if refused:
            print(f"  refused: {refused}", flush=True)
            sr, error = SearchResult(0, None, []), f"refused: {refused}"
        elif layout.key() in done:
            sr = done[layout.key()]
            print(f"  same program as {sr.layout_name} at world {world}: reusing its result", flush=True)
        else:
            try:
                sr = search_max(traced, g, start, limit, args.rel_tol, growth=args.growth if seeded else 2.0,
                                step=g if (seeded and args.bracket == "granule") else None)
            except TrialError as exc:
                sr, error = SearchResult(0, None, []), str(exc)[:300]
            finally:
                session.close()
            sr.layout_name = layout.name
            done[layout.key()] = sr
        r = sr.result
        value = sr.value
        seq = value if args.experiment == "max-seq" else args.seq_length
        mbs = args.micro_batch_size if args.experiment == "max-seq" else value
        est = mm.estimate(spec, lay, seq, mbs) if value else None
        rows.append(dict(
            experiment=args.experiment, world=world, layout=layout.name, tp=layout.tp, cp=layout.cp, dp=layout.dp,
            pp=layout.pp,
            mode=layout.mode if layout.cp > 1 else "-", sp=int(layout.sp), ulysses=layout.ulysses,
            max_value=value, model_max_value=predicted if predicted is not None else "",
            model_vs_measured=(round(predicted / value, 3) if (predicted and value) else ""),
            seq_length=seq, micro_batch_size=mbs,
            peak_mb=round(r.peak_bytes / MiB, 1) if r else "", model_peak_mb=round(est.step_peak / MiB, 1) if est else "",
            model_params_mb=round(est.params / MiB, 1) if est else "",
            model_activations_mb=round(est.activations / MiB, 1) if est else "",
            model_comm_mb_per_step=round(est.comm_bytes / MiB, 1) if est else "",
            tokens_per_s=round(r.tokens_per_s, 1) if r else "", tflops_per_device=round(r.tflops_per_device, 5) if r else "",
            step_time_s=round(r.step_time, 3) if r else "", trials=len(sr.trials),
            cpu_s=round(sum(t.cpu_s for _, t in sr.trials), 1) if layout.key() not in reused else 0.0,
            attention_backend=args.attention_backend, error=error))
        reused.add(layout.key())
        print(f"  => max {'seq-length' if args.experiment == 'max-seq' else 'micro-batch'} {value} "
              f"(model {predicted}); {rows[-1]['tokens_per_s']} tok/s; model comm "
              f"{rows[-1]['model_comm_mb_per_step']} MiB/step/rank", flush=True)
        write_outputs(args, rows, all_trials)  # partial results survive an interrupted run
    print(f"[scaling] done in {time.monotonic() - started:.0f}s; outputs in {args.out_dir}/{args.name}.*", flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", choices=["max-seq", "max-batch", "paper"], default="max-seq",
                   help="paper: the RSA paper's tables (both experiments, unfused TP vs RSA, flash modes beside)")
    p.add_argument("--model", choices=sorted(PRESETS), default="tiny", help="model preset (flags below)")
    p.add_argument("--model-args", default=None, help="extra pretrain_gpt.py model flags, added after the preset")
    p.add_argument("--worlds", type=POSITIVE_INT, nargs="+", default=None, help="default 1 2 4 (paper: 1 2 4 8)")
    p.add_argument("--layouts", nargs="+", default=["tp", "tp+sp", "rsa", "p2p", "a2a", "a2a+p2p"])
    p.add_argument("--memory-budget-gb", type=POSITIVE, default=None,
                   help="per-rank budget for the step's peak above the post-setup baseline (required on CPU)")
    p.add_argument("--micro-batch-size", type=POSITIVE_INT, default=None,
                   help="fixed micro-batch for max-seq (default 1; paper: 4)")
    p.add_argument("--seq-length", type=POSITIVE_INT, default=None,
                   help="fixed sequence length for max-batch (default 2048; paper: 64, BERT's 512 x 1/8)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--attention-backend", choices=list(ATTENTION_BACKENDS), default="auto",
                   help="pretrain_gpt.py's --attention-backend for every layout (unfused: the paper's TP baseline)")
    p.add_argument("--paper-models", nargs="+", default=["bert-base-like", "bert-large-like"],
                   help="--experiment paper: the presets to run")
    p.add_argument("--recompute-granularity", choices=["full", "selective"], default=None,
                   help="full: uniform, one layer per checkpoint")
    p.add_argument("--cross-entropy-chunk-size", type=NON_NEGATIVE_INT, default=None, metavar="TOKENS",
                   help="pretrain_gpt.py's flag (default: its default, 2048; 0: full logits)")
    p.add_argument("--tiled-mlp-chunk-size", type=NON_NEGATIVE_INT, default=0, metavar="TOKENS",
                   help="tiled MLP (0: off)")
    p.add_argument("--cpu-offloading-num-layers", type=NON_NEGATIVE_INT, default=0,
                   help="--cpu-offloading of that many layers (0: off); a no-op for memory on CPU")
    p.add_argument("--steps", type=POSITIVE_INT, default=2, help="training steps per trial (peak over all, last timed)")
    p.add_argument("--start", type=POSITIVE_INT, default=None,
                   help="first value tried (default: the model's prediction)")
    p.add_argument("--start-fraction", type=in_range(0, 1, lo_open=True), default=None,
                   help="first value = this x the model's prediction (default 0.95 for max-seq, 0.9 for max-batch; "
                        "paper: 1, the model being within a few percent)")
    p.add_argument("--max-value", type=POSITIVE_INT, default=None, help="upper limit of the search")
    p.add_argument("--rel-tol", type=in_range(0, 1, lo_open=True, hi_open=True), default=0.03,
                   help="stop bisecting at this relative bracket")
    p.add_argument("--growth", type=Range(float, lo=1, lo_open=True), default=None,
                   help="step factor of the bracketing phase when it starts from the model (else 2); "
                        "default 1.15; implies --bracket growth")
    p.add_argument("--bracket", choices=["growth", "granule"], default=None,
                   help="how the search leaves the model's start: x --growth a step, or one granule doubling "
                        "each time (two trials when the model is within a granule); default growth "
                        "(paper: granule)")
    p.add_argument("--trial-timeout", type=POSITIVE, default=600.0)
    p.add_argument("--threads", type=POSITIVE_INT, default=None,
                   help="intra-op threads per rank (default: cores / world; paper: 1, since two OpenMP threads "
                        "spinning at world 1 are slowed down many times on a shared machine)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--out-dir", default="docs/scaling")
    p.add_argument("--name", default=None, help="output file stem (default: the experiment)")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.device is None:
        args.device = "cuda" if _cuda_available() else "cpu"
    if args.device == "cpu" and not args.memory_budget_gb:
        p.error("--memory-budget-gb is required on CPU (the per-rank budget for the step's peak)")
    paper = args.experiment == "paper"
    args.micro_batch_size = args.micro_batch_size or (PAPER_MICRO_BATCH if paper else 1)
    args.seq_length = args.seq_length or (PAPER_SEQ_LENGTH if paper else 2048)
    args.name = args.name or ("paper_rsa_vs_tp" if paper else args.experiment)
    if args.growth and args.bracket == "granule":
        p.error(f"--growth {args.growth} sets the step factor of --bracket growth; drop one of them")
    args.bracket = args.bracket or ("growth" if args.growth or not paper else "granule")
    args.growth = args.growth or 1.15
    args.worlds = args.worlds or ([1, 2, 4, 8] if paper else [1, 2, 4])
    args.threads = args.threads or (1 if paper else None)
    args.start_fraction = args.start_fraction or (1.0 if paper else None)
    if not paper:  # the paper experiment builds its own presets' flags (megatron_sp/scaling/paper.py)
        check_trial_flags(p, args)
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as exc:
        p.error(f"--out-dir {args.out_dir}: {exc}")
    return args


def check_trial_flags(p, args) -> None:
    """Layout names and the model flags a trial will pass to pretrain_gpt.py, checked now (one
    line, exit 2) rather than in every trial of the search."""
    from megatron_sp.arguments.preflight import refusal
    for name in args.layouts:
        try:
            make_layout(name, 1)
        except ValueError as exc:
            p.error(f"--layouts: {exc}")
    reason = refusal(build_argv(args, make_layout("dp", 1), args.seq_length, args.micro_batch_size), 1)
    if reason:
        p.error(f"--model-args / --model {args.model}: {reason}")


def _cuda_available() -> bool:
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # no CUDA context before forking
    import torch
    return torch.cuda.is_available()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.experiment == "paper":
        return run_paper(args, run_experiment)
    rows = run_experiment(args)
    write_outputs(args, rows, _read_trials(args), final=True)
    print(open(os.path.join(args.out_dir, f"{args.name}.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
