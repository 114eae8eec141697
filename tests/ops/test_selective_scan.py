"""Selective scan ops (Mamba-1): chunked == sequential recurrence == decode steps, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sessa.ops.selective_scan import selective_scan, selective_scan_ref, selective_scan_step
from tests.helpers import assert_close_to_ref, assert_same, randn


def scan_inputs(b=2, T=37, d=6, n=5, seed=0):
    u = randn(b, T, d, seed=seed)
    delta = F.softplus(randn(b, T, d, seed=seed + 1))
    A = -torch.linspace(0.5, 12.0, d * n, dtype=torch.float64).view(d, n)  # strong decays: exp(-30) per step
    B, C = randn(b, T, n, seed=seed + 2), randn(b, T, n, seed=seed + 3)
    return u, delta, A, B, C, randn(d, seed=seed + 4)


def test_reference_matches_closed_form():
    """h_t = Σ_{s<=t} exp(Σ_{s<r<=t} Δ_r A) Δ_s B_s u_s written out for one channel."""
    u, delta, A, B, C, _ = scan_inputs(b=1, T=8, d=1, n=3)
    y, _ = selective_scan_ref(u, delta, A, B, C)
    for t in range(8):
        h = sum(torch.exp(delta[0, s + 1 : t + 1, 0].sum() * A[0]) * delta[0, s, 0] * B[0, s] * u[0, s, 0]
                for s in range(t + 1))  # fmt: skip
        torch.testing.assert_close(y[0, t, 0], h @ C[0, t])


@pytest.mark.parametrize("T, chunk_size", [(37, 16), (37, 1), (37, 64), (32, 8), (1, 4)])
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_chunked_equals_sequential(T, chunk_size, with_initial_state):
    u, delta, A, B, C, D = scan_inputs(T=T)
    s0 = randn(2, 6, 5, seed=7) if with_initial_state else None
    y_ref, final_ref = selective_scan_ref(u, delta, A, B, C, D, s0)
    y, final = selective_scan(u, delta, A, B, C, D, s0, chunk_size=chunk_size)
    assert_same(y, y_ref, "chunked scan")
    assert_same(final, final_ref, "chunked final state")


def test_chunked_is_stable_with_huge_decays():
    """Δ·A down to -3000 per step: exp of the in-chunk segment sums never overflows."""
    u, delta, A, B, C, D = scan_inputs(T=40)
    delta = delta * 100
    y_ref, _ = selective_scan_ref(u, delta, A, B, C, D)
    y, _ = selective_scan(u.float(), delta.float(), A.float(), B.float(), C.float(), D.float(), chunk_size=32)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)


def test_step_matches_sequential():
    u, delta, A, B, C, D = scan_inputs(T=6)
    y_ref, final = selective_scan_ref(u, delta, A, B, C, D)
    state, ys = torch.zeros(2, 6, 5, dtype=torch.float64), []
    for t in range(6):
        y_t, state = selective_scan_step(state, u[:, t], delta[:, t], A, B[:, t], C[:, t], D)
        ys.append(y_t)
    assert_same(torch.stack(ys, 1), y_ref, "selective_scan_step")
    assert_same(state, final, "selective_scan_step state")


def test_chunked_gradients_match_sequential():
    inputs = (*scan_inputs(T=37), randn(2, 6, 5, seed=7))
    grads = []
    for fn in (lambda *a: selective_scan(*a, chunk_size=16), selective_scan_ref):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y, final = fn(*leaves)
        loss = (y * randn(*y.shape, seed=20)).sum() + (final * randn(*final.shape, seed=21)).sum()
        grads.append(torch.autograd.grad(loss, leaves))
    for name, g_chunk, g_ref in zip(["u", "delta", "A", "B", "C", "D", "initial_state"], *grads, strict=True):
        assert_same(g_chunk, g_ref, f"grad of {name}")


def test_chunked_float32_error_is_like_the_reference():
    exact = scan_inputs(T=150, d=8, n=16)
    low = [t.float() for t in exact]
    y_exact, _ = selective_scan_ref(*[t.double() for t in low])
    y_fast, _ = selective_scan(*low, chunk_size=32)
    y_ref, _ = selective_scan_ref(*low)
    assert y_fast.dtype == torch.float32
    assert_close_to_ref(y_fast, y_ref, y_exact, k=2.0, atol=1e-6, name="selective_scan float32")


def test_resets_restart_the_selective_scan_exactly():
    """Packed rows: with resets, the chunked scan equals the loop and each sequence scanned alone."""
    g = torch.Generator().manual_seed(4)
    b, T, d, n = 2, 29, 3, 4
    u = torch.randn(b, T, d, generator=g, dtype=torch.float64)
    delta = torch.rand(b, T, d, generator=g, dtype=torch.float64)
    A = -torch.rand(d, n, generator=g, dtype=torch.float64)
    B, C = (torch.randn(b, T, n, generator=g, dtype=torch.float64) for _ in range(2))
    state0 = torch.randn(b, d, n, generator=g, dtype=torch.float64)
    resets = torch.zeros(b, T, dtype=torch.bool)
    resets[0, [0, 3, 8, 9, 20]] = True
    resets[1, 17] = True
    y_ref, s_ref = selective_scan_ref(u, delta, A, B, C, None, state0, resets)
    y, s = selective_scan(u, delta, A, B, C, None, state0, 8, resets)
    assert torch.allclose(y, y_ref, atol=1e-12) and torch.allclose(s, s_ref, atol=1e-12)
    for a, e in [(0, 3), (3, 8), (8, 9), (9, 20), (20, 29)]:
        alone, _ = selective_scan_ref(u[:1, a:e], delta[:1, a:e], A, B[:1, a:e], C[:1, a:e])
        assert torch.allclose(y[0, a:e], alone[0], atol=1e-12)
