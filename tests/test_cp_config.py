"""Validation messages and shard layouts (single process, no collectives)."""
from types import SimpleNamespace

import pytest
import torch

from megatron_sp.sequence_parallel import (CP_COMM_TYPES, check_cp_config, cp_local_indices,
                                           shard_for_cp, uses_zigzag)


def _mesh(cp_rank, u, r):
    return SimpleNamespace(cp_size=u * r, ulysses_size=u, ring_size=r, cp_rank=cp_rank)


@pytest.mark.parametrize("args,flags", [
    ((10, 4, 4, "p2p", True, 4), ["--seq-length 10", "--context-parallel-size 4", "8"]),
    ((10, 4, 4, "rsa", True, 4), ["--seq-length 10", "--context-parallel-size 4"]),
    ((12, 4, 4, "a2a+p2p", True, (2, 2)), ["--seq-length 12", "8"]),
    ((16, 6, 6, "a2a", False, 4), ["--num-attention-heads", "6", "Ulysses degree 4"]),
    ((16, 6, 3, "a2a", False, 2), ["--num-query-groups", "3", "Ulysses degree 2"]),
    ((16, 6, 4, "p2p", False, 2), ["--num-attention-heads", "--num-query-groups"]),
    ((16, 6, 6, "a2a+p2p", False, (4, 1)), ["--hierarchical-context-parallel-sizes 4 1"]),
    ((16, 4, 4, "a2a+p2p", False, 4), ["--hierarchical-context-parallel-sizes"]),
    ((16, 4, 4, "ring", False, 2), ["--cp-comm-type 'ring'"]),
])
def test_bad_configs_name_the_flags(args, flags):
    with pytest.raises(ValueError) as err:
        check_cp_config(*args)
    for flag in flags:
        assert flag in str(err.value)


def test_bad_dropout_names_the_flag():
    with pytest.raises(ValueError, match="--attention-dropout 1.0"):
        check_cp_config(16, 4, 4, "p2p", True, 2, 1.0)


@pytest.mark.parametrize("args", [
    (16, 4, 4, "p2p", True, 4), (12, 6, 3, "p2p", True, 3), (8, 8, 2, "a2a", True, 8),
    (8, 8, 1, "a2a", False, 4), (16, 4, 2, "a2a+p2p", True, (2, 4)), (6, 3, 3, "rsa", True, 3),
    # a ring of one needs no zigzag split: any length at P = 1, multiples of U at R = 1
    (7, 4, 4, "p2p", True, 1), (6, 4, 4, "a2a+p2p", True, (2, 1)),
])
def test_good_configs_pass(args):
    check_cp_config(*args)


def test_zigzag_worked_example_p2():
    assert cp_local_indices(8, "p2p", True, _mesh(0, 1, 2)).tolist() == [0, 1, 6, 7]
    assert cp_local_indices(8, "p2p", True, _mesh(1, 1, 2)).tolist() == [2, 3, 4, 5]
    assert cp_local_indices(8, "p2p", False, _mesh(1, 1, 2)).tolist() == [4, 5, 6, 7]
    assert uses_zigzag("p2p", True) and not uses_zigzag("rsa", True)
    assert not uses_zigzag("a2a", True) and not uses_zigzag("p2p", False)


def test_usp_worked_example():
    # P = 4 = U 2 x R 2, 8 tokens: ring portions [0 1 6 7] and [2 3 4 5], split over U
    got = [cp_local_indices(8, "a2a+p2p", True, _mesh(c, 2, 2)).tolist() for c in range(4)]
    assert got == [[0, 1], [6, 7], [2, 3], [4, 5]]


@pytest.mark.parametrize("mode", CP_COMM_TYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("u,r", [(1, 1), (1, 3), (2, 2), (4, 2), (2, 4)])
def test_shards_partition_the_sequence(mode, causal, u, r):
    if mode == "a2a" and r > 1 or mode in ("p2p", "rsa") and u > 1:
        u, r = (u * r, 1) if mode == "a2a" else (1, u * r)
    n = 16 * u * r
    meshes = [_mesh(c, u, r) for c in range(u * r)]
    parts = [cp_local_indices(n, mode, causal, m) for m in meshes]
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(n))
    x = torch.arange(n * 2).view(2, n)
    assert torch.equal(shard_for_cp(x, 1, mode, causal, meshes[-1]), x[:, parts[-1]])


def test_shard_rejects_a_length_that_does_not_divide():
    with pytest.raises(ValueError, match="--seq-length 6"):
        cp_local_indices(6, "p2p", True, _mesh(0, 1, 2))


def test_a_ring_of_one_keeps_the_natural_order():
    assert cp_local_indices(7, "p2p", True, _mesh(0, 1, 1)).tolist() == list(range(7))
    assert cp_local_indices(6, "a2a+p2p", True, _mesh(1, 2, 1)).tolist() == [3, 4, 5]
