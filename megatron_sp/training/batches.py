"""Tokenizer, datasets, and the micro-batches of one global batch for this rank.

The global batch of iteration ``i`` is samples ``[i * G, (i + 1) * G)`` (G = global batch
size) of a dataset whose order depends on the seed only.  DP ranks take disjoint
micro-batches of it; every rank of one TP x CP group takes the same samples and keeps
its CP shard of the tokens (zigzag order where the attention mode wants it), with
the tokens' global position ids.
"""
from __future__ import annotations

import torch

from ..sequence_parallel import cp_local_indices

_BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def build_tokenizer(args):
    from ..data.tokenizers import build_tokenizer_from_args
    return build_tokenizer_from_args(args)


def evaluation_on(args) -> bool:
    """``--eval-interval 0`` or ``--eval-iters 0`` turns every evaluation off."""
    return bool(args.eval_interval and args.eval_iters)


def build_datasets(args, tokenizer):
    """``(train, valid, test)``.  valid: ``--eval-iters`` global batches for each evaluation
    every ``--eval-interval``; test: ``--eval-iters`` global batches for the one evaluation at
    the end.  As in Megatron, a split whose ``--split`` weight is 0 has no dataset (None)."""
    gbs = args.global_batch_size
    eval_runs = args.train_iters // args.eval_interval + 1 if evaluation_on(args) else 0
    num_samples = [args.train_iters * gbs, eval_runs * args.eval_iters * gbs,
                   args.eval_iters * gbs if evaluation_on(args) else 0]
    from ..data.gpt_dataset import build_gpt_datasets, build_mock_gpt_datasets
    if args.mock_data:
        return build_mock_gpt_datasets(args.split, args.seq_length, args.seed, num_samples, tokenizer.vocab_size,
                                       tokenizer.eod, args.eod_mask_loss, args.data_cache_path)
    return build_gpt_datasets(args.data_path, args.split, args.seq_length, args.seed, num_samples,
                              tokenizer.eod, args.eod_mask_loss, args.data_cache_path)


def micro_batches(dataset, start: int, args, mesh, device) -> list:
    """This rank's micro-batches of the global batch that starts at sample ``start``.

    Micro-batch m of DP rank d holds samples ``start + (m * DP + d) * mbs + [0, mbs)``:
    the global batch is the same set of samples for every layout.  Each is cut to
    this CP rank's tokens (zigzag order where the attention mode wants it).
    """
    mbs, dp = args.micro_batch_size, mesh.dp_size
    idx = cp_local_indices(args.seq_length, args.cp_comm_type, True, mesh)
    out = []
    for m in range(args.num_micro_batches):
        first = start + (m * dp + mesh.dp_rank) * mbs
        samples = [dataset[(first + i) % len(dataset)] for i in range(mbs)]
        out.append({k: torch.stack([s[k] for s in samples])[:, idx].to(device) for k in _BATCH_KEYS})
    return out
