"""The intra-chunk triangular systems of the feedback solve, as explicit inverses built in parallel.

Inside a super-chunk of L rows the solve is (I - N) s = rhs with N = G P strictly lower triangular (L x L).
N does not depend on s, so W = (I - N)^{-1} (fp32, L x L per super-chunk, O(T * L) memory) is built for
every super-chunk at once, off the sequential path, and each sequential step becomes one parallel GEMM:
s = W rhs in the forward, df = W^T rhs in the backward. Building W:

1. ``_diag_probs_kernel``: P inside the L x L diagonal blocks (fp32 scratch);
2. ``_diag_inverse_kernel``: M_c = (I - N_cc)^{-1} of each C x C diagonal block by the product
   (I + N)(I + N^2)(I + N^4)... (N_cc is nilpotent), one program per block, written onto W's diagonal
   (and, transposed, onto the P scratch's);
3. ``_wlevel_kernel``, by recursive doubling: with the inverses W1, W2 of two neighbouring s x s diagonal
   blocks known, the inverse of the 2s x 2s block is [[W1, 0], [W2 N21 W1, W2]] (N21 = G P below the
   diagonal between them); each level s = C, 2C, .. < L is two batched GEMM launches (Y = N21 W1, then
   W2 Y) over all pairs of all super-chunks at once: log2(L / C) levels instead of L / C sequential steps.
   Both launches read their right operand with K contiguous (tf32 tensor-core operands read the other way
   ran ~3x slower, RESULTS "Doubling levels"): W^T is kept in the P scratch's upper triangle, and Y is
   stored transposed.
Precision. fp32 inputs: W stays fp32, built and applied in "tf32x3" (three tf32 products, close to fp32).
bf16 / fp16 inputs (bf16 operands): the doubling levels run in one tf32 pass, W is stored rounded to bf16,
and each product with W splits its fp32 right-hand side into a bf16 high and low part (two bf16 products):
the right-hand side's rounding is what an output near bf16 resolution needs kept, W's own rounding adds
little (measured against float64, RESULTS "Cheaper intra-chunk inverses"). The diagonal blocks' inverses
stay in "tf32x3" (C x C, cheap).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sessa.ops.feedback.triton_common import LOG2E, Blocks, _allowed, _logits, _mask_arg, _row_lse, cdiv, mma
from sessa.ops.feedback.triton_launch import BoundKernel, Streams


@triton.jit
def _diag_inverse_kernel(q_ptr, k_ptr, km_ptr, lse_ptr, g_ptr, w_ptr, pd_ptr, T, D, L, R0,
                         stride_qb, stride_qt, stride_kb, stride_kt, stride_mb, stride_lb,
                         stride_gb, stride_gt, stride_wb, stride_wi, scale2,
                         MASK: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, LOG2C: tl.constexpr,
                         PREC: tl.constexpr, INV_PREC: tl.constexpr, EVEN_D: tl.constexpr):
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    q_ptr += pid_b * stride_qb
    k_ptr += pid_b * stride_kb
    km_ptr += pid_b * stride_mb
    rows = R0 + pid * C + tl.arange(0, C)  # R0: the first row of the super-chunks built by this launch
    x = _logits(q_ptr, k_ptr, rows, rows, T, D, stride_qt, stride_kt, C, C, BK, PREC, EVEN_D) * scale2
    lse = _row_lse(lse_ptr + pid_b * stride_lb, rows, T)
    p = tl.where(_allowed(rows, rows, T, km_ptr, MASK), tl.exp2(x - lse[:, None]), 0.0)
    g = tl.load(g_ptr + pid_b * stride_gb + rows * stride_gt, mask=rows < T, other=0.0).to(tl.float32)
    n = g[:, None] * p
    ar = tl.arange(0, C)
    # N is strictly lower triangular (nilpotent): (I - N)^{-1} = sum_k N^k = prod_i (I + N^(2^i)).
    inv = (ar[:, None] == ar[None, :]).to(tl.float32) + n
    power = n
    for _ in tl.static_range(LOG2C - 1):
        power = tl.dot(power, power, input_precision=INV_PREC)
        inv = inv + tl.dot(inv, power, input_precision=INV_PREC)
    r0 = (R0 + pid * C) % L  # the block's first row inside its super-chunk
    w_ptr += pid_b * stride_wb + ((R0 + pid * C) // L) * stride_wi
    tl.store(w_ptr + (r0 + ar)[:, None] * L + (r0 + ar)[None, :], inv)
    # W^T of the block into the P scratch's upper triangle, where the doubling levels read it (_wlevel_kernel)
    pd_ptr += pid_b * stride_wb + ((R0 + pid * C) // L) * stride_wi
    tl.store(pd_ptr + (r0 + ar)[None, :] * L + (r0 + ar)[:, None], inv)


@triton.jit
def _diag_probs_kernel(q_ptr, k_ptr, km_ptr, lse_ptr, pd_ptr, T, D, L, nI, CH0,
                       stride_qb, stride_qt, stride_kb, stride_kt, stride_mb, stride_lb, stride_db, stride_di,
                       scale2, MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                       PREC: tl.constexpr, EVEN_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    pid_b = (pid_z // nI).to(tl.int64)
    chunk = CH0 + pid_z % nI  # nI super-chunks from CH0
    A = chunk * L
    r_start = A + pid_m * BM
    c_start = A + pid_n * BN
    if (c_start < r_start + BM) & (r_start < T):
        rows = r_start + tl.arange(0, BM)
        cols = c_start + tl.arange(0, BN)
        q_ptr += pid_b * stride_qb
        k_ptr += pid_b * stride_kb
        x = _logits(q_ptr, k_ptr, rows, cols, T, D, stride_qt, stride_kt, BM, BN, BK, PREC, EVEN_D) * scale2
        lse = _row_lse(lse_ptr + pid_b * stride_lb, rows, T)
        ok = _allowed(rows, cols, T, km_ptr + pid_b * stride_mb, MASK)
        p = tl.where(ok, tl.exp2(x - lse[:, None]), 0.0)
        ptrs = pd_ptr + pid_b * stride_db + chunk * stride_di + (rows - A)[:, None] * L + (cols - A)[None, :]
        tl.store(ptrs, p)


@triton.jit
def _wlevel_kernel(p_ptr, w_ptr, y_ptr, g_ptr, T, L, S, n_tiles, nI, CH0, stride_xb, stride_xi, stride_gb,
                   stride_gt, SECOND: tl.constexpr, STORE_T: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                   INV_PREC: tl.constexpr):
    """One half of a doubling level for the pair (B1 = [2pS, 2pS + S), B2 = [(2p + 1)S, (2p + 2)S)) of one
    of the nI super-chunks from CH0; p_ptr, w_ptr, y_ptr are (B, n_chunks, L, L) fp32 with one layout.

    first half (SECOND=False): Y = G_B2 P[B2, B1] @ W[B1, B1];
    second half (SECOND=True): W[B2, B1] = W[B2, B2] @ Y.
    Both right operands are read with K contiguous (a tensor-core operand read across its rows is several
    times slower in tf32): p holds P below the block diagonal and W^T in its upper triangle (p[c, r] =
    W[r, c], r >= c: the diagonal blocks' inverses and, with STORE_T, each level's W[B2, B1]); the first
    half stores Y transposed, y[B1, B2] = Y^T. W blocks are lower triangular, so the K range of tile (i, j)
    is [j, S) in the first half, [0, i] in the second (in steps of BK, which divides BM). W entries of rows
    at or past T are never needed (P of such a row is zero): they are read as zeros.
    """
    pid_t = tl.program_id(0)
    pair = tl.program_id(1)
    pid_b = (tl.program_id(2) // nI).to(tl.int64)
    chunk = CH0 + tl.program_id(2) % nI
    c1 = 2 * pair * S  # B1's first row / column (local to the super-chunk)
    r2 = c1 + S  # B2's first row
    A = chunk * L
    ti = pid_t // n_tiles
    tj = pid_t % n_tiles
    ar = tl.arange(0, BM)
    rows = r2 + ti * BM + ar  # output rows (in B2)
    cols = c1 + tj * BM + ar  # output columns (in B1)
    rok = (rows < L) & (A + rows < T)
    base = pid_b * stride_xb + chunk * stride_xi
    acc = tl.zeros([BM, BM], dtype=tl.float32)
    if SECOND:
        lo, hi, k_row0 = 0, tl.minimum((ti + 1) * BM, S), r2
    else:
        lo, hi, k_row0 = tj * BM, S, c1
    for k0 in range(lo, hi, BK):
        kk = k_row0 + k0 + tl.arange(0, BK)  # K indices: rows of the right operand
        kok = kk < L  # (L is a multiple of 16: the loads stay vectorised)
        if SECOND:  # W[B2, B2] (row-major) times Y (read from y[B1, B2] = Y^T)
            a = tl.load(w_ptr + base + rows[:, None] * L + kk[None, :], mask=rok[:, None] & kok[None, :],
                        other=0.0)
            bt = tl.load(y_ptr + base + cols[:, None] * L + kk[None, :], mask=kok[None, :], other=0.0)
        else:  # P[B2, B1] times W[B1, B1], read from p[B1, B1]'s upper triangle (W^T)
            a = tl.load(p_ptr + base + rows[:, None] * L + kk[None, :], mask=rok[:, None] & kok[None, :],
                        other=0.0)
            bt = tl.load(p_ptr + base + cols[:, None] * L + kk[None, :], mask=kok[None, :], other=0.0)
            # below p's diagonal lies P, and rows at or past T may hold anything: select zeros there (a
            # select, not a product, so no NaN gets through)
            bt = tl.where((kk[None, :] >= cols[:, None]) & (A + kk < T)[None, :], bt, 0.0)
        acc = tl.dot(a, tl.trans(bt), acc, input_precision=INV_PREC)
    rmask = (rows < L)[:, None]
    t_offs = base + cols[None, :] * L + rows[:, None]  # (row, col) -> (col, row): the transposed store
    if SECOND:
        tl.store(w_ptr + base + rows[:, None] * L + cols[None, :], acc, mask=rmask)
        if STORE_T:
            tl.store(p_ptr + t_offs, acc, mask=rmask)
    else:
        g = tl.load(g_ptr + pid_b * stride_gb + (A + rows) * stride_gt, mask=rok, other=0.0)
        tl.store(y_ptr + t_offs, g.to(tl.float32)[:, None] * acc, mask=rmask)


@triton.jit
def _wapply_kernel(w_ptr, x_ptr, x2_ptr, out_ptr, outop_ptr, s_ptr, f_ptr, dpart_ptr,
                   A, T, D, L_eff, x_row0, chunk,
                   stride_wb, stride_wc, stride_wr, stride_xb, stride_xt, stride_ob, stride_ot, stride_pb,
                   stride_pt, stride_eb,
                   TRANS: tl.constexpr, HAS_X2: tl.constexpr, STORE_OP: tl.constexpr, DELTA: tl.constexpr,
                   SPLIT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   INV_PREC: tl.constexpr, EVEN_D: tl.constexpr):
    """out[A + r] = sum_k W[r, k] x[k] (TRANS: sum_k W[k, r] (x + x2)[k]) with W = w[:, chunk] lower
    triangular, K step BK (dividing BM).
    x rows are x_row0 + k; out, outop, s, f rows are A + r. DELTA: per-D-tile <out_rounded, s - f> row sums.
    SPLIT: W is bf16 and x (fp32) is split in registers into bf16 high and low parts: two bf16 products
    (W.hi + W.lo) keep x's fp32 resolution at the bf16 tensor-core rate."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    r0 = pid_m * BM
    rl = r0 + tl.arange(0, BM)
    dcols = pid_n * BN + tl.arange(0, BN)
    dmask = dcols < D
    w_ptr += pid_b * stride_wb + tl.cast(chunk, tl.int64) * stride_wc  # chunk * L * L may exceed 2^31
    x_off = pid_b * stride_xb + dcols[None, :]
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    if TRANS:
        lo, hi = r0, L_eff
    else:
        lo, hi = 0, tl.minimum(r0 + BM, L_eff)
    for k0 in range(lo, hi, BK):
        kk = k0 + tl.arange(0, BK)
        if TRANS:
            w_offs = kk[None, :] * stride_wr + rl[:, None]
        else:
            w_offs = rl[:, None] * stride_wr + kk[None, :]
        w = tl.load(w_ptr + w_offs)
        if EVEN_D:  # a row mask only
            xm = (kk < L_eff)[:, None]
        else:
            xm = (kk < L_eff)[:, None] & dmask[None, :]
        x = tl.load(x_ptr + x_off + (x_row0 + kk)[:, None] * stride_xt, mask=xm, other=0.0).to(tl.float32)
        if HAS_X2:
            x += tl.load(x2_ptr + x_off + (x_row0 + kk)[:, None] * stride_xt, mask=xm, other=0.0)
        if SPLIT:
            x_hi = x.to(tl.bfloat16)
            x_lo = (x - x_hi.to(tl.float32)).to(tl.bfloat16)
            acc = mma(w, x_hi, acc, INV_PREC)
            acc = mma(w, x_lo, acc, INV_PREC)
        else:
            acc = tl.dot(w, x, acc, input_precision=INV_PREC)
    m2 = (rl < L_eff)[:, None] & dmask[None, :]
    offs = pid_b * stride_ob + (A + rl)[:, None] * stride_ot + dcols[None, :]
    tl.store(out_ptr + offs, acc, mask=m2)
    rounded = acc
    if STORE_OP:
        rounded = acc.to(outop_ptr.dtype.element_ty)
        op_offs = pid_b * stride_pb + (A + rl)[:, None] * stride_pt + dcols[None, :]
        tl.store(outop_ptr + op_offs, rounded, mask=m2)
    if DELTA:
        # Delta_t = <df_t, s_t - f_t> from the same rounded df that the <df_t, s_j> tiles use: the large
        # common part of s then cancels exactly in gamma <df_t, s_j> - Delta_t.
        s = tl.load(s_ptr + offs, mask=m2, other=0.0)
        f = tl.load(f_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        part = tl.sum(rounded.to(tl.float32) * (s - f), 1)
        tl.store(dpart_ptr + pid_b * stride_eb + (A + rl) * tl.num_programs(1) + pid_n, part, mask=rl < L_eff)


@dataclass
class WBuffers:
    """Where :func:`build_w_range` builds W: ``w`` (B, n_chunks, L, L) fp32, zero above the diagonal; ``pd``
    and ``y`` fp32 scratches of its shape (pd: P below the block diagonal, W^T above; y: the levels' Y^T;
    None when L == C, no doubling level); ``out`` the W the products read: w itself, or its bf16 copy
    (``split``)."""

    w: torch.Tensor
    pd: torch.Tensor
    y: torch.Tensor | None
    out: torch.Tensor

    @classmethod
    def alloc(cls, B: int, T: int, bl: Blocks, split: bool, device: torch.device) -> WBuffers:
        L = bl.L
        w = torch.zeros(B, cdiv(T, L), L, L, device=device, dtype=torch.float32)
        out = torch.empty(w.shape, device=device, dtype=torch.bfloat16) if split else w
        return cls(w, torch.empty_like(w), torch.empty_like(w) if L > bl.C else None, out)


def build_w_range(q_b, k_b, gamma, key_mask, lse, buf: WBuffers, c0: int, c1: int, bl: Blocks,
                  streams: Streams, side: bool = False) -> None:
    """W of the super-chunks [c0, c1) into ``buf`` (and its bf16 copy), on the side stream of ``streams``
    with ``side``; reads the log-sum-exp of their rows only."""
    B, T, D = q_b.shape
    scale2 = LOG2E / math.sqrt(D)
    km, smb, mode = _mask_arg(key_mask, q_b)
    L, nI = bl.L, c1 - c0
    r0, r1 = c0 * L, min(T, c1 * L)
    w, pd, y = buf.w, buf.pd, buf.y
    qs, ks, gs, ws = q_b.stride(), k_b.stride(), gamma.stride(), w.stride()
    # P first: its diagonal tiles reach above the diagonal, where the inverses' W^T then goes
    BoundKernel.get(_diag_probs_kernel, streams, MASK=mode, BM=bl.bm, BN=bl.bn, BK=bl.bk, PREC=bl.prec,
                    EVEN_D=bl.even_d, num_warps=bl.warps, num_stages=bl.stages)(
        (L // bl.bm, L // bl.bn, B * nI), q_b, k_b, km, lse, pd, T, D, L, nI, c0, qs[0], qs[1], ks[0], ks[1],
        smb, lse.stride(0), ws[0], ws[1], scale2, side=side,
    )
    BoundKernel.get(_diag_inverse_kernel, streams, MASK=mode, C=bl.C, BK=bl.bk,
                    LOG2C=int(math.log2(bl.C)), PREC=bl.prec, INV_PREC=bl.inv_prec, EVEN_D=bl.even_d,
                    num_warps=4)(
        (cdiv(r1 - r0, bl.C), B), q_b, k_b, km, lse, gamma, w, pd, T, D, L, r0, qs[0], qs[1], ks[0], ks[1],
        smb, lse.stride(0), gs[0], gs[1], ws[0], ws[1], scale2, side=side,
    )
    size = bl.C
    while size < L:  # blocks of `size` rows are complete: join neighbouring pairs
        bm = min(size, bl.bm_lv)
        n_tiles = size // bm
        grid = (n_tiles * n_tiles, cdiv(cdiv(L, size), 2), B * nI)
        for second in (False, True):  # W^T of the new blocks is needed while a later level reads them
            BoundKernel.get(_wlevel_kernel, streams, SECOND=second, STORE_T=second and 2 * size < L, BM=bm,
                            BK=min(bm, bl.bk_lv), INV_PREC=bl.level_prec, num_warps=bl.warps_lv,
                            num_stages=bl.stages_lv)(
                grid, pd, w, y, gamma, T, L, size, n_tiles, nI, c0, ws[0], ws[1], gs[0], gs[1], side=side,
            )
        size *= 2
    if buf.out is not w:
        with streams.on(side):
            buf.out[:, c0:c1].copy_(w[:, c0:c1])


def build_w(q_b, k_b, gamma, key_mask, lse, bl: Blocks, split: bool, streams: Streams) -> torch.Tensor:
    """W: (B, n_chunks, L, L), the inverse of (I - G P) inside each super-chunk (zero above the diagonal):
    fp32, or (split) rounded to bf16 for the two-product application of ``w_applier``."""
    B, T, _ = q_b.shape
    buf = WBuffers.alloc(B, T, bl, split, q_b.device)
    build_w_range(q_b, k_b, gamma, key_mask, lse, buf, 0, cdiv(T, bl.L), bl, streams)
    return buf.out


def w_applier(w, x, out, out_op, bl: Blocks, streams: Streams, *, x2=None, trans=False, delta=None, s=None,
              f=None) -> Callable[[int, int], None]:
    """A launcher ``(A, L_eff) -> None`` of out[:, A:A+L_eff] = W_chunk x (x: the super-chunk's rows, local
    row 0 = A), or with ``trans`` W_chunk^T (x + x2) (x, x2: full (B, T, D) tensors); it also writes the
    operand copy out_op (unless it is out) and, with ``delta``, the Delta partials (from s and f).
    w: as returned by build_w. Everything but the super-chunk is fixed here, once per solve."""
    B, T, D = out.shape
    assert x2 is None or x2.stride() == x.stride()
    if delta is not None:
        assert s.stride() == out.stride() and f.stride() == out.stride()
    nd = cdiv(D, bl.bd_w)
    kern = BoundKernel.get(
        _wapply_kernel, streams, TRANS=trans, HAS_X2=x2 is not None, STORE_OP=out_op is not out,
        DELTA=delta is not None, SPLIT=w.dtype == torch.bfloat16, BM=bl.bm_w, BN=bl.bd_w, BK=bl.bk_w,
        INV_PREC=bl.inv_prec, EVEN_D=bl.even_d, num_warps=bl.warps_w, num_stages=bl.stages_w,
    )
    tensors = (w, x, x if x2 is None else x2, out, out_op, out if s is None else s,
               out if f is None else f, out if delta is None else delta)
    ws, xs, os_, ps = w.stride(), x.stride(), out.stride(), out_op.stride()
    strides = (ws[0], ws[1], ws[2], xs[0], xs[1], os_[0], os_[1], ps[0], ps[1],
               0 if delta is None else delta.stride(0))
    L, bm = bl.L, bl.bm_w

    def launch(A: int, L_eff: int) -> None:
        kern((cdiv(L_eff, bm), nd, B), *tensors, A, T, D, L_eff, A if trans else 0, A // L, *strides)

    return launch
