"""The tokenizer flags, shared by ``pretrain_gpt.py`` and the data tools (preprocess_data.py,
inspect_dataset.py, checkpoint/import_hf.py): declared once, here.  The types they name and
what each reads are in ``data/tokenizers.py``."""
from __future__ import annotations

from ..data.tokenizers import TOKENIZER_ALIASES, TOKENIZER_TYPES
from .types import NON_NEGATIVE_INT, POSITIVE_INT


def add_tokenizer_arguments(group, default_type: str | None = None) -> None:
    """The tokenizer flags, shared by pretrain_gpt.py and the data tools."""
    group.add_argument("--tokenizer-type", default=default_type,
                       choices=list(TOKENIZER_TYPES) + list(TOKENIZER_ALIASES),
                       help="default: GPT2BPETokenizer with --vocab-file (Megatron's default), else NullTokenizer")
    group.add_argument("--tokenizer-model", default=None,
                       help="SentencePiece model, Hugging Face directory or tokenizer.json, tiktoken JSON")
    group.add_argument("--vocab-size", type=POSITIVE_INT, default=None,
                       help="NullTokenizer: ids 0..V-1 (EOD V-1); TikTokenizer: vocabulary size")
    group.add_argument("--vocab-file", default=None, help="GPT2BPETokenizer: vocab.json")
    group.add_argument("--merge-file", default=None, help="GPT2BPETokenizer: merges.txt")
    group.add_argument("--tiktoken-pattern", choices=["v1", "v2"], default=None,
                       help="TikTokenizer: the split pattern (default v2)")
    group.add_argument("--tiktoken-num-special-tokens", type=NON_NEGATIVE_INT, default=1000)
    group.add_argument("--null-tokenizer-eod-id", type=NON_NEGATIVE_INT, default=None,
                       help="NullTokenizer: the EOD id (default --vocab-size - 1)")
    group.add_argument("--legacy-tokenizer", action="store_true",
                       help="the ids of Megatron-LM's legacy tokenizers: GPT2BPE/TikToken encode special-token "
                            "text as text; NullTokenizer has V+1 ids, EOD V")
