"""Benchmark masked CP attention: packed documents and a sliding window against full causal attention.

    python tools/bench_masked_attention.py --seq 16384 --world 4 --mode p2p --heads 4 --head-dim 64 \
        --mean-doc 1024 --window 1023 --repeats 2

Forks ``--world`` gloo ranks (one intra-op thread each) and times one CP attention call
(``out = attn(q, k, v, mask); out.backward(dout)``, fp32, batch 1) per case:

* ``causal``   - the sequence as one document, no window (what training without
  ``--reset-attention-mask`` computes on the same tokens);
* ``packed``   - documents of random lengths 1 .. 2 x ``--mean-doc`` - 1 (seeded), ``--reset-attention-mask``;
* ``window``   - ``--window-size W,0`` over the whole sequence.

``--model``: instead, ``--repeats`` + 1 training steps of a small GPT (2 layers, hidden 256,
4 heads, RoPE, vocabulary 1024) through ``pretrain_gpt``'s loop on an indexed dataset written
here, documents of length 1 .. 2 x ``--mean-doc`` - 1 each ending with EOD; the cases add
``--reset-position-ids --reset-attention-mask`` (packed) or ``--window-size W,0`` (window) to
the same data, and the column is Megatron's "elapsed time per iteration" (median after the first).

Columns (per rank, the maximum over ranks; median of ``--repeats`` after one warm-up):
``wall s``, ``cpu s`` (process CPU time: compute plus gloo threads), the ratio of each to the
causal case, ``skipped`` (share of the ring's (rank, step) blocks that called no kernel,
counted in forward and backward: masks.count_blocks) and ``predicted`` (the same share from
the mask's plan alone, masks.skip_fraction), and ``pairs`` (the (query, key) pairs the kernels
computed, relative to causal).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_sp.launch import run_distributed  # noqa: E402
from megatron_sp.parallel_state import initialize_model_parallel  # noqa: E402
from megatron_sp.sequence_parallel import AttentionMask, build_cp_attention, shard_for_cp, uses_zigzag  # noqa: E402
from megatron_sp.sequence_parallel.masks import count_blocks, skip_fraction  # noqa: E402


def document_starts(seq: int, mean: int, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    starts, pos = [0], 0
    while True:
        pos += int(torch.randint(1, 2 * mean, (1,), generator=g))
        if pos >= seq:
            return starts + [seq]
        starts.append(pos)


def _cases(a):
    return {"causal": None, "packed": AttentionMask([document_starts(a.seq, a.mean_doc)]),
            "window": AttentionMask(None, a.window)}


def _rank(rank, world, a):
    torch.set_num_threads(1)
    mesh = initialize_model_parallel(1, world, None)
    attn = build_cp_attention(a.mode, mesh, causal=True)
    g = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(a.seq, 1, a.heads, a.head_dim, generator=g) for _ in range(4))
    local = [shard_for_cp(x, 0, a.mode, True, mesh) for x in (q, k, v, dout)]
    results = {}
    for name, mask in _cases(a).items():
        times = []
        for rep in range(a.repeats + 1):
            leaves = [x.clone().requires_grad_() for x in local[:3]]
            torch.distributed.barrier()
            wall, cpu = time.perf_counter(), time.process_time()
            with count_blocks() as steps:
                attn(*leaves, mask).backward(local[3])
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
        zigzag = uses_zigzag(a.mode, True) and world > 1
        results[name] = dict(wall=statistics.median(t[0] for t in times[1:]),
                             cpu=statistics.median(t[1] for t in times[1:]),
                             skipped=sum(not live for live, _ in steps), steps=len(steps),
                             pairs=sum(n for _, n in steps),
                             predicted=skip_fraction(mask, 1, a.seq, zigzag, world) if mask else 0.0)
    return results


MODEL = ("--tokenizer-type NullTokenizer --vocab-size 1024 --num-layers 2 --hidden-size 256 --num-attention-heads 4 "
         "--micro-batch-size 1 --global-batch-size 1 --lr 1e-4 --hidden-dropout 0 --attention-dropout 0 "
         "--log-interval 1 --eval-interval 0 --seed 1 --position-embedding-type rope --split 1,0,0").split()


def _write_documents(prefix: str, tokens: int, mean: int, eod: int) -> None:
    import numpy as np
    from megatron_sp.data.indexed_dataset import IndexedDatasetBuilder
    rng = np.random.RandomState(0)
    builder = IndexedDatasetBuilder(prefix + ".bin", np.int32)
    while tokens > 0:
        n = int(rng.randint(1, 2 * mean))
        builder.add_document(list(rng.randint(0, eod, n - 1)) + [eod])
        tokens -= n
    builder.finalize(prefix + ".idx")


def _model_rank(rank, world, argv):
    import contextlib
    import io
    import re
    from megatron_sp.training.loop import pretrain
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        pretrain(argv)
    return [float(x) for x in re.findall(r"elapsed time per iteration \(ms\): ([\d.]+)", out.getvalue())]


def model_steps(a) -> None:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "docs")
        _write_documents(prefix, a.seq * (a.repeats + 3), a.mean_doc, 1023)  # NullTokenizer 1024: EOD 1023
        argv = MODEL + ["--data-path", prefix, "--seq-length", str(a.seq), "--train-iters", str(a.repeats + 1),
                        "--context-parallel-size", str(a.world), "--cp-comm-type", a.mode,
                        "--data-cache-path", os.path.join(tmp, "cache")]
        cases = {"causal": [], "packed": ["--reset-position-ids", "--reset-attention-mask"],
                 "window": [f"--window-size={a.window},0"]}
        print("| case | ms per step | / causal |")
        print("|---|---|---|")
        base = None
        for name, extra in cases.items():
            ms = statistics.median(run_distributed(_model_rank, a.world, argv + extra, timeout=3600)[-1][1:])
            base = base or ms
            print(f"| {name} | {ms:.0f} | {ms / base:.3f} |", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq", type=int, default=16384)
    p.add_argument("--world", type=int, default=4)
    p.add_argument("--mode", default="p2p", choices=["p2p", "a2a", "rsa"])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--mean-doc", type=int, default=1024)
    p.add_argument("--window", type=int, default=1023, help="left window W (--window-size W,0)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", action="store_true", help="time training steps of a small GPT instead")
    a = p.parse_args(argv)
    if a.model:
        return model_steps(a)
    per_rank = run_distributed(_rank, a.world, a, timeout=3600)
    causal_pairs = a.seq * (a.seq + 1) // 2 * 2  # forward + backward over all ranks
    print("| case | wall s | cpu s | wall / causal | cpu / causal | skipped | predicted | pairs / causal |")
    print("|---|---|---|---|---|---|---|---|")
    base = {k: max(r["causal"][k] for r in per_rank) for k in ("wall", "cpu")}
    for name in _cases(a):
        wall, cpu = (max(r[name][k] for r in per_rank) for k in ("wall", "cpu"))
        steps = sum(r[name]["steps"] for r in per_rank)
        skipped = f"{sum(r[name]['skipped'] for r in per_rank) / steps:.3f}" if steps else "-"
        pairs = f"{sum(r[name]['pairs'] for r in per_rank) / causal_pairs:.3f}" if steps else "1 (unmasked)"
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {wall / base['wall']:.3f} | {cpu / base['cpu']:.3f} | "
              f"{skipped} | {per_rank[0][name]['predicted']:.3f} | {pairs} |")


if __name__ == "__main__":
    main()
