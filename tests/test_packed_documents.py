"""Packed documents (--reset-position-ids --reset-attention-mask, --eod-mask-loss) and sliding windows
(--window-size) from the dataset to the trained model.

* The sample fields follow Megatron-LM's get_ltor_masks_and_position_ids, written out here as a
  loop over the EOD positions: positions restart after each EOD, a token attends to its own
  document only, the EOD belongs to the document it ends.
* Document starts stay global through the CP split (zigzag included) and the DataLoader path.
* The composed model with documents and a window: one step's loss and every gradient equal the
  one-rank model's (1e-5) in the composition layouts, pipeline included; ten steps train alike.
"""
import pytest
import torch

from dist_utils import run_distributed
from megatron_sp.data.mock_dataset import sample_dict
from megatron_sp.parallel_state import initialize_model_parallel, single_rank_mesh
from megatron_sp.arguments import build_parser, validate_args
from megatron_sp.training.batches import build_datasets, build_tokenizer, global_batches
from test_gpt_layouts import BASE, GQA_ROPE, _check_one_step, _strip_layout, _train

EOD = 9
PACKED = ["--reset-position-ids", "--reset-attention-mask", "--eod-mask-loss"]


def megatron_fields(tokens, eod):
    """Position ids, loss mask and the dense document mask as Megatron-LM defines them."""
    n = tokens.numel()
    visible = torch.tril(torch.ones(n, n, dtype=torch.bool))
    positions, loss_mask = torch.arange(n), (tokens != eod).float()
    prev = 0
    for i in (tokens == eod).nonzero().flatten().tolist():
        visible[i + 1:, :i + 1] = False
        positions[i + 1:] -= i + 1 - prev
        prev = i + 1
    return positions, loss_mask, visible


@pytest.mark.parametrize("text", [[5, 1, 9, 2, 9, 9, 3, 4, 9], [1, 2, 3, 4, 5, 6, 7, 8, 1], [9, 9, 9, 1, 2, 9, 3, 9, 4],
                                  [3, 3, 3, 3, 3, 3, 3, 9, 2]])
def test_sample_fields_follow_megatron(text):
    sample = sample_dict(torch.tensor(text), EOD, True, True, True)
    positions, loss_mask, visible = megatron_fields(sample["tokens"], EOD)
    assert torch.equal(sample["position_ids"], positions)
    assert torch.equal(sample["loss_mask"], loss_mask)
    starts = sample["cu_seqlens"].tolist()
    doc = [max(d for d, s in enumerate(starts) if s <= i) for i in range(8)]
    mine = torch.tensor([[j <= i and doc[i] == doc[j] for j in range(8)] for i in range(8)])
    assert torch.equal(mine, visible)
    plain = sample_dict(torch.tensor(text), EOD, False)
    assert "cu_seqlens" not in plain and torch.equal(plain["position_ids"], torch.arange(8))


def _shard_batches(rank, world, argv, workers):
    args = validate_args(build_parser().parse_args(argv + ["--num-workers", str(workers)]), world)
    mesh = initialize_model_parallel(1, world, None) if world > 1 else single_rank_mesh()
    tokenizer = build_tokenizer(args)
    dataset = build_datasets(args, tokenizer)[0]
    batches = next(global_batches(dataset, 0, 1, args, mesh, torch.device("cpu")))
    full = [dataset[i] for i in range(args.micro_batch_size)]
    return [{k: v for k, v in b.items()} for b in batches], full


def test_document_starts_stay_global_through_the_zigzag_split():
    argv = (BASE + PACKED + ["--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size", "2",
                             "--train-iters", "1", "--context-parallel-size", "2", "--cp-comm-type", "p2p"])
    one_rank = _strip_layout(argv)
    by_workers = [_shard_batches(0, 1, one_rank, w)[0] for w in (0, 1)]  # the DataLoader path alike
    assert all(torch.equal(by_workers[0][0][k], by_workers[1][0][k]) for k in by_workers[0][0])
    assert "cu_seqlens" in by_workers[1][0]
    for _ in (0,):
        for rank, (batches, full) in enumerate(run_distributed(_shard_batches, 2, argv, 0)):
            mine = batches[0]
            for b, sample in enumerate(full):
                n = sample["cu_seqlens"].numel()
                assert mine["cu_seqlens"][b, :n].tolist() == sample["cu_seqlens"].tolist()
                assert (mine["cu_seqlens"][b, n:] == 64).all()
                zigzag = torch.cat([torch.arange(16) + 16 * rank, torch.arange(16) + 16 * (3 - rank)])
                assert torch.equal(mine["position_ids"][b], sample["position_ids"][zigzag])
            assert len(full[0]["cu_seqlens"]) > 2  # mock documents end inside a 64-token sample


WINDOW = ["--window-size", "6,0"]
LAYOUTS = {
    "P4-p2p": (4, "--context-parallel-size 4 --cp-comm-type p2p", GQA_ROPE + WINDOW),
    "T2sp-xP2-rsa": (4, "--tensor-model-parallel-size 2 --sequence-parallel --context-parallel-size 2 "
                        "--cp-comm-type rsa", WINDOW),
    "P4-a2a": (4, "--context-parallel-size 4 --cp-comm-type a2a --micro-batch-size 2 --global-batch-size 4", []),
    "P4-a2a+p2p": (4, "--context-parallel-size 4 --cp-comm-type a2a+p2p "
                      "--hierarchical-context-parallel-sizes 2 2 --recompute-granularity selective", GQA_ROPE),
    "PP2xP2-p2p": (4, "--pipeline-model-parallel-size 2 --context-parallel-size 2 --cp-comm-type p2p", WINDOW),
}


def _argv(name, iters=1):
    world, layout, model = LAYOUTS[name]
    return world, BASE + PACKED + model + layout.split() + ["--train-iters", str(iters)]


@pytest.mark.parametrize("name", [n for n in LAYOUTS if not n.startswith("PP")])
def test_packed_one_step_matches_single_rank(name):
    world, argv = _argv(name)
    run_distributed(_check_one_step, world, argv, timeout=240)


@pytest.mark.parametrize("name", ["P4-p2p", "PP2xP2-p2p"])
def test_packed_training_matches_single_rank(name):
    world, argv = _argv(name, iters=5)
    losses = run_distributed(_train, world, argv, timeout=300)[-1]
    ref_argv = _strip_layout(argv)
    if "--pipeline-model-parallel-size" in ref_argv:
        i = ref_argv.index("--pipeline-model-parallel-size")
        ref_argv = ref_argv[:i] + ref_argv[i + 2:]
    ref = run_distributed(_train, 1, ref_argv)[0]
    assert len(losses) == len(ref) == 5
    for mine, theirs in zip(losses, ref):
        assert abs(mine - theirs) <= 1e-4 * abs(theirs), (losses, ref)
    assert ref[-1] < ref[0]  # it trains


@pytest.mark.parametrize("value,needle", [("4,4", "only causal windows"), ("x", "give LEFT,RIGHT"),
                                          ("-2,0", "give LEFT,RIGHT")])
def test_bad_window_is_refused_in_one_line(value, needle):
    with pytest.raises(Exception, match=needle):
        build_parser().parse_args(BASE + ["--train-iters", "1", f"--window-size={value}"])


def test_unlimited_window_is_no_window():
    args = build_parser().parse_args(BASE + ["--train-iters", "1", "--window-size=(-1,0)"])
    from megatron_sp.sequence_parallel.config import left_window
    assert args.window_size == (-1, 0) and left_window(args.window_size) is None and left_window([7, 0]) == 7


def test_documents_and_window_change_what_the_model_computes():
    argv = BASE + ["--train-iters", "1"]
    plain, packed, window = (run_distributed(_train, 1, argv + extra)[0][0]
                             for extra in ([], ["--reset-attention-mask"], WINDOW))
    assert plain != packed and plain != window


def test_memory_model_counts_the_masked_fp32_accumulators_only_on_a_ring_of_one():
    from megatron_sp.memory.activations import backward_parts
    from megatron_sp.memory import ModelSpec, ParallelConfig
    flags = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --vocab-size 100".split()
    plain, masked = (ModelSpec.from_flags(flags + extra) for extra in ([], ["--reset-attention-mask"]))
    assert masked.masked and not plain.masked and ModelSpec.from_flags(flags + WINDOW).masked
    s, b = 1024, 2
    for lay, extra in ((ParallelConfig(cp=1), s * b * 4 * (4 + 2 * 4) * 16), (ParallelConfig(cp=4, mode="a2a"), None),
                       (ParallelConfig(cp=4, mode="p2p"), 0), (ParallelConfig(cp=4, mode="rsa"), 0)):
        diff = backward_parts(masked, lay, s, b)[1] - backward_parts(plain, lay, s, b)[1]
        assert diff == (extra if extra is not None else s * b * 4 * (4 + 2 * 4) * 16), (lay, diff)
