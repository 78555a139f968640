"""Pipeline parallelism (issue: the fourth dimension, TP x CP x PP x DP on torch.distributed.pipelining).

Every layout trains the one-rank model: fp32, dropout 0, GQA + RoPE + SwiGLU + RMSNorm with tied
input/output embeddings (their copies on the first and last stage), constant LR and a small
clip so that clipping is active: the first loss within 1e-5, ten losses within 1e-4.
Checkpoints resume exactly at PP 2 and across PP sizes; bad splits fail on every rank.
"""
import os
import sys

import pytest
import torch

from dist_utils import rel_err, run_distributed
from megatron_sp import checkpointing as ckpt
from megatron_sp.distributed import allreduce_embedding_grads, allreduce_sequence_parallel_grads, grad_norm
from megatron_sp.pipeline_parallel import PipelineLayoutError, build_layout
from megatron_sp.tensor_parallel.sharding import full_of
from megatron_sp.training import loop
from megatron_sp.arguments import parse_args
from megatron_sp.arguments.model_config import gpt_config
from megatron_sp.training.batches import micro_batches
from megatron_sp.training.loop import pretrain
from megatron_sp.training.step import forward_backward

BASE = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 100 --num-layers 4 --hidden-size 32 "
        "--num-attention-heads 4 --group-query-attention --num-query-groups 2 --position-embedding-type rope "
        "--swiglu --normalization RMSNorm --seq-length 32 --micro-batch-size 1 --global-batch-size 4 --lr 5e-3 "
        "--lr-decay-style constant --clip-grad 0.5 --hidden-dropout 0 --attention-dropout 0 --log-interval 100 "
        "--eval-interval 0 --seed 11").split()
ITERS = 10
PP2 = ["--pipeline-model-parallel-size", "2"]

LAYOUTS = {  # name: (world, flags); PP 2 alone is the ``pp2`` fixture
    "PP4": (4, "--pipeline-model-parallel-size 4 --eval-interval 5 --eval-iters 1"),  # training resumes after eval
    "PP2xTP2sp-interleaved": (4, "--pipeline-model-parallel-size 2 --tensor-model-parallel-size 2 "
                                 "--sequence-parallel --num-layers-per-virtual-pipeline-stage 1"),
    "PP2xCP2-p2p-fsdp2": (4, "--pipeline-model-parallel-size 2 --context-parallel-size 2 --cp-comm-type p2p "
                             "--use-torch-fsdp2"),
    "PP2xCP2-a2a-interleaved": (4, "--pipeline-model-parallel-size 2 --context-parallel-size 2 --cp-comm-type a2a "
                                   "--num-layers-per-virtual-pipeline-stage 1"),
    "PP2xDP2-distopt": (4, "--pipeline-model-parallel-size 2 --use-distributed-optimizer"),
    "PP2xTP2xCP2-uneven": (8, "--pipeline-model-parallel-size 2 --tensor-model-parallel-size 2 "
                              "--context-parallel-size 2 --decoder-first-pipeline-num-layers 1"),
    "PP2xTP2-ZBV": (4, "--pipeline-model-parallel-size 2 --tensor-model-parallel-size 2 "
                       "--num-virtual-stages-per-pipeline-rank 2 --pipeline-schedule ZBVZeroBubble"),
}
SHORT = {"PP2xTP2-ZBV": 4}  # a zero-bubble schedule on top of the list the issue names: fewer iterations


def _train(rank, world, argv):
    return pretrain(argv)


def _run(world, argv, timeout=300):
    return run_distributed(_train, world, BASE + argv, timeout=timeout)[-1]


def _close(losses, ref, n=None):
    n = n or len(ref)
    assert len(losses) == n, (losses, ref)
    assert abs(losses[0] - ref[0]) <= 1e-5 * abs(ref[0]), (losses, ref)
    for mine, theirs in zip(losses, ref):
        assert abs(mine - theirs) <= 1e-4 * abs(theirs), (losses, ref)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("pp")


@pytest.fixture(scope="module")
def reference(workdir):
    """The one-rank run, saving its checkpoint after iteration 2 (for the PP 1 -> PP 4 resume)."""
    save = str(workdir / "pp1")
    losses = _run(1, ["--train-iters", str(ITERS), "--save", save, "--save-interval", "2"])
    ckpt.write_text_atomic(os.path.join(save, ckpt.TRACKER), "2\n")
    assert losses[-1] < losses[0]  # it trains
    return losses, save


@pytest.fixture(scope="module")
def pp2():
    return _run(2, PP2 + ["--train-iters", str(ITERS)])


def test_pp2_trains_the_one_rank_model(pp2, reference):
    _close(pp2, reference[0])


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_pipeline_layout_trains_the_one_rank_model(name, reference):
    world, flags = LAYOUTS[name]
    iters = SHORT.get(name, ITERS)
    _close(_run(world, flags.split() + ["--train-iters", str(iters)]), reference[0][:iters])


def test_exact_resume_at_pp2_and_across_pp_sizes(workdir, reference, pp2):
    """PP 2 stopped after iteration 2 and resumed gives the uninterrupted losses bit for bit (the
    LR is constant, so the first 4 of the 10-iteration run); its checkpoint resumes at PP 1, and
    the one-rank checkpoint resumes at PP 4 (the next loss to 1e-5)."""
    ref, pp1_save = reference
    save = str(workdir / "pp2")
    first = _run(2, PP2 + ["--train-iters", "4", "--save", save, "--exit-interval", "2"])
    second = _run(2, PP2 + ["--train-iters", "4", "--load", save])
    assert first + second == pp2[:4]
    meta = ckpt.read_metadata(os.path.join(save, "iter_0000002"))
    assert meta["layout"]["pp"] == 2
    # each resume keeps the --train-iters its checkpoint was saved with (the LR schedule is checked
    # on load) and stops after iteration 3
    for world, flags, load, iters in ((1, [], save, 4), (4, ["--pipeline-model-parallel-size", "4"], pp1_save, ITERS)):
        nxt = _run(world, flags + ["--train-iters", str(iters), "--exit-interval", "3", "--load", load])
        assert len(nxt) == 1 and abs(nxt[0] - ref[2]) <= 1e-5 * abs(ref[2]), (flags, nxt, ref)


def _one_step(rank, world, argv, save_dir=None):
    """Loss, full gradients and the clipping norm of one global batch (no optimizer step); with
    ``save_dir`` the initial state is saved first in both checkpoint formats."""
    args = loop.build_parser().parse_args(argv)
    ctx = loop.setup(args)
    for fmt in ("torch_dist", "torch") if save_dir else ():
        ctx.args.ckpt_format = fmt
        ckpt.save_checkpoint(ctx, os.path.join(save_dir, fmt))
    batches = micro_batches(ctx.datasets[0], 0, args, ctx.mesh, ctx.device)

    class _Backward:
        loss_scale = 1.0

        def scale_loss(self, loss):
            return loss

    loss = forward_backward(ctx.model_parts, batches, args, ctx.mesh, ctx.device, _Backward(), ctx.pipeline)
    allreduce_sequence_parallel_grads(ctx.model, ctx.mesh)
    allreduce_embedding_grads(ctx.model, ctx.mesh)
    grads = {n: full_of(p.grad, p, ctx.mesh.tp_group, ctx.mesh.tp_size) for n, p in ctx.model.named_parameters()}
    return loss, grads, grad_norm(list(ctx.model.parameters()), ctx.mesh)


def test_gradients_norm_tied_embeddings_and_saves_across_stages(tmp_path):
    """PP 2 x TP 2: every stage's gradients are the one-rank gradients, the tied embedding's two
    copies (first and last stage) get the same, full gradient, and the norm counts it once; both
    checkpoint formats hold the whole model under its one-rank names and weights."""
    argv = BASE + ["--train-iters", "1"]
    ref_loss, ref_grads, ref_norm = run_distributed(_one_step, 1, argv)[0]
    out = run_distributed(_one_step, 4, argv + PP2 + ["--tensor-model-parallel-size", "2"], str(tmp_path))
    first, last = out[0], out[2]  # TP rank 0 of stage 0 and of stage 1
    for loss, _, norm in out:
        assert rel_err(loss, ref_loss) <= 1e-5
        assert abs(norm - ref_norm) <= 1e-5 * ref_norm, (norm, ref_norm)
    seen = set(first[1]) | set(last[1])
    assert seen == set(ref_grads)
    for name, g in ref_grads.items():
        for _, grads, _ in (first, last):
            if name in grads:
                assert rel_err(grads[name], g) <= 1e-5, name
    assert "embedding.weight" in first[1] and "embedding.weight" in last[1]
    from megatron_sp.model import GPTModel
    from megatron_sp.parallel_state import single_rank_mesh
    from megatron_sp.tensor_parallel import RNGTracker
    whole = GPTModel(gpt_config(parse_args(argv), 128), single_rank_mesh(), RNGTracker(1))
    whole.init_weights(11)
    for fmt in ("torch_dist", "torch"):
        saved = ckpt.read_full_model(os.path.join(tmp_path, fmt, "iter_0000000"))
        assert set(saved) == set(ref_grads)
        for name, p in whole.named_parameters():
            assert torch.equal(saved[name], p.detach()), (fmt, name)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
    from generate_text import load_model  # one process, the PP 2 x TP 2 checkpoint
    model, _ = load_model(os.path.join(tmp_path, "torch_dist"))
    tokens = torch.arange(8)[None]
    assert torch.equal(model(tokens, tokens), whole.eval()(tokens, tokens))


def test_fp16_overflow_skips_the_step_on_every_stage():
    argv = ["--fp16", "--initial-loss-scale", str(2.0 ** 40), "--hysteresis", "1", "--train-iters", "4"]

    def run(rank, world, extra):
        losses, ctx = pretrain(BASE + argv + extra, return_context=True)
        return losses, ctx.state.skipped_iterations, ctx.optimizer.loss_scale

    ref = run_distributed(run, 1, [])[0]
    out = run_distributed(run, 2, PP2)
    assert ref[1] > 0  # the scale backs off: some steps overflow
    for losses, skipped, scale in out:
        assert skipped == ref[1] and scale == ref[2]
        assert all(abs(a - b) <= 1e-3 * abs(b) for a, b in zip(losses, ref[0])), (losses, ref[0])


def _fails(rank, world, argv):
    try:
        pretrain(BASE + argv)
    except ValueError as exc:
        return str(exc)
    return None


def test_bad_pipeline_layouts_fail_on_every_rank_with_one_line():
    messages = run_distributed(_fails, 3, ["--pipeline-model-parallel-size", "3", "--train-iters", "1",
                                           "--global-batch-size", "3"], timeout=60)
    assert all(m and "--num-layers 4 is not divisible by --pipeline-model-parallel-size 3" in m and "\n" not in m
               for m in messages), messages
    cases = [
        (2, "--pipeline-model-parallel-size 2 --num-layers-per-virtual-pipeline-stage 3",
         "--num-layers-per-virtual-pipeline-stage 3"),
        (4, "--pipeline-model-parallel-size 4 --global-batch-size 2", "needs at least 4 micro-batches"),
        (2, "--pipeline-model-parallel-size 2 --decoder-first-pipeline-num-layers 1 "
            "--decoder-last-pipeline-num-layers 2", "must equal --num-layers 4"),
        (1, "--num-layers-per-virtual-pipeline-stage 1", "--pipeline-model-parallel-size > 1"),
        (4, "--pipeline-model-parallel-size 2 --pipeline-schedule ZBVZeroBubble "
            "--num-virtual-stages-per-pipeline-rank 2 --context-parallel-size 2", "DP x CP"),
        (2, "--pipeline-model-parallel-size 2 --pipeline-schedule ZBVZeroBubble "
            "--num-virtual-stages-per-pipeline-rank 2 --use-torch-fsdp2", "cannot run with --use-torch-fsdp2"),
        (2, "--pipeline-model-parallel-size 2 --pipeline-schedule Interleaved1F1B --global-batch-size 5 "
            "--num-layers-per-virtual-pipeline-stage 1", "multiple of 2"),
    ]
    for world, flags, needle in cases:
        with pytest.raises(PipelineLayoutError, match=needle.replace("+", r"\+")) as info:
            parse_args(BASE + ["--train-iters", "1"] + flags.split(), world_size=world)
        assert "\n" not in str(info.value)


def test_layer_split_by_layout():
    loop_layout = build_layout(8, 2, num_layers_per_virtual_stage=2)
    assert loop_layout.stage_layers == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert loop_layout.layers_of(0) == [0, 1, 4, 5] and loop_layout.layers_of(1) == [2, 3, 6, 7]
    v = build_layout(8, 2, virtual_stages_per_rank=2, placement="v")
    assert v.stages_of(0) == [0, 3] and v.layers_of(0) == [0, 1, 6, 7] and v.rank_of_stage(3) == 0
    uneven = build_layout(10, 4, first_stage_layers=1, last_stage_layers=3)
    assert [len(x) for x in uneven.stage_layers] == [1, 3, 3, 3]
    with pytest.raises(PipelineLayoutError, match="cannot be split evenly"):
        build_layout(10, 4, first_stage_layers=2, last_stage_layers=3)


def test_names_are_global_and_pp1_names_unchanged():
    from megatron_sp.model import GPTModel
    from megatron_sp.parallel_state import single_rank_mesh
    from megatron_sp.tensor_parallel import RNGTracker
    args = parse_args(BASE + ["--train-iters", "1"])
    cfg = gpt_config(args, 128)
    whole = GPTModel(cfg, single_rank_mesh(), RNGTracker(1))
    last = GPTModel(cfg, single_rank_mesh(), RNGTracker(1), layers=[2, 3], pre_process=False)
    names = [n for n, _ in whole.named_parameters()]
    assert names[0] == "embedding.weight" and "decoder.layers.3.mlp.linear_fc2.weight" in names
    assert {n for n, _ in last.named_parameters()} == {n for n in names if not n.startswith("decoder.layers.")
                                                       or n.split(".")[2] in ("2", "3")}
    whole.init_weights(3)
    last.init_weights(3)
    shared = dict(whole.named_parameters())
    for n, p in last.named_parameters():  # name-seeded: the stage's weights are the whole model's
        assert torch.equal(p, shared[n]), n
    assert last.embedding.weight.pipeline_shared


def test_per_stage_memory_model_by_schedule():
    from megatron_sp import memory as mm
    from megatron_sp.pipeline_parallel import SCHEDULES, bubble_fraction, in_flight_chunks
    from megatron_sp.memory import stage_estimates
    spec = mm.ModelSpec.from_flags("--num-layers 8 --hidden-size 128 --num-attention-heads 8 --vocab-size 1000 "
                                   "--position-embedding-type rope".split())
    one = mm.estimate(spec, mm.ParallelConfig(), 2048, 1)
    stages = stage_estimates(spec, mm.ParallelConfig(pp=4, micro_batches=8), 2048, 1)
    hop = 2048 * 128 * 4  # one [s, b, h] fp32 activation (or its gradient)
    # 1F1B: stage r keeps 4 - r micro-batches of its 2 layers; stage 0 as much as one micro-batch
    # through all 8 layers (+ the chunk outputs the library keeps), the last stage adds the head
    layer_acts = (one.activations - mm.outside_saved(spec, mm.ParallelConfig(), 2048, 1)) / 8
    for r, est in enumerate(stages):
        head = mm.outside_saved(spec, mm.ParallelConfig(), 2048, 1) if r == 3 else 0
        assert est.activations == pytest.approx((4 - r) * (2 * layer_acts + hop) + head)
        assert est.buffers == 8 * hop * ((r > 0) + (r < 3))  # a receive buffer per micro-batch and boundary
    n = [est.params / 4 for est in stages]
    assert sum(n) == pytest.approx(mm.local_parameters(spec, 1) + 1024 * 128)  # + the tied copy
    assert mm.estimate(spec, mm.ParallelConfig(pp=4, micro_batches=8), 2048, 1).step_peak == \
        max(e.step_peak for e in stages)
    inter = stage_estimates(spec, mm.ParallelConfig(pp=4, virtual=2, schedule="Interleaved1F1B", micro_batches=8),
                            2048, 1)
    assert inter[0].activations > stages[0].activations  # more chunks in flight (11 of 1 layer vs 4 of 2)
    assert in_flight_chunks("Interleaved1F1B", 4, 2, 8, 0) == 11 and in_flight_chunks("GPipe", 4, 1, 8, 3) == 8
    assert all(in_flight_chunks(name, 4, 2, 8, r) >= 1 for name in SCHEDULES for r in range(4))
    assert bubble_fraction("1F1B", 4, 1, 8) == pytest.approx(3 / 11)
    assert bubble_fraction("Interleaved1F1B", 4, 2, 8) == pytest.approx(3 / 19)


def test_scaling_tool_pipeline_layouts():
    from megatron_sp.scaling.layouts import make_layout
    lay = make_layout("pp2+tp2+sp+p2p+distopt", 8)
    assert (lay.pp, lay.tp, lay.cp, lay.sp, lay.sharding, lay.micro_batches) == (2, 2, 2, True, "dist-opt", 2)
    assert lay.flags()[-2:] == ["--pipeline-model-parallel-size", "2"]
    assert make_layout("pp", 4).pp == 4 and make_layout("pp3+p2p", 4) is None
    assert make_layout("pp2+p2p", 4).key() != make_layout("p2p", 4).key()
    assert parse_args(BASE + ["--train-iters", "1"] + make_layout("pp2+p2p", 8).flags() + ["--global-batch-size", "2"],
                      world_size=8).data_parallel_size == 1
