"""Tokenizer, datasets, and the micro-batches of one global batch for this rank.

The global batch of iteration ``i`` is samples ``[i * G, (i + 1) * G)`` (G = global batch
size) of a dataset whose order depends on the seed only.  DP ranks take disjoint
micro-batches of it; every rank of one TP x CP group takes the same samples and keeps
its CP shard of the tokens (zigzag order where the attention mode wants it), with
the tokens' global position ids.
"""
from __future__ import annotations

import functools

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


def _micro_batch_indices(start: int, m: int, args, mesh, n: int) -> list:
    """Sample indices of micro-batch ``m`` of this DP rank in the global batch starting at ``start``."""
    first = start + (m * mesh.dp_size + mesh.dp_rank) * args.micro_batch_size
    return [(first + i) % n for i in range(args.micro_batch_size)]


def _collate(samples, idx):
    """Stack samples into a micro-batch and keep this CP rank's tokens (``idx``)."""
    return {k: torch.stack([s[k] for s in samples])[:, idx] for k in _BATCH_KEYS}


def micro_batches(dataset, start: int, args, mesh, device) -> list:
    """This rank's micro-batches of the global batch that starts at sample ``start``.

    Micro-batch m of DP rank d holds samples ``start + (m * DP + d) * mbs + [0, mbs)``:
    the global batch is the same set of samples for every layout.  Each is cut to
    this CP rank's tokens (zigzag order where the attention mode wants it).
    """
    idx = cp_local_indices(args.seq_length, args.cp_comm_type, True, mesh)
    return [{k: v.to(device) for k, v in _collate([dataset[i] for i in _micro_batch_indices(
        start, m, args, mesh, len(dataset))], idx).items()} for m in range(args.num_micro_batches)]


class _MicroBatchSampler(torch.utils.data.Sampler):
    """The sample indices of this rank's micro-batches, global batch after global batch."""

    def __init__(self, n: int, start: int, count: int, args, mesh):
        self.n, self.start, self.count, self.args, self.mesh = n, start, count, args, mesh

    def __len__(self) -> int:
        return self.count * self.args.num_micro_batches

    def __iter__(self):
        for it in range(self.count):
            for m in range(self.args.num_micro_batches):
                yield _micro_batch_indices(self.start + it * self.args.global_batch_size, m, self.args, self.mesh,
                                           self.n)


def global_batches(dataset, start: int, count: int, args, mesh, device):
    """``count`` global batches from sample ``start``, each as :func:`micro_batches` gives it.

    With ``--num-workers N > 0`` a DataLoader reads them in N worker processes ahead of the
    step (the same samples in the same order: workers change only when they are read).
    """
    if args.num_workers <= 0:
        for it in range(count):
            yield micro_batches(dataset, start + it * args.global_batch_size, args, mesh, device)
        return
    idx = cp_local_indices(args.seq_length, args.cp_comm_type, True, mesh)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_MicroBatchSampler(len(dataset), start, count, args, mesh),
        num_workers=args.num_workers, collate_fn=functools.partial(_collate, idx=idx),
        pin_memory=device.type == "cuda")
    batches = iter(loader)
    for _ in range(count):
        yield [{k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
               for _ in range(args.num_micro_batches)]
