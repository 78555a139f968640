"""CP modes, their data layout, and validation that fails before any collective.

``check_cp_config`` only looks at sizes, which are equal on every rank, so
calling it at start-up makes every rank raise the same ``ValueError`` instead
of one rank hanging in a collective the others never enter.
"""
from __future__ import annotations

import argparse
from typing import Optional, Tuple

RSA, RING, ULYSSES, USP = "rsa", "p2p", "a2a", "a2a+p2p"  # --cp-comm-type values; RING is the default
CP_COMM_TYPES = (RSA, RING, ULYSSES, USP)
ATTENTION_BACKENDS = ("flash", "fused", "unfused", "local", "auto")  # --attention-backend (backends.py)
ZIGZAG_MODES = (RING, USP)       # causal ring modes: zigzag layout
HIERARCHICAL_MODES = (USP,)       # Ulysses x ring: --hierarchical-context-parallel-sizes U R
ROW_MODES = (RSA,)                    # the paper's algorithm: full score rows materialised, no block kernel
DROPOUT_MODES = CP_COMM_TYPES           # every mode: rsa natively, others via the reference kernel


def _check_mode(mode: str) -> None:
    if mode not in CP_COMM_TYPES:
        raise ValueError(f"--cp-comm-type {mode!r} is unknown; choose one of "
                         f"{', '.join(CP_COMM_TYPES)}")


def uses_zigzag(mode: str, causal: bool) -> bool:
    """Whether the sequence must be laid out in zigzag order for ``mode``."""
    _check_mode(mode)
    return bool(causal) and mode in ZIGZAG_MODES


def cp_sizes(mode: str, mesh_or_sizes) -> Tuple[int, int, int]:
    """``(P, U, R)``: CP size, Ulysses degree and ring degree that ``mode`` uses.

    ``mesh_or_sizes`` is a ParallelMesh, the CP size P, or the pair (U, R) of
    ``--hierarchical-context-parallel-sizes``.
    """
    _check_mode(mode)
    if hasattr(mesh_or_sizes, "cp_size"):
        p, u, r = mesh_or_sizes.cp_size, mesh_or_sizes.ulysses_size, mesh_or_sizes.ring_size
    elif isinstance(mesh_or_sizes, int):
        p, u, r = mesh_or_sizes, None, None
    else:
        u, r = (int(x) for x in mesh_or_sizes)
        p = u * r
    if mode == "a2a+p2p":
        if u is None:
            if p > 1:
                raise ValueError(f"--cp-comm-type a2a+p2p with --context-parallel-size {p} needs "
                                 f"--hierarchical-context-parallel-sizes U R with U x R = {p}")
            u, r = 1, 1
        if u * r != p:
            raise ValueError(f"--hierarchical-context-parallel-sizes {u} {r}: U x R = {u * r} must "
                             f"equal --context-parallel-size {p}")
        return p, u, r
    if mode == "a2a":
        return p, p, 1
    return p, 1, p


def ulysses_degree(mode: str, cp: int, hierarchical_u: int | None = None) -> int:
    """The Ulysses degree U of ``mode`` over ``cp`` ranks: ``a2a`` all of them, ``a2a+p2p`` the
    hierarchical U (when not given: 2 from 4 ranks up, the scaling tool's default), the rings 1."""
    _check_mode(mode)
    if cp == 1:
        return 1
    if mode in HIERARCHICAL_MODES:
        return hierarchical_u if hierarchical_u is not None else (2 if cp >= 4 else 1)
    return cp_sizes(mode, cp)[1]


def effective_mode(mode: str, cp: int, u: int) -> str:
    """The plain mode a hierarchical layout runs when one degree is 1: Ulysses x a ring of one is
    ``a2a``, a Ulysses degree of one is the ``p2p`` ring."""
    if mode in HIERARCHICAL_MODES and u in (1, cp):
        return RING if u == 1 else ULYSSES
    return mode


def mesh_layout(mode: str, mesh) -> Tuple[int, int, int, int]:
    """``(U, u, R, r)``: degrees and this rank's indices; cp_rank = u + U * r."""
    _, u_size, r_size = cp_sizes(mode, mesh)
    return u_size, mesh.cp_rank % u_size, r_size, mesh.cp_rank // u_size


def check_seq_len(seq_len: int, mode: str, causal: bool, mesh_or_sizes) -> Tuple[int, int, int]:
    """Raise ``ValueError`` unless ``seq_len`` splits evenly for ``mode``; return (P, U, R)."""
    p, u, r = cp_sizes(mode, mesh_or_sizes)
    if p < 1:
        raise ValueError(f"--context-parallel-size {p} must be >= 1")
    if uses_zigzag(mode, causal) and r > 1:  # a ring of one needs no zigzag split
        if seq_len % (2 * p) != 0:
            raise ValueError(
                f"--seq-length {seq_len} is not divisible by 2 x --context-parallel-size {p} = "
                f"{2 * p}: causal --cp-comm-type {mode} splits the sequence into 2P zigzag chunks; "
                f"use a multiple of {2 * p}")
    elif seq_len % p != 0:
        raise ValueError(f"--seq-length {seq_len} is not divisible by --context-parallel-size {p} "
                         f"(--cp-comm-type {mode}); use a multiple of {p}")
    if seq_len < 1:
        raise ValueError(f"--seq-length {seq_len} must be >= 1")
    return p, u, r


def check_cp_config(seq_len: int, num_heads_local: int, num_kv_heads_local: int, mode: str,
                    causal: bool, mesh_or_sizes, attention_dropout: float = 0.0) -> None:
    """Raise ``ValueError`` naming the flags and numbers if the config cannot run."""
    p, u, r = check_seq_len(seq_len, mode, causal, mesh_or_sizes)
    if num_kv_heads_local < 1 or num_heads_local % num_kv_heads_local != 0:
        raise ValueError(f"--num-attention-heads ({num_heads_local} per TP rank) must be a multiple "
                         f"of --num-query-groups ({num_kv_heads_local} per TP rank)")
    if num_heads_local % u != 0:
        raise ValueError(
            f"--num-attention-heads ({num_heads_local} per TP rank) is not divisible by the Ulysses "
            f"degree {u} (--cp-comm-type {mode}, --context-parallel-size {p}"
            + (f", --hierarchical-context-parallel-sizes {u} {r}" if mode == "a2a+p2p" else "")
            + "); choose a head count that is a multiple of it or a smaller degree")
    if num_kv_heads_local % u != 0 and u % num_kv_heads_local != 0:
        raise ValueError(
            f"--num-query-groups ({num_kv_heads_local} per TP rank) and the Ulysses degree {u} "
            f"(--cp-comm-type {mode}): one must divide the other so K/V heads can be split or "
            f"replicated evenly")
    if not 0.0 <= attention_dropout < 1.0:
        raise ValueError(f"--attention-dropout {attention_dropout} must be in [0, 1)")
    if attention_dropout > 0 and mode not in DROPOUT_MODES:
        raise ValueError(f"--attention-dropout {attention_dropout} is not supported by "
                         f"--cp-comm-type {mode}; use one of {', '.join(DROPOUT_MODES)}")


class BackendError(ValueError):
    """An ``--attention-backend`` that cannot run here (one line: the flags and the fix)."""


def _refuse(backend: str, why: str, fix: str):
    raise BackendError(f"--attention-backend {backend} {why}; {fix}")


def check_backend_for_mode(backend: str, mode: str, cp_size: int) -> None:
    """Raise unless ``backend`` is a known value that ``mode`` over ``cp_size`` ranks can honour."""
    if backend not in ATTENTION_BACKENDS:
        raise BackendError(f"--attention-backend {backend!r} is unknown; choose one of "
                           f"{', '.join(ATTENTION_BACKENDS)}")
    if mode in ROW_MODES and cp_size > 1 and backend in ("flash", "fused"):
        _refuse(backend, f"cannot apply to --cp-comm-type rsa over --context-parallel-size {cp_size}: RSA "
                         "materialises its score rows by design (the paper's algorithm)",
                "use --attention-backend auto or unfused, or --cp-comm-type p2p / a2a / a2a+p2p")


def window_size_type(text) -> Tuple[int, int]:
    """argparse type of ``--window-size``, Megatron's form: ``"4095,0"`` or ``"(4095, 0)"`` ->
    (left, right); -1 is an unlimited side.  Only causal left windows (right 0) exist here."""
    try:
        parts = tuple(int(x) for x in str(text).strip().strip("()[]").split(","))
    except ValueError:
        parts = ()
    if len(parts) != 2 or parts[0] < -1:
        raise argparse.ArgumentTypeError(f"--window-size {text!r}: give LEFT,RIGHT (e.g. 4095,0; -1 is unlimited)")
    if parts[1] != 0:
        raise argparse.ArgumentTypeError(f"--window-size {text!r}: only causal windows (RIGHT 0) are supported "
                                         "here, as GPT attention is causal; use --window-size LEFT,0")
    return parts


def left_window(window_size) -> Optional[int]:
    """The causal left window ``W`` of ``--window-size (W, 0)`` (a checkpoint's list too); None:
    no window (flag unset, or W = -1)."""
    if window_size is None:
        return None
    left = window_size_type(",".join(str(x) for x in window_size))[0]
    return None if left < 0 else left


def score_block_bytes(b: int, heads: float, s_block: float) -> float:
    """fp32 bytes of one block kernel call's scores ``[b, heads, s_block, s_block]`` (the reference
    kernel materialises them; the flash kernels do not)."""
    return b * heads * s_block ** 2 * 4


def reference_backward_bytes(block_bytes: float, dropout: bool) -> float:
    """Score-sized bytes alive at the reference kernel's backward peak for one ``block_bytes`` fp32
    block: the probabilities, their gradient and two temporaries of the softmax backward (4 blocks);
    with dropout also the regenerated mask and the dropped probabilities (6)."""
    return (6 if dropout else 4) * block_bytes
