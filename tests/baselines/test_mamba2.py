"""Mamba2Mixer: block layout, backends (incl. the fla wiring), initialisation, options (the contract:
tests/modules/test_contract.py; the SSD ops: tests/ops/test_ssd.py, tests/ops/test_ssd_fla.py)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from sessa.baselines import Mamba2Mixer
from sessa.ops import ssd_fla
from tests.helpers import assert_close_to_ref, assert_same, randn
from tests.ops.test_ssd_fla import simple_gla_recurrence


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


@pytest.fixture
def fla_on_cpu(monkeypatch):
    """Route the "fla" backend to the SSD -> simple-GLA glue over fla's recurrence written in Python."""
    fake = functools.partial(ssd_fla.ssd_via_simple_gla, simple_gla_recurrence)
    monkeypatch.setattr(ssd_fla, "ssd_fla", fake)
    monkeypatch.setattr(ssd_fla, "fla_usable", lambda x: True)


@pytest.mark.parametrize("backend", ["fla", "auto"])
def test_fla_backend_wiring(fla_on_cpu, backend):
    """The mixer's fla branch: same outputs, decode / chunked prefill, left padding and causality."""
    x = randn(2, 21, 16)
    mixer = make_mixer(backend=backend)
    y = mixer(x)
    assert_same(y, make_mixer(backend="reference")(x), f"{backend} vs reference backend")
    state = mixer.init_state(2, 21)
    steps = [mixer.step(x[:, :13], state)] + [mixer.step(x[:, t : t + 1], state) for t in range(13, 21)]
    assert_same(torch.cat(steps, 1), y, "prefill through fla, then decode steps")
    padded = torch.cat([randn(2, 4, 16, seed=5) * 3, x], 1)
    mask = torch.cat([torch.zeros(2, 4), torch.ones(2, 21)], 1)
    assert_same(mixer(padded, attention_mask=mask)[:, 4:], y, "left padding")
    later = x.clone()
    later[:, 9:] = randn(2, 12, 16, seed=6)
    assert_same(mixer(later)[:, :9], y[:, :9], "causality")


def test_auto_backend_on_cpu_is_the_chunked_scan():
    x = randn(2, 21, 16)
    assert torch.equal(make_mixer(backend="auto")(x), make_mixer()(x))


def test_fla_backend_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA tensors only"):
        make_mixer(backend="fla")(randn(2, 5, 16))


@pytest.mark.parametrize("K,bias", [(4, True), (4, False), (1, True)])
def test_causal_conv_one_step_at_a_time_equals_the_whole_sequence(K, bias):
    """The decoding form of the depthwise conv (one weighted sum per step) against conv1d on the sequence."""
    from sessa.baselines.common import causal_conv

    gen = torch.Generator().manual_seed(K)
    x = torch.randn(2, 9, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 1, K, generator=gen, dtype=torch.float64)
    b = torch.randn(5, generator=gen, dtype=torch.float64) if bias else None
    whole, last = causal_conv(x, w, b)
    history, steps = None, []
    for t in range(9):
        y, history = causal_conv(x[:, t : t + 1], w, b, history)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(history, last, rtol=0, atol=0)
    assert history.shape == (2, 5, K - 1)
