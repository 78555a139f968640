"""Tokenizers behind ``--tokenizer-type``: the same ids and EOD as Megatron-LM's.

    tok = build_tokenizer("SentencePieceTokenizer", "tokenizer.model")
    ids = tok.tokenize("Hello")            # list[int]
    tok.detokenize(ids), tok.vocab_size, tok.eod

Types (the names Megatron-LM uses, so data and checkpoints line up):

* ``NullTokenizer`` -- the text *is* space-separated ids.  ``--vocab-size V`` gives
  ids ``0..V-1``, ``vocab_size`` V, and EOD the last id ``V - 1`` (``--null-tokenizer-eod-id``
  picks another), as Megatron-LM since megatron-core 0.18 (and its main branch).
* ``GPT2BPETokenizer`` -- GPT-2's byte-level BPE from ``--vocab-file`` (vocab.json) and
  ``--merge-file`` (merges.txt); EOD is ``<|endoftext|>``, which in the text is the EOD id
  itself, as Megatron-LM's Hugging Face based GPT-2 tokenizer (gpt2_bpe.py).
* ``SentencePieceTokenizer`` -- a SentencePiece model plus Megatron's special tokens
  ``<CLS> <SEP> <EOD> <MASK>`` (and pad/bos/eos).  A special token missing from the
  model gets the next free id, so ``vocab_size`` may exceed the model's size;
  ``tools/train_tokenizer.py`` puts them all in the model.  EOD is ``<EOD>``.
* ``GPTSentencePieceTokenizer`` -- the plain SentencePiece model; EOD is its ``</s>``.
* ``Llama2Tokenizer`` -- the plain SentencePiece model with its BOS put before every
  document, as Megatron-LM's Llama-2 tokenizer does; EOD is its ``</s>``.
* ``HuggingFaceTokenizer`` -- a directory saved by ``save_pretrained`` (``tokenizer.json`` +
  ``tokenizer_config.json``) or a ``tokenizer.json`` file; EOD is the eos token
  (hf_tokenizer.py).  Needs the ``tokenizers`` package.
* ``TikTokenizer`` -- a tiktoken vocabulary JSON with ``--tiktoken-pattern v1|v2``
  (hf_tokenizer.py); special tokens in the text (``<s>``, ``</s>`` ...) are their ids, as
  Megatron-LM's.  Needs the ``tiktoken`` package.

``--legacy-tokenizer`` (Megatron-LM's flag of the same name, for its older tokenizer classes,
removed in megatron-core 0.17) gives the ids those classes gave: ``GPT2BPETokenizer`` and
``TikTokenizer`` encode special-token text as ordinary text, and ``NullTokenizer --vocab-size
V`` has ``V + 1`` ids with EOD ``V`` (also what megatron-core up to 0.17 and this codebase
before the change to V ids gave).  Data preprocessed with those keep their ids this way.  The
other types encode the same with or without it.  A checkpoint written by this codebase with the
``V + 1`` NullTokenizer (its flags have no ``null_tokenizer_eod_id``) resumes with that meaning
(training/checkpoint_args.py).
"""
from __future__ import annotations

import json
import os

TOKENIZER_TYPES = ("NullTokenizer", "GPT2BPETokenizer", "SentencePieceTokenizer", "GPTSentencePieceTokenizer",
                   "Llama2Tokenizer", "HuggingFaceTokenizer", "TikTokenizer")
# Megatron-DeepSpeed's name of the Hugging Face tokenizer
TOKENIZER_ALIASES = {"HFTokenizer": "HuggingFaceTokenizer"}
# The options build_tokenizer takes besides type, model and vocabulary size (flag dests).
TOKENIZER_OPTIONS = ("vocab_file", "merge_file", "tiktoken_pattern", "tiktoken_num_special_tokens",
                     "null_tokenizer_eod_id", "legacy_tokenizer")


def resolve_tokenizer_type(tokenizer_type: str | None, vocab_file: str | None = None) -> str:
    """``None`` (not given) -> Megatron's pretrain_gpt default GPT2BPETokenizer when a
    ``--vocab-file`` is given, else NullTokenizer; Megatron-DeepSpeed aliases -> our names."""
    if tokenizer_type is None:
        return "GPT2BPETokenizer" if vocab_file else "NullTokenizer"
    return TOKENIZER_ALIASES.get(tokenizer_type, tokenizer_type)


def tokenizer_options(args) -> dict:
    """The build_tokenizer keyword options held by a parsed ``args`` (missing ones left out)."""
    return {k: getattr(args, k) for k in TOKENIZER_OPTIONS if getattr(args, k, None) is not None}


# Which tokenizer types read each option flag (the others ignore it, as Megatron-LM's do).
_READ_BY = {"tokenizer_model": ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer",
                                "HuggingFaceTokenizer", "TikTokenizer"),
            "vocab_size": ("NullTokenizer", "TikTokenizer"), "vocab_file": ("GPT2BPETokenizer",),
            "merge_file": ("GPT2BPETokenizer",), "tiktoken_pattern": ("TikTokenizer",),
            "null_tokenizer_eod_id": ("NullTokenizer",),
            "legacy_tokenizer": ("NullTokenizer", "GPT2BPETokenizer", "TikTokenizer")}


def unused_tokenizer_flags(args) -> list:
    """One note per tokenizer flag given that the chosen ``--tokenizer-type`` does not read."""
    kind = resolve_tokenizer_type(args.tokenizer_type, getattr(args, "vocab_file", None))
    notes = []
    for dest, readers in _READ_BY.items():
        value = getattr(args, dest, None)
        if value not in (None, False) and kind not in readers:
            extra = (" (the vocabulary is the tokenizer's; --padded-vocab-size sets the model's rows)"
                     if dest == "vocab_size" else "")
            notes.append(f"--{dest.replace('_', '-')} {value} has no effect with --tokenizer-type {kind}{extra}")
    return notes


def saved_null_tokenizer_is_legacy(saved: dict) -> bool:
    """Whether a checkpoint's saved flags (a dict) mean the ``V + 1`` NullTokenizer: given with
    ``--legacy-tokenizer``, or saved by this codebase before ``--null-tokenizer-eod-id`` existed
    (when its NullTokenizer had ``V + 1`` ids, EOD ``V``)."""
    if resolve_tokenizer_type(saved.get("tokenizer_type"), saved.get("vocab_file")) != "NullTokenizer":
        return False
    return bool(saved.get("legacy_tokenizer")) or "null_tokenizer_eod_id" not in saved


def build_tokenizer_from_args(args):
    return build_tokenizer(resolve_tokenizer_type(args.tokenizer_type, getattr(args, "vocab_file", None)),
                           getattr(args, "tokenizer_model", None), getattr(args, "vocab_size", None),
                           **tokenizer_options(args))


class NullTokenizer:
    """Ids in, ids out: ``"3 1 4"`` -> ``[3, 1, 4]``; ``vocab_size`` V, EOD ``V - 1`` by default
    (``legacy``: ``vocab_size`` V + 1, EOD V)."""

    def __init__(self, vocab_size: int, eod_id: int | None = None, legacy: bool = False):
        if legacy and eod_id is not None:
            raise ValueError(f"--null-tokenizer-eod-id {eod_id} with --legacy-tokenizer: the legacy NullTokenizer's "
                             f"EOD is --vocab-size {vocab_size}; drop one of the two")
        self.vocab_size = int(vocab_size) + (1 if legacy else 0)
        self.eod = self.vocab_size - 1 if eod_id is None else int(eod_id)
        if not 0 <= self.eod < self.vocab_size:
            raise ValueError(f"--null-tokenizer-eod-id {self.eod} is outside [0, --vocab-size {self.vocab_size})")

    def tokenize(self, text: str) -> list[int]:
        try:
            ids = [int(x) for x in text.split()]
        except ValueError:
            raise ValueError(f"NullTokenizer: {text[:40]!r} is not space-separated token ids") from None
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"NullTokenizer: id {bad[0]} outside [0, {self.vocab_size})")
        return ids

    def detokenize(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


class _SentencePieceBase:
    def __init__(self, model_file: str):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        self.model_file = model_file


class GPTSentencePieceTokenizer(_SentencePieceBase):
    """Plain SentencePiece: ids are the model's, EOD is the model's ``</s>`` (eos)."""

    def __init__(self, model_file: str):
        super().__init__(model_file)
        self.vocab_size = self.sp.get_piece_size()
        self.eod = self.sp.eos_id()
        if self.eod < 0:
            raise ValueError(f"--tokenizer-model {model_file}: the model has no eos piece, which "
                             "GPTSentencePieceTokenizer uses as EOD; use SentencePieceTokenizer")

    def tokenize(self, text: str) -> list[int]:
        return self.sp.encode_as_ids(text)

    def detokenize(self, ids) -> str:
        return self.sp.decode_ids([int(i) for i in ids])


class Llama2Tokenizer(GPTSentencePieceTokenizer):
    """Plain SentencePiece with the model's BOS before every document, as Megatron-LM's Llama-2
    tokenizer (``tokenize(text)`` = ``[bos] + encode(text)``); EOD is ``</s>``."""

    def __init__(self, model_file: str):
        super().__init__(model_file)
        self.bos = self.sp.bos_id()
        if self.bos < 0:
            raise ValueError(f"--tokenizer-model {model_file}: the model has no bos piece, which "
                             "Llama2Tokenizer puts first; use GPTSentencePieceTokenizer")

    def tokenize(self, text: str) -> list[int]:
        return [self.bos] + self.sp.encode_as_ids(text)


class SentencePieceTokenizer(_SentencePieceBase):
    """SentencePiece with Megatron's special tokens, which are matched in the raw text.

    Special tokens are split out before SentencePiece sees the text, and detokenized
    as `` <EOD> `` (with spaces), exactly as Megatron-LM's ``_SentencePieceTokenizer``.
    """

    def __init__(self, model_file: str):
        super().__init__(model_file)
        n = self.sp.get_piece_size()
        self.vocab = {self.sp.id_to_piece(i): i for i in range(n)}
        self.special: dict[str, int] = {}

        def add(piece: str) -> int:
            if piece not in self.vocab:
                self.vocab[piece] = len(self.vocab)
            self.special[piece] = self.vocab[piece]
            return self.vocab[piece]

        for piece in ("<CLS>", "<SEP>", "<EOD>", "<MASK>"):
            add(piece)
        for sp_id, fallback in ((self.sp.pad_id(), "<PAD>"), (self.sp.bos_id(), "<BOS>"),
                                (self.sp.eos_id(), "<EOS>")):
            add(self.sp.id_to_piece(sp_id) if 0 <= sp_id < n else fallback)
        self.inv_special = {i: p for p, i in self.special.items()}
        self.vocab_size = len(self.vocab)
        self.eod = self.vocab["<EOD>"]

    def tokenize(self, text: str) -> list[int]:
        ids, pos = [], 0
        while True:
            hits = [(text.find(p, pos), p) for p in self.special]
            hits = [(i, p) for i, p in hits if i >= 0]
            if not hits:
                break
            i, piece = min(hits)
            ids.extend(self.sp.encode_as_ids(text[pos:i]))
            ids.append(self.special[piece])
            pos = i + len(piece)
        ids.extend(self.sp.encode_as_ids(text[pos:]))
        return ids

    def detokenize(self, ids) -> str:
        ids = [int(i) for i in ids]
        out, start = "", 0
        for k, i in enumerate(ids):
            if i in self.inv_special:
                out += self.sp.decode_ids(ids[start:k]) + " " + self.inv_special[i] + " "
                start = k + 1
        return out + self.sp.decode_ids(ids[start:])


def build_tokenizer(tokenizer_type: str, tokenizer_model: str | None = None, vocab_size: int | None = None,
                    *, vocab_file: str | None = None, merge_file: str | None = None,
                    tiktoken_pattern: str | None = None, tiktoken_num_special_tokens: int = 1000,
                    null_tokenizer_eod_id: int | None = None, legacy_tokenizer: bool = False):
    """Build the tokenizer named by ``--tokenizer-type`` (see the module docstring)."""
    tokenizer_type = resolve_tokenizer_type(tokenizer_type, vocab_file)
    if tokenizer_type == "NullTokenizer":
        if vocab_size is None or int(vocab_size) <= 0:
            raise ValueError(f"--tokenizer-type NullTokenizer needs --vocab-size > 0 "
                             f"(got {vocab_size!r}): ids are 0..V-1 and EOD is V-1")
        return NullTokenizer(vocab_size, null_tokenizer_eod_id, legacy_tokenizer)
    if tokenizer_type not in TOKENIZER_TYPES:
        raise ValueError(f"--tokenizer-type {tokenizer_type!r} is not supported; "
                         f"choose one of {', '.join(TOKENIZER_TYPES)}")
    if tokenizer_type == "GPT2BPETokenizer":
        for flag, path in (("--vocab-file", vocab_file), ("--merge-file", merge_file)):
            if not path or not os.path.isfile(path):
                raise ValueError(f"--tokenizer-type GPT2BPETokenizer needs {flag} (GPT-2's "
                                 f"{'vocab.json' if flag == '--vocab-file' else 'merges.txt'}); got {path!r}")
        from .gpt2_bpe import GPT2BPETokenizer
        return _load(GPT2BPETokenizer, tokenizer_type, vocab_file, vocab_file, merge_file, legacy_tokenizer)
    if not tokenizer_model:
        raise ValueError(f"--tokenizer-type {tokenizer_type} needs --tokenizer-model PATH "
                         "(tools/train_tokenizer.py makes a SentencePiece model)")
    if tokenizer_type == "HuggingFaceTokenizer":
        if not os.path.exists(tokenizer_model):
            raise ValueError(f"--tokenizer-model {tokenizer_model!r}: no such directory or file")
        from .hf_tokenizer import HuggingFaceTokenizer
        return _load(HuggingFaceTokenizer, tokenizer_type, tokenizer_model, tokenizer_model)
    if not os.path.isfile(tokenizer_model):
        raise ValueError(f"--tokenizer-model {tokenizer_model!r}: no such file")
    if tokenizer_type == "TikTokenizer":
        from .hf_tokenizer import TikTokenizer
        return _load(TikTokenizer, tokenizer_type, tokenizer_model, tokenizer_model, tiktoken_pattern,
                     vocab_size, tiktoken_num_special_tokens, legacy_tokenizer)
    cls = {"SentencePieceTokenizer": SentencePieceTokenizer, "GPTSentencePieceTokenizer": GPTSentencePieceTokenizer,
           "Llama2Tokenizer": Llama2Tokenizer}[tokenizer_type]
    return _load(cls, tokenizer_type, tokenizer_model, tokenizer_model)


def _load(cls, tokenizer_type, path, *args):
    try:
        return cls(*args)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--tokenizer-model {path!r} could not be loaded as a {tokenizer_type} model: {e}") from e
    except ValueError:
        raise
    except Exception as e:  # sentencepiece raises OSError/RuntimeError, tokenizers an Exception, on a bad file
        raise ValueError(f"--tokenizer-model {path!r} could not be loaded as a "
                         f"{tokenizer_type} model: {e}") from e
