"""The RSA paper's scaling tables in its own setting, beside today's (``--experiment paper``).

Li et al. 2021 ("Sequence Parallelism: Long Sequence Training from System Perspective") compare
Ring Self-Attention with Megatron tensor parallelism on BERT and report, on 64 P100 GPUs, a
13.7x larger maximum batch and 3.0x longer maximum sequence.  Their TP baseline runs standard
attention: the scores ``[b, a/T, N, N]`` are materialised and the softmax probabilities kept for
backward in every layer (the same quadratic memory RSA keeps as ``[b, a, N/P, N]``), but TP leaves
the LayerNorm / residual / linear inputs whole on every rank and stops at the head count.

The setting here, one command (``tools/scaling_experiment.py --experiment paper``):

* models ``bert-base-like`` (12 layers, 12 heads) and ``bert-large-like`` (24 layers, 16 heads):
  BERT's depth, head count and 4h FFN at 1/8 of the width (head dim 8) and of the vocabulary, so
  a CPU trial takes seconds.  This code base trains causal GPTs: the presets are the causal GPT
  analogue with BERT's shapes (RoPE positions).  Causal or not, the unfused kernel and RSA
  materialise the full ``[N, N]`` probabilities, so the memory comparison is the bidirectional one;
* max micro-batch at sequence 64 = BERT's 512 x 1/8: the score memory per token (``a N``) over the
  rest (``~16 h``) is then BERT's at 512 tokens; max sequence length at micro-batch 4;
* the paper's layouts, ``--attention-backend unfused`` (also at world 1): TP = W (Megatron TP, no
  ``--sequence-parallel``, as in 2021) and RSA over W; today's beside them, flash kernels: p2p,
  a2a, a2a+p2p (Ulysses 2 x ring W/2);
* worlds 1, 2, 4, 8, one per-rank CPU budget; TP degrees above or not dividing the head count
  are refused (pretrain_gpt.py's error) and marked;
* the memory model (megatron_sp/memory/estimate.py) beside every cell, and its extrapolation to the
  paper's 64 devices, for the presets at the CPU budget and for the real BERT shapes on a 16 GB
  P100 (fp32 in this code).

Outputs under ``--out-dir``: ``NAME.md`` (the tables, ratios, extrapolation), ``NAME_<model>.png``
(measured points and model curves to 64 devices), and the raw searches under ``NAME/``
(``<model>_<experiment>_{paper,flash}.{md,csv}`` with every trial and the peak model/measured).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time

from .. import memory as mm
from ..sequence_parallel.config import RING, ulysses_degree

PAPER_PRESETS = {
    "bert-base-like": "--num-layers 12 --hidden-size 96 --num-attention-heads 12 --ffn-hidden-size 384 "
                      "--vocab-size 3815 --position-embedding-type rope",
    "bert-large-like": "--num-layers 24 --hidden-size 128 --num-attention-heads 16 --ffn-hidden-size 512 "
                       "--vocab-size 3815 --position-embedding-type rope",
}
REAL_BERT = {  # the paper's shapes, for the model-only extrapolation (positions as the presets: RoPE)
    "bert-base-like": "--num-layers 12 --hidden-size 768 --num-attention-heads 12 --ffn-hidden-size 3072 "
                      "--vocab-size 30522 --position-embedding-type rope",
    "bert-large-like": "--num-layers 24 --hidden-size 1024 --num-attention-heads 16 --ffn-hidden-size 4096 "
                       "--vocab-size 30522 --position-embedding-type rope",
}
PAPER_SEQ_LENGTH, PAPER_MICRO_BATCH = 64, 4
REAL_SEQ_LENGTH, P100_BYTES = 512, 16 * 10 ** 9
PAPER_LAYOUTS, FLASH_LAYOUTS = ["tp", "rsa"], ["p2p", "a2a", "a2a+p2p"]
PAPER_CLAIM = {"max-batch": 13.7, "max-seq": 3.0}  # RSA / TP on 64 P100 GPUs (the paper's abstract)
EXTRAPOLATE = (16, 32, 64)
EXPERIMENTS = ("max-batch", "max-seq")
WHAT = {"max-batch": "max micro-batch", "max-seq": "max sequence length"}


# --- running ---------------------------------------------------------------------------
def run_paper(args, run_experiment) -> int:
    """Every (model, experiment, setting) search, then the combined report and plots."""
    started = time.monotonic()
    raw = os.path.join(args.out_dir, args.name)
    results = {}
    for model in args.paper_models:
        for exp in EXPERIMENTS:
            for setting, layouts, backend in (("paper", PAPER_LAYOUTS, "unfused"), ("flash", FLASH_LAYOUTS, "auto")):
                sub = copy.copy(args)
                sub.model, sub.model_args, sub.experiment, sub.layouts = model, None, exp, list(layouts)
                sub.attention_backend, sub.out_dir = backend, raw
                sub.name = f"{model}_{exp}_{setting}"
                print(f"[paper] {model} {exp}: {setting} ({', '.join(layouts)}, --attention-backend {backend})",
                      flush=True)
                results[(model, exp, setting)] = run_experiment(sub)
    wall = time.monotonic() - started
    text = paper_report(args, results, wall)
    with open(os.path.join(args.out_dir, f"{args.name}.md"), "w") as f:
        f.write(text)
    paper_plots(args, results)
    print(text)
    print(f"[paper] done in {wall:.0f}s; {args.out_dir}/{args.name}.md, raw searches in {raw}/", flush=True)
    return 0


# --- the memory model's side -------------------------------------------------------------
def _spec(flags: str, backend: str) -> mm.ModelSpec:
    return dataclasses.replace(mm.ModelSpec.from_flags(flags.split()), attention_backend=backend)


def _layout(name: str, world: int) -> mm.ParallelConfig:
    if name == "tp":
        return mm.ParallelConfig(tp=world)
    return mm.ParallelConfig(cp=world, mode=name if world > 1 else RING, ulysses=ulysses_degree(name, world))


def _granularity(name: str, world: int) -> int:
    return _layout(name, world).seq_divisor


def tp_ceiling(heads: int, world: int) -> int:
    """The largest TP degree <= world that divides the head count (TP splits whole heads)."""
    return max(t for t in range(1, min(heads, world) + 1) if heads % t == 0)


def model_value(spec: mm.ModelSpec, name: str, world: int, exp: str, budget: float, seq: int, mbs: int,
                tp: int = 0) -> int:
    """The model's max value of ``exp`` for layout ``name`` at ``world`` (``tp``: a TP degree instead)."""
    lay = mm.ParallelConfig(tp=tp) if tp else _layout(name, world)
    if exp == "max-batch":
        return mm.max_micro_batch(spec, lay, seq, budget)
    return mm.max_seq_length(spec, lay, mbs, budget, tp and 2 or _granularity(name, world))


def _device_value(spec: mm.ModelSpec, lay: mm.ParallelConfig, exp: str, seq: int, mbs: int, granularity: int) -> int:
    """Largest value whose whole footprint (weights, Adam, gradients, the step) fits a P100."""
    budget = P100_BYTES - 16.0 * mm.local_parameters(spec, lay.tp)
    if exp == "max-batch":
        return mm.max_micro_batch(spec, lay, seq, budget)
    return mm.max_seq_length(spec, lay, mbs, budget, granularity)


def extrapolation(model: str, exp: str, budget: float, seq: int, mbs: int) -> list:
    """Rows (devices, rsa, tp or refusal, tp ceiling T, its value, p2p) from the model, 1 .. 64 devices."""
    spec, flash = _spec(PAPER_PRESETS[model], "unfused"), _spec(PAPER_PRESETS[model], "auto")
    heads, rows = spec.num_attention_heads, []
    for w in (1, 2, 4, 8) + EXTRAPOLATE:
        t = tp_ceiling(heads, w)
        rows.append(dict(devices=w, rsa=model_value(spec, "rsa", w, exp, budget, seq, mbs),
                         tp=model_value(spec, "tp", w, exp, budget, seq, mbs) if t == w else None,
                         ceiling=t, tp_ceiling=model_value(spec, "tp", w, exp, budget, seq, mbs, tp=t),
                         p2p=model_value(flash, "p2p", w, exp, budget, seq, mbs)))
    return rows


def real_bert_point(model: str, exp: str, mbs: int, devices: int = 64) -> tuple:
    """(RSA over ``devices``, TP at its ceiling) for the real BERT shapes on one 16 GB P100 each."""
    spec = _spec(REAL_BERT[model], "unfused")
    t = tp_ceiling(spec.num_attention_heads, devices)
    rsa = _device_value(spec, mm.ParallelConfig(cp=devices, mode="rsa"), exp, REAL_SEQ_LENGTH, mbs, devices)
    tp = _device_value(spec, mm.ParallelConfig(tp=t), exp, REAL_SEQ_LENGTH, mbs, 2)
    return rsa, tp, t


# --- report ----------------------------------------------------------------------------
def _short_refusal(error: str) -> str:
    if "exceeds --num-attention-heads" in error:
        return "refused: TP > heads"
    if "--num-attention-heads" in error and "not divisible" in error:
        return "refused: heads % TP"
    return "refused"


def _cell(row) -> str:
    if row is None:
        return "n/a"
    if str(row.get("error", "")).startswith("refused"):
        return _short_refusal(row["error"])
    if row.get("error"):
        return "error"
    if not row["max_value"]:
        return "none fits"
    return f"**{row['max_value']}** ({row['model_max_value']})"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _value(row):
    return row["max_value"] if row and not row.get("error") and row["max_value"] else None


def paper_report(args, results: dict, wall: float) -> str:
    budget = args.memory_budget_gb * 2 ** 30
    mib = args.memory_budget_gb * 1024
    cpu = sum(float(r.get("cpu_s") or 0) for rows in results.values() for r in rows)
    out = [f"# {args.name}: the RSA paper's max batch and max sequence length, in its setting and today's", "",
           f"Command: `python tools/scaling_experiment.py {' '.join(args.argv)}`", "",
           f"Budget {mib:.0f} MiB per rank (the measured step's peak above its baseline), fp32, CPU; "
           f"max batch at sequence {args.seq_length}, max length at micro-batch {args.micro_batch_size}. "
           f"Cells: **measured** (memory model). TP and RSA run `--attention-backend unfused` "
           f"(probabilities kept, the paper's baseline; RSA is that by design); p2p / a2a / a2a+p2p run the "
           f"flash kernels. Wall {wall:.0f} s; trials used {cpu:.0f} CPU-seconds.", ""]
    refusals, summary, errors = {}, [], []
    for model in args.paper_models:
        for exp in EXPERIMENTS:
            paper = {(r["world"], r["layout"]): r for r in results.get((model, exp, "paper"), [])}
            flash = {(r["world"], r["layout"]): r for r in results.get((model, exp, "flash"), [])}
            fixed = f"sequence {args.seq_length}" if exp == "max-batch" else f"micro-batch {args.micro_batch_size}"
            out += [f"## {model}: {WHAT[exp]} ({fixed})", "",
                    "| devices | TP, unfused | RSA | RSA / TP | p2p, flash | a2a, flash | a2a+p2p, flash |",
                    "|---:|---:|---:|---:|---:|---:|---:|"]
            worlds = sorted({w for w, _ in paper} | {w for w, _ in flash})
            for w in worlds:
                tp, rsa = paper.get((w, "tp")), paper.get((w, "rsa"))
                for r in (tp, rsa, *(flash.get((w, l)) for l in FLASH_LAYOUTS)):
                    if r and str(r.get("error", "")).startswith("refused"):
                        refusals[r["error"][len("refused: "):]] = None
                    if r and _value(r) and r.get("model_vs_measured"):
                        errors.append(abs(float(r["model_vs_measured"]) - 1))
                out.append(f"| {w} | {_cell(tp)} | {_cell(rsa)} | {_ratio(_value(rsa), _value(tp))} | "
                           + " | ".join(_cell(flash.get((w, l))) for l in FLASH_LAYOUTS) + " |")
            ext = extrapolation(model, exp, budget, args.seq_length, args.micro_batch_size)
            for e in ext:
                if e["devices"] in EXTRAPOLATE:
                    tp = e["tp"] if e["tp"] is not None else f"refused (TP {e['ceiling']}: {e['tp_ceiling']})"
                    out.append(f"| *{e['devices']}, model* | *{tp}* | *{e['rsa']}* | "
                               f"*{_ratio(e['rsa'], e['tp_ceiling'])}* | *{e['p2p']}* | | |")
            last = ext[-1]
            dp = last["devices"] // last["ceiling"]
            extra = (f"; TP {last['ceiling']} x DP {dp} on {last['ceiling'] * dp} of them holds {dp} x TP's batch: "
                     f"{last['rsa'] / (last['tp_ceiling'] * dp):.2f}x" if exp == "max-batch" else "")
            heads = _spec(PAPER_PRESETS[model], "unfused").num_attention_heads
            out += ["", f"Italic rows: the memory model. Above {heads} devices TP is refused (more ranks than "
                        f"heads); there RSA / TP is against TP at its ceiling T = {last['ceiling']}. At "
                        f"{last['devices']} devices RSA {last['rsa']} vs TP {last['ceiling']} {last['tp_ceiling']}: "
                        f"**{last['rsa'] / last['tp_ceiling']:.1f}x**{extra} (paper, 64 P100s: "
                        f"{PAPER_CLAIM[exp]}x).", ""]
            w4 = (_value(paper.get((4, "rsa"))), _value(paper.get((4, "tp"))))
            w8 = (_value(paper.get((8, "rsa"))), _value(paper.get((8, "tp"))))
            real = real_bert_point(model, exp, args.micro_batch_size)
            summary.append(f"| {model} | {WHAT[exp]} | {_ratio(*w4)} | {_ratio(*w8)} | "
                           f"{last['rsa'] / last['tp_ceiling']:.1f}x (TP {last['ceiling']}) | "
                           f"{real[0] / real[1]:.1f}x ({real[0]} vs {real[1]}, TP {real[2]}) | {PAPER_CLAIM[exp]}x |")
    out += ["## RSA / TP: measured at 4 and 8 devices, the model at 64, the paper", "",
            "| model | experiment | 4 devices | 8 devices | 64 devices, model, this budget | 64 devices, model, "
            f"real BERT on 16 GB (seq {REAL_SEQ_LENGTH} / micro-batch {args.micro_batch_size}) | paper, 64 P100s |",
            "|---|---|---:|---:|---:|---:|---:|", *summary, ""]
    if refusals:
        out += ["Refused layouts (pretrain_gpt.py's start-up error):", ""] + [f"- {m}" for m in refusals] + [""]
    if errors:
        out += [f"Memory model vs measurement, max value: worst |model / measured - 1| = {max(errors):.3f} over "
                f"{len(errors)} cells (per-trial peaks: the raw tables under `{args.name}/`).", ""]
    return "\n".join(out)


def paper_plots(args, results: dict) -> list:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[paper] matplotlib is not installed (pip install -e .[dev]); skipping plots", flush=True)
        return []
    budget, paths = args.memory_budget_gb * 2 ** 30, []
    for model in args.paper_models:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, exp in zip(axes, EXPERIMENTS):
            ext = extrapolation(model, exp, budget, args.seq_length, args.micro_batch_size)
            devs = [e["devices"] for e in ext]
            for key, label, style in (("rsa", "RSA (model)", "C1--"), ("tp_ceiling", "TP, unfused (model; ceiling)",
                                                                      "C0--"), ("p2p", "p2p flash (model)", "C2--")):
                ax.plot(devs, [e[key] for e in ext], style, alpha=0.6, label=label)
            for setting, layouts in (("paper", PAPER_LAYOUTS), ("flash", FLASH_LAYOUTS)):
                for i, l in enumerate(layouts):
                    pts = sorted((r["world"], r["max_value"]) for r in results.get((model, exp, setting), [])
                                 if r["layout"] == l and _value(r))
                    color = {"tp": "C0", "rsa": "C1", "p2p": "C2", "a2a": "C3", "a2a+p2p": "C4"}[l]
                    if pts:
                        ax.plot(*zip(*pts), "o-", color=color,
                                label=f"{l} {'unfused' if setting == 'paper' else 'flash'} (measured)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.set_xlabel("devices")
            ax.set_ylabel(WHAT[exp])
            ax.set_title(f"{model}: {WHAT[exp]}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6)
        fig.tight_layout()
        path = os.path.join(args.out_dir, f"{args.name}_{model}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


__all__ = ["PAPER_PRESETS", "PAPER_SEQ_LENGTH", "PAPER_MICRO_BATCH", "run_paper", "paper_report", "extrapolation",
           "tp_ceiling"]
