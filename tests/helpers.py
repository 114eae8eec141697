"""Shared test utilities."""

from __future__ import annotations

import torch


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative RMS error of x against ref (both cast to float64)."""
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close_to_ref(
    fast: torch.Tensor,
    same_prec_ref: torch.Tensor,
    exact: torch.Tensor,
    k: float = 2.0,
    atol: float = 1e-6,
    name: str = "",
) -> None:
    """mamba's rule: error(fast vs float64) <= k * error(reference op in the same precision) + atol."""
    e_fast, e_ref = rel_err(fast, exact), rel_err(same_prec_ref, exact)
    assert e_fast <= k * e_ref + atol, f"{name}: fast err {e_fast:.3e} > {k} x ref err {e_ref:.3e} + {atol}"
