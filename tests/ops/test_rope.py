"""RoPE: the pair-table form used by the layers equals the readable half-table form bit for bit."""

import pytest
import torch

from sessa.ops.attention import (
    apply_rope,
    apply_rope_ref,
    cached_inv_freq,
    positions_from,
    rope_cos_sin,
    rope_tables,
)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("start", [0, 4097, torch.tensor(300)])
def test_pair_tables_equal_reference_bit_for_bit(dtype, start):
    torch.manual_seed(0)
    hd, T = 16, 5
    x = (torch.randn(2, T, 3, hd) * 3).to(dtype)
    cos2, sin2 = rope_tables(start, T, hd, 10000.0, dtype, torch.device("cpu"))
    assert cos2.shape == sin2.shape == (1, T, 1, hd) and cos2.dtype == dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = cached_inv_freq(hd, 10000.0, work, x.device)
    cos, sin = rope_cos_sin(positions_from(start, T, x.device), inv_freq, dtype)
    assert torch.equal(apply_rope(x, cos2, sin2), apply_rope_ref(x, cos, sin))


def test_rotation_keeps_pair_norms_and_relative_angles():
    torch.manual_seed(0)
    hd = 8
    q, k = torch.randn(1, 1, 1, hd, dtype=torch.float64), torch.randn(1, 1, 1, hd, dtype=torch.float64)
    rot = lambda x, p: apply_rope(x, *rope_tables(p, 1, hd, 100.0, torch.float64, x.device))  # noqa: E731
    pairs = lambda x: x.reshape(-1, 2).norm(dim=-1)  # noqa: E731
    assert torch.allclose(pairs(rot(q, 7)), pairs(q))
    # q_m . k_n depends on m - n only
    assert torch.allclose((rot(q, 7) * rot(k, 3)).sum(), (rot(q, 104) * rot(k, 100)).sum())
    assert not torch.allclose((rot(q, 7) * rot(k, 3)).sum(), (rot(q, 7) * rot(k, 5)).sum())


def test_gradient_matches_reference():
    torch.manual_seed(0)
    hd, T = 8, 4
    x = torch.randn(1, T, 2, hd, dtype=torch.float64, requires_grad=True)
    inv_freq = cached_inv_freq(hd, 10000.0, torch.float64, x.device)
    cos, sin = rope_cos_sin(torch.arange(T), inv_freq, torch.float64)
    tables = rope_tables(0, T, hd, 10000.0, torch.float64, x.device)
    (g1,) = torch.autograd.grad((apply_rope(x, *tables) ** 2).sum(), x)
    (g2,) = torch.autograd.grad((apply_rope_ref(x, cos, sin) ** 2).sum(), x)
    assert torch.allclose(g1, g2, atol=1e-14)


def test_half_width_tables_are_refused_clearly():
    x = torch.randn(1, 3, 2, 8)
    cos, sin = rope_cos_sin(torch.arange(3), cached_inv_freq(8, 1e4, torch.float32, x.device), torch.float32)
    with pytest.raises(ValueError, match="apply_rope_ref"):
        apply_rope(x, cos, sin)


def test_compiled_code_keeps_no_inv_freq_of_its_own():
    """Under torch.compile the frequencies are made in the graph, not kept: a kept tensor made there could be
    a CUDA graph's output (mode="reduce-overhead"), overwritten by its next replay."""
    from sessa.ops import attention

    attention._INV_FREQ.clear()
    def scaled(x: torch.Tensor) -> torch.Tensor:
        return x * cached_inv_freq(8, 10000.0, torch.float32, x.device)

    fn = torch.compile(scaled, backend="aot_eager", fullgraph=True)
    x = torch.ones(4)
    assert torch.equal(fn(x), x * attention.rope_inv_freq(8))
    assert attention._INV_FREQ == {}
    cached_inv_freq(8, 10000.0, torch.float32, x.device)  # eager code keeps it
    assert len(attention._INV_FREQ) == 1
