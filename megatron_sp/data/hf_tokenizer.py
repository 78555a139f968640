"""Tokenizers of other libraries: Hugging Face ``tokenizers`` and OpenAI ``tiktoken``.

``HuggingFaceTokenizer`` (``--tokenizer-model DIR`` or ``DIR/tokenizer.json``), as Megatron-LM's:

* ids are the tokenizer's ``encode(text)`` *with* its special tokens -- e.g. the BOS that a
  Llama tokenizer puts first -- as ``tokenizer(text).input_ids`` gives them;
  ``tokenizer_config.json``'s ``add_bos_token`` / ``add_eos_token``, when present, decide
  whether BOS / EOS are added (as the Llama tokenizer classes do);
* EOD is the ``eos_token`` of ``tokenizer_config.json`` (without one: the first of
  ``<|endoftext|>``, ``</s>``, ``<eos>``, ``<EOD>`` in the vocabulary);
* ``vocab_size`` counts the added tokens too (``len(tokenizer)``).

``TikTokenizer`` (``--tokenizer-model vocab.json --tiktoken-pattern v1|v2``), as Megatron-LM's:
the vocabulary file is a JSON list of ``{"rank", "token_bytes" (base64), "token_str"}``;
ids ``0 .. S-1`` (S = ``--tiktoken-num-special-tokens``, 1000) are special tokens --
``<unk> <s> </s> <mask> <pad> <cls> <sep>`` then ``<SPECIAL_7>`` ... -- and BPE rank r is id
``S + r``.  ``vocab_size`` is ``--vocab-size`` (default 2^17), so the file's first
``vocab_size - S`` ranks are used.  EOD is ``</s>`` (id 2).  Special tokens written in the text
are their ids (Megatron's ``encode(text, allowed_special="all")``); with ``--legacy-tokenizer``
they are ordinary text (Megatron's legacy class, ``encode_ordinary``).  Needs ``pip install tiktoken``.
"""
from __future__ import annotations

import base64
import json
import os

EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<EOD>")


def _token_text(value):
    """``tokenizer_config.json`` writes special tokens as a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class HuggingFaceTokenizer:
    def __init__(self, path: str):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ValueError("--tokenizer-type HuggingFaceTokenizer needs the optional "
                             "'tokenizers' package: pip install tokenizers") from e
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ValueError(f"--tokenizer-model {path}: no tokenizer.json there (save the tokenizer with "
                             "save_pretrained, which writes tokenizer.json and tokenizer_config.json)")
        self.tok = Tokenizer.from_file(file)
        config_file = os.path.join(directory, "tokenizer_config.json")
        config = {}
        if os.path.isfile(config_file):
            with open(config_file, encoding="utf-8") as f:
                config = json.load(f)
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        eos = _token_text(config.get("eos_token"))
        bos = _token_text(config.get("bos_token"))
        if eos is not None and eos not in vocab:
            raise ValueError(f"--tokenizer-model {path}: eos_token {eos!r} of tokenizer_config.json is not in "
                             "the vocabulary")
        found = [vocab[p] for p in ((eos,) if eos else EOD_CANDIDATES) if p in vocab]
        if not found:
            raise ValueError(f"--tokenizer-model {path}: no end-of-document token (eos_token in "
                             f"tokenizer_config.json, or one of {EOD_CANDIDATES}) in the vocabulary")
        self.eod = found[0]
        self.bos = vocab.get(bos) if bos else None
        # add_bos_token / add_eos_token override the tokenizer.json post-processor when given
        self.add_bos = config.get("add_bos_token")
        self.add_eos = config.get("add_eos_token")
        if self.add_bos and self.bos is None:
            raise ValueError(f"--tokenizer-model {path}: add_bos_token is set but bos_token is missing")

    def tokenize(self, text: str) -> list:
        if self.add_bos is None and self.add_eos is None:
            return self.tok.encode(text, add_special_tokens=True).ids
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ([self.bos] if self.add_bos else []) + ids + ([self.eod] if self.add_eos else [])

    def detokenize(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


# The two split patterns of Megatron-LM's TikTokenizer (properties of the format: they fix the ids).
TIKTOKEN_PATTERNS = {
    "v1": r"[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
    "v2": (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
}
TIKTOKEN_SPECIALS = ("<unk>", "<s>", "</s>", "<mask>", "<pad>", "<cls>", "<sep>")
TIKTOKEN_DEFAULT_VOCAB = 2 ** 17


def load_tiktoken_ranks(path: str, count: int) -> dict:
    """The first ``count`` entries of a Megatron tiktoken vocabulary file: ``{bytes: rank}``."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--tokenizer-model {path}: cannot be read as a tiktoken JSON vocabulary ({exc})") from None
    if not isinstance(entries, list):
        raise ValueError(f"--tokenizer-model {path}: expected a JSON list of {{rank, token_bytes, token_str}}")
    if len(entries) < count:
        raise ValueError(f"--tokenizer-model {path} holds {len(entries)} ranks, fewer than --vocab-size minus "
                         f"--tiktoken-num-special-tokens = {count}; lower --vocab-size")
    ranks = {}
    for i, entry in enumerate(entries[:count]):
        if entry.get("rank") != i:
            raise ValueError(f"--tokenizer-model {path}: entry {i} has rank {entry.get('rank')}, expected {i}")
        ranks[base64.b64decode(entry["token_bytes"])] = i
    return ranks


class TikTokenizer:
    def __init__(self, path: str, pattern: str | None = "v2", vocab_size: int | None = None,
                 num_special_tokens: int = 1000, legacy: bool = False):
        try:
            import tiktoken
        except ImportError as e:
            raise ValueError("--tokenizer-type TikTokenizer needs the optional 'tiktoken' package: "
                             "pip install tiktoken") from e
        pattern = pattern or "v2"
        if pattern not in TIKTOKEN_PATTERNS:
            raise ValueError(f"--tiktoken-pattern {pattern}: choose v1 or v2")
        self.vocab_size = int(vocab_size or TIKTOKEN_DEFAULT_VOCAB)
        self.num_special = int(num_special_tokens)
        if not len(TIKTOKEN_SPECIALS) <= self.num_special < self.vocab_size:
            raise ValueError(f"--tiktoken-num-special-tokens {self.num_special} must be at least "
                             f"{len(TIKTOKEN_SPECIALS)} and below --vocab-size {self.vocab_size}")
        specials = list(TIKTOKEN_SPECIALS) + [f"<SPECIAL_{i}>" for i in range(len(TIKTOKEN_SPECIALS),
                                                                             self.num_special)]
        ranks = load_tiktoken_ranks(path, self.vocab_size - self.num_special)
        self.encoding = tiktoken.Encoding(
            name=os.path.basename(os.path.dirname(os.path.abspath(path))) or "tiktoken",
            pat_str=TIKTOKEN_PATTERNS[pattern],
            mergeable_ranks={b: r + self.num_special for b, r in ranks.items()},
            special_tokens={t: i for i, t in enumerate(specials)})
        self.eod = specials.index("</s>")
        self.bos = specials.index("<s>")
        self.legacy = legacy

    def tokenize(self, text: str) -> list:
        if self.legacy:  # Megatron's legacy TikToken class: special-token text is ordinary text
            return self.encoding.encode_ordinary(text)
        return self.encoding.encode(text, allowed_special="all")

    def detokenize(self, ids) -> str:
        return self.encoding.decode([int(i) for i in ids])
