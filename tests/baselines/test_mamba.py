"""MambaMixer: block layout, backends, initialisation, options (the contract: tests/modules/test_contract.py;
the scan ops: tests/ops/test_selective_scan.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sessa.baselines import MambaMixer
from tests.helpers import assert_close_to_ref, assert_same, randn


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
        (dict(backend="fla"), ValueError, "no selective scan"),
    ],
)
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        MambaMixer(64, **options)


def test_empty_sequence():
    assert make_mixer()(randn(2, 0, 16)).shape == (2, 0, 16)


def test_auto_backend_is_the_chunked_scan():
    """Mamba-1 has no fla path: "auto" (a config's ssm_backend shared with Mamba-2 layers) means "chunked"."""
    x = randn(2, 21, 16)
    assert torch.equal(make_mixer(backend="auto")(x), make_mixer()(x))
