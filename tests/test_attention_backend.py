"""--attention-backend: Megatron's values select our attention implementation; unfused trains the same model.

* the flag maps to the block kernel (flash -> cpu_flash, unfused/local -> the unfused path, auto ->
  today's choice) and refuses in one line what cannot run here (fused on CPU, flash with dropout,
  flash with RSA's materialised rows);
* the unfused path keeps the fp32 probabilities [b, h, s, s] for backward and gives the flash
  path's output and gradients (fp32, 1e-5), locally and under Ulysses / a ring;
* ``pretrain`` with --attention-backend unfused logs the flash run's losses (one rank, TP 2, CP 2 a2a).
"""
import pytest
import torch

from dist_utils import rel_err, run_distributed
from megatron_sp.model import GPTConfig
from megatron_sp.parallel_state import initialize_model_parallel, single_rank_mesh
from megatron_sp.sequence_parallel import (attention_summary, build_cp_attention, check_backend, resolve_backend,
                                           shard_for_cp, unshard_from_cp)
from megatron_sp.training.loop import pretrain

CPU = torch.device("cpu")
TINY = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 100 --num-layers 2 --hidden-size 32 "
        "--num-attention-heads 4 --seq-length 32 --micro-batch-size 2 --global-batch-size 4 --lr 5e-3 "
        "--hidden-dropout 0 --attention-dropout 0 --log-interval 100 --eval-interval 0 --seed 3 "
        "--train-iters 4").split()


@pytest.mark.parametrize("backend,dropout,name", [("auto", 0.0, "cpu_flash"), ("auto", 0.1, "reference"),
                                                  ("flash", 0.0, "cpu_flash"), ("unfused", 0.0, "unfused"),
                                                  ("unfused", 0.1, "unfused"), ("local", 0.0, "unfused")])
def test_flag_selects_the_kernel(backend, dropout, name):
    kernel = resolve_backend(backend, CPU, torch.float32, dropout)
    assert kernel.name == name and kernel.keeps_probs == (name == "unfused")


@pytest.mark.parametrize("backend,mode,cp,dropout,needle", [
    ("fused", "p2p", 1, 0.0, "--attention-backend fused has no kernel on cpu"),
    ("flash", "p2p", 2, 0.1, "cannot apply --attention-dropout 0.1"),
    ("flash", "rsa", 4, 0.0, "cannot apply to --cp-comm-type rsa over --context-parallel-size 4"),
    ("fused", "rsa", 2, 0.0, "cannot apply to --cp-comm-type rsa"),
    ("sdpa", "p2p", 1, 0.0, "--attention-backend 'sdpa' is unknown"),
])
def test_what_cannot_be_honoured_is_refused_in_one_line(backend, mode, cp, dropout, needle):
    with pytest.raises(ValueError) as err:
        check_backend(backend, mode, cp, CPU, torch.float32, dropout)
    msg = str(err.value)
    assert msg.startswith(f"--attention-backend {backend!r}" if backend == "sdpa" else f"--attention-backend {backend}")
    assert needle in msg and "\n" not in msg
    assert any(fix in msg for fix in ("; use --attention-backend", "; pass --attention-dropout 0", "choose one of"))
    check_backend("unfused", "rsa", cp, CPU, torch.float32, dropout)  # RSA is unfused by design: accepted


def test_summary_names_the_choice():
    line, warning = attention_summary("p2p", 1, CPU, torch.float32, 0.1, attention_backend="unfused")
    assert "--attention-backend unfused" in line and "probabilities [s x s] per head kept" in line
    assert warning is None  # asked for
    line, _ = attention_summary("a2a", 2, CPU, torch.float32, 0.0, attention_backend="local", ring_size=1)
    assert "(= unfused)" in line and "heads/2 after the all-to-all" in line
    line, _ = attention_summary("p2p", 4, CPU, torch.float32, 0.0, attention_backend="unfused")
    assert "reference block kernel inside the ring" in line
    line, _ = attention_summary("p2p", 1, CPU, torch.float32, 0.0, attention_backend="flash")
    assert line.endswith("block kernel cpu_flash (--attention-backend flash)")


def _attention(mesh, backend, q, k, v, dout, mode="p2p"):
    attn = build_cp_attention(mode, mesh, causal=True, attention_backend=backend)
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = attn(*leaves)
    out.backward(dout)
    return [out.detach()] + [x.grad for x in leaves], max(saved)


def test_unfused_keeps_the_probabilities_and_matches_flash():
    g = torch.Generator().manual_seed(0)
    s, b, hq, hkv, d = 40, 2, 6, 2, 8  # GQA
    q = torch.randn(s, b, hq, d, generator=g)
    k, v = (torch.randn(s, b, hkv, d, generator=g) for _ in range(2))
    dout = torch.randn(s, b, hq, d, generator=g)
    mesh = single_rank_mesh()
    flash, flash_saved = _attention(mesh, "flash", q, k, v, dout)
    unfused, unfused_saved = _attention(mesh, "unfused", q, k, v, dout)
    assert unfused_saved == b * hq * s * s and flash_saved == s * b * hq * d  # probabilities kept; flash: O(s)
    for got, ref in zip(unfused, flash):
        assert rel_err(got, ref) <= 1e-5


def _cp_case(rank, world, mode, backend):
    mesh = initialize_model_parallel(1, world, [world, 1] if mode == "a2a" else None)
    g = torch.Generator().manual_seed(1)
    s, b, h, d = 32, 2, 4, 8
    full = [torch.randn(s, b, h, d, generator=g) for _ in range(4)]
    shard = [shard_for_cp(x, 0, mode, True, mesh) for x in full]
    got, _ = _attention(mesh, backend, *shard, mode=mode)
    ref, _ = _attention(single_rank_mesh(), "flash", *full)
    return [rel_err(unshard_from_cp(x, 0, mode, True, mesh), r) for x, r in zip(got, ref)]


@pytest.mark.parametrize("mode", ["a2a", "p2p"])
def test_unfused_under_context_parallelism_matches_flash(mode):
    for errors in run_distributed(_cp_case, 2, mode, "unfused"):
        assert max(errors) <= 1e-5, errors


def _train(rank, world, argv):
    return pretrain(argv)


@pytest.mark.parametrize("world,layout", [(1, ""), (2, "--tensor-model-parallel-size 2"),
                                          (2, "--context-parallel-size 2 --cp-comm-type a2a")])
def test_unfused_trains_the_same_model_as_flash(world, layout):
    ref = run_distributed(_train, 1, TINY + ["--attention-backend", "flash"])[0]
    got = run_distributed(_train, world, TINY + layout.split() + ["--attention-backend", "unfused"])[-1]
    assert len(got) == len(ref) == 4
    for mine, theirs in zip(got, ref):
        assert abs(mine - theirs) <= 1e-5 * abs(theirs), (got, ref)


def test_tensor_parallel_above_the_head_count_is_refused():
    cfg = GPTConfig(num_layers=1, hidden_size=64, num_attention_heads=4, vocab_size=128, max_position_embeddings=8)
    with pytest.raises(ValueError, match="--tensor-model-parallel-size 8 exceeds --num-attention-heads 4: tensor "
                                         "parallelism splits whole heads"):
        cfg.check_tensor_parallel(8)
