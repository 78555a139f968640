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


def tokenizer_flags(args) -> str:
    """The flags that chose the tokenizer, as the user typed them (for messages)."""
    kind = args.tokenizer_type
    if kind == "NullTokenizer":
        legacy = " --legacy-tokenizer" if getattr(args, "legacy_tokenizer", False) else ""
        return f"--tokenizer-type NullTokenizer --vocab-size {args.vocab_size}{legacy}"
    if getattr(args, "tokenizer_model", None):
        return f"--tokenizer-type {kind} --tokenizer-model {args.tokenizer_model}"
    if getattr(args, "vocab_file", None):
        return f"--tokenizer-type {kind} --vocab-file {args.vocab_file}"
    return f"--tokenizer-type {kind}"


def evaluation_on(args) -> bool:
    """``--eval-interval 0`` or ``--eval-iters 0`` turns every evaluation off."""
    return bool(args.eval_interval and args.eval_iters)


def train_samples_needed(args, consumed_samples: int = 0, iteration: int = 0) -> int:
    """Samples the train dataset must hold to run from ``(iteration, consumed_samples)`` to
    ``--train-iters``: the data position is the consumed-sample count, whatever the global
    batch size was when it was reached (as in Megatron).

    E.g. saved at GBS 16 after 4 iterations (64 samples), resumed at GBS 4 to iteration 7:
    64 + 3 x 4 = 76 samples; the resumed run reads samples 64..75.
    """
    return consumed_samples + max(args.train_iters - iteration, 0) * args.global_batch_size


def build_datasets(args, tokenizer, train_samples: int | None = None):
    """``(train, valid, test)``.  train: ``train_samples`` (default: ``--train-iters`` global
    batches from the start); valid: ``--eval-iters`` global batches for each evaluation
    every ``--eval-interval``; test: ``--eval-iters`` global batches for the one evaluation at
    the end.  As in Megatron, a split whose ``--split`` weight is 0 has no dataset (None)."""
    gbs = args.global_batch_size
    eval_runs = args.train_iters // args.eval_interval + 1 if evaluation_on(args) else 0
    num_samples = [train_samples_needed(args) if train_samples is None else train_samples,
                   eval_runs * args.eval_iters * gbs, args.eval_iters * gbs if evaluation_on(args) else 0]
    from ..data.gpt_dataset import build_gpt_datasets, build_mock_gpt_datasets, default_cache_dir
    if args.mock_data:
        return build_mock_gpt_datasets(args.split, args.seq_length, args.seed, num_samples, tokenizer.vocab_size,
                                       tokenizer.eod, args.eod_mask_loss, args.data_cache_path)
    from ..data.token_ids import check_token_ids
    check_token_ids(args.data_path, tokenizer.vocab_size, getattr(args, "padded_vocab_size", tokenizer.vocab_size),
                    tokenizer_flags(args), args.data_cache_path, default_cache_dir)
    return build_gpt_datasets(args.data_path, args.split, args.seq_length, args.seed, num_samples,
                              tokenizer.eod, args.eod_mask_loss, args.data_cache_path)


def datasets_for_resume(datasets, args, tokenizer, state):
    """``datasets`` with the train dataset rebuilt when it is shorter than a resumed run needs
    (the checkpoint's consumed samples plus the remaining iterations at this run's global
    batch size).  Samples keep their index in a longer dataset, so nothing else changes."""
    need = train_samples_needed(args, state.consumed_samples, state.iteration)
    if datasets[0] is not None and len(datasets[0]) >= need:
        return datasets
    return build_datasets(args, tokenizer, train_samples=need)


def _check_position(dataset, start: int, count: int, args) -> None:
    """Never wrap around into data already seen: the samples must exist."""
    end = start + count * args.global_batch_size
    if end > len(dataset):
        raise ValueError(f"the dataset has {len(dataset)} samples but {count} global batch(es) from sample {start} "
                         f"need samples [{start}, {end}); it cannot provide the data position (consumed samples "
                         f"{start})")


def _micro_batch_indices(start: int, m: int, args, mesh, n: int) -> list:
    """Sample indices of micro-batch ``m`` of this DP rank in the global batch starting at ``start``."""
    first = start + (m * mesh.dp_size + mesh.dp_rank) * args.micro_batch_size
    return [first + i for i in range(args.micro_batch_size)]


def _collate(samples, idx):
    """Stack samples into a micro-batch and keep this CP rank's tokens (``idx``)."""
    return {k: torch.stack([s[k] for s in samples])[:, idx] for k in _BATCH_KEYS}


def micro_batches(dataset, start: int, args, mesh, device) -> list:
    """This rank's micro-batches of the global batch that starts at sample ``start``.

    Micro-batch m of DP rank d holds samples ``start + (m * DP + d) * mbs + [0, mbs)``:
    the global batch is the same set of samples for every layout.  Each is cut to
    this CP rank's tokens (zigzag order where the attention mode wants it).
    """
    _check_position(dataset, start, 1, args)
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
    _check_position(dataset, start, count, args)
    if args.num_workers <= 0:
        for it in range(count):
            yield micro_batches(dataset, start + it * args.global_batch_size, args, mesh, device)
        return
    idx = cp_local_indices(args.seq_length, args.cp_comm_type, True, mesh)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_MicroBatchSampler(len(dataset), start, count, args, mesh),
        num_workers=args.num_workers, collate_fn=functools.partial(_collate, idx=idx),
        pin_memory=device.type == "cuda")
    batches = iter(loader)  # its workers stop when it is released: when this generator ends or is closed
    for _ in range(count):
        yield [{k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
               for _ in range(args.num_micro_batches)]
