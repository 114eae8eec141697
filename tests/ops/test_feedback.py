import pytest
import torch

from sessa.ops.feedback import feedback_continue, feedback_solve, feedback_solve_loop, feedback_solve_ref
from tests.helpers import assert_close_to_ref, rel_err


def make_inputs(B=2, T=37, D=16, gmax=0.95, dtype=torch.float64, seed=0, qk_scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    q = qk_scale * torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    k = qk_scale * torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    g = gmax * torch.tanh(2 * torch.randn(B, T, 1, generator=gen, dtype=torch.float64))
    f = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    return [x.to(dtype).requires_grad_() for x in (q, k, g, f)]


def grads(out, inputs, weight):
    return torch.autograd.grad((out.float() * weight).sum(), inputs)


def test_dense_reference_equals_row_loop():
    q, k, g, f = make_inputs()
    s = feedback_solve_ref(q, k, g, f)
    assert torch.allclose(s, feedback_solve_loop(q, k, g, f), atol=1e-12, rtol=0)
    assert torch.equal(s[:, 0], f[:, 0])  # row 0 has no past


@pytest.mark.parametrize("T,chunk", [(1, 4), (13, 4), (37, 8), (64, 16), (65, 16)])
def test_chunked_matches_reference_float64(T, chunk):
    inputs = make_inputs(T=T)
    s = feedback_solve(*inputs, backend="chunked", chunk_size=chunk)
    s_ref = feedback_solve(*inputs, backend="reference")
    assert torch.allclose(s, s_ref, atol=1e-12, rtol=0)
    w = torch.randn_like(s)
    for a, b in zip(grads(s, inputs, w), grads(s_ref, inputs, w), strict=False):
        assert torch.allclose(a, b, atol=1e-11, rtol=0)


def test_gradcheck_chunked_float64_ragged_chunks():
    inputs = make_inputs(B=2, T=11, D=4, seed=3)
    fn = lambda q, k, g, f: feedback_solve(q, k, g, f, backend="chunked", chunk_size=4)
    assert torch.autograd.gradcheck(fn, inputs)


def test_gradcheck_gamma_as_2d_and_key_mask():
    q, k, g, f = make_inputs(B=2, T=9, D=3, seed=4)
    g2 = g.detach()[..., 0].requires_grad_()
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False
    fn = lambda q, k, g, f: feedback_solve(q, k, g, f, backend="chunked", chunk_size=4, key_mask=mask)
    assert torch.autograd.gradcheck(fn, (q, k, g2, f))


@pytest.mark.parametrize("dtype,k_factor,atol", [(torch.float32, 2.0, 1e-6), (torch.bfloat16, 2.0, 1e-3)])
@pytest.mark.parametrize("T,chunk", [(100, 16), (77, 32)])
def test_chunked_low_precision_vs_float64(dtype, k_factor, atol, T, chunk):
    exact_in = make_inputs(T=T, D=32, gmax=0.99, seed=5)
    low_in = [x.detach().to(dtype).requires_grad_() for x in exact_in]
    w = torch.randn(2, T, 32, dtype=torch.float64)
    exact = feedback_solve_ref(*exact_in)
    fast = feedback_solve(*low_in, backend="chunked", chunk_size=chunk)
    ref = feedback_solve_ref(*low_in)
    assert fast.dtype == dtype
    assert_close_to_ref(fast, ref, exact, k_factor, atol, "s")
    g_exact = grads(exact, exact_in, w)
    g_fast, g_ref = grads(fast, low_in, w.to(dtype)), grads(ref, low_in, w.to(dtype))
    for name, a, b, c in zip(("dq", "dk", "dgamma", "df"), g_fast, g_ref, g_exact, strict=False):
        assert a.dtype == dtype
        assert_close_to_ref(a, b, c, k_factor, atol, name)


def test_key_mask_equals_dropping_padding():
    q, k, g, f = make_inputs(B=1, T=20)
    pad = 6
    mask = torch.ones(1, 20, dtype=torch.bool)
    mask[0, :pad] = False
    s = feedback_solve(q, k, g, f, backend="chunked", chunk_size=8, key_mask=mask)
    s_unpadded = feedback_solve(q[:, pad:], k[:, pad:], g[:, pad:], f[:, pad:], backend="chunked")
    assert torch.allclose(s[:, pad:], s_unpadded, atol=1e-12)
    assert torch.allclose(s, feedback_solve_ref(q, k, g, f, key_mask=mask), atol=1e-12)


def test_continue_equals_full_solve():
    q, k, g, f = [x.detach() for x in make_inputs(T=30)]
    full = feedback_solve_ref(q, k, g, f)
    part = feedback_continue(q[:, 21:], k, g[:, 21:], f[:, 21:], full[:, :21], chunk_size=4)
    assert torch.allclose(part, full[:, 21:], atol=1e-12)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gamma_near_max_stays_finite_and_bounded_T4096(sign):
    gen = torch.Generator().manual_seed(0)
    B, T, D = 1, 4096, 8
    q = torch.randn(B, T, D, generator=gen).requires_grad_()
    k = torch.randn(B, T, D, generator=gen).requires_grad_()
    g = torch.full((B, T, 1), sign * 0.999).requires_grad_()
    f = torch.rand(B, T, D, generator=gen).requires_grad_()
    s = feedback_solve(q, k, g, f, backend="chunked", chunk_size=256)
    assert torch.isfinite(s).all()
    assert s.abs().max() <= f.abs().max() / (1 - 0.999) * 1.001  # BIBO bound of DESIGN §2.2
    s.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, g, f))


def test_empty_sequence():
    q, k, g, f = (torch.zeros(2, 0, 4) for _ in range(4))
    assert feedback_solve(q, k, g[..., :1], f).shape == (2, 0, 4)


@pytest.mark.parametrize(
    "change,err,match",
    [
        (dict(backend="fast"), ValueError, "backend"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(k_b=torch.zeros(2, 5, 3)), ValueError, "k_b"),
        (dict(gamma=torch.zeros(2, 5, 2)), ValueError, "gamma"),
        (dict(f=torch.zeros(2, 5)), ValueError, "f must have shape"),
        (dict(q_b=torch.zeros(2, 5, 4, dtype=torch.float64)), TypeError, "dtype"),
        (dict(q_b=torch.zeros(2, 5, 4, dtype=torch.long)), TypeError, "floating"),
        (dict(q_b=[1.0]), TypeError, "q_b"),
        (dict(key_mask=torch.ones(2, 4, dtype=torch.bool)), ValueError, "key_mask"),
    ],
)
def test_bad_arguments(change, err, match):
    args = dict(
        q_b=torch.zeros(2, 5, 4), k_b=torch.zeros(2, 5, 4), gamma=torch.zeros(2, 5, 1), f=torch.zeros(2, 5, 4)
    )
    kwargs = {key: change.pop(key) for key in list(change) if key in ("backend", "chunk_size", "key_mask")}
    args.update(change)
    with pytest.raises(err, match=match):
        feedback_solve(args["q_b"], args["k_b"], args["gamma"], args["f"], **kwargs)


def test_triton_backend_falls_back_on_cpu_with_warning():
    q, k, g, f = [x.detach() for x in make_inputs(T=10)]
    import sessa.ops.feedback as fb

    fb._warned_fallback = False
    with pytest.warns(UserWarning, match="triton"):
        s = feedback_solve(q, k, g, f, backend="triton")
    assert rel_err(s, feedback_solve_ref(q, k, g, f)) < 1e-12
