import pytest
import torch

import sessa.ops.feedback as fb
from sessa.ops.feedback import (
    choose_backend,
    dense_working_set_bytes,
    feedback_solve,
    feedback_solve_loop,
    feedback_solve_ref,
)
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
    fb._warned_fallback = False
    with pytest.warns(UserWarning, match="triton"):
        s = feedback_solve(q, k, g, f, backend="triton")
    assert rel_err(s, feedback_solve_ref(q, k, g, f)) < 1e-12


# ------------------------------------------------------------------------------------------ backend choice
LOW = (torch.float32, torch.bfloat16, torch.float16)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("B,T", [(1, 1), (1, 63), (4, 4097), (1, 16384), (1, 131072)])
def test_auto_takes_triton_on_cuda_when_available(dtype, B, T):
    assert choose_backend(torch.device("cuda"), B, T, 1024, dtype, True) == "triton"
    assert choose_backend("cuda:1", B, T, 1024, dtype, True) == "triton"


@pytest.mark.parametrize("dtype,triton_available", [(d, False) for d in LOW] + [(torch.float64, True)])
def test_auto_on_cuda_without_triton_uses_the_dense_reference_while_it_fits(dtype, triton_available):
    """No Triton, or a dtype it has no kernels for (float64): dense reference if it fits, else chunked."""
    for B, T in [(1, 1), (1, 1000), (16, 1024), (1, 8192)]:  # within the budget in every dtype
        assert choose_backend("cuda", B, T, 1024, dtype, triton_available) == "reference"
    for B, T in [(1, 16384), (2, 12000), (64, 2048)]:  # T x T working set over the budget
        assert choose_backend("cuda", B, T, 1024, dtype, triton_available) == "chunked"


def test_dense_budget_is_a_threshold_on_the_working_set():
    need = dense_working_set_bytes(2, 3000, 512, torch.bfloat16)
    assert need == (6 * 2 * 3000**2 + 8 * 2 * 3000 * 512) * 4  # float32 work dtype
    assert dense_working_set_bytes(2, 3000, 512, torch.float64) == 2 * need
    assert choose_backend("cuda", 2, 3000, 512, torch.bfloat16, False, dense_budget=need) == "reference"
    assert choose_backend("cuda", 2, 3000, 512, torch.bfloat16, False, dense_budget=need - 1) == "chunked"
    # the default budget: T = 12K fits at B = 1 in float32, 13K does not
    assert choose_backend("cuda", 1, 12000, 1024, torch.float32, False) == "reference"
    assert choose_backend("cuda", 1, 13000, 1024, torch.float32, False) == "chunked"
    assert choose_backend("cuda", 1, 16384, 1024, torch.float32, False) == "chunked"


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "meta"])
def test_auto_on_cpu_is_dense_for_small_problems_else_chunked(device):
    for available in (False, True):
        for dtype in (*LOW, torch.float64):
            for B, T in [(1, 1), (1, 256), (2, 256), (8, 128), (32, 64)]:  # B * T^2 <= 2^17
                assert choose_backend(device, B, T, 256, dtype, available) == "reference"
            for B, T in [(1, 363), (1, 512), (3, 256), (8, 256), (33, 64), (1, 100000)]:
                assert choose_backend(device, B, T, 256, dtype, available) == "chunked"


@pytest.mark.parametrize("T,backend", [(45, "reference"), (300, "chunked")])
def test_feedback_solve_auto_on_cpu_gives_the_chosen_backends_result(T, backend):
    inputs = make_inputs(B=2, T=T, D=8, dtype=torch.float32, seed=7)
    mask = torch.rand(2, T, generator=torch.Generator().manual_seed(0)) > 0.2
    w = torch.randn(2, T, 8)
    results = []
    for be in ("auto", backend):
        xs = [x.detach().clone().requires_grad_() for x in inputs]
        s = feedback_solve(*xs, backend=be, key_mask=mask)
        results.append([s, *torch.autograd.grad((s * w).sum(), xs)])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
