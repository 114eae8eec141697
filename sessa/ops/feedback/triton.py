"""Fused Triton kernels of the feedback solve (I - B_fb) s = f: autograd wiring and the public entry point.

Layers: ``triton_fwd`` / ``triton_bwd`` / ``triton_tril`` (intra-chunk inverses) hold the ``@triton.jit``
kernels and their launchers (``forward_fixed`` / ``backward_fixed``: allocation, grids; shape checks are
done here), ``triton_common`` the tile configuration and shared helpers, ``triton_launch`` the low-overhead
kernel launches and the streams; ``FeedbackSolveTriton``
is the ``torch.autograd.Function``; :func:`feedback_solve_triton` is what ``feedback_solve(backend="triton")``
calls (under ``torch.compile`` it calls the same launchers as custom ops, ``triton_ops``). Importing this
module makes no CUDA call. Under ``TRITON_INTERPRET=1`` the kernels also run on CPU
tensors (slowly; used by the tests).

Packed variable-length sequences: :func:`feedback_solve_varlen` takes ``cu_seqlens`` (differentiable; one
launch sequence for the whole pack: the kernels read a per-row segment table instead of a key mask, and skip
the key tiles before each row tile's sequence); reference: ``varlen.feedback_solve_varlen_ref``.
"""

from __future__ import annotations

import os

import torch

from sessa.ops.feedback.triton_bwd import backward_fixed
from sessa.ops.feedback.triton_common import Blocks, choose_blocks, dense, in_dtype, segment_table
from sessa.ops.feedback.triton_fwd import forward_fixed
from sessa.ops.feedback.triton_launch import on_device
from sessa.ops.feedback.varlen import check_packed
from sessa.ops.packing import check_seq_idx, sequence_starts

__all__ = ["feedback_solve_triton", "feedback_solve_varlen", "feedback_solve_packed", "FeedbackSolveTriton"]

# Tests set this to fill every output and scratch buffer with NaN before the kernels run.
POISON = False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def solve_blocks(f: torch.Tensor, chunk_size: int | None, sub_block: int | None) -> Blocks:
    """The tiles of a solve of f: (B, T, D) (``choose_blocks`` with the batch's rows)."""
    B, T, D = f.shape
    return choose_blocks(T, D, f.dtype, chunk_size, _interpreting(), sub_block, batch=B)


def _check(q_b: torch.Tensor, k_b: torch.Tensor, gamma: torch.Tensor, f: torch.Tensor, key_mask) -> None:
    if not (f.is_cuda or _interpreting()):
        raise ValueError(f"feedback_solve_triton needs CUDA tensors (or TRITON_INTERPRET=1), got {f.device}")
    if f.dim() != 3 or q_b.shape != f.shape or k_b.shape != f.shape:
        raise ValueError(
            f"q_b, k_b, f must share one (B, T, D) shape, got {tuple(q_b.shape)}, {tuple(k_b.shape)}, "
            f"{tuple(f.shape)}"
        )
    if f.dtype not in (torch.float32, torch.bfloat16, torch.float16) or q_b.dtype != f.dtype:
        raise TypeError(f"q_b, k_b, f must share a dtype among fp32/bf16/fp16, got {q_b.dtype}, {f.dtype}")
    if gamma.shape != (*f.shape[:2], 1):
        raise ValueError(f"gamma must have shape (B, T, 1) = {(*f.shape[:2], 1)}, got {tuple(gamma.shape)}")
    if key_mask is not None and (key_mask.shape != f.shape[:2] or key_mask.dtype != torch.bool):
        raise ValueError(f"key_mask must be bool (B, T) = {tuple(f.shape[:2])}, got {key_mask.dtype} "
                         f"{tuple(key_mask.shape)}")


class FeedbackSolveTriton(torch.autograd.Function):
    """Saves q_b, k_b, gamma, f, s (fp32) and its bf16 copy, the row log-sum-exp and the L x L intra-chunk
    inverses: O(T * (D + L)) memory, no T x T tensor. ``mask``: None, a bool (B, T) key mask or an int32
    (B, 2, T) segment table (``triton_common.segment_table``)."""

    @staticmethod
    def forward(ctx, q_b, k_b, gamma, f, mask, chunk_size, sub_block):  # type: ignore[override]
        q_b, k_b, gamma, f = (dense(x) for x in (q_b, k_b, gamma, f))
        blocks = solve_blocks(f, chunk_size, sub_block)
        with on_device(f):
            st = forward_fixed(q_b, k_b, gamma, f, mask, blocks, poison=POISON)
        ctx.save_for_backward(q_b, k_b, gamma, f, mask, st.s, st.s_op, st.lse, st.w)
        ctx.blocks = blocks
        return in_dtype(st.s, st.s_op, f.dtype)

    @staticmethod
    def backward(ctx, ds):  # type: ignore[override]
        from sessa.ops.feedback.triton_fwd import ForwardState

        q_b, k_b, gamma, f, mask, s, s_op, lse, w = ctx.saved_tensors
        st = ForwardState(s, s_op, lse, w, ctx.blocks)
        with on_device(f):
            dq, dk, dgamma, df = backward_fixed(q_b, k_b, gamma, f, mask, st, dense(ds), poison=POISON)
        return dq, dk, dgamma[..., None].to(gamma.dtype), df, None, None, None


def feedback_solve_triton(
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    gamma: torch.Tensor,
    f: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    sub_block: int | None = None,
) -> torch.Tensor:
    """s solving s_t = f_t + gamma_t sum_{j<t} softmax_j(q_b,t . k_b,j / sqrt(D)) s_j, differentiable.

    q_b, k_b, f: (B, T, D) fp32/bf16/fp16 CUDA tensors; gamma: (B, T, 1); key_mask: optional (B, T) bool
    (False = padding key that no row reads). chunk_size: super-chunk rows L (multiple of 16; default by T);
    sub_block: rows C of the register-level triangular blocks (16/32/64, dividing L; default min(64, L)).
    Returns s: (B, T, D) in f's dtype, computed in fp32.
    """
    _check(q_b, k_b, gamma, f, key_mask)
    return _solve(q_b, k_b, gamma, f, key_mask, chunk_size, sub_block)


def _solve(q_b, k_b, gamma, f, mask, chunk_size, sub_block) -> torch.Tensor:
    """The solve of checked inputs with a mask as ``FeedbackSolveTriton`` takes it."""
    if f.shape[1] == 0:
        return f.clone()
    if torch.compiler.is_compiling():  # an opaque custom op for torch.compile (sessa.ops.feedback.triton_ops)
        from sessa.ops.feedback.triton_ops import solve_fwd_op

        q_b, k_b, gamma, f = (dense(x) for x in (q_b, k_b, gamma, f))
        return solve_fwd_op(q_b, k_b, gamma, f, mask, chunk_size, sub_block)[0].to(f.dtype)
    return FeedbackSolveTriton.apply(q_b, k_b, gamma, f, mask, chunk_size, sub_block)


def feedback_solve_varlen(
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    gamma: torch.Tensor,
    f: torch.Tensor,
    cu_seqlens: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The solve of packed sequences, differentiable: q_b, k_b, f: (1, N, D), gamma (1, N, 1), cu_seqlens:
    (S + 1,) int offsets (0 = cu_seqlens[0] <= ... <= cu_seqlens[S] = N, the flash-attn convention; a
    segment may be empty); no row reads a key of another segment. Returns s: (1, N, D).
    Reference partner: ``sessa.ops.feedback.varlen.feedback_solve_varlen_ref``.

    One launch sequence for the whole pack: the kernels read each row's segment (an int32 table built
    here, on the device) where a solve of one sequence reads its key mask, and skip every key tile that lies
    wholly before the segments of a row tile, so the work grows with the sum of the squared lengths of the
    segments (plus O(N * L * D) for the intra-chunk inverses), not with N^2."""
    check_packed(f, cu_seqlens)
    _check(q_b, k_b, gamma, f, None)
    return _solve(q_b, k_b, gamma, f, packed_table(cu_seqlens, f.shape[1], f.device), chunk_size, None)


def feedback_solve_packed(
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    gamma: torch.Tensor,
    f: torch.Tensor,
    seq_idx: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The solve of packed rows (q_b, k_b, f: (B, T, D), gamma (B, T, 1), seq_idx (B, T): the sequence of each
    token, ``sessa.ops.packing``), each sequence alone, in one launch sequence for the batch (as
    :func:`feedback_solve_varlen`). Differentiable; returns s: (B, T, D)."""
    _check(q_b, k_b, gamma, f, None)
    check_seq_idx(seq_idx, *f.shape[:2])
    return _solve(q_b, k_b, gamma, f, segment_table(sequence_starts(seq_idx.to(f.device))), chunk_size, None)


def packed_table(cu_seqlens: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """The (1, 2, n) segment table (``triton_common.segment_table``) of checked offsets cu_seqlens."""
    starts = torch.zeros(1, n + 1, dtype=torch.bool, device=device)
    starts[0, cu_seqlens.to(device=device, dtype=torch.int64)] = True
    return segment_table(starts[:, :n])
