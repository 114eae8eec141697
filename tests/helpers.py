"""Shared test utilities."""

from __future__ import annotations

from typing import Any

import torch

EXACT = 1e-10  # relative RMS error allowed between two float64 computations of the same quantity


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    """Standard normal float64 tensor from its own generator (reproducible, independent of global state)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Two float64 computations of the same non-trivial quantity agree to ``EXACT``."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert expected.abs().max() > 1e-6, f"{what}: reference is ~0, the comparison would be vacuous"
    err = rel_err(actual, expected)
    assert err < EXACT, f"{what}: relative error {err:.3e}"


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


def run_interpreted(script: str, timeout: int = 600) -> Any:
    """Run a test file as a script in a child process under Triton's CPU interpreter (TRITON_INTERPRET=1,
    which Triton reads when first imported) with the repository on the path; return the JSON it prints
    last."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])  # the child imports tests.helpers
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
