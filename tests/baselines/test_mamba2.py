"""Mamba-2 / SSD: chunked scan == minimal listing == sequential recurrence == decode steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sessa.baselines import Mamba2Mixer
from sessa.baselines.mamba2 import segsum, ssd_chunked, ssd_minimal_ref, ssd_sequential_ref, ssd_step
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


@pytest.mark.parametrize("T, chunk_size", [(37, 16), (37, 1), (37, 64), (32, 8), (1, 4), (16, 16)])
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


def make_mixer(**options) -> Mamba2Mixer:
    torch.manual_seed(0)
    defaults = dict(
        d_state=8, headdim=8, ngroups=2, chunk_size=8, dt_min=0.05, dt_max=0.5, A_init_range=(0.5, 2)
    )
    return Mamba2Mixer(16, **{**defaults, **options}).double()




def test_chunked_backend_equals_reference_backend():
    x = randn(2, 21, 16)
    mixer = make_mixer()
    y = mixer(x)
    mixer.backend = "reference"
    assert_same(y, mixer(x), "chunked vs reference backend")


def test_block_matches_hand_written_layer():
    """The block layout written out here step by step (one head group, plain loops)."""
    mixer = make_mixer(ngroups=1, d_conv=3)
    x = randn(1, 10, 16)
    z, xbc, dt = torch.split(mixer.in_proj(x), [32, 32 + 16, 4], dim=-1)
    w = mixer.conv1d.weight[:, 0]  # (channels, K)
    conv = torch.stack(
        [sum(w[:, k] * xbc[0, t - 2 + k] for k in range(3) if t - 2 + k >= 0) for t in range(10)]
    )
    xbc = F.silu(conv + mixer.conv1d.bias)[None]
    xs, Bm, Cm = xbc[..., :32], xbc[..., 32:40], xbc[..., 40:]
    dt = F.softplus(dt + mixer.dt_bias)
    A = -torch.exp(mixer.A_log)
    state, ys = torch.zeros(4, 8, 8, dtype=torch.float64), []
    for t in range(10):
        xh = xs[0, t].view(4, 8)
        state = (
            torch.exp(dt[0, t] * A)[:, None, None] * state
            + dt[0, t, :, None, None] * xh[..., None] * Bm[0, t]
        )
        ys.append((state @ Cm[0, t] + mixer.D[:, None] * xh).reshape(32))
    gated = torch.stack(ys) * F.silu(z[0])
    normed = gated / torch.sqrt(gated.pow(2).mean(-1, keepdim=True) + 1e-5) * mixer.norm.weight
    with torch.no_grad():
        assert_same(mixer(x)[0], mixer.out_proj(normed), "block vs hand-written layer")












def test_bfloat16_chunked_error_is_like_the_reference():
    x = randn(2, 40, 16)
    exact = make_mixer()(x)
    fast = make_mixer().to(torch.bfloat16)
    ref = make_mixer(backend="reference").to(torch.bfloat16)
    with torch.no_grad():
        y_fast, y_ref = fast(x.bfloat16()), ref(x.bfloat16())
    assert y_fast.dtype == torch.bfloat16
    assert_close_to_ref(y_fast, y_ref, exact, k=2.0, atol=1e-3, name="Mamba2Mixer bf16")


def test_initialisation_follows_reference():
    mixer = Mamba2Mixer(64, dt_min=0.01, dt_max=0.2, A_init_range=(2, 8))
    assert mixer.n_heads == 4 and mixer.headdim == 32
    dt = F.softplus(mixer.dt_bias)
    assert ((dt >= 0.01 - 1e-6) & (dt <= 0.2 + 1e-6)).all()
    assert ((mixer.A_log.exp() >= 2) & (mixer.A_log.exp() <= 8)).all()
    assert torch.equal(mixer.D, torch.ones(4)) and torch.equal(mixer.norm.weight, torch.ones(128))
    assert Mamba2Mixer(64, n_heads=8).headdim == 16


def test_parameter_count():
    # in_proj 64·(2·128 + 2·64 + 4) + conv 256·4 + 256 + 3·4 (dt_bias, A_log, D) + norm 128 + out_proj 128·64
    assert sum(p.numel() for p in Mamba2Mixer(64).parameters()) == 34444


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(headdim=48), ValueError, "headdim"),
        (dict(n_heads=3), ValueError, "n_heads"),
        (dict(n_heads=4, headdim=16), ValueError, "headdim \\* n_heads"),
        (dict(ngroups=3), ValueError, "ngroups"),
        (dict(A_init_range=(2.0, 1.0)), ValueError, "A_init_range"),
        (dict(A_init_range=(0.0, 1.0)), ValueError, "A_init_range"),
        (dict(A_init_range=(1.0,)), ValueError, "A_init_range"),
        (dict(dt_min=0.2, dt_max=0.1), ValueError, "dt_max"),
        (dict(dt_min=0.0), ValueError, "dt_min"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(d_state=2.5), TypeError, "d_state"),
        (dict(backend="triton"), ValueError, "backend"),
        (dict(norm_eps=-1.0), ValueError, "norm_eps"),
        (dict(layer_idx=-1), ValueError, "layer_idx"),
    ],
)
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        Mamba2Mixer(64, **options)


def test_empty_sequence():
    assert make_mixer()(randn(2, 0, 16)).shape == (2, 0, 16)
