"""Test helpers: the rank launcher (megatron_sp.launch) and a relative-error measure."""
import torch

from megatron_sp.launch import run_distributed  # noqa: F401  (re-exported for the tests)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64; NaN anywhere gives inf."""
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a, e = actual.detach().double(), expected.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - e).norm() / e.norm().clamp_min(1e-30))
