"""Data: tokenizers, Megatron indexed datasets, GPT samples, blending, mock data.

Every dataset here yields samples as a dict of 1-D tensors of length ``seq_length``::

    tokens       int64   input ids
    labels       int64   next-token targets (tokens shifted by one)
    loss_mask    float32 1.0 where the label counts in the loss
    position_ids int64   0 .. seq_length-1 (global positions; CP sharding keeps them)
"""
