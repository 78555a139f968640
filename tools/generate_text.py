#!/usr/bin/env python
"""Sample text from a checkpoint of any layout, on one process (CPU or one GPU).

    python tools/generate_text.py --load checkpoints/gpt --prompt "def main(" --max-new-tokens 64 --top-k 40
    python tools/generate_text.py --load ckpt --prompt "3 1 4 1 5" --greedy        # NullTokenizer: ids in, ids out

The model is rebuilt from the flags stored in the checkpoint (metadata.json) on a
single-rank mesh, and its full (layout-free) tensors are loaded as they are, so a
checkpoint written at any TP/CP/PP/DP layout works (layer names are global).  Tokenizer flags default to the
checkpoint's; pass ``--tokenizer-model`` if the file has moved.  No KV cache: each
new token recomputes the (at most ``--seq-length``) context, fine for demos.
"""
from __future__ import annotations

import argparse
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron_sp.data.tokenizers import build_tokenizer_from_args  # noqa: E402
from megatron_sp.arguments.types import (NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE_INT, SEED,  # noqa: E402
                                    ArgumentParser, in_range)
from megatron_sp.model import GPTModel  # noqa: E402
from megatron_sp.parallel_state import single_rank_mesh  # noqa: E402
from megatron_sp.tensor_parallel import RNGTracker  # noqa: E402
from megatron_sp import checkpointing as ckpt  # noqa: E402
from megatron_sp.arguments.model_config import gpt_config  # noqa: E402
from megatron_sp.sequence_parallel.config import RING  # noqa: E402


def load_model(load_dir: str, iteration: int | None = None, device: str = "cpu"):
    """``(model, stored_args)`` from the checkpoint the tracker names (or ``iteration``)."""
    if iteration is None:
        iteration = ckpt.read_tracker(load_dir)
        if iteration is None:
            raise ckpt.CheckpointError(f"--load {load_dir}: no {ckpt.TRACKER}; pass --iteration N")
    path = ckpt.checkpoint_dir(load_dir, iteration)
    stored = types.SimpleNamespace(**ckpt.read_metadata(path)["args"])
    stored.hidden_dropout = stored.attention_dropout = 0.0
    stored.sequence_parallel, stored.recompute_granularity = False, None
    stored.cp_comm_type = RING  # one rank: every mode is local attention through the block kernel
    mesh = single_rank_mesh()
    rng = RNGTracker(stored.seed, device=device)
    model = GPTModel(gpt_config(stored, stored.padded_vocab_size), mesh, rng)
    tensors = ckpt.read_full_model(path)
    params = dict(model.named_parameters())
    if set(params) != set(tensors):
        raise ckpt.CheckpointError(f"checkpoint {path}: parameter names differ from the model built from its "
                                   f"own flags: {sorted(set(params) ^ set(tensors))[:5]}")
    with torch.no_grad():
        for name, p in params.items():
            if tuple(tensors[name].shape) != tuple(p.shape):
                raise ckpt.CheckpointError(f"checkpoint {path}: {name} has shape {tuple(tensors[name].shape)}, "
                                           f"expected {tuple(p.shape)}")
            p.copy_(tensors[name])
    return model.to(device).eval(), stored


def sample_next(logits: torch.Tensor, *, greedy=False, temperature=1.0, top_k=0, top_p=1.0,
                generator=None) -> int:
    """One token id from ``logits [V]`` (fp32): argmax, or temperature / top-k / top-p sampling."""
    if greedy:
        return int(logits.argmax())
    logits = logits / max(temperature, 1e-5)
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


@torch.no_grad()
def generate(model, prompt_ids: list, max_new_tokens: int, *, real_vocab: int, eod: int | None = None,
             context: int | None = None, generator=None, **sampling) -> list:
    """Prompt ids + up to ``max_new_tokens`` sampled ids (stops at ``eod`` when given)."""
    if not prompt_ids:
        raise ValueError("--prompt gives no tokens; pass some text (NullTokenizer: space-separated ids)")
    device = next(model.parameters()).device
    ids = list(prompt_ids)
    context = context or model.cfg.max_position_embeddings
    for _ in range(max_new_tokens):
        window = ids[-context:]
        tokens = torch.tensor([window], device=device)
        positions = torch.arange(len(window), device=device)[None]
        logits = model(tokens, positions)[0, -1].float()  # [V_padded]
        logits[real_vocab:] = float("-inf")  # padding rows of the vocab are never sampled
        nxt = sample_next(logits, generator=generator, **sampling)
        ids.append(nxt)
        if eod is not None and nxt == eod:
            break
    return ids


def device_type(text: str) -> str:
    """argparse type of ``--device``: a torch device this machine has."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1 ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text}: only cpu and cuda devices are supported")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Sample text from a megatron_sp checkpoint (any layout).")
    p.add_argument("--load", required=True, help="checkpoint directory (the one holding the tracker file)")
    p.add_argument("--iteration", type=NON_NEGATIVE_INT, default=None, help="default: the tracker's iteration")
    p.add_argument("--prompt", default=None, help="text to continue (NullTokenizer: space-separated ids)")
    p.add_argument("--max-new-tokens", type=NON_NEGATIVE_INT, default=32)
    p.add_argument("--num-samples", type=POSITIVE_INT, default=1)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--temperature", type=NON_NEGATIVE, default=1.0)
    p.add_argument("--top-k", type=NON_NEGATIVE_INT, default=0)
    p.add_argument("--top-p", type=in_range(0, 1, lo_open=True), default=1.0)
    p.add_argument("--seed", type=SEED, default=1234)
    p.add_argument("--ignore-eod", action="store_true", help="keep sampling past the end-of-document token")
    p.add_argument("--tokenizer-type", default=None, help="default: the checkpoint's")
    p.add_argument("--tokenizer-model", default=None, help="default: the checkpoint's")
    p.add_argument("--device", type=device_type, default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        model, stored = load_model(a.load, a.iteration, a.device)
        stored.tokenizer_type = a.tokenizer_type or stored.tokenizer_type
        stored.tokenizer_model = a.tokenizer_model or stored.tokenizer_model
        tok = build_tokenizer_from_args(stored)
        prompt = a.prompt if a.prompt is not None else ""
        try:
            prompt_ids = tok.tokenize(prompt) if prompt else [tok.eod]
        except ValueError as exc:
            raise ValueError(f"--prompt: {exc}") from None
        gen = torch.Generator().manual_seed(a.seed)
        for i in range(a.num_samples):
            ids = generate(model, prompt_ids, a.max_new_tokens, real_vocab=tok.vocab_size,
                           eod=None if a.ignore_eod else tok.eod, context=stored.seq_length, generator=gen,
                           greedy=a.greedy, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p)
            new = ids[len(prompt_ids):]
            if new and not a.ignore_eod and new[-1] == tok.eod:
                new = new[:-1]
            print(f"--- sample {i + 1} ---\n{tok.detokenize((prompt_ids if prompt else []) + new)}", flush=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
