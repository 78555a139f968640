"""GPT-2 byte-level BPE (``--tokenizer-type GPT2BPETokenizer --vocab-file V --merge-file M``).

The ids are those of Megatron-LM's GPT-2 tokenizer (and of Hugging Face's GPT-2 tokenizer
built from the same ``vocab.json`` / ``merges.txt``):

1. ``<|endoftext|>`` in the text is the EOD token itself (one id), as in Megatron-LM's
   (Hugging Face based) GPT-2 tokenizer; with ``legacy`` (``--legacy-tokenizer``, Megatron's
   older GPT-2 class) it is ordinary text, like any other;
2. the rest is cut into words by GPT-2's pattern (contractions, letter runs, digit runs,
   other symbols, whitespace), each with its leading space;
3. each word's UTF-8 bytes are spelled with GPT-2's printable stand-ins (one character
   per byte), then adjacent symbols are merged, lowest merge rank first, until no
   ranked pair is left; the symbols are vocabulary entries.

Worked example with merges ``Ġ t``, ``h e``, ``Ġt he``: `` the`` -> bytes ``Ġ t h e`` ->
``Ġt h e`` -> ``Ġt he`` -> ``Ġthe`` (one id if ``Ġthe`` is in the vocabulary).

Needs the ``regex`` package for the Unicode classes of the word pattern.
"""
from __future__ import annotations

import json
from functools import lru_cache

EOD_TOKEN = "<|endoftext|>"
# GPT-2's pre-tokenization pattern (a property of the format: it fixes the ids).
WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_symbols() -> dict:
    """byte -> printable character: printable Latin-1 bytes stand for themselves, the other
    bytes (controls, space, ...) take the characters from U+0100 upwards, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class GPT2BPETokenizer:
    def __init__(self, vocab_file: str, merge_file: str, legacy: bool = False):
        try:
            import regex
        except ImportError as e:
            raise ValueError("--tokenizer-type GPT2BPETokenizer needs the 'regex' package: pip install regex") from e
        with open(vocab_file, encoding="utf-8") as f:
            self.encoder = json.load(f)
        if not isinstance(self.encoder, dict):
            raise ValueError(f"--vocab-file {vocab_file}: expected a JSON object token -> id (GPT-2's vocab.json)")
        self.decoder = {i: t for t, i in self.encoder.items()}
        ranks = {}
        with open(merge_file, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line or line.startswith("#version"):
                    continue
                parts = line.split(" ")
                if len(parts) != 2:
                    raise ValueError(f"--merge-file {merge_file}: line {line!r} is not 'left right'")
                ranks.setdefault(tuple(parts), len(ranks))
        self.ranks = ranks
        self.byte_to_symbol = byte_symbols()
        self.symbol_to_byte = {c: b for b, c in self.byte_to_symbol.items()}
        self.words = regex.compile(WORD_PATTERN)
        if EOD_TOKEN not in self.encoder:
            raise ValueError(f"--vocab-file {vocab_file}: no {EOD_TOKEN} entry, which GPT-2 uses as EOD")
        self.eod = self.encoder[EOD_TOKEN]
        self.vocab_size = len(self.encoder)
        self.legacy = legacy
        self._bpe = lru_cache(maxsize=65536)(self._merge)

    def _merge(self, word: str) -> tuple:
        """The vocabulary symbols of one word (already spelled with the byte stand-ins)."""
        symbols = list(word)
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):  # every occurrence, left to right
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)

    def _encode_plain(self, text: str) -> list:
        ids = []
        for word in self.words.findall(text):
            spelled = "".join(self.byte_to_symbol[b] for b in word.encode("utf-8"))
            for symbol in self._bpe(spelled):
                if symbol not in self.encoder:
                    raise ValueError(f"GPT2BPETokenizer: symbol {symbol!r} is not in the --vocab-file "
                                     "(a GPT-2 vocabulary holds all 256 byte symbols)")
                ids.append(self.encoder[symbol])
        return ids

    def tokenize(self, text: str) -> list:
        if self.legacy:
            return self._encode_plain(text)
        ids = []
        for i, part in enumerate(text.split(EOD_TOKEN)):
            if i:
                ids.append(self.eod)
            ids.extend(self._encode_plain(part))
        return ids

    def detokenize(self, ids) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytes(self.symbol_to_byte[c] for c in text).decode("utf-8", errors="replace")
