"""The Triton feedback solve as PyTorch custom ops (``torch.ops.sessa.feedback_solve_fwd`` / ``..._bwd``), so
that ``torch.compile`` keeps the solve as one opaque call per direction instead of breaking the graph at
Triton's launcher: the rest of a Sessa layer (projections, RoPE, the gate, casts) then compiles around it.

Eager code runs :class:`sessa.ops.feedback.triton.FeedbackSolveTriton` directly (a custom op's dispatch costs
host time per call); :func:`sessa.ops.feedback.triton.feedback_solve_triton` switches to these ops while
``torch.compiler.is_compiling()`` (and returns s in f's dtype). Both run the same launchers
(``forward_fixed`` / ``backward_fixed``).

A custom op may not return a tensor twice or an alias of an input, so the forward returns four distinct
tensors: s (fp32), the operand copy s_op (bf16; an empty tensor when s itself is the operand, fp32 inputs),
the row log-sum-exp and the intra-chunk inverse W (bf16; fp32 for fp32 inputs). The fake implementations
derive those shapes from ``solve_blocks``, as the launchers do.
"""

from __future__ import annotations

import torch

from sessa.ops.feedback import triton as ft
from sessa.ops.feedback.triton_bwd import backward_fixed
from sessa.ops.feedback.triton_common import cdiv, dense, op_dtype
from sessa.ops.feedback.triton_fwd import ForwardState, forward_fixed
from sessa.ops.feedback.triton_launch import on_device

_EMPTY = (0,)


@torch.library.custom_op("sessa::feedback_solve_fwd", mutates_args=())
def solve_fwd_op(
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    gamma: torch.Tensor,
    f: torch.Tensor,
    key_mask: torch.Tensor | None,
    chunk_size: int | None,
    sub_block: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s fp32, s_op or empty, lse, w) of dense (B, T, D) inputs; gamma (B, T, 1)."""
    with on_device(f):
        st = forward_fixed(q_b, k_b, gamma, f, key_mask, ft.solve_blocks(f, chunk_size, sub_block),
                           poison=ft.POISON)
    s_op = st.s_op if st.s_op is not st.s else st.s.new_empty(_EMPTY)
    return st.s, s_op, st.lse, st.w


@solve_fwd_op.register_fake
def _(q_b, k_b, gamma, f, key_mask, chunk_size, sub_block):  # noqa: ANN001, ANN202
    B, T, D = f.shape
    bl = ft.solve_blocks(f, chunk_size, sub_block)
    odt = op_dtype(f.dtype)
    split = odt != torch.float32
    s = f.new_empty(B, T, D, dtype=torch.float32)
    s_op = f.new_empty(B, T, D, dtype=odt) if split else f.new_empty(_EMPTY, dtype=torch.float32)
    w = f.new_empty(B, cdiv(T, bl.L), bl.L, bl.L, dtype=odt)
    return s, s_op, f.new_empty(B, T, dtype=torch.float32), w


@torch.library.custom_op("sessa::feedback_solve_bwd", mutates_args=())
def solve_bwd_op(
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    gamma: torch.Tensor,
    f: torch.Tensor,
    key_mask: torch.Tensor | None,
    s: torch.Tensor,
    s_op: torch.Tensor,
    lse: torch.Tensor,
    w: torch.Tensor,
    ds: torch.Tensor,
    chunk_size: int | None,
    sub_block: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq_b, dk_b, dgamma (B, T, 1), df) from the forward op's outputs and ds: (B, T, D)."""
    st = ForwardState(s, s_op if s_op.numel() else s, lse, w, ft.solve_blocks(f, chunk_size, sub_block))
    with on_device(f):
        dq, dk, dgamma, df = backward_fixed(q_b, k_b, gamma, f, key_mask, st, dense(ds), poison=ft.POISON)
    return dq, dk, dgamma[..., None].to(gamma.dtype), df


@solve_bwd_op.register_fake
def _(q_b, k_b, gamma, f, key_mask, s, s_op, lse, w, ds, chunk_size, sub_block):  # noqa: ANN001, ANN202
    return torch.empty_like(q_b), torch.empty_like(k_b), torch.empty_like(gamma), torch.empty_like(f)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    q_b, k_b, gamma, f, key_mask, chunk_size, sub_block = inputs
    ctx.save_for_backward(q_b, k_b, gamma, f, key_mask, *output)
    ctx.chunk_size, ctx.sub_block = chunk_size, sub_block
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, ds, *_):  # noqa: ANN001, ANN202
    q_b, k_b, gamma, f, key_mask, s, s_op, lse, w = ctx.saved_tensors
    grads = solve_bwd_op(q_b, k_b, gamma, f, key_mask, s, s_op, lse, w, ds, ctx.chunk_size, ctx.sub_block)
    return (*grads, None, None, None)


solve_fwd_op.register_autograd(_backward, setup_context=_setup_context)

