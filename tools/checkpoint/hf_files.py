"""Reading and writing Hugging Face model folders (``save_pretrained`` layout) without transformers.

    cfg, tensors = read_hf_folder("Llama-3.2-1B")      # config.json + *.safetensors (or *.bin)
    write_hf_folder("out", cfg, tensors, tokenizer_from="tok_dir")

Sharded checkpoints (``model.safetensors.index.json``) are read shard by shard; the written
folder holds one ``model.safetensors`` (tensors whose storage is shared are written once by
transformers' rules: a tied ``lm_head.weight`` is simply left out).
"""
from __future__ import annotations

import glob
import json
import os
import shutil

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt")


def read_hf_folder(path: str) -> tuple:
    """``(config dict, {name: tensor})`` of a Hugging Face model folder."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"--hf-dir {path}: no config.json there (a save_pretrained folder is expected)")
    with open(config_file) as f:
        config = json.load(f)
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    tensors = {}
    if files:
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ValueError("reading .safetensors needs the safetensors package: pip install safetensors") from e
        for file in files:
            tensors.update(_read(load_file, file))
    else:
        import torch
        bins = sorted(glob.glob(os.path.join(path, "pytorch_model*.bin")))
        if not bins:
            raise ValueError(f"--hf-dir {path}: no *.safetensors or pytorch_model*.bin weights there")
        for file in bins:
            tensors.update(_read(lambda f: torch.load(f, map_location="cpu", weights_only=True), file))
    return config, tensors


def _read(load, file: str) -> dict:
    """``load(file)``; a damaged file (truncated download, wrong format) is one line naming it."""
    try:
        return load(file)
    except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError, torch.load many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"--hf-dir: weight file {file} cannot be read ({type(exc).__name__}: {first}); it is "
                         "damaged or truncated (an interrupted download?): fetch it again") from None


def write_hf_folder(path: str, config: dict, tensors: dict, tokenizer_from: str | None = None) -> None:
    """Write ``config.json`` and ``model.safetensors`` (and the tokenizer files of ``tokenizer_from``)."""
    try:
        from safetensors.torch import save_file
    except ImportError as e:
        raise ValueError("writing .safetensors needs the safetensors package: pip install safetensors") from e
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if tokenizer_from and os.path.isdir(tokenizer_from):
        for name in TOKENIZER_FILES:
            src = os.path.join(tokenizer_from, name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(path, name))
