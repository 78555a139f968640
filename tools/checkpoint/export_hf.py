"""Export a checkpoint (any layout) to a Hugging Face folder: LlamaForCausalLM, Qwen2ForCausalLM or
GPT2LMHeadModel, whichever its flags compute exactly.

    python tools/checkpoint/export_hf.py --load ckpt --save-dir hf_out
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('hf_out')"

RoPE + SwiGLU + RMSNorm models export as Llama (biases on all linears: ``attention_bias`` and
``mlp_bias``) or, with ``--disable-bias-linear --add-qkv-bias``, as Qwen2; learned positions +
LayerNorm + GELU as GPT-2.  Padded vocabulary rows are dropped (``--vocab-size``, default the
tokenizer's size the run recorded), ``--apply-layernorm-1p`` weights are stored as Hugging Face's
gamma, and a Hugging Face tokenizer the run used is copied next to the weights.
"""
from __future__ import annotations

import argparse
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.abspath(os.path.join(HERE, os.pardir, os.pardir)))

import torch  # noqa: E402

from checkpoint_io import read_checkpoint  # noqa: E402
from hf_config import family_of, hf_config_from_args  # noqa: E402
from hf_files import write_hf_folder  # noqa: E402
from hf_weights import to_hf  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--load", required=True, help="checkpoint directory (the one holding the tracker file)")
    p.add_argument("--save-dir", required=True, help="the Hugging Face folder to write")
    p.add_argument("--model-type", choices=["auto", "llama", "mistral", "qwen2", "gpt2"], default="auto")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="rows of the vocabulary to keep (default: the tokenizer's size recorded by the run)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    return p.parse_args(argv)


def _tokenizer(args: dict):
    """The run's tokenizer, if it can be built here (for the EOD id and an old checkpoint's vocabulary)."""
    try:
        from megatron_sp.data.tokenizers import build_tokenizer_from_args
        return build_tokenizer_from_args(types.SimpleNamespace(**args))
    except (ValueError, OSError, ImportError):
        return None


def main(argv=None) -> int:
    a = get_args(argv)
    try:
        tensors, args = read_checkpoint(a.load)
        family = family_of(args) if a.model_type == "auto" else a.model_type
        tok = _tokenizer(args)
        vocab = a.vocab_size or args.get("tokenizer_vocab_size") or (tok.vocab_size if tok else None)
        if vocab is None:
            raise ValueError(f"--load {a.load}: the run did not record its tokenizer's vocabulary size and the "
                             "tokenizer cannot be built here; pass --vocab-size N (the rows to keep)")
        if vocab > tensors["embedding.weight"].shape[0]:
            raise ValueError(f"--vocab-size {vocab} exceeds the checkpoint's "
                             f"{tensors['embedding.weight'].shape[0]} rows")
        config = hf_config_from_args(args, vocab, family, tok.eod if tok else None)
        hf = {k: v.to(DTYPES[a.dtype]) for k, v in to_hf(tensors, args, family, vocab).items()}
        config["torch_dtype"] = a.dtype
        tokenizer_dir = args.get("tokenizer_model") if args.get("tokenizer_type") == "HuggingFaceTokenizer" else None
        if tokenizer_dir and not os.path.isdir(tokenizer_dir):
            tokenizer_dir = os.path.dirname(tokenizer_dir)
        write_hf_folder(a.save_dir, config, hf, tokenizer_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {config['architectures'][0]} ({sum(t.numel() for t in hf.values()) / 1e6:.1f} M parameters, "
          f"vocabulary {vocab}, {a.dtype}) from {a.load} to {a.save_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
