"""Data: tokenizers, Megatron indexed datasets, GPT samples, blending, mock data.

Every dataset here yields samples as a dict of 1-D tensors of length ``seq_length``::

    tokens       int64   input ids
    labels       int64   next-token targets (tokens shifted by one)
    loss_mask    float32 1.0 where the label counts in the loss
    position_ids int64   0 .. seq_length-1 (global positions; CP sharding keeps them), or
                         restarting after each EOD with --reset-position-ids
    cu_seqlens   int64   --reset-attention-mask only: document starts [0, ..., seq_length]
                         (one entry per document + 1; not cut by CP)

Modules (import them directly; this package imports nothing, so tools start fast):

    tokenizers        build_tokenizer(--tokenizer-type, --tokenizer-model, --vocab-size, ...), the flags
    gpt2_bpe          GPT-2's byte-level BPE (GPT2BPETokenizer)
    hf_tokenizer      HuggingFaceTokenizer (tokenizers) and TikTokenizer (tiktoken)
    indexed_dataset   Megatron's .bin/.idx format: IndexedDatasetBuilder, IndexedDataset
    gpt_dataset       build_gpt_datasets(--data-path, --split, ...) -> train, valid, test
    blended_dataset   --data-path weights and the blending schedule
    index_cache       sample indices built once by rank 0 and cached next to the data
    document_reader   JSONL / text input with bad lines counted (preprocess, tokenizer training)
    document_encoder  the per-line tokenizer worker of tools/preprocess_data.py
    mock_dataset      --mock-data documents (packed by gpt_dataset like real data)
"""
