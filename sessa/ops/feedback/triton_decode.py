"""Triton kernels for the feedback row of one new token, split over the context (flash-decoding style).

For each batch row b, the new token at position ``length[b]`` reads the cached keys j < length[b] whose
``key_mask[b, j]`` is set (DESIGN §2.5):

    s_new[b] = f[b] + gamma[b] * sum_j softmax_j(q[b] . k[b, j] / sqrt(D)) s[b, j]      (0 with no key)

``_partial`` gives every (b, split) program one slice of the context: a running max, sum of exponentials and
weighted sum of s over its keys (float32). ``_combine`` merges the slices of each row and adds f and
gamma times the result. The lengths are read from device memory, so the launch does not depend on them: a
graph-captured decode step replays it at every position. Reference: :func:`feedback_decode_ref`
(``sessa.ops.feedback.decode``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

MAX_SPLITS = 128  # programs per row: enough to spread a long context over the GPU
MIN_SPLIT = 64  # keys per program at least


# The context length changes every decoding step, and with it these ints (a slice of a growing cache): no
# specialisation on them (Triton would compile again whenever one changes its divisibility by 16).
@triton.jit(do_not_specialize=["stride_qb", "stride_kb", "stride_sb", "stride_mb", "SPLIT"])
def _partial(
    q,
    k,
    s,
    mask,
    length,
    m_out,
    l_out,
    acc_out,
    stride_qb,
    stride_kb,
    stride_kt,
    stride_sb,
    stride_st,
    stride_mb,
    D,
    SPLIT,
    scale,
    HAS_MASK: tl.constexpr,
    BLOCK_T: tl.constexpr,
    DP: tl.constexpr,
):
    b = tl.program_id(0)
    sp = tl.program_id(1)
    n_split = tl.num_programs(1)
    t = tl.load(length + b)
    d = tl.arange(0, DP)
    dm = d < D
    qv = tl.load(q + b * stride_qb + d, mask=dm, other=0.0).to(tl.float32)
    m = tl.full((), float("-inf"), tl.float32)
    l_sum = tl.zeros((), tl.float32)
    acc = tl.zeros((DP,), tl.float32)
    start = sp * SPLIT
    for j0 in range(start, start + SPLIT, BLOCK_T):
        j = j0 + tl.arange(0, BLOCK_T)
        ok = j < t
        if HAS_MASK:
            ok = ok & (tl.load(mask + b * stride_mb + j, mask=ok, other=0) != 0)
        tile = ok[:, None] & dm[None, :]
        kt = tl.load(k + b * stride_kb + j[:, None] * stride_kt + d[None, :], mask=tile, other=0.0)
        logit = tl.sum(kt.to(tl.float32) * qv[None, :], axis=1) * scale
        logit = tl.where(ok, logit, float("-inf"))
        m_new = tl.maximum(m, tl.max(logit, axis=0))
        base = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: keep everything at 0
        alpha = tl.exp(m - base)
        p = tl.exp(logit - base)
        st = tl.load(s + b * stride_sb + j[:, None] * stride_st + d[None, :], mask=tile, other=0.0)
        acc = acc * alpha + tl.sum(p[:, None] * st.to(tl.float32), axis=0)
        l_sum = l_sum * alpha + tl.sum(p, axis=0)
        m = m_new
    row = b * n_split + sp
    tl.store(m_out + row, m)
    tl.store(l_out + row, l_sum)
    tl.store(acc_out + row * DP + d, acc)


@triton.jit(do_not_specialize=["N_SPLIT"])
def _combine(
    m_in,
    l_in,
    acc_in,
    f,
    gamma,
    out,
    stride_fb,
    stride_gb,
    stride_ob,
    N_SPLIT,
    D,
    NSP: tl.constexpr,
    DP: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    dblk = tl.program_id(1)
    sp = tl.arange(0, NSP)
    spm = sp < N_SPLIT
    m = tl.load(m_in + b * N_SPLIT + sp, mask=spm, other=float("-inf"))
    top = tl.max(m, axis=0)
    w = tl.exp(m - tl.where(top == float("-inf"), 0.0, top))
    total = tl.sum(tl.load(l_in + b * N_SPLIT + sp, mask=spm, other=0.0) * w, axis=0)
    d = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    acc = tl.load(
        acc_in + (b * N_SPLIT + sp[:, None]) * DP + d[None, :], mask=spm[:, None] & dm[None, :], other=0.0
    )
    read = tl.sum(acc * w[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    fv = tl.load(f + b * stride_fb + d, mask=dm, other=0.0).to(tl.float32)
    g = tl.load(gamma + b * stride_gb).to(tl.float32)
    tl.store(out + b * stride_ob + d, (fv + g * read).to(out.dtype.element_ty), mask=dm)


@dataclass(frozen=True)
class DecodePlan:
    """Launch geometry for a context of ``capacity`` keys and width D (independent of the lengths)."""

    split: int
    n_split: int
    block_t: int
    dp: int
    block_d: int
    warps: int


def plan(capacity: int, D: int) -> DecodePlan:
    dp = triton.next_power_of_2(max(D, 16))
    block_t = 8 if dp >= 1024 else 16 if dp >= 512 else 32  # the k and s tiles stay at <= 8K elements
    per = max(MIN_SPLIT, math.ceil(capacity / MAX_SPLITS))
    split = math.ceil(per / block_t) * block_t
    n_split = max(1, math.ceil(capacity / split))
    return DecodePlan(split, n_split, block_t, dp, min(dp, 64), 4 if dp <= 512 else 8)


def launches(q, k, s, key_mask, length, gamma, f, out):  # noqa: ANN001, ANN201
    """The two launches as (kernel, grid, args, constexprs/options): q, f, out (B, D); k, s (B, capacity, D)
    (rows of unit stride in D); key_mask (B, capacity) bool or None; length (B,) int32; gamma (B,)."""
    B, capacity, D = k.shape
    p = plan(capacity, D)
    m = torch.empty(B * p.n_split, device=q.device, dtype=torch.float32)
    lsum = torch.empty_like(m)
    acc = torch.empty(B * p.n_split * p.dp, device=q.device, dtype=torch.float32)
    has_mask = key_mask is not None
    mask_arg = key_mask.view(torch.uint8) if has_mask else length
    part = (
        _partial,
        (B, p.n_split),
        (
            q,
            k,
            s,
            mask_arg,
            length,
            m,
            lsum,
            acc,
            q.stride(0),
            k.stride(0),
            k.stride(1),
            s.stride(0),
            s.stride(1),
            key_mask.stride(0) if has_mask else 0,
            D,
            p.split,
            1.0 / math.sqrt(D),
        ),
        {"HAS_MASK": has_mask, "BLOCK_T": p.block_t, "DP": p.dp, "num_warps": p.warps},
    )
    comb = (
        _combine,
        (B, triton.cdiv(D, p.block_d)),
        (m, lsum, acc, f, gamma, out, f.stride(0), gamma.stride(0), out.stride(0), p.n_split, D),
        {"NSP": triton.next_power_of_2(p.n_split), "DP": p.dp, "BLOCK_D": p.block_d, "num_warps": 4},
    )
    return [part, comb]


def feedback_decode_triton(
    q_new: torch.Tensor,
    k_cache: torch.Tensor,
    gamma_new: torch.Tensor,
    f_new: torch.Tensor,
    s_cache: torch.Tensor,
    length: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """s of one new token per row: q_new, f_new (B, 1, D), gamma_new (B, 1, 1), caches (B, L, D), length:
    readable keys per row (0-d or (B,) integer tensor on the device), key_mask (B, L) bool or None. Returns
    (B, 1, D) in f_new's dtype. Forward only (decoding)."""
    B, L, D = k_cache.shape
    lengths = length.to(torch.int32).expand(B).contiguous() if length.dim() == 0 else length.to(torch.int32)
    out = torch.empty(B, 1, D, device=f_new.device, dtype=f_new.dtype)
    q, f = q_new.reshape(B, D).contiguous(), f_new.reshape(B, D).contiguous()
    g = gamma_new.reshape(B).contiguous()
    mask = None if key_mask is None else key_mask.contiguous()
    for kernel, grid, args, consts in launches(q, k_cache, s_cache, mask, lengths, g, f, out.view(B, D)):
        kernel[grid](*args, **consts)
    return out
