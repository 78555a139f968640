"""The memory and communication model: scaling properties, parameter count, and agreement with
the peak measured for a real training step (tools/scaling_experiment.py measures the same way)."""
import os
import sys

import pytest

from megatron_sp import memory_model as mm

TINY = ("--num-layers 4 --hidden-size 128 --num-attention-heads 8 --ffn-hidden-size 512 --vocab-size 1000 "
        "--position-embedding-type rope").split()
MiB = 2 ** 20


@pytest.fixture(scope="module")
def spec():
    return mm.ModelSpec.from_flags(TINY)


def test_from_flags_pads_vocab_and_fills_defaults(spec):
    assert spec.vocab_size == 1024  # 1000 + EOD, padded to 128
    assert spec.num_query_groups == 8 and spec.kv_channels == 16 and spec.rope and spec.tied


def test_monotone_in_length_and_batch(spec):
    lay = mm.LayoutSpec()
    peaks = [mm.estimate(spec, lay, n, 1).step_peak for n in (512, 1024, 2048, 4096)]
    assert peaks == sorted(peaks) and len(set(peaks)) == 4
    assert mm.estimate(spec, lay, 1024, 2).step_peak > mm.estimate(spec, lay, 1024, 1).step_peak


def test_context_parallel_splits_activations(spec):
    one = mm.estimate(spec, mm.LayoutSpec(), 2048, 1)
    for p in (2, 4, 8):
        for mode, u in (("p2p", 1), ("a2a", p), ("a2a+p2p", 2)):
            est = mm.estimate(spec, mm.LayoutSpec(cp=p, mode=mode, ulysses=u), 2048 * p, 1)
            # Ulysses keeps the attention output twice (head-sharded, and the projection's input)
            copy = 4 * 2048 * 128 * 4 if u > 1 else 0
            assert est.activations == pytest.approx(one.activations + copy, rel=1e-9)
            assert est.params == one.params


def test_tensor_parallel_sequence_parallel_ordering(spec):
    base = mm.estimate(spec, mm.LayoutSpec(), 4096, 1).activations
    tp = mm.estimate(spec, mm.LayoutSpec(tp=4), 4096, 1).activations
    tpsp = mm.estimate(spec, mm.LayoutSpec(tp=4, sp=True), 4096, 1).activations
    cp = mm.estimate(spec, mm.LayoutSpec(cp=4), 4096, 1).activations
    assert cp < tpsp < tp < base  # TP alone leaves norms/linear inputs whole; SP splits norms only
    assert mm.local_parameters(spec, 4) < mm.local_parameters(spec, 1)


def test_rsa_scores_are_quadratic_and_max_length_grows_like_sqrt_p(spec):
    a = mm.estimate(spec, mm.LayoutSpec(cp=2, mode="rsa"), 4096, 1).activations
    b = mm.estimate(spec, mm.LayoutSpec(cp=2, mode="rsa"), 8192, 1).activations
    assert b / a > 3.0  # the N^2/P score rows dominate
    budget = 256 * MiB
    n2 = mm.max_seq_length(spec, mm.LayoutSpec(cp=2, mode="rsa"), 1, budget, 2)
    n8 = mm.max_seq_length(spec, mm.LayoutSpec(cp=8, mode="rsa"), 1, budget, 8)
    assert 1.6 < n8 / n2 < 2.4  # sqrt(8 / 2) = 2
    p8 = mm.max_seq_length(spec, mm.LayoutSpec(cp=8, mode="p2p"), 1, budget, 16)
    assert p8 > 3 * n8


def test_max_length_targets_in_the_model(spec):
    budget = 64 * MiB
    one = mm.max_seq_length(spec, mm.LayoutSpec(), 1, budget, 2)
    four = mm.max_seq_length(spec, mm.LayoutSpec(cp=4, mode="p2p"), 1, budget, 8)
    eight = mm.max_seq_length(spec, mm.LayoutSpec(cp=8, mode="a2a+p2p", ulysses=2), 1, budget, 16)
    assert four >= 3.6 * one and eight >= 7 * one
    assert mm.estimate(spec, mm.LayoutSpec(), one, 1).step_peak <= budget
    assert mm.estimate(spec, mm.LayoutSpec(), one + 2, 1).step_peak > budget
    assert mm.max_micro_batch(spec, mm.LayoutSpec(cp=4), 2048, budget) > \
        mm.max_micro_batch(spec, mm.LayoutSpec(tp=4), 2048, budget)


def test_communication_volume_by_mode(spec):
    n = 8192
    assert mm.estimate(spec, mm.LayoutSpec(), n, 1).comm_bytes == 0
    ring = mm.estimate(spec, mm.LayoutSpec(cp=4, mode="p2p"), n, 1).comm_detail
    a2a = mm.estimate(spec, mm.LayoutSpec(cp=4, mode="a2a", ulysses=4), n, 1).comm_detail
    # ring: per layer K and V of the local shard, (P-1) hops forward, (P-1) + P backward
    kv_block = n / 4 * 128 * 4
    assert ring["cp"] == pytest.approx(4 * kv_block * (2 * 3 + 2 * 3 + 2 * 4))
    # Ulysses: 4 all-to-alls of [s, h] forward and 4 backward, (U-1)/U of each leaves the rank
    assert a2a["cp"] == pytest.approx(4 * 8 * kv_block * 3 / 4)
    assert ring["grads"] == pytest.approx(2 * 3 / 4 * mm.local_parameters(spec, 1) * 4)
    tp = mm.estimate(spec, mm.LayoutSpec(tp=4), n, 1).comm_detail
    assert tp["cp"] == 0 and tp["tp"] > 0 and tp["grads"] == 0


def test_parameter_count_matches_the_model():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from megatron_sp.training.arguments import build_parser
    from megatron_sp.training.arguments import padded_vocab_size
    from megatron_sp.training.loop import model_config
    from megatron_sp.model import GPTModel
    from megatron_sp.parallel_state import single_rank_mesh
    from megatron_sp.tensor_parallel import RNGTracker
    for extra in ([], ["--swiglu", "--disable-bias-linear", "--untie-embeddings-and-output-weights"],
                  ["--group-query-attention", "--num-query-groups", "2"]):
        flags = TINY + extra
        args = build_parser().parse_args(flags + "--seq-length 64 --micro-batch-size 1 --lr 1e-4 --mock-data "
                                                 "--train-iters 1".split())
        if not args.group_query_attention:
            args.num_query_groups = args.num_attention_heads
        args.max_position_embeddings = 64
        cfg = model_config(args, padded_vocab_size(args.vocab_size, 128, 1))
        model = GPTModel(cfg, single_rank_mesh(), RNGTracker(1, 0, 0, 0, "cpu"))
        assert mm.local_parameters(mm.ModelSpec.from_flags(flags), 1) == sum(p.numel() for p in model.parameters())


def test_model_agrees_with_a_measured_step():
    """Measured peak of a real step (one fresh process) within 20% of the model, at W1 and CP2, with
    the model state sharded (FSDP2: the gathered weights and unsharded gradients of the step), and at
    PP 2 (the largest stage: pipeline_parallel/memory.py)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
    import scaling_experiment as se
    args = se.parse_args(["--memory-budget-gb", "1", "--device", "cpu"])
    spec = se.model_config(args)
    for name, world, seq in (("p2p", 1, 2048), ("p2p", 2, 4096), ("p2p+fsdp2", 2, 4096), ("pp", 2, 2048)):
        layout = se.make_layout(name, world)
        r = se.run_trial(se.build_argv(args, layout, seq, 1), world, 1 << 30, steps=2, timeout=120)
        assert r.status == "ok", r.error
        model = mm.estimate(spec, se.model_layout(layout), seq, 1).step_peak
        assert abs(model / r.peak_bytes - 1) < 0.2, (name, world, model / MiB, r.peak_bytes / MiB)
