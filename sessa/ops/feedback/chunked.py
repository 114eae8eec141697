"""Blocked forward substitution for (I - B_fb) s = f (DESIGN §2.4) with a memory-efficient backward (§2.3).

Rows are processed in chunks of C. For the chunk of rows [a, e) the feedback probabilities against the keys
[0, e) form one C x e tile; the part left of the chunk multiplies the finished outputs s[:a] (an
attention-like product), the C x C diagonal part is a unit lower-triangular system. Only q_b, k_b, gamma,
s (float32) and the per-row log-sum-exp are kept for backward: no T x T tensor is ever built.
Low-precision inputs are computed in float32 (float64 stays float64).
"""

from __future__ import annotations

import math

import torch

DEFAULT_CHUNK = 128  # fastest of {64, 128} on CPU (benchmarks/RESULTS.md)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _allowed(start: int, end: int, key_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """(B|1, end-start, end) bool: row t (absolute) may read key j iff j < t and key_mask[j]."""
    rows = torch.arange(start, end, device=device)[:, None]
    allowed = (torch.arange(end, device=device)[None, :] < rows)[None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, :end]
    return allowed


def _logits(
    q_c: torch.Tensor, k_pre: torch.Tensor, start: int, key_mask: torch.Tensor | None
) -> torch.Tensor:
    work = work_dtype(q_c.dtype)
    logits = torch.matmul(q_c.to(work), k_pre.to(work).transpose(1, 2)) / math.sqrt(q_c.shape[-1])
    return logits.masked_fill(~_allowed(start, start + q_c.shape[1], key_mask, q_c.device), float("-inf"))


def _probs(logits: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    # A row with no readable key has lse = -inf; exp(-inf - 0) = 0 instead of exp(-inf + inf) = NaN.
    return torch.exp(logits - torch.where(torch.isinf(lse), 0.0, lse)[..., None])


def forward_rows(
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    gamma: torch.Tensor,
    f: torch.Tensor,
    s: torch.Tensor,
    start: int,
    chunk_size: int,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fill rows [start, T) of ``s`` given its rows [0, start); returns their log-sum-exp (B, T - start).

    q_b, gamma (B, T, 1), f: rows [start, T); k_b, key_mask: all T positions; s: (B, T, D) in the work dtype.
    Used by the training forward (start = 0) and by incremental decoding (start = cached length).
    """
    T = k_b.shape[1]
    lse_out = []
    for a in range(start, T, chunk_size):
        e = min(a + chunk_size, T)
        q_c, g_c = q_b[:, a - start : e - start], gamma[:, a - start : e - start].to(s.dtype)
        logits = _logits(q_c, k_b[:, :e], a, key_mask)
        lse = torch.logsumexp(logits, dim=-1)
        p = _probs(logits, lse)
        rhs = f[:, a - start : e - start].to(s.dtype)
        if a > 0:
            # With grad enabled (feedback_continue under autograd) the product saves its operand, which the
            # row writes below would then change in place: give it a copy. The training forward runs no-grad.
            past = s[:, :a].clone() if torch.is_grad_enabled() else s[:, :a]
            rhs = rhs + g_c * torch.matmul(p[:, :, :a], past)
        # (I - G P_cc) s_c = rhs; solve_triangular with unitriangular reads only the strict lower part.
        s[:, a:e] = torch.linalg.solve_triangular(-g_c * p[:, :, a:e], rhs, upper=False, unitriangular=True)
        lse_out.append(lse)
    return torch.cat(lse_out, dim=1) if lse_out else s.new_zeros(s.shape[0], 0)


def backward_rows(
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    gamma: torch.Tensor,
    s: torch.Tensor,
    lse: torch.Tensor,
    ds: torch.Tensor,
    chunk_size: int,
    key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq_b, dk_b, dgamma (B,T,1), df) of DESIGN §2.3 in one reverse pass over row chunks.

    ``pushed[:, j]`` collects sum_{t in later chunks} gamma_t P[t, j] df_t, so when chunk i is reached its
    adjoint is the solution of the transposed C x C system with right-hand side ds_i + pushed_i.
    """
    B, T, D = s.shape
    work, scale = s.dtype, 1.0 / math.sqrt(D)
    pushed = torch.zeros_like(s)
    df, dq, dk = torch.empty_like(s), torch.empty_like(s), torch.zeros_like(s)
    dgamma = s.new_empty(B, T, 1)
    for a in reversed(range(0, T, chunk_size)):
        e = min(a + chunk_size, T)
        q_c, g_c = q_b[:, a:e].to(work), gamma[:, a:e].to(work)
        p = _probs(_logits(q_c, k_b[:, :e], a, key_mask), lse[:, a:e])
        rhs = ds[:, a:e].to(work) + pushed[:, a:e]
        upper = (-g_c * p[:, :, a:e]).transpose(1, 2)
        df_c = torch.linalg.solve_triangular(upper, rhs, upper=True, unitriangular=True)
        w = g_c * df_c  # gamma_t df_t: the "dO" of an attention whose values are s
        if a > 0:
            pushed[:, :a].baddbmm_(p[:, :, :a].transpose(1, 2), w)  # in place: no (a, D) temporary
        c = torch.matmul(p, s[:, :e])
        dg_c = (df_c * c).sum(-1, keepdim=True)
        dlogit = p * (torch.matmul(w, s[:, :e].transpose(1, 2)) - g_c * dg_c)
        dq[:, a:e] = torch.matmul(dlogit, k_b[:, :e].to(work)) * scale
        dk[:, :e].baddbmm_(dlogit.transpose(1, 2), q_c, alpha=scale)
        df[:, a:e], dgamma[:, a:e] = df_c, dg_c
    return dq, dk, dgamma, df


class FeedbackSolveChunked(torch.autograd.Function):
    """Autograd wrapper: saves O(T*D) tensors plus the per-row log-sum-exp."""

    @staticmethod
    def forward(ctx, q_b, k_b, gamma, f, key_mask, chunk_size):  # type: ignore[override]
        B, T, D = f.shape
        s = f.new_empty(B, T, D, dtype=work_dtype(f.dtype))
        lse = forward_rows(q_b, k_b, gamma, f, s, 0, chunk_size, key_mask)
        ctx.save_for_backward(q_b, k_b, gamma, s, lse, key_mask)
        ctx.chunk_size = chunk_size
        return s.to(f.dtype)

    @staticmethod
    def backward(ctx, ds):  # type: ignore[override]
        q_b, k_b, gamma, s, lse, key_mask = ctx.saved_tensors
        dq, dk, dg, df = backward_rows(q_b, k_b, gamma, s, lse, ds, ctx.chunk_size, key_mask)
        return dq.to(q_b.dtype), dk.to(k_b.dtype), dg.to(gamma.dtype), df.to(ds.dtype), None, None


def feedback_solve_chunked(
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    gamma: torch.Tensor,
    f: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Chunked solve; arguments already validated by :func:`sessa.ops.feedback.feedback_solve`.

    gamma must be (B, T, 1) here."""
    return FeedbackSolveChunked.apply(q_b, k_b, gamma, f, key_mask, chunk_size)
