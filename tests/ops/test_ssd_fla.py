"""The SSD -> simple-GLA mapping of sessa.ops.ssd_fla, checked on CPU against fla's recurrence (written here).

fla's kernels need CUDA (scripts/check_mamba2_fla.py runs them); these tests make a wrong mapping (scale,
state layout, head/group broadcast, dt placement, initial state, padding) fail without a GPU.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torch.nn.functional as F

from sessa.ops import ssd_fla
from sessa.ops.ssd import ssd_sequential_ref
from sessa.ops.ssd_fla import simple_gla_inputs, ssd_via_simple_gla
from tests.helpers import assert_same, randn


def simple_gla_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    state_v_first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fla-core 0.6's simple GLA one token at a time, with ``chunk_simple_gla``'s arguments (cf. fla's
    ``naive_recurrent_simple_gla``): S_t = exp(g_t) S_{t-1} + k_t v_tᵀ (S: K × V, stored V × K when
    state_v_first), o_t = scale · S_tᵀ q_t. q, k: (b, T, H, K); v: (b, T, H, V); g: (b, T, H)."""
    b, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    S = q.new_zeros(b, H, K, v.shape[-1]) if initial_state is None else initial_state.to(q.dtype)
    S = S.transpose(-1, -2) if state_v_first and initial_state is not None else S
    outs = []
    for t in range(T):
        S = torch.exp(g[:, t])[..., None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    final = S.transpose(-1, -2) if state_v_first else S
    return torch.stack(outs, dim=1), (final if output_final_state else None)


def ssd_inputs(b=2, T=65, h=6, p=4, g=2, n=5, seed=0):
    x = randn(b, T, h, p, seed=seed)
    dt = F.softplus(randn(b, T, h, seed=seed + 1) - 0.5)
    A = -torch.linspace(0.3, 3.0, h, dtype=torch.float64)
    B, C = randn(b, T, g, n, seed=seed + 2), randn(b, T, g, n, seed=seed + 3)
    return x, dt, A, B, C, randn(h, seed=seed + 4)


@pytest.mark.parametrize("T", [1, 63, 65, 200])
@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_mapping_through_the_recurrence_equals_ssd(T, groups, with_initial_state):
    """q, k, v, g from simple_gla_inputs; fla's recurrence, scale 1, its default K × V state; D outside."""
    x, dt, A, B, C, D = ssd_inputs(T=T, g=groups)
    s0 = randn(2, 6, 4, 5, seed=9) if with_initial_state else None  # ours: (b, h, headdim, d_state)
    q, k, v, g = simple_gla_inputs(x, dt, A, B, C)
    s0_kv = None if s0 is None else s0.transpose(-1, -2)
    o, final_kv = simple_gla_recurrence(q, k, v, g, scale=1.0, initial_state=s0_kv, output_final_state=True)
    y_ref, final_ref = ssd_sequential_ref(x, dt, A, B, C, D, s0)
    assert_same(o + D[:, None] * x, y_ref, "simple GLA + D skip vs SSD")
    assert_same(final_kv.transpose(-1, -2), final_ref, "final state (fla's K x V is our state transposed)")


@pytest.mark.parametrize("T", [1, 63, 65, 200])
def test_wrapper_glue_equals_ssd(T):
    """ssd_via_simple_gla (what ssd_fla runs, V-first states, groups < heads) with an initial state."""
    x, dt, A, B, C, D = ssd_inputs(T=T, g=2)
    s0 = randn(2, 6, 4, 5, seed=9)
    y, final = ssd_via_simple_gla(simple_gla_recurrence, x, dt, A, B, C, D, s0)
    y_ref, final_ref = ssd_sequential_ref(x, dt, A, B, C, D, s0)
    assert y.dtype == x.dtype and final.dtype == torch.float64
    assert_same(y, y_ref, "ssd_via_simple_gla")
    assert_same(final, final_ref, "ssd_via_simple_gla final state")


def test_wrapper_gradients_equal_ssd():
    """dt reaches the scan twice (v = dt·x and g = dt·A): every input's gradient must match."""
    inputs = (*ssd_inputs(T=65, g=2), randn(2, 6, 4, 5, seed=9))
    grads = []
    for fn in (functools.partial(ssd_via_simple_gla, simple_gla_recurrence), ssd_sequential_ref):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y, final = fn(*leaves)
        loss = (y * randn(*y.shape, seed=20)).sum() + (final * randn(*final.shape, seed=21)).sum()
        grads.append(torch.autograd.grad(loss, leaves))
    for name, g_fla, g_ref in zip(["x", "dt", "A", "B", "C", "D", "initial_state"], *grads, strict=True):
        assert_same(g_fla, g_ref, f"grad of {name}")


def test_left_padding_dt_zero_is_exact():
    """dt = 0 on 7 leading steps (x, B, C nonzero, as after the conv): real steps see the unpadded row."""
    pad, T = 7, 58
    x, dt, A, B, C, D = ssd_inputs(T=pad + T, g=2)
    dt = dt.clone()
    dt[:, :pad] = 0.0
    y, final = ssd_via_simple_gla(simple_gla_recurrence, x, dt, A, B, C, D)
    y_ref, final_ref = ssd_sequential_ref(*(m[:, pad:] for m in (x, dt)), A, B[:, pad:], C[:, pad:], D)
    assert_same(y[:, pad:], y_ref, "outputs after the padding")
    assert_same(final, final_ref, "final state after padding")
    assert torch.equal(y[:, :pad], D[:, None] * x[:, :pad]), "padded steps: zero state, only the D skip"


def test_chunked_prefill_carries_the_state():
    x, dt, A, B, C, D = ssd_inputs(T=130, g=2)
    run = functools.partial(ssd_via_simple_gla, simple_gla_recurrence)
    y1, s1 = run(*(m[:, :70] for m in (x, dt)), A, B[:, :70], C[:, :70], D)
    y2, s2 = run(*(m[:, 70:] for m in (x, dt)), A, B[:, 70:], C[:, 70:], D, s1)
    y_ref, final_ref = ssd_sequential_ref(x, dt, A, B, C, D)
    assert_same(torch.cat([y1, y2], dim=1), y_ref, "prefill in two calls")
    assert_same(s2, final_ref, "final state after two calls")


def test_empty_sequence_keeps_the_state():
    x, dt, A, B, C, D = ssd_inputs(T=0)
    s0 = randn(2, 6, 4, 5, seed=9)
    y, final = ssd_via_simple_gla(simple_gla_recurrence, x, dt, A, B, C, D, s0)
    assert y.shape == x.shape and torch.equal(final, s0)


def test_recurrence_here_is_fla_s_own_definition():
    """Our few-line recurrence == fla's naive_recurrent_simple_gla (float32 inside), when fla-core is here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fla warns that Triton is not supported on a CPU-only machine
        naive = pytest.importorskip("fla.ops.simple_gla.naive")
    q, k, v = randn(2, 40, 3, 5, seed=1), randn(2, 40, 3, 5, seed=2), randn(2, 40, 3, 4, seed=3)
    g, s0 = -F.softplus(randn(2, 40, 3, seed=4)), randn(2, 3, 5, 4, seed=5)
    for scale in (None, 1.0):
        o, s = simple_gla_recurrence(q, k, v, g, scale, s0, output_final_state=True)
        o_fla, s_fla = naive.naive_recurrent_simple_gla(q, k, v, g, scale, s0, output_final_state=True)
        torch.testing.assert_close(o_fla.double(), o, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(s_fla.double(), s, rtol=1e-4, atol=1e-4)


def _no_import():
    raise AssertionError("fla must not be imported for CPU tensors")  # would be slow and warn on CPU


def test_ssd_fla_on_cpu_is_a_clear_error(monkeypatch):
    x, dt, A, B, C, D = ssd_inputs(T=5)
    monkeypatch.setattr(ssd_fla, "_import_chunk_simple_gla", _no_import)
    with pytest.raises(ValueError, match="CUDA tensors only; x, dt, A, B, C, D are on cpu"):
        ssd_fla.ssd_fla(x, dt, A, B, C, D)


def test_missing_fla_core_says_how_to_install(monkeypatch):
    monkeypatch.setattr(ssd_fla, "_import_chunk_simple_gla", lambda: (None, "ModuleNotFoundError: no fla"))
    with pytest.raises(ImportError, match=r"no fla.*pip install fla-core .*pip install -e \"\.\[fast\]\""):
        ssd_fla.require_chunk_simple_gla()


def test_auto_never_picks_fla_for_cpu_tensors(monkeypatch):
    monkeypatch.setattr(ssd_fla, "_import_chunk_simple_gla", _no_import)
    assert not ssd_fla.fla_usable(torch.zeros(2, 3))
    assert not ssd_fla.fla_usable(torch.zeros(2, dtype=torch.float64))


def test_the_triton_range_fla_refuses_on_hopper(monkeypatch):
    """fla-core 0.6 refuses its backward on Hopper with Triton 3.6 (seen on an H200): "auto" must not pick
    it there and an explicit "fla" must say why before any kernel runs."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cuda = torch.device("cuda")
    assert "Triton >= 3.7.1" in ssd_fla.fla_blocker(cuda, "3.6.0", tilelang=False)
    # tilelang is fla's way out for float32 inputs only (its kernel needs the float32 states' dtype in q)
    assert ssd_fla.fla_blocker(cuda, "3.6.0", tilelang=True, dtype=torch.float32) == ""
    bf16 = ssd_fla.fla_blocker(cuda, "3.6.0", tilelang=True, dtype=torch.bfloat16)
    assert "takes float32 inputs only" in bf16
    assert "tilelang" in ssd_fla.fla_blocker(cuda, "3.6.0", tilelang=False, dtype=torch.float32)
    assert ssd_fla.fla_blocker(cuda, "3.7.1", tilelang=False) == ""
    assert ssd_fla.fla_blocker(cuda, "3.3.1", tilelang=False) == ""
    assert ssd_fla.fla_blocker(torch.device("cpu"), "3.6.0", tilelang=False) == ""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert ssd_fla.fla_blocker(cuda, "3.6.0", tilelang=False) == ""  # Ampere: not affected
