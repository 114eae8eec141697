"""Triton kernels of the forward feedback solve (SPEC §2.4), and their launcher.

Two-level blocking. The sequence is cut into *super-chunks* of L rows (the ``chunk_size``), each cut into
*sub-blocks* of C rows (16..64). Per batch element:

1. ``_lse_kernel`` (once, all rows in parallel): per-row log-sum-exp of the strict-past logits (log2 units).
2. ``_diag_inverse_kernel`` (once, all sub-blocks in parallel): M_c = (I - G_c P_cc)^{-1}, the inverse of
   each C x C unit lower-triangular diagonal block, by the product (I + N)(I + N^2)(I + N^4)... in fp32.
3. For each super-chunk [a, a + L) in order (the only sequential loop, 3 launches per super-chunk):
   ``_probs_kernel``  P[rows, 0:a+L] = exp2(logit - lse) into a (L x T) scratch, bf16 for bf16/fp16 inputs;
   ``_inter_kernel``  rhs = f + gamma * (P[:, :a] @ s[:a]), a tiled GEMM parallel over rows and D;
   ``_intra_fwd_kernel``  forward substitution over the sub-blocks, one program per D-tile (the columns of
   s are independent, so no program waits on another): s_c = M_c (rhs_c + gamma_c P[c, a:c] s[a:c]).

Why materialise P instead of recomputing logits per D-tile: D = 1024 makes a BM x D fp32 accumulator too
large for registers, so an output row is split into D / BN tiles; recomputing the D-long logits once per
tile would multiply the logit work (T^2 D) by D / BN = 8, while writing P once (bf16, L x T per
super-chunk, 32 MiB at T = 16K, L = 1024) costs one extra read per D-tile from L2/HBM.

Products use bf16 operands (P and a bf16 copy of s) with fp32 accumulation; s itself, the right-hand
sides and the triangular solves stay fp32. fp32 inputs use fp32 operands throughout.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# Triton's CPU interpreter multiplies bf16 tiles as raw bits: upcast dot operands there (tests only).
_UPCAST_DOTS = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@dataclass(frozen=True)
class Blocks:
    """Tile sizes of one solve. L: super-chunk rows; C: sub-block rows; every tile divides L."""

    L: int
    C: int
    bm: int  # row tile of the probability / gradient scratches
    bn: int  # key tile of the scratches (also the K step of the GEMMs that read them)
    bk: int  # D slice of the logit dot products
    bd: int  # D tile of the GEMM outputs
    bd_solve: int  # D tile of the sequential sub-block solves
    prec: str  # tl.dot input precision for fp32 operands
    T_pad: int  # scratch columns
    rows: int  # scratch rows


def op_dtype(dtype: torch.dtype) -> torch.dtype:
    """Operand dtype of the big products: fp32 for fp32 inputs, else bf16 (s can exceed fp16's range)."""
    return torch.float32 if dtype == torch.float32 else torch.bfloat16


def _pow2_divisor(n: int, cap: int) -> int:
    b = cap
    while n % b:
        b //= 2
    return b


def choose_blocks(
    T: int, D: int, dtype: torch.dtype, chunk_size: int | None, interpret: bool, sub_block: int | None = None
) -> Blocks:
    """Pick tile sizes; chunk_size (the super-chunk L) must be a positive multiple of 16."""
    if chunk_size is None:
        chunk_size = 1024 if T > 8192 else (512 if T > 1024 else 128)
        if interpret:
            chunk_size = 32
    if chunk_size % 16:
        raise ValueError(f"chunk_size for the triton backend must be a multiple of 16, got {chunk_size}")
    L = chunk_size
    C = _pow2_divisor(L, 64) if sub_block is None else sub_block
    if C not in (16, 32, 64) or L % C:
        raise ValueError(f"sub_block must be 16, 32 or 64 and divide chunk_size={L}, got {C}")
    cap = 32 if interpret else 64
    bm = bn = _pow2_divisor(L, cap)
    bk = 32 if interpret else 64
    bd = 32 if interpret else 128
    bd_solve = 16 if interpret else 32
    prec = "ieee" if (interpret or dtype == torch.float32) else "tf32"
    t_pad = triton.cdiv(T, 128) * 128
    rows = min(L, triton.cdiv(T, bm) * bm)
    return Blocks(L, C, bm, bn, bk, bd, bd_solve, prec, t_pad, rows)


# ----------------------------------------------------------------------------------------------- helpers
@triton.jit
def mma(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b with fp32 accumulation (tl.dot, upcast under the CPU interpreter)."""
    if _UPCAST_DOTS:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc, input_precision=PREC)
    return out


@triton.jit
def _logits(q_ptr, k_ptr, rows, cols, T, D, stride_q, stride_k,
            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """(BM, BN) fp32 q[rows] . k[cols] over the full width D, in BK slices."""
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    rmask = rows < T
    cmask = cols < T
    for d0 in range(0, D, BK):
        dd = d0 + tl.arange(0, BK)
        dmask = dd < D
        qt = tl.load(q_ptr + rows[:, None] * stride_q + dd[None, :],
                     mask=rmask[:, None] & dmask[None, :], other=0.0)
        kt = tl.load(k_ptr + cols[None, :] * stride_k + dd[:, None],
                     mask=cmask[None, :] & dmask[:, None], other=0.0)
        acc = mma(qt, kt, acc, PREC)
    return acc


@triton.jit
def _allowed(rows, cols, T, km_ptr, HAS_MASK: tl.constexpr):
    """Row t may read key j iff j < t < T (and key_mask[j])."""
    ok = (cols[None, :] < rows[:, None]) & (rows[:, None] < T)
    if HAS_MASK:
        km = tl.load(km_ptr + cols, mask=cols < T, other=0)
        ok = ok & (km[None, :] != 0)
    return ok


@triton.jit
def _row_lse(lse_ptr, rows, T):
    """Saved log-sum-exp (log2 units) with rows that read nothing mapped to 0 so exp2(-inf - lse) = 0."""
    lse = tl.load(lse_ptr + rows, mask=rows < T, other=float("-inf"))
    return tl.where(lse == float("-inf"), 0.0, lse)


# ----------------------------------------------------------------------------------------------- kernels
@triton.jit
def _lse_kernel(q_ptr, k_ptr, km_ptr, lse_ptr, T, D,
                stride_qb, stride_qt, stride_kb, stride_kt, stride_mb, stride_lb, scale2,
                HAS_MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                PREC: tl.constexpr):
    pid_m = tl.program_id(0)
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
def _diag_inverse_kernel(q_ptr, k_ptr, km_ptr, lse_ptr, g_ptr, inv_ptr, T, D,
                         stride_qb, stride_qt, stride_kb, stride_kt, stride_mb, stride_lb,
                         stride_gb, stride_gt, stride_ib, scale2,
                         HAS_MASK: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, LOG2C: tl.constexpr,
                         PREC: tl.constexpr):
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    q_ptr += pid_b * stride_qb
    k_ptr += pid_b * stride_kb
    km_ptr += pid_b * stride_mb
    rows = pid * C + tl.arange(0, C)
    x = _logits(q_ptr, k_ptr, rows, rows, T, D, stride_qt, stride_kt, C, C, BK, PREC) * scale2
    lse = _row_lse(lse_ptr + pid_b * stride_lb, rows, T)
    p = tl.where(_allowed(rows, rows, T, km_ptr, HAS_MASK), tl.exp2(x - lse[:, None]), 0.0)
    g = tl.load(g_ptr + pid_b * stride_gb + rows * stride_gt, mask=rows < T, other=0.0).to(tl.float32)
    n = g[:, None] * p
    ar = tl.arange(0, C)
    # N is strictly lower triangular (nilpotent): (I - N)^{-1} = sum_k N^k = prod_i (I + N^(2^i)).
    inv = (ar[:, None] == ar[None, :]).to(tl.float32) + n
    power = n
    for _ in tl.static_range(LOG2C - 1):
        power = tl.dot(power, power, input_precision="ieee")
        inv = inv + tl.dot(inv, power, input_precision="ieee")
    tl.store(inv_ptr + pid_b * stride_ib + pid * C * C + ar[:, None] * C + ar[None, :], inv)


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
def _inter_kernel(p_ptr, sop_ptr, f_ptr, g_ptr, s_ptr, A, T, D,
                  stride_pb, stride_pr, stride_ob, stride_ot, stride_fb, stride_ft, stride_gb, stride_gt,
                  stride_sb, stride_st,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    rows = A + pid_m * BM + tl.arange(0, BM)
    dcols = pid_n * BN + tl.arange(0, BN)
    dmask = dcols < D
    p_ptr += pid_b * stride_pb + (rows - A)[:, None] * stride_pr
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
    tl.store(s_ptr + pid_b * stride_sb + rows[:, None] * stride_st + dcols[None, :], rhs, mask=m2)


@triton.jit
def _intra_fwd_kernel(p_ptr, inv_ptr, s_ptr, sop_ptr, g_ptr, A, T, D, n_sub,
                      stride_pb, stride_pr, stride_ib, stride_sb, stride_st, stride_ob, stride_ot,
                      stride_gb, stride_gt,
                      C: tl.constexpr, BD: tl.constexpr, STORE_OP: tl.constexpr, PREC: tl.constexpr):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    p_ptr += pid_b * stride_pb
    inv_ptr += pid_b * stride_ib
    s_ptr += pid_b * stride_sb
    sop_ptr += pid_b * stride_ob
    g_ptr += pid_b * stride_gb
    ar = tl.arange(0, C)
    dcols = pid_d * BD + tl.arange(0, BD)
    dmask = dcols < D
    for c in range(0, n_sub):
        rows = A + c * C + ar
        m2 = (rows < T)[:, None] & dmask[None, :]
        acc = tl.zeros([C, BD], dtype=tl.float32)
        for c2 in range(0, c):  # earlier sub-blocks of this super-chunk, solved by this program
            keys = A + c2 * C + ar
            p = tl.load(p_ptr + (c * C + ar)[:, None] * stride_pr + keys[None, :])
            sv = tl.load(sop_ptr + keys[:, None] * stride_ot + dcols[None, :], mask=dmask[None, :], other=0.0)
            acc = mma(p, sv, acc, PREC)
        g = tl.load(g_ptr + rows * stride_gt, mask=rows < T, other=0.0).to(tl.float32)
        rhs = tl.load(s_ptr + rows[:, None] * stride_st + dcols[None, :], mask=m2, other=0.0)
        rhs = tl.where(m2, rhs + g[:, None] * acc, 0.0)  # padding rows must not carry NaN into the dot
        inv = tl.load(inv_ptr + (A // C + c) * C * C + ar[:, None] * C + ar[None, :])
        sc = tl.dot(inv, rhs, input_precision="ieee")
        tl.store(s_ptr + rows[:, None] * stride_st + dcols[None, :], sc, mask=m2)
        if STORE_OP:
            tl.store(sop_ptr + rows[:, None] * stride_ot + dcols[None, :], sc.to(sop_ptr.dtype.element_ty),
                     mask=m2)
        tl.debug_barrier()  # the next sub-block reads these rows back


# ----------------------------------------------------------------------------------------------- launcher
@dataclass
class ForwardState:
    """What the backward needs besides the inputs. s: (B,T,D) fp32; s_op: operand copy (bf16 or s itself);
    lse: (B,T) fp32 log2-units log-sum-exp; inv: (B, T/C, C, C) fp32 diagonal-block inverses."""

    s: torch.Tensor
    s_op: torch.Tensor
    lse: torch.Tensor
    inv: torch.Tensor
    blocks: Blocks


def _mask_arg(key_mask: torch.Tensor | None, ref: torch.Tensor) -> tuple[torch.Tensor, int]:
    if key_mask is None:
        return ref, 0  # never read (HAS_MASK=False)
    km = key_mask.contiguous().view(torch.uint8)
    return km, km.stride(0)


def _prepare(q_b, k_b, gamma, f, key_mask, blocks, num_warps):
    """Launch the two sequence-parallel kernels: row log-sum-exp and diagonal-block inverses."""
    B, T, D = f.shape
    scale2 = LOG2E / math.sqrt(D)
    km, smb = _mask_arg(key_mask, q_b)
    lse = torch.empty(B, T, device=f.device, dtype=torch.float32)
    bl = blocks
    _lse_kernel[(triton.cdiv(T, bl.bm), B)](
        q_b, k_b, km, lse, T, D, q_b.stride(0), q_b.stride(1), k_b.stride(0), k_b.stride(1), smb,
        lse.stride(0), scale2, HAS_MASK=key_mask is not None, BM=bl.bm, BN=bl.bn, BK=bl.bk, PREC=bl.prec,
        num_warps=num_warps,
    )
    nblk = triton.cdiv(T, bl.C)
    inv = torch.empty(B, nblk, bl.C, bl.C, device=f.device, dtype=torch.float32)
    _diag_inverse_kernel[(nblk, B)](
        q_b, k_b, km, lse, gamma, inv, T, D, q_b.stride(0), q_b.stride(1), k_b.stride(0), k_b.stride(1), smb,
        lse.stride(0), gamma.stride(0), gamma.stride(1), inv.stride(0), scale2,
        HAS_MASK=key_mask is not None, C=bl.C, BK=bl.bk, LOG2C=int(math.log2(bl.C)), PREC=bl.prec,
        num_warps=4,
    )
    return lse, inv


def launch_probs(q_b, k_b, key_mask, lse, p, A, col0, L_eff, blocks, num_warps=4):
    """P[rows a..a+L_eff, keys col0..a+L_eff] into the scratch p: (B, rows, T_pad)."""
    B, T, D = q_b.shape
    km, smb = _mask_arg(key_mask, q_b)
    bl = blocks
    grid = (triton.cdiv(L_eff, bl.bm), triton.cdiv(A + L_eff - col0, bl.bn), B)
    _probs_kernel[grid](
        q_b, k_b, km, lse, p, A, col0, T, D, q_b.stride(0), q_b.stride(1), k_b.stride(0), k_b.stride(1), smb,
        lse.stride(0), p.stride(0), p.stride(1), LOG2E / math.sqrt(D), HAS_MASK=key_mask is not None,
        BM=bl.bm, BN=bl.bn, BK=bl.bk, PREC=bl.prec, num_warps=num_warps,
    )


def forward_fixed(q_b, k_b, gamma, f, key_mask, blocks: Blocks, poison: bool = False) -> ForwardState:
    """Fixed-length forward on contiguous (B, T, D) tensors; gamma (B, T, 1)."""
    B, T, D = f.shape
    bl = blocks
    lse, inv = _prepare(q_b, k_b, gamma, f, key_mask, bl, num_warps=4)
    s = torch.empty(B, T, D, device=f.device, dtype=torch.float32)
    odt = op_dtype(f.dtype)
    s_op = s if odt == torch.float32 else torch.empty(B, T, D, device=f.device, dtype=odt)
    p = torch.empty(B, bl.rows, bl.T_pad, device=f.device, dtype=odt)
    if poison:
        for x in (s, s_op, p):
            x.fill_(float("nan"))
    for A in range(0, T, bl.L):
        L_eff = min(bl.L, T - A)
        launch_probs(q_b, k_b, key_mask, lse, p, A, 0, L_eff, bl)
        _inter_kernel[(triton.cdiv(L_eff, bl.bm), triton.cdiv(D, bl.bd), B)](
            p, s_op, f, gamma, s, A, T, D, p.stride(0), p.stride(1), s_op.stride(0), s_op.stride(1),
            f.stride(0), f.stride(1), gamma.stride(0), gamma.stride(1), s.stride(0), s.stride(1),
            BM=bl.bm, BN=bl.bd, BK=bl.bn, PREC=bl.prec, num_warps=4,
        )
        _intra_fwd_kernel[(triton.cdiv(D, bl.bd_solve), B)](
            p, inv, s, s_op, gamma, A, T, D, triton.cdiv(L_eff, bl.C), p.stride(0), p.stride(1),
            inv.stride(0), s.stride(0), s.stride(1), s_op.stride(0), s_op.stride(1),
            gamma.stride(0), gamma.stride(1), C=bl.C, BD=bl.bd_solve, STORE_OP=s_op is not s,
            PREC=bl.prec, num_warps=4,
        )
    return ForwardState(s, s_op, lse, inv, bl)
