"""Incremental decoding of the feedback solve: feedback_continue against its dense reference and the solve."""

import pytest
import torch

from sessa.ops.feedback import feedback_continue, feedback_continue_ref, feedback_solve_ref
from tests.ops.test_feedback import make_inputs


def _mask(B: int, T: int, seed: int) -> torch.Tensor:
    """Padding keys at random, plus a row of the second sequence whose whole past is padding."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=gen) > 0.3
    mask[-1, :3] = False
    return mask


@pytest.mark.parametrize("t,n,chunk", [(0, 1, 4), (0, 7, 4), (1, 1, 4), (1, 5, 2), (21, 9, 4), (37, 13, 5)])
@pytest.mark.parametrize("masked", [False, True])
def test_continue_equals_reference_and_full_solve(t, n, chunk, masked):
    q, k, g, f = [x.detach() for x in make_inputs(B=2, T=t + n, D=6, seed=t + n)]
    mask = _mask(2, t + n, seed=n) if masked else None
    full = feedback_solve_ref(q, k, g, f, key_mask=mask)  # float64
    args = (q[:, t:], k, g[:, t:], f[:, t:], full[:, :t])
    ref = feedback_continue_ref(*args, key_mask=mask)
    fast = feedback_continue(*args, key_mask=mask, chunk_size=chunk)
    assert ref.dtype == fast.dtype == torch.float64
    assert torch.allclose(ref, full[:, t:], atol=1e-12, rtol=0)
    assert torch.allclose(fast, ref, atol=1e-12, rtol=0)


def test_continue_gradients_equal_reference():
    q, k, g, f = [x.detach() for x in make_inputs(B=2, T=19, D=5, seed=3)]
    s_past = feedback_solve_ref(q[:, :11], k[:, :11], g[:, :11], f[:, :11])
    mask = _mask(2, 19, seed=1)
    leaves = [q[:, 11:], k, g[:, 11:, 0], f[:, 11:], s_past]  # gamma as (B, n)
    w = torch.randn(2, 8, 5, dtype=torch.float64)
    grads = []
    for fn in (lambda *a: feedback_continue(*a, key_mask=mask, chunk_size=3),
               lambda *a: feedback_continue_ref(*a, key_mask=mask)):
        xs = [x.clone().requires_grad_() for x in leaves]
        grads.append(torch.autograd.grad((fn(*xs) * w).sum(), xs))
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-11, rtol=0)


def test_continue_low_precision_returns_input_dtype():
    q, k, g, f = [x.detach().to(torch.bfloat16) for x in make_inputs(B=1, T=12, D=8)]
    s_past = feedback_solve_ref(q[:, :5], k[:, :5], g[:, :5], f[:, :5])
    out = feedback_continue(q[:, 5:], k, g[:, 5:], f[:, 5:], s_past)
    ref = feedback_continue_ref(q[:, 5:], k, g[:, 5:], f[:, 5:], s_past)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(k_all=torch.zeros(2, 6, 4)), "k_all"),
        (dict(s_past=torch.zeros(2, 3, 5)), "s_past"),
        (dict(q_new=torch.zeros(2, 3, 4)), "q_new"),
        (dict(gamma_new=torch.zeros(2, 2, 2)), "gamma_new"),
        (dict(f_new=torch.zeros(2, 2)), "f_new"),
        (dict(key_mask=torch.ones(2, 7)), "key_mask"),
    ],
)
@pytest.mark.parametrize("fn", [feedback_continue, feedback_continue_ref, "split"])
def test_continue_rejects_bad_shapes(fn, change, match):
    from sessa.ops.feedback.decode import feedback_continue_split

    fn = feedback_continue_split if fn == "split" else fn
    args = dict(q_new=torch.zeros(2, 2, 4), k_all=torch.zeros(2, 7, 4), gamma_new=torch.zeros(2, 2, 1),
                f_new=torch.zeros(2, 2, 4), s_past=torch.zeros(2, 5, 4), key_mask=None)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        fn(**args)


def test_continue_rejects_an_unknown_backend():
    q, k, g, f = [x.detach() for x in make_inputs(B=1, T=6, D=4)]
    with pytest.raises(ValueError, match="backend must be 'auto' or 'chunked'"):
        feedback_continue(q[:, 3:], k, g[:, 3:], f[:, 3:], f[:, :3], backend="triton")


@pytest.mark.parametrize("t,n", [(1, 2), (5, 9), (21, 9), (40, 33)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_split_continue_equals_the_reference(t, n, masked, backend, monkeypatch):
    """The past product + block solve form (what CUDA runs with the Triton solve) is exact: float64, every
    block solve backend, with padding (rows whose whole past is padding included) and blocks of rows."""
    from sessa.ops.feedback import decode

    q, k, g, f = [x.detach() for x in make_inputs(B=2, T=t + n, D=6, seed=t * n)]
    mask = _mask(2, t + n, seed=n) if masked else None
    s_past = feedback_solve_ref(q[:, :t], k[:, :t], g[:, :t], f[:, :t], None if mask is None else mask[:, :t])
    args = (q[:, t:], k, g[:, t:], f[:, t:], s_past)
    monkeypatch.setattr(decode, "PAST_TILE", 2 * (t + n) * 4)  # four rows per block of the past product
    got = decode.feedback_continue_split(*args, key_mask=mask, backend=backend)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, feedback_continue_ref(*args, key_mask=mask), rtol=0, atol=1e-12)


def test_split_continue_gradients_equal_reference():
    from sessa.ops.feedback.decode import feedback_continue_split

    q, k, g, f = [x.detach() for x in make_inputs(B=2, T=19, D=5, seed=4)]
    s_past = feedback_solve_ref(q[:, :11], k[:, :11], g[:, :11], f[:, :11])
    mask = _mask(2, 19, seed=2)
    leaves = [q[:, 11:], k, g[:, 11:], f[:, 11:], s_past]
    w = torch.randn(2, 8, 5, dtype=torch.float64)
    grads = []
    for fn in (lambda *a: feedback_continue_split(*a, key_mask=mask, backend="chunked"),
               lambda *a: feedback_continue_ref(*a, key_mask=mask)):  # fmt: skip
        xs = [x.clone().requires_grad_() for x in leaves]
        grads.append(torch.autograd.grad((fn(*xs) * w).sum(), xs))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
