"""Mamba-1: chunked selective scan == sequential recurrence == decode steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sessa.baselines import MambaMixer
from sessa.baselines.mamba import selective_scan, selective_scan_ref, selective_state_update
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
        y_t, state = selective_state_update(state, u[:, t], delta[:, t], A, B[:, t], C[:, t], D)
        ys.append(y_t)
    assert_same(torch.stack(ys, 1), y_ref, "selective_state_update")
    assert_same(state, final, "selective_state_update state")


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


def make_mixer(**options) -> MambaMixer:
    torch.manual_seed(0)
    return MambaMixer(16, **{**dict(d_state=4, chunk_size=8, dt_min=0.05, dt_max=0.5), **options}).double()




def test_chunked_backend_equals_reference_backend():
    x = randn(2, 21, 16)
    mixer = make_mixer()
    y = mixer(x)
    mixer.backend = "reference"
    assert_same(y, mixer(x), "chunked vs reference backend")


def test_block_matches_hand_written_layer():
    mixer = make_mixer(d_conv=2)
    x = randn(1, 7, 16)
    xs, z = mixer.in_proj(x)[0].split(32, dim=-1)
    w, bias = mixer.conv1d.weight[:, 0], mixer.conv1d.bias
    xs = F.silu(torch.stack([bias + w[:, 1] * xs[t] + (w[:, 0] * xs[t - 1] if t else 0) for t in range(7)]))
    dt_low, Bm, Cm = mixer.x_proj(xs).split([1, 4, 4], dim=-1)
    delta = F.softplus(mixer.dt_proj(dt_low))
    A = -torch.exp(mixer.A_log)
    h, ys = torch.zeros(32, 4, dtype=torch.float64), []
    for t in range(7):
        h = torch.exp(delta[t, :, None] * A) * h + (delta[t] * xs[t])[:, None] * Bm[t]
        ys.append(h @ Cm[t] + mixer.D * xs[t])
    expected = mixer.out_proj(torch.stack(ys) * F.silu(z))
    with torch.no_grad():
        assert_same(mixer(x)[0], expected, "block vs hand-written layer")












def test_bfloat16_chunked_error_is_like_the_reference():
    x = randn(2, 40, 16)
    exact = make_mixer()(x)
    fast = make_mixer().to(torch.bfloat16)
    ref = make_mixer(backend="reference").to(torch.bfloat16)
    with torch.no_grad():
        y_fast, y_ref = fast(x.bfloat16()), ref(x.bfloat16())
    assert y_fast.dtype == torch.bfloat16
    assert_close_to_ref(y_fast, y_ref, exact, k=2.0, atol=1e-3, name="MambaMixer bf16")


def test_initialisation_follows_reference():
    mixer = MambaMixer(64, dt_min=0.01, dt_max=0.2)
    assert mixer.dt_rank == 4 and mixer.d_inner == 128
    dt = F.softplus(mixer.dt_proj.bias)
    assert ((dt >= 0.01 - 1e-6) & (dt <= 0.2 + 1e-6)).all()
    torch.testing.assert_close(-torch.exp(mixer.A_log), -torch.arange(1.0, 17.0).repeat(128, 1))
    assert mixer.dt_proj.weight.abs().max() <= 4**-0.5
    assert torch.equal(mixer.D, torch.ones(128))
    assert torch.equal(MambaMixer(64, dt_init="constant").dt_proj.weight, torch.full((128, 4), 0.5))
    assert MambaMixer(64, dt_rank=7).dt_rank == 7 and MambaMixer(100).dt_rank == math.ceil(100 / 16)


def test_parameter_count():
    # in_proj 64·256 + conv 128·4 + 128 + x_proj 128·(4 + 32) + dt_proj 4·128 + 128 + A_log 128·16 + D 128
    # + out_proj 128·64
    assert sum(p.numel() for p in MambaMixer(64).parameters()) == 32640


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(dt_rank=0), ValueError, "dt_rank"),
        (dict(dt_rank="big"), TypeError, "dt_rank"),
        (dict(dt_init="xavier"), ValueError, "dt_init"),
        (dict(dt_scale=0.0), ValueError, "dt_scale"),
        (dict(d_conv=0), ValueError, "d_conv"),
        (dict(expand=0), ValueError, "expand"),
        (dict(dt_min=0.5, dt_max=0.1), ValueError, "dt_max"),
        (dict(dt_init_floor=-1.0), ValueError, "dt_init_floor"),
        (dict(chunk_size=-2), ValueError, "chunk_size"),
        (dict(backend="cuda"), ValueError, "backend"),
    ],
)
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        MambaMixer(64, **options)


def test_empty_sequence():
    assert make_mixer()(randn(2, 0, 16)).shape == (2, 0, 16)
