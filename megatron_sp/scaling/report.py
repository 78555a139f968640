"""Outputs of a scaling experiment: CSV, the paper-style Markdown tables, and PNG plots."""
from __future__ import annotations

import csv
import os


def _csv(path, rows):
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)


def markdown_table(args, rows) -> str:
    layouts = [l for l in args.layouts if any(r["layout"] == l for r in rows)]
    worlds = sorted({r["world"] for r in rows})
    cell = {(r["world"], r["layout"]): r for r in rows}
    what = "max sequence length" if args.experiment == "max-seq" else "max micro-batch size"
    fixed = (f"micro-batch {args.micro_batch_size}" if args.experiment == "max-seq"
             else f"sequence length {args.seq_length}")
    budget = f"{args.memory_budget_gb * 1024:.0f} MiB per rank" if args.memory_budget_gb else "whole device"
    lines = [f"**{what}** ({fixed}, budget {budget}, model `{args.model or ''} {args.model_args or ''}`"
             f"{', bf16' if args.bf16 else ', fp32'}); cell: max value / tokens per s / TFLOP/s per device", "",
             "| world | " + " | ".join(layouts) + " |", "|---:|" + "---:|" * len(layouts)]
    for w in worlds:
        cells = []
        for l in layouts:
            r = cell.get((w, l))
            if r is None:
                cells.append("n/a")
            elif str(r.get("error", "")).startswith("refused"):
                cells.append("refused")
            elif r.get("error"):
                cells.append("error")
            elif not r["max_value"]:
                cells.append("none fits")
            else:
                cells.append(f"**{r['max_value']}** / {r['tokens_per_s']:.0f} / {r['tflops_per_device']:.4f}")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    base = {l: cell.get((1, l)) for l in layouts}
    if any(b and b["max_value"] for b in base.values()):
        lines += ["", f"Ratio to world 1 ({what}):", "", "| world | " + " | ".join(layouts) + " |",
                  "|---:|" + "---:|" * len(layouts)]
        for w in worlds:
            cells = []
            for l in layouts:
                r, b = cell.get((w, l)), base[l]
                cells.append(f"{r['max_value'] / b['max_value']:.2f}x" if r and b and b["max_value"] and r["max_value"]
                             else "-")
            lines.append(f"| {w} | " + " | ".join(cells) + " |")
    refused = sorted({r["error"][len("refused: "):] for r in rows if str(r.get("error", "")).startswith("refused")})
    if refused:
        lines += ["", "Refused (pretrain_gpt.py's start-up error):", ""] + [f"- {m}" for m in refused]
    lines += ["", "Memory model vs measurement (max value: model / measured; step peak above baseline, MiB: "
              "model / measured; model communication per step and rank, MiB):", "",
              "| world | layout | max (model / measured) | peak MiB (model / measured) | comm MiB/step | trials |",
              "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if str(r.get("error", "")).startswith("refused"):
            lines.append(f"| {r['world']} | {r['layout']} | refused | | | 0 |")
            continue
        lines.append(f"| {r['world']} | {r['layout']} | {r['model_max_value']} / {r['max_value']}"
                     f" ({r['model_vs_measured']}) | {r['model_peak_mb']} / {r['peak_mb']} | "
                     f"{r['model_comm_mb_per_step']} | {r['trials']} |")
    return "\n".join(lines) + "\n"


def plot(args, rows, trials) -> list:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[scaling] matplotlib is not installed (pip install -e .[dev]); skipping plots", flush=True)
        return []
    paths = []
    what = "max sequence length" if args.experiment == "max-seq" else "max micro-batch size"
    fig, ax = plt.subplots(figsize=(6, 4))
    for l in args.layouts:
        pts = sorted((r["world"], r["max_value"]) for r in rows if r["layout"] == l and r["max_value"])
        if pts:
            ax.plot(*zip(*pts), marker="o", label=l)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("devices (world size)")
    ax.set_ylabel(what)
    ax.set_title(f"{what} vs devices")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    p = os.path.join(args.out_dir, f"{args.name}_vs_devices.png")
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    if args.experiment == "max-seq":
        fig, ax = plt.subplots(figsize=(6, 4))
        for w in sorted({t["world"] for t in trials}):
            for l in args.layouts:
                pts = sorted((t["seq_length"], t["tokens_per_s"]) for t in trials
                             if t["world"] == w and t["layout"] == l and t["status"] == "ok")
                if len(pts) >= 1 and (w > 1 or l == args.layouts[0]):
                    ax.plot(*zip(*pts), marker=".", label=f"{l} W={w}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("tokens / s (whole job)")
        ax.set_title("throughput vs sequence length (trials that fit)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        p = os.path.join(args.out_dir, f"{args.name}_throughput_vs_length.png")
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def write_outputs(args, rows, trials, final: bool = False) -> None:
    _csv(os.path.join(args.out_dir, f"{args.name}.csv"), rows)
    _csv(os.path.join(args.out_dir, f"{args.name}_trials.csv"), trials)
    with open(os.path.join(args.out_dir, f"{args.name}.md"), "w") as f:
        f.write(f"# {args.name}\n\nCommand: `{' '.join(['python', 'tools/scaling_experiment.py'] + args.argv)}`\n\n")
        f.write(markdown_table(args, rows))
    if final:
        plot(args, rows, trials)


def _read_trials(args) -> list:
    path = os.path.join(args.out_dir, f"{args.name}_trials.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for t in rows:
        t["world"], t["seq_length"] = int(t["world"]), int(t["seq_length"])
        t["tokens_per_s"] = float(t["tokens_per_s"])
    return rows
