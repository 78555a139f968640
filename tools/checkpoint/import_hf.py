"""Import a Hugging Face Llama / Mistral / Qwen2 / GPT-2 folder into a checkpoint to train from.

    python tools/checkpoint/import_hf.py --hf-dir Llama-3.2-1B --save ckpt/llama32
    torchrun --nproc-per-node 4 pretrain_gpt.py --load ckpt/llama32 --use-checkpoint-args \\
        --seq-length 16384 --context-parallel-size 4 ...              # any layout: TP, CP, DP

The checkpoint is weights-only (iteration 0): ``--load`` starts from it as ``--finetune`` does,
and ``--use-checkpoint-args`` takes the model flags (printed here too) and the tokenizer from it.
The tokenizer is the folder's own (``--tokenizer-type HuggingFaceTokenizer``) when it holds a
``tokenizer.json``, else ``--tokenizer-type``/``--tokenizer-model`` as given, else NullTokenizer
over the model's vocabulary.  Models this codebase cannot compute exactly (other RoPE scalings,
sliding windows, other activations) are refused with the reason.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.abspath(os.path.join(HERE, os.pardir, os.pardir)))

import torch  # noqa: E402

from checkpoint_io import write_checkpoint  # noqa: E402
from hf_config import family_of, flags_from_hf_config  # noqa: E402
from hf_files import read_hf_folder  # noqa: E402
from hf_weights import from_hf, hf_vocab  # noqa: E402
from megatron_sp.arguments.tokenizer_flags import add_tokenizer_arguments  # noqa: E402
from megatron_sp.data.tokenizers import build_tokenizer_from_args  # noqa: E402
from megatron_sp.arguments import build_parser, padded_vocab_size, validate_args  # noqa: E402


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--hf-dir", required=True, help="a save_pretrained folder: config.json + *.safetensors")
    p.add_argument("--save", required=True, help="the checkpoint directory to write (must not hold one)")
    p.add_argument("--seq-length", type=int, default=None,
                   help="recorded training length (default: the model's max_position_embeddings, at most 4096)")
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    add_tokenizer_arguments(p.add_argument_group("tokenizer (default: the folder's own)"))
    return p.parse_args(argv)


def model_args(cfg: dict, a) -> argparse.Namespace:
    """The full flags of the imported model (what a run with them would hold)."""
    flags = flags_from_hf_config(cfg)
    if a.tokenizer_type or a.vocab_file:
        tok_flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if v is not None and k in (
            "tokenizer_type", "tokenizer_model", "vocab_size", "vocab_file", "merge_file", "tiktoken_pattern",
            "null_tokenizer_eod_id")]
    elif os.path.isfile(os.path.join(a.hf_dir, "tokenizer.json")):
        tok_flags = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", os.path.abspath(a.hf_dir)]
    else:
        tok_flags = ["--tokenizer-type", "NullTokenizer", "--vocab-size", str(cfg["vocab_size"])]
    positions = int(flags[flags.index("--max-position-embeddings") + 1])
    seq = a.seq_length or min(positions, 4096)
    run = ["--mock-data", "--micro-batch-size", "1", "--lr", "0", "--train-iters", "1", "--hidden-dropout", "0",
           "--attention-dropout", "0", "--eval-interval", "0", "--seq-length", str(seq),
           "--make-vocab-size-divisible-by", str(a.make_vocab_size_divisible_by)]
    args = validate_args(build_parser().parse_args(flags + tok_flags + run), 1)
    args.model_flags = flags
    return args


def check_names_and_shapes(tensors: dict, args) -> None:
    """Build the model on the meta device: every tensor must be one of its parameters, shape for shape."""
    from megatron_sp.model import GPTModel
    from megatron_sp.parallel_state import single_rank_mesh
    from megatron_sp.tensor_parallel import RNGTracker
    from megatron_sp.arguments.model_config import gpt_config
    with torch.device("meta"):
        model = GPTModel(gpt_config(args, args.padded_vocab_size), single_rank_mesh(), RNGTracker(args.seed))
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    got = {n: tuple(t.shape) for n, t in tensors.items()}
    if params != got:
        diff = sorted(set(params.items()) ^ set(got.items()))[:6]
        raise ValueError(f"converted tensors do not match the model of the flags: {diff}")


def main(argv=None) -> int:
    a = get_args(argv)
    try:
        cfg, hf = read_hf_folder(a.hf_dir)
        args = model_args(cfg, a)
        tokenizer = build_tokenizer_from_args(args)
        family = family_of(vars(args))
        rows = max(tokenizer.vocab_size, hf_vocab(hf, family))
        args.padded_vocab_size = padded_vocab_size(rows, args.make_vocab_size_divisible_by, 1)
        args.tokenizer_vocab_size = tokenizer.vocab_size
        tensors = from_hf(hf, vars(args), family)
        del hf
        check_names_and_shapes(tensors, args)
        path = write_checkpoint(a.save, tensors, vars(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = sum(t.numel() for t in tensors.values())
    print(f"imported {cfg.get('model_type')} ({n / 1e6:.1f} M parameters, padded vocabulary {args.padded_vocab_size}) "
          f"from {a.hf_dir} into {path}\n  model flags: {' '.join(args.model_flags)}\n"
          f"  tokenizer: --tokenizer-type {args.tokenizer_type}"
          + (f" --tokenizer-model {args.tokenizer_model}" if args.tokenizer_model else "")
          + f"\n  train from it: pretrain_gpt.py --load {a.save} --use-checkpoint-args ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
