"""Packed variable-length sequences: the reference solve and the cu_seqlens checks (shared with Triton)."""

import pytest
import torch

from sessa.ops.feedback import feedback_solve_ref, feedback_solve_varlen_ref
from sessa.ops.feedback.varlen import segments
from tests.ops.test_feedback import make_inputs


def test_varlen_ref_equals_right_padded_batch():
    """Each segment solved alone = the rows of that sequence in a right-padded batch (padding comes after, so
    causality keeps it out of every real row)."""
    bounds = [0, 1, 8, 24, 30]
    q, k, g, f = [x.detach() for x in make_inputs(B=1, T=30, D=6, seed=2)]
    packed = feedback_solve_varlen_ref(q, k, g, f, torch.tensor(bounds, dtype=torch.int32))
    pairs = list(zip(bounds, bounds[1:], strict=False))
    T = max(b - a for a, b in pairs)
    pad = [torch.cat([x[:, a:b], x.new_zeros(1, T - (b - a), x.shape[2])], 1) for x in (q, k, g, f)
           for a, b in pairs]
    n = len(pairs)
    batch = [torch.cat(pad[i * n:(i + 1) * n]) for i in range(4)]
    s = feedback_solve_ref(*batch)
    for i, (a, b) in enumerate(pairs):
        assert torch.allclose(packed[0, a:b], s[i, : b - a], atol=1e-12, rtol=0)


def test_varlen_ref_is_differentiable_and_keeps_segments_apart():
    q, k, g, f = make_inputs(B=1, T=12, D=4, seed=4)
    s = feedback_solve_varlen_ref(q, k, g, f, torch.tensor([0, 5, 12]))
    s[0, 4].sum().backward()  # the last row of the first segment reads nothing of the second
    assert f.grad[0, 5:].abs().max() == 0 and k.grad[0, 5:].abs().max() == 0
    assert f.grad[0, :5].abs().max() > 0


@pytest.mark.parametrize(
    "cu,err,match",
    [
        ([0, 10], TypeError, "torch.Tensor"),
        (torch.tensor([0.0, 10.0]), TypeError, "int32 or int64"),
        (torch.tensor([[0, 10]]), ValueError, "1-D"),
        (torch.tensor([0]), ValueError, ">= 2 offsets"),
        (torch.tensor([1, 10]), ValueError, r"start at 0, got cu_seqlens\[0\] = 1"),
        (torch.tensor([0, 9]), ValueError, "end at the packed length N = 10, got 9"),
        (torch.tensor([0, 6, 4, 10]), ValueError, r"not decrease .* cu_seqlens\[1\] = 6 > "),
    ],
)
def test_cu_seqlens_checks_name_the_problem(cu, err, match):
    with pytest.raises(err, match=match):
        segments(cu, 10)
    x = torch.zeros(1, 10, 4)
    with pytest.raises(err, match=match):
        feedback_solve_varlen_ref(x, x, torch.zeros(1, 10, 1), x, cu)


def test_varlen_ref_needs_one_packed_row():
    x = torch.zeros(2, 10, 4)
    with pytest.raises(ValueError, match=r"\(1, N, D\)"):
        feedback_solve_varlen_ref(x, x, torch.zeros(2, 10, 1), x, torch.tensor([0, 10]))


def test_empty_segments_are_allowed():
    """flash-attn's convention admits empty sequences (repeated offsets): they are skipped."""
    assert segments(torch.tensor([0, 0, 3, 3, 10, 10]), 10) == [(0, 3), (3, 10)]
    q, k, g, f = [x.detach() for x in make_inputs(B=1, T=10, D=4, seed=3)]
    packed = feedback_solve_varlen_ref(q, k, g, f, torch.tensor([0, 0, 3, 3, 10]))
    assert torch.equal(packed, feedback_solve_varlen_ref(q, k, g, f, torch.tensor([0, 3, 10])))
