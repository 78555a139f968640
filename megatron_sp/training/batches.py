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
from ..sequence_parallel.masks import pad_cu_seqlens
from ..arguments.batch_schedule import BatchSchedule, batch_schedule_from_args

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


def train_samples_needed(args, consumed_samples: int = 0, iteration: int = 0, schedule=None) -> int:
    """Samples the train dataset must hold to run from ``(iteration, consumed_samples)`` to
    ``--train-iters``: the data position is the consumed-sample count, whatever the global
    batch size was when it was reached (as in Megatron); the batches that follow are the
    batch-size schedule's (arguments/batch_schedule.py) from there.

    E.g. saved at GBS 16 after 4 iterations (64 samples), resumed at GBS 4 to iteration 7:
    64 + 3 x 4 = 76 samples; the resumed run reads samples 64..75.
    """
    schedule = schedule or batch_schedule_from_args(args)
    return schedule.consumed_after(max(args.train_iters - iteration, 0), consumed_samples)


def build_datasets(args, tokenizer, train_samples: int | None = None):
    """``(train, valid, test)``.  train: ``train_samples`` (default: ``--train-iters`` global
    batches from the start); valid: ``--eval-iters`` global batches for each evaluation
    every ``--eval-interval``; test: ``--eval-iters`` global batches for the one evaluation at
    the end.  As in Megatron, a split whose ``--split`` weight is 0 has no dataset (None)."""
    flags = tokenizer_flags(args)  # for the token-id check's message (real data)
    gbs = args.global_batch_size  # evaluations use the target batch (Megatron's eval global batch)
    eval_runs = args.train_iters // args.eval_interval + 1 if evaluation_on(args) else 0
    num_samples = [train_samples_needed(args) if train_samples is None else train_samples,
                   eval_runs * args.eval_iters * gbs, args.eval_iters * gbs if evaluation_on(args) else 0]
    from ..data.gpt_dataset import build_gpt_datasets, build_mock_gpt_datasets, default_cache_dir
    if args.mock_data:
        return build_mock_gpt_datasets(args.split, args.seq_length, args.seed, num_samples, tokenizer.vocab_size,
                                       tokenizer.eod, args.eod_mask_loss, args.data_cache_path, *_resets(args))
    from ..data.token_ids import check_token_ids
    paths = [args.data_path] if args.data_path else [getattr(args, f"{s}_data_path") for s in ("train", "valid",
                                                                                               "test")]
    for path in paths:
        if path:
            check_token_ids(path, tokenizer.vocab_size, getattr(args, "padded_vocab_size", tokenizer.vocab_size),
                            flags, args.data_cache_path, default_cache_dir)
    if not args.data_path:  # Megatron's per-split paths: each split its own blend
        from ..data.gpt_dataset import build_per_split_gpt_datasets
        if getattr(args, "full_validation", False):
            num_samples[1] = None if evaluation_on(args) else 0  # one epoch of each validation set
        return build_per_split_gpt_datasets(paths, args.seq_length, args.seed, num_samples, tokenizer.eod,
                                            args.eod_mask_loss, args.data_cache_path,
                                            getattr(args, "multiple_validation_sets", False), *_resets(args))
    return build_gpt_datasets(args.data_path, args.split, args.seq_length, args.seed, num_samples,
                              tokenizer.eod, args.eod_mask_loss, args.data_cache_path, *_resets(args))


def _resets(args) -> tuple:
    """``(--reset-position-ids, --reset-attention-mask)``."""
    return bool(getattr(args, "reset_position_ids", False)), bool(getattr(args, "reset_attention_mask", False))


def validation_sets(datasets) -> list:
    """``[(name, dataset)]`` of the validation split: ``validation``, or ``validation-0``,
    ``validation-1`` ... with --multiple-validation-sets (Megatron's names); [] without one."""
    valid = datasets[1]
    if isinstance(valid, list):
        return [(f"validation-{i}", d) for i, d in enumerate(valid)]
    return [] if valid is None else [("validation", valid)]


def evaluation_window(args, dataset, iteration: int, split: int) -> tuple:
    """``(first sample, global batches)`` an evaluation reads.  Validation: ``--eval-iters``
    batches at a position that is a function of the iteration only (a resumed run evaluates
    the same samples), or with --full-validation every whole global batch of the one-epoch set;
    test: the first ``--eval-iters`` batches."""
    gbs = args.global_batch_size
    if split == 1 and getattr(args, "full_validation", False):
        if len(dataset) < gbs:
            raise ValueError(f"--full-validation: the validation set holds {len(dataset)} samples, fewer than one "
                             f"--global-batch-size {gbs}; give it more documents or drop --full-validation")
        return 0, len(dataset) // gbs
    run = max(iteration // args.eval_interval - 1, 0) if split == 1 else 0
    return run * args.eval_iters * gbs, args.eval_iters


def datasets_for_resume(datasets, args, tokenizer, state):
    """``datasets`` with the train dataset rebuilt when it is shorter than a resumed run needs
    (the checkpoint's consumed samples plus the remaining iterations at this run's global
    batch size).  Samples keep their index in a longer dataset, so nothing else changes."""
    need = train_samples_needed(args, state.consumed_samples, state.iteration)
    if datasets[0] is not None and len(datasets[0]) >= need:
        return datasets
    return build_datasets(args, tokenizer, train_samples=need)


def _check_position(dataset, start: int, end: int, count: int) -> None:
    """Never wrap around into data already seen: samples ``[start, end)`` must exist."""
    if end > len(dataset):
        raise ValueError(f"the dataset has {len(dataset)} samples but {count} global batch(es) from sample {start} "
                         f"need samples [{start}, {end}); it cannot provide the data position (consumed samples "
                         f"{start})")


def _micro_batch_indices(start: int, m: int, args, mesh, n: int) -> list:
    """Sample indices of micro-batch ``m`` of this DP rank in the global batch starting at ``start``."""
    first = start + (m * mesh.dp_size + mesh.dp_rank) * args.micro_batch_size
    return [first + i for i in range(args.micro_batch_size)]


def _collate(samples, idx):
    """Stack samples into a micro-batch and keep this CP rank's tokens (``idx``); document starts
    (``cu_seqlens``, --reset-attention-mask) stay global: every CP rank masks with all of them."""
    batch = {k: torch.stack([s[k] for s in samples])[:, idx] for k in _BATCH_KEYS}
    if "cu_seqlens" in samples[0]:
        batch["cu_seqlens"] = pad_cu_seqlens([s["cu_seqlens"] for s in samples])
    return batch


def micro_batches(dataset, start: int, args, mesh, device, num_micro_batches: int | None = None) -> list:
    """This rank's micro-batches of the global batch that starts at sample ``start``.

    Micro-batch m of DP rank d holds samples ``start + (m * DP + d) * mbs + [0, mbs)``:
    the global batch is the same set of samples for every layout.  Each is cut to
    this CP rank's tokens (zigzag order where the attention mode wants it).  ``num_micro_batches``
    (default ``args.num_micro_batches``) is the batch-size schedule's at ``start``.
    """
    n = args.num_micro_batches if num_micro_batches is None else num_micro_batches
    _check_position(dataset, start, start + n * mesh.dp_size * args.micro_batch_size, 1)
    idx = cp_local_indices(args.seq_length, args.cp_comm_type, True, mesh)
    return [{k: v.to(device) for k, v in _collate([dataset[i] for i in _micro_batch_indices(
        start, m, args, mesh, len(dataset))], idx).items()} for m in range(n)]


class _MicroBatchSampler(torch.utils.data.Sampler):
    """The sample indices of this rank's micro-batches, global batch after global batch."""

    def __init__(self, n: int, start: int, count: int, args, mesh, schedule):
        self.n, self.start, self.count, self.args, self.mesh = n, start, count, args, mesh
        self.schedule = schedule

    def __len__(self) -> int:
        return sum(n for _, n in _batch_starts(self.schedule, self.start, self.count))

    def __iter__(self):
        for start, n in _batch_starts(self.schedule, self.start, self.count):
            for m in range(n):
                yield _micro_batch_indices(start, m, self.args, self.mesh, self.n)


def _batch_starts(schedule, start: int, count: int):
    """``(first sample, micro-batch count)`` of ``count`` global batches from sample ``start``."""
    for _ in range(count):
        yield start, schedule.num_micro_batches(start)
        start += schedule.global_batch_size(start)


def global_batches(dataset, start: int, count: int, args, mesh, device, schedule=None):
    """``count`` global batches from sample ``start``, each as :func:`micro_batches` gives it;
    their sizes follow ``schedule`` (arguments/batch_schedule.py; the training loop passes the
    flags'; default: the constant ``--global-batch-size``, as evaluations use).

    With ``--num-workers N > 0`` a DataLoader reads them in N worker processes ahead of the
    step (the same samples in the same order: workers change only when they are read).
    """
    schedule = schedule or BatchSchedule(args.global_batch_size, args.micro_batch_size, mesh.dp_size)
    _check_position(dataset, start, schedule.consumed_after(count, start), count)
    if args.num_workers <= 0:
        for first, n in _batch_starts(schedule, start, count):
            yield micro_batches(dataset, first, args, mesh, device, n)
        return
    idx = cp_local_indices(args.seq_length, args.cp_comm_type, True, mesh)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_MicroBatchSampler(len(dataset), start, count, args, mesh, schedule),
        num_workers=args.num_workers, collate_fn=functools.partial(_collate, idx=idx),
        pin_memory=device.type == "cuda")
    batches = iter(loader)  # its workers stop when it is released: when this generator ends or is closed
    for _, n in _batch_starts(schedule, start, count):
        yield [{k: v.to(device, non_blocking=True) for k, v in next(batches).items()} for _ in range(n)]
