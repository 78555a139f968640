"""Resharding matrix: a torch_dist checkpoint saved in any sharding mode and layout resumes in any other.

Modes: replicated (DDP), distributed optimizer, FSDP2.  Layouts: 1 rank; DP 2; DP 2 x CP 2;
TP 2 x CP 2 (with Megatron-SP).  Each mode saves once per layout, after iteration 1 of 2; each
checkpoint then resumes in all three modes in the next layout of the cycle
1 -> TP2xCP2 -> DP2xCP2 -> DP2 -> 1, so every (save mode, load mode) pair crosses every one of
those layout changes.  Every leg's loss is the uninterrupted one-rank run's (1e-5).

The DP2xCP2 -> DP2 edge is the case that crashed: a distributed-optimizer checkpoint written by
4 ranks, loaded into FSDP2 on 2, gives each loading rank two saved chunks for one local piece,
and DCP's second write into a view of ``to_local()``'s output was refused by autograd.

Cheap by construction: a one-layer model, one iteration per leg, and the legs of one world size
run one after another in the same ranks (one process spawn per world size and phase).
"""
import os

from dist_utils import run_distributed
from megatron_sp import checkpointing as ckpt

BASE = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 100 --num-layers 1 --hidden-size 32 "
        "--num-attention-heads 4 --group-query-attention --num-query-groups 2 --seq-length 32 "
        "--micro-batch-size 1 --global-batch-size 2 --lr 5e-3 --hidden-dropout 0 --attention-dropout 0 "
        "--log-interval 100 --eval-interval 0 --seed 5 --position-embedding-type rope --swiglu "
        "--normalization RMSNorm --train-iters 2").split()
MODES = {"replicated": [], "dist-opt": ["--use-distributed-optimizer"], "fsdp2": ["--use-torch-fsdp2"]}
LAYOUTS = {"1": (1, []), "dp2": (2, []), "dp2cp2": (4, ["--context-parallel-size", "2"]),
           "tp2cp2": (4, ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--context-parallel-size", "2"])}
NEXT = {"1": "tp2cp2", "tp2cp2": "dp2cp2", "dp2cp2": "dp2", "dp2": "1"}


def _legs(rank, world, legs):
    """Run the pretrain legs ``[(name, argv)]`` one after another in these ranks; ``{name: losses}``."""
    from megatron_sp.training.loop import pretrain
    return {name: pretrain(argv) for name, argv in legs}


def _by_world(legs):
    out = {}
    for name, layout, argv in legs:
        world, flags = LAYOUTS[layout]
        out.setdefault(world, []).append((name, BASE + flags + argv))
    return out


def test_every_save_mode_resumes_in_every_load_mode_across_world_sizes(tmp_path):
    ref = run_distributed(_legs, 1, [("ref", BASE)])[0]["ref"]  # uninterrupted, 2 iterations
    assert len(ref) == 2
    saves = [(f"{m}@{lay}", lay, MODES[m] + ["--exit-interval", "1", "--save", str(tmp_path / f"{m}@{lay}")])
             for m in MODES for lay in LAYOUTS]
    losses = {}
    for world, legs in sorted(_by_world(saves).items()):
        losses.update(run_distributed(_legs, world, legs, timeout=300)[-1])
    for name, _, _ in saves:
        assert len(losses[name]) == 1 and abs(losses[name][0] - ref[0]) <= 1e-5 * abs(ref[0]), (name, losses[name])
        assert ckpt.read_tracker(str(tmp_path / name)) == 1
    loads = [(f"{name} -> {m}@{NEXT[lay]}", NEXT[lay], MODES[m] + ["--load", str(tmp_path / name)])
             for name, lay, _ in saves for m in MODES]
    resumed = {}
    for world, legs in sorted(_by_world(loads).items()):
        resumed.update(run_distributed(_legs, world, legs, timeout=300)[-1])
    assert len(resumed) == 36
    bad = {k: v for k, v in resumed.items() if len(v) != 1 or abs(v[0] - ref[1]) > 1e-5 * abs(ref[1])}
    assert not bad, (ref, bad)
    assert "dist-opt@dp2cp2 -> fsdp2@dp2" in resumed  # the case that crashed
