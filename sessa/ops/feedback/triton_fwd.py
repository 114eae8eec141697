"""Triton kernels of the forward feedback solve (SPEC §2.4), and their launcher.

Two-level blocking: the sequence is cut into *super-chunks* of L rows (``chunk_size``), each into
*sub-blocks* of C rows (16..64). Per batch element:

1. ``_lse_kernel`` (once, all rows in parallel): per-row log-sum-exp of the strict-past logits (log2 units);
2. ``triton_tril.build_w`` (once, all super-chunks in parallel): W = (I - G P)^{-1} inside each super-chunk;
3. for each super-chunk [a, a + L) in order (the only sequential loop, 3 launches per super-chunk):
   ``_probs_kernel``  P[rows, 0:a] = exp2(logit - lse) into an (L x T) scratch, bf16 for bf16/fp16 inputs;
   ``_inter_kernel``  rhs = f + gamma * (P[:, :a] @ s[:a]), a tiled GEMM parallel over rows and D;
   ``apply_w``        s = W rhs, a tiled GEMM in fp32 (tf32x3).
   P of the next super-chunk does not depend on s: it is computed on a side stream, double-buffered.

Why materialise P instead of recomputing logits per D-tile: D = 1024 makes a BM x D fp32 accumulator too
large for registers, so an output row is split into D / BN tiles; recomputing the D-long logits once per
tile would multiply the logit work (T^2 D) by D / BN = 16, while writing P once (bf16, L x T per
super-chunk, 32 MiB at T = 16K, L = 1024) costs one extra read per D-tile, mostly from L2.

Products use bf16 operands (P and a bf16 copy of s) with fp32 accumulation; s itself, the right-hand
sides and the triangular solves stay fp32. fp32 inputs use fp32 operands throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sessa.ops.feedback.triton_common import (
    LOG2E,
    Blocks,
    SideStream,
    _allowed,
    _logits,
    _mask_arg,
    _row_lse,
    mma,
    op_dtype,
)
from sessa.ops.feedback.triton_tril import apply_w, build_w


# ----------------------------------------------------------------------------------------------- kernels
@triton.jit
def _lse_kernel(q_ptr, k_ptr, km_ptr, lse_ptr, T, D,
                stride_qb, stride_qt, stride_kb, stride_kt, stride_mb, stride_lb, scale2,
                HAS_MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                PREC: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest rows first: less tail imbalance
    pid_b = tl.program_id(1).to(tl.int64)
    q_ptr += pid_b * stride_qb
    k_ptr += pid_b * stride_kb
    km_ptr += pid_b * stride_mb
    rows = pid_m * BM + tl.arange(0, BM)
    m = tl.full([BM], float("-inf"), tl.float32)
    acc = tl.zeros([BM], tl.float32)
    hi = tl.minimum(pid_m * BM + BM, T)
    for c0 in range(0, hi, BN):
        cols = c0 + tl.arange(0, BN)
        x = _logits(q_ptr, k_ptr, rows, cols, T, D, stride_qt, stride_kt, BM, BN, BK, PREC) * scale2
        x = tl.where(_allowed(rows, cols, T, km_ptr, HAS_MASK), x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no exp2(-inf - -inf)
        acc = acc * tl.exp2(m - m_safe) + tl.sum(tl.exp2(x - m_safe[:, None]), 1)
        m = m_new
    lse = tl.where(acc > 0, m + tl.log2(acc), float("-inf"))
    tl.store(lse_ptr + pid_b * stride_lb + rows, lse, mask=rows < T)


@triton.jit
def _probs_kernel(q_ptr, k_ptr, km_ptr, lse_ptr, p_ptr, A, col0, T, D,
                  stride_qb, stride_qt, stride_kb, stride_kt, stride_mb, stride_lb, stride_pb, stride_pr,
                  scale2, HAS_MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    r_start = A + pid_m * BM
    c_start = col0 + pid_n * BN
    if c_start < r_start + BM:  # tiles wholly above the diagonal are never read
        q_ptr += pid_b * stride_qb
        k_ptr += pid_b * stride_kb
        km_ptr += pid_b * stride_mb
        rows = r_start + tl.arange(0, BM)
        cols = c_start + tl.arange(0, BN)
        x = _logits(q_ptr, k_ptr, rows, cols, T, D, stride_qt, stride_kt, BM, BN, BK, PREC) * scale2
        lse = _row_lse(lse_ptr + pid_b * stride_lb, rows, T)
        p = tl.where(_allowed(rows, cols, T, km_ptr, HAS_MASK), tl.exp2(x - lse[:, None]), 0.0)
        ptrs = p_ptr + pid_b * stride_pb + (rows - A)[:, None] * stride_pr + cols[None, :]
        tl.store(ptrs, p.to(p_ptr.dtype.element_ty))


@triton.jit
def _inter_kernel(p_ptr, sop_ptr, f_ptr, g_ptr, rhs_ptr, A, T, D,
                  stride_pb, stride_pr, stride_ob, stride_ot, stride_fb, stride_ft, stride_gb, stride_gt,
                  stride_rb, stride_rt,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """rhs[r] = f[A + r] + gamma (P[r, :A] @ s[:A]) for the local rows r of the super-chunk at A."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    rl = pid_m * BM + tl.arange(0, BM)
    rows = A + rl
    dcols = pid_n * BN + tl.arange(0, BN)
    dmask = dcols < D
    p_ptr += pid_b * stride_pb + rl[:, None] * stride_pr
    sop_ptr += pid_b * stride_ob + dcols[None, :]
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, A, BK):
        kk = k0 + tl.arange(0, BK)
        p = tl.load(p_ptr + kk[None, :])
        sv = tl.load(sop_ptr + kk[:, None] * stride_ot, mask=dmask[None, :], other=0.0)
        acc = mma(p, sv, acc, PREC)
    m2 = (rows < T)[:, None] & dmask[None, :]
    f = tl.load(f_ptr + pid_b * stride_fb + rows[:, None] * stride_ft + dcols[None, :], mask=m2, other=0.0)
    g = tl.load(g_ptr + pid_b * stride_gb + rows * stride_gt, mask=rows < T, other=0.0).to(tl.float32)
    rhs = f.to(tl.float32) + g[:, None] * acc
    tl.store(rhs_ptr + pid_b * stride_rb + rl[:, None] * stride_rt + dcols[None, :], rhs, mask=m2)


# ----------------------------------------------------------------------------------------------- launcher
@dataclass
class ForwardState:
    """What the backward needs besides the inputs. s: (B,T,D) fp32; s_op: operand copy (bf16 or s itself);
    lse: (B,T) fp32 log2-units log-sum-exp; w: the intra-chunk inverses (B, T/L, L, L) as returned by
    triton_tril.build_w (fp32, or bf16 high and low parts)."""

    s: torch.Tensor
    s_op: torch.Tensor
    lse: torch.Tensor
    w: tuple
    blocks: Blocks


def _lse(q_b, k_b, key_mask, bl: Blocks) -> torch.Tensor:
    B, T, D = q_b.shape
    km, smb = _mask_arg(key_mask, q_b)
    lse = torch.empty(B, T, device=q_b.device, dtype=torch.float32)
    _lse_kernel[(triton.cdiv(T, bl.bm_lse), B)](
        q_b, k_b, km, lse, T, D, q_b.stride(0), q_b.stride(1), k_b.stride(0), k_b.stride(1), smb,
        lse.stride(0), LOG2E / math.sqrt(D), HAS_MASK=key_mask is not None, BM=bl.bm_lse, BN=bl.bn_lse,
        BK=bl.bk, PREC=bl.prec, num_warps=bl.warps, num_stages=bl.stages,
    )
    return lse


def launch_probs(q_b, k_b, key_mask, lse, p, A, L_eff, blocks):
    """P[rows A..A+L_eff, keys 0..A] into the scratch p: (B, rows, T_pad)."""
    if A == 0:
        return
    B, T, D = q_b.shape
    km, smb = _mask_arg(key_mask, q_b)
    bl = blocks
    _probs_kernel[(triton.cdiv(L_eff, bl.bm), A // bl.bn, B)](
        q_b, k_b, km, lse, p, A, 0, T, D, q_b.stride(0), q_b.stride(1), k_b.stride(0), k_b.stride(1), smb,
        lse.stride(0), p.stride(0), p.stride(1), LOG2E / math.sqrt(D), HAS_MASK=key_mask is not None,
        BM=bl.bm, BN=bl.bn, BK=bl.bk, PREC=bl.prec, num_warps=bl.warps, num_stages=bl.stages,
    )


def forward_fixed(q_b, k_b, gamma, f, key_mask, blocks: Blocks, poison: bool = False) -> ForwardState:
    """Fixed-length forward on contiguous (B, T, D) tensors; gamma (B, T, 1)."""
    B, T, D = f.shape
    bl = blocks
    lse = _lse(q_b, k_b, key_mask, bl)
    w = build_w(q_b, k_b, gamma, key_mask, lse, bl, split=op_dtype(f.dtype) != torch.float32)
    s = torch.empty(B, T, D, device=f.device, dtype=torch.float32)
    odt = op_dtype(f.dtype)
    s_op = s if odt == torch.float32 else torch.empty(B, T, D, device=f.device, dtype=odt)
    starts = list(range(0, T, bl.L))
    pbuf = [torch.empty(B, bl.rows, bl.T_pad, device=f.device, dtype=odt) for _ in range(min(2, len(starts)))]
    rhs = torch.empty(B, bl.rows, D, device=f.device, dtype=torch.float32)
    if poison:
        for x in (s, s_op, rhs, *pbuf):
            x.fill_(float("nan"))
    streams = SideStream(f.device)
    for i, A in enumerate(starts):
        L_eff = min(bl.L, T - A)
        ready = None
        if i + 1 < len(starts):  # the next P overwrites the buffer read by super-chunk i - 1 (queued above)
            streams.fork()
            with streams.context():
                nxt = starts[i + 1]
                launch_probs(q_b, k_b, key_mask, lse, pbuf[(i + 1) % 2], nxt, min(bl.L, T - nxt), bl)
            ready = streams.event()
        p = pbuf[i % 2]
        _inter_kernel[(triton.cdiv(L_eff, bl.bm), triton.cdiv(D, bl.bd), B)](
            p, s_op, f, gamma, rhs, A, T, D, p.stride(0), p.stride(1), s_op.stride(0), s_op.stride(1),
            f.stride(0), f.stride(1), gamma.stride(0), gamma.stride(1), rhs.stride(0), rhs.stride(1),
            BM=bl.bm, BN=bl.bd, BK=bl.bn, PREC=bl.prec, num_warps=bl.warps, num_stages=bl.stages,
        )
        apply_w(w, A, L_eff, rhs, s, s_op, bl)
        streams.join(ready)
    return ForwardState(s, s_op, lse, w, bl)
