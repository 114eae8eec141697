"""AttentionMixer against an einsum reference written here (complex-number RoPE)."""

from __future__ import annotations

import math

import pytest
import torch

from sessa.baselines import AttentionMixer
from tests.helpers import assert_close_to_ref, assert_same, randn


def rotate(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE as complex products: pair (x[2i], x[2i+1]) times exp(i·p·base^(-2i/hd)); x: (B, T, H, hd)."""
    T, hd = x.shape[1], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq
    pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], hd // 2, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)[None, :, None]).flatten(-2)


def attention_ref(mixer: AttentionMixer, x: torch.Tensor, rope: bool = True) -> torch.Tensor:
    B, T, D = x.shape
    H, Hkv, hd = mixer.n_heads, mixer.n_kv_heads, mixer.head_dim
    q = mixer.q_proj(x).view(B, T, H, hd)
    k = mixer.k_proj(x).view(B, T, Hkv, hd).repeat_interleave(H // Hkv, dim=2)
    v = mixer.v_proj(x).view(B, T, Hkv, hd).repeat_interleave(H // Hkv, dim=2)
    if rope:
        q, k = rotate(q, mixer.rope_base), rotate(k, mixer.rope_base)
    logits = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(hd)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    weights = logits.masked_fill(future, -math.inf).softmax(-1)
    return mixer.out_proj(torch.einsum("bhts,bshd->bthd", weights, v).reshape(B, T, D))


def make_mixer(**options) -> AttentionMixer:
    torch.manual_seed(0)
    return AttentionMixer(16, **{**dict(n_heads=4, n_kv_heads=2), **options}).double()




@pytest.mark.parametrize("backend", ["sdpa", "reference"])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("rope", [True, False])
def test_forward_matches_einsum_reference(backend, n_kv_heads, rope):
    mixer = make_mixer(n_kv_heads=n_kv_heads, rope=rope, backend=backend, rope_base=50.0)
    x = randn(2, 13, 16)
    with torch.no_grad():
        assert_same(mixer(x), attention_ref(mixer, x, rope=rope), "attention vs einsum reference")


def test_gqa_equals_mha_with_shared_kv_weights():
    gqa = make_mixer(n_kv_heads=2)
    mha = make_mixer(n_kv_heads=None)
    hd = gqa.head_dim
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.out_proj.weight.copy_(gqa.out_proj.weight)
        for name in ("k_proj", "v_proj"):  # head h of MHA gets the weights of kv head h // 2
            shared = getattr(gqa, name).weight.view(2, hd, 16).repeat_interleave(2, dim=0).reshape(16, 16)
            getattr(mha, name).weight.copy_(shared)
        x = randn(2, 9, 16)
        assert_same(gqa(x), mha(x), "GQA vs MHA with repeated kv weights")














def test_state_full_raises():
    mixer = make_mixer()
    state = mixer.init_state(2, 5)
    mixer.step(randn(2, 4, 16), state)
    with pytest.raises(ValueError, match="state is full: 4 tokens cached \\+ 2 new > max_len=5"):
        mixer.step(randn(2, 2, 16), state)
    assert state["t"] == 4


def test_cache_holds_rotated_keys():
    mixer = make_mixer()
    x = randn(1, 6, 16)
    state = mixer.init_state(1, 8)
    with torch.no_grad():
        mixer.step(x, state)
        k = rotate(mixer.k_proj(x).view(1, 6, 2, 4), mixer.rope_base)
    assert_same(state["k"][:, :6], k, "cached keys after RoPE")
    assert torch.equal(state["k"][:, 6:], torch.zeros(1, 2, 2, 4, dtype=torch.float64))


def test_bfloat16_sdpa_error_is_like_the_reference():
    x = randn(2, 33, 16)
    exact = make_mixer()(x)
    fast = make_mixer().to(torch.bfloat16)
    ref = make_mixer(backend="reference").to(torch.bfloat16)
    with torch.no_grad():
        y_fast, y_ref = fast(x.bfloat16()), ref(x.bfloat16())
    assert y_fast.dtype == torch.bfloat16
    assert_close_to_ref(y_fast, y_ref, exact, k=2.0, atol=1e-3, name="AttentionMixer bf16")


def test_parameter_count():
    assert sum(p.numel() for p in AttentionMixer(64).parameters()) == 4 * 64 * 64
    assert sum(p.numel() for p in AttentionMixer(64, n_heads=4, n_kv_heads=1, bias=True).parameters()) == (
        2 * 64 * 64 + 2 * 64 * 16 + 64 + 64 + 2 * 16
    )


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(d_model=10, n_heads=4), ValueError, "divisible by n_heads"),
        (dict(n_heads=4, n_kv_heads=3), ValueError, "n_kv_heads"),
        (dict(n_heads=4, n_kv_heads=8), ValueError, "n_kv_heads"),
        (dict(n_heads=0), ValueError, "n_heads"),
        (dict(d_model=12, n_heads=4), ValueError, "even head dim"),
        (dict(rope_base=-1.0), ValueError, "rope_base"),
        (dict(backend="flash"), ValueError, "backend"),
        (dict(d_model="64"), TypeError, "d_model"),
    ],
)
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        AttentionMixer(**{"d_model": 64, **options})


def test_odd_head_dim_allowed_without_rope():
    mixer = AttentionMixer(12, n_heads=4, rope=False).double()
    x = randn(1, 5, 12)
    with torch.no_grad():
        assert_same(mixer(x), attention_ref(mixer, x, rope=False), "odd head dim without RoPE")


def test_empty_sequence():
    assert make_mixer()(randn(2, 0, 16)).shape == (2, 0, 16)
