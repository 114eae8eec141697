"""SSD scan ops: chunked == minimal listing == sequential recurrence == decode steps, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sessa.ops.ssd import segsum, ssd_chunked, ssd_minimal_ref, ssd_sequential_ref, ssd_step
from tests.helpers import assert_close_to_ref, assert_same, randn


def ssd_inputs(b=2, T=37, h=4, p=3, g=2, n=5, seed=0, dtype=torch.float64):
    x = randn(b, T, h, p, seed=seed)
    dt = F.softplus(randn(b, T, h, seed=seed + 1) - 0.5)
    A = -torch.linspace(0.3, 3.0, h, dtype=torch.float64)
    B, C = randn(b, T, g, n, seed=seed + 2), randn(b, T, g, n, seed=seed + 3)
    D = randn(h, seed=seed + 4)
    return [t.to(dtype) for t in (x, dt, A, B, C, D)]


def test_segsum_is_sum_over_segments():
    a = randn(2, 7)
    out = segsum(a)
    for i in range(7):
        for j in range(7):
            expected = a[:, j + 1 : i + 1].sum(-1) if j <= i else torch.full((2,), -math.inf, dtype=a.dtype)
            torch.testing.assert_close(out[:, i, j], expected)


@pytest.mark.parametrize(
    "T, chunk_size", [(37, 16), (37, 1), (37, 64), (32, 8), (1, 4), (16, 16), (5, 64), (100, 256)]
)
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_chunked_equals_minimal_and_sequential(T, chunk_size, with_initial_state):
    x, dt, A, B, C, D = ssd_inputs(T=T)
    s0 = randn(2, 4, 3, 5, seed=7) if with_initial_state else None
    y_seq, final_seq = ssd_sequential_ref(x, dt, A, B, C, D, s0)
    y_chunk, final_chunk = ssd_chunked(x, dt, A, B, C, chunk_size, D, s0)
    y_min, final_min = ssd_minimal_ref(x * dt[..., None], dt * A, B, C, chunk_size, s0)
    assert_same(y_chunk, y_seq, "chunked vs sequential")
    assert_same(y_min + D[:, None] * x, y_seq, "minimal listing vs sequential")
    assert_same(final_chunk, final_seq, "chunked final state")
    assert_same(final_min, final_seq, "minimal final state")


def test_sequential_matches_explicit_operator():
    """M = L ∘ (C Bᵀ) (DESIGN §5) written out entry by entry, one head, one group."""
    x, dt, A, B, C, _ = ssd_inputs(b=1, T=9, h=1, g=1)
    y, _ = ssd_sequential_ref(x, dt, A, B, C)
    a = (dt * A)[0, :, 0]
    M = torch.zeros(9, 9, dtype=torch.float64)
    for j in range(9):
        for i in range(j + 1):
            M[j, i] = torch.exp(a[i + 1 : j + 1].sum()) * (C[0, j, 0] @ B[0, i, 0]) * dt[0, i, 0]
    assert_same(y[0, :, 0], M @ x[0, :, 0], "sequential vs explicit semiseparable matrix")


def test_step_matches_sequential():
    x, dt, A, B, C, D = ssd_inputs(T=6)
    y_seq, final = ssd_sequential_ref(x, dt, A, B, C, D)
    state, ys = torch.zeros(2, 4, 3, 5, dtype=torch.float64), []
    for t in range(6):
        y_t, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y_t)
    assert_same(torch.stack(ys, 1), y_seq, "ssd_step")
    assert_same(state, final, "ssd_step state")


def test_chunked_gradients_match_sequential():
    inputs = ssd_inputs(T=37)
    s0 = randn(2, 4, 3, 5, seed=7)
    grads = []
    for fn in (lambda *a: ssd_chunked(*a[:5], 16, a[5], a[6]), ssd_sequential_ref):
        leaves = [t.clone().requires_grad_() for t in (*inputs, s0)]
        y, final = fn(*leaves)
        loss = (y * randn(*y.shape, seed=20)).sum() + (final * randn(*final.shape, seed=21)).sum()
        grads.append(torch.autograd.grad(loss, leaves))
    for name, g_chunk, g_seq in zip(["x", "dt", "A", "B", "C", "D", "initial_state"], *grads, strict=True):
        assert_same(g_chunk, g_seq, f"grad of {name}")


def test_chunked_float32_error_is_like_the_reference():
    exact = ssd_inputs(T=200, h=4, p=8, n=16)
    low = [t.float() for t in exact]
    y_exact, _ = ssd_sequential_ref(*[t.double() for t in low])
    y_fast, _ = ssd_chunked(*low[:5], 64, low[5])
    y_ref, _ = ssd_sequential_ref(*low)
    assert y_fast.dtype == torch.float32
    assert_close_to_ref(y_fast, y_ref, y_exact, k=2.0, atol=1e-6, name="ssd_chunked float32")


def test_resets_restart_the_scan_exactly():
    """Packed rows: with resets, the chunked scan equals the recurrence and each sequence scanned alone
    (resets inside chunks, on a chunk's first row, two in a row, and one at t = 0 that drops the initial
    state)."""
    g = torch.Generator().manual_seed(3)
    b, T, h, p, groups, n = 2, 37, 4, 3, 2, 5
    x = torch.randn(b, T, h, p, generator=g, dtype=torch.float64)
    dt = torch.rand(b, T, h, generator=g, dtype=torch.float64)
    A = -torch.rand(h, generator=g, dtype=torch.float64)
    B, C = (torch.randn(b, T, groups, n, generator=g, dtype=torch.float64) for _ in range(2))
    state0 = torch.randn(b, h, p, n, generator=g, dtype=torch.float64)
    resets = torch.zeros(b, T, dtype=torch.bool)
    resets[0, [0, 5, 16, 17, 30]] = True
    resets[1, 20] = True
    y_ref, s_ref = ssd_sequential_ref(x, dt, A, B, C, None, state0, resets)
    y, s = ssd_chunked(x, dt, A, B, C, 16, None, state0, resets)
    assert torch.allclose(y, y_ref, atol=1e-12) and torch.allclose(s, s_ref, atol=1e-12)
    for a, e in [(0, 5), (5, 16), (16, 17), (17, 30), (30, 37)]:
        alone, _ = ssd_sequential_ref(x[:1, a:e], dt[:1, a:e], A, B[:1, a:e], C[:1, a:e])
        assert torch.allclose(y[0, a:e], alone[0], atol=1e-12)
    # row 1 keeps the initial state until its reset at t = 20
    first, _ = ssd_sequential_ref(x[1:, :20], dt[1:, :20], A, B[1:, :20], C[1:, :20], None, state0[1:])
    assert torch.allclose(y[1, :20], first[0], atol=1e-12)
