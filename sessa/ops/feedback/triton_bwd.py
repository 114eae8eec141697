"""Triton kernels of the backward feedback solve (SPEC §2.3), and their launcher.

Super-chunks [a, a + L) are visited in reverse. ``push`` (B, T, D) fp32 collects, for every earlier row j,
sum_{t in later super-chunks} gamma_t P[t, j] df_t. Per super-chunk (4 launches + 1 for P's diagonal block):

1. ``_probs_kernel`` (forward file) P[rows, a:a+L] into the scratch (the intra-chunk block only);
2. ``_intra_bwd_kernel`` reverse substitution over the sub-blocks, one program per D-tile:
   df_c = M_c^T (ds_c + push_c + sum_{c' > c} (gamma P)[c', c]^T df_c'), and the per-D-tile partial sums
   of Delta_t = <df_t, s_t - f_t> (= gamma_t <df_t, c_t>, the FlashAttention "rowsum(dO * O)");
3. ``_dlogit_kernel`` tiles (rows, keys < a + L): logits and <df_t, s_j> in one pass over D, then
   dlogit = P (gamma_t <df_t, s_j> - Delta_t) and gamma_t P (bf16 scratches), and dgamma_t += sum_j P <df_t, s_j>
   (row sums, atomically over key tiles);
4. ``_dk_push_kernel`` per (key tile, D-tile): dk[j] += dlogit[:, j]^T q / sqrt(D) and push[j] += (gamma P)[:, j]^T df;
5. ``_dq_kernel`` per (row tile, D-tile): dq = dlogit @ k / sqrt(D).

Every scratch tile a consumer reads was written by the producer on the same tile grid (tiles wholly above
the diagonal are neither written nor read).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from sessa.ops.feedback.triton_fwd import (
    LOG2E,
    Blocks,
    ForwardState,
    _allowed,
    _mask_arg,
    _row_lse,
    launch_probs,
    mma,
)


@triton.jit
def _intra_bwd_kernel(p_ptr, inv_ptr, ds_ptr, push_ptr, f_ptr, s_ptr, g_ptr, df_ptr, dfop_ptr, dpart_ptr,
                      A, T, D, n_sub, ND,
                      stride_pb, stride_pr, stride_ib, stride_xb, stride_xt, stride_fb, stride_ft,
                      stride_gb, stride_gt, stride_ob, stride_ot, stride_eb,
                      C: tl.constexpr, BD: tl.constexpr, STORE_OP: tl.constexpr, PREC: tl.constexpr):
    # ds, push, s, df share strides (stride_x*): all (B, T, D) contiguous; dfop has its own (stride_o*).
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    p_ptr += pid_b * stride_pb
    inv_ptr += pid_b * stride_ib
    g_ptr += pid_b * stride_gb
    dfop_ptr += pid_b * stride_ob
    xoff = pid_b * stride_xb
    ar = tl.arange(0, C)
    dcols = pid_d * BD + tl.arange(0, BD)
    dmask = dcols < D
    for i in range(0, n_sub):
        c = n_sub - 1 - i
        rows = A + c * C + ar
        rmask = rows < T
        m2 = rmask[:, None] & dmask[None, :]
        acc = tl.zeros([C, BD], dtype=tl.float32)
        for c2 in range(c + 1, n_sub):  # later sub-blocks of this super-chunk, solved by this program
            later = A + c2 * C + ar
            lmask = later < T
            pt = tl.load(p_ptr + (c2 * C + ar)[None, :] * stride_pr + rows[:, None])  # P[later, rows]^T
            g2 = tl.load(g_ptr + later * stride_gt, mask=lmask, other=0.0).to(tl.float32)
            pt = (pt.to(tl.float32) * g2[None, :]).to(dfop_ptr.dtype.element_ty)
            w = tl.load(dfop_ptr + later[:, None] * stride_ot + dcols[None, :],
                        mask=lmask[:, None] & dmask[None, :], other=0.0)
            acc = mma(pt, w, acc, PREC)
        offs = xoff + rows[:, None] * stride_xt + dcols[None, :]
        rhs = tl.load(ds_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        rhs += tl.load(push_ptr + offs, mask=m2, other=0.0) + acc
        rhs = tl.where(m2, rhs, 0.0)
        inv = tl.load(inv_ptr + (A // C + c) * C * C + ar[None, :] * C + ar[:, None])  # M_c^T
        dfc = tl.dot(inv, rhs, input_precision="ieee")
        tl.store(df_ptr + offs, dfc, mask=m2)
        if STORE_OP:
            tl.store(dfop_ptr + rows[:, None] * stride_ot + dcols[None, :], dfc.to(dfop_ptr.dtype.element_ty),
                     mask=m2)
        s = tl.load(s_ptr + offs, mask=m2, other=0.0)
        f = tl.load(f_ptr + pid_b * stride_fb + rows[:, None] * stride_ft + dcols[None, :], mask=m2, other=0.0)
        # Delta from the same rounded df that the <df_t, s_j> tiles use: the large common part of s then
        # cancels exactly in gamma <df_t, s_j> - Delta_t (otherwise bf16 df costs ~3x in dq, dk).
        dfr = dfc.to(dfop_ptr.dtype.element_ty).to(tl.float32)
        part = tl.sum(dfr * (s - f.to(tl.float32)), 1)
        tl.store(dpart_ptr + pid_b * stride_eb + rows * ND + pid_d, part, mask=rmask)
        tl.debug_barrier()  # the next (earlier) sub-block reads these rows of df back


@triton.jit
def _dlogit_kernel(q_ptr, k_ptr, km_ptr, lse_ptr, g_ptr, dfop_ptr, sop_ptr, dpart_ptr, dg_ptr, dl_ptr, n_ptr,
                   A, T, D, ND,
                   stride_qb, stride_qt, stride_mb, stride_lb, stride_gb, stride_gt, stride_ob, stride_ot,
                   stride_eb, stride_pb, stride_pr, scale2,
                   HAS_MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    r_start = A + pid_m * BM
    c_start = pid_n * BN
    if c_start < r_start + BM:
        rows = r_start + tl.arange(0, BM)
        cols = c_start + tl.arange(0, BN)
        rmask = rows < T
        cmask = cols < T
        q_ptr += pid_b * stride_qb
        k_ptr += pid_b * stride_qb
        dfop_ptr += pid_b * stride_ob
        sop_ptr += pid_b * stride_ob
        logit = tl.zeros([BM, BN], dtype=tl.float32)
        dps = tl.zeros([BM, BN], dtype=tl.float32)  # <df_t, s_j>
        for d0 in range(0, D, BK):
            dd = d0 + tl.arange(0, BK)
            dmask = dd < D
            mr = rmask[:, None] & dmask[None, :]
            mc = cmask[None, :] & dmask[:, None]
            qt = tl.load(q_ptr + rows[:, None] * stride_qt + dd[None, :], mask=mr, other=0.0)
            kt = tl.load(k_ptr + cols[None, :] * stride_qt + dd[:, None], mask=mc, other=0.0)
            logit = mma(qt, kt, logit, PREC)
            dft = tl.load(dfop_ptr + rows[:, None] * stride_ot + dd[None, :], mask=mr, other=0.0)
            st = tl.load(sop_ptr + cols[None, :] * stride_ot + dd[:, None], mask=mc, other=0.0)
            dps = mma(dft, st, dps, PREC)
        lse = _row_lse(lse_ptr + pid_b * stride_lb, rows, T)
        ok = _allowed(rows, cols, T, km_ptr + pid_b * stride_mb, HAS_MASK)
        p = tl.where(ok, tl.exp2(logit * scale2 - lse[:, None]), 0.0)
        g = tl.load(g_ptr + pid_b * stride_gb + rows * stride_gt, mask=rmask, other=0.0).to(tl.float32)
        delta = tl.zeros([BM], dtype=tl.float32)
        for i in range(0, ND):
            delta += tl.load(dpart_ptr + pid_b * stride_eb + rows * ND + i, mask=rmask, other=0.0)
        dl = p * (g[:, None] * dps - delta[:, None])
        tl.atomic_add(dg_ptr + pid_b * T + rows, tl.sum(p * dps, 1), mask=rmask)
        offs = pid_b * stride_pb + (rows - A)[:, None] * stride_pr + cols[None, :]
        tl.store(dl_ptr + offs, dl.to(dl_ptr.dtype.element_ty))
        if c_start < A:  # gamma P of keys before this super-chunk feeds push
            tl.store(n_ptr + offs, (g[:, None] * p).to(n_ptr.dtype.element_ty))


@triton.jit
def _dk_push_kernel(dl_ptr, n_ptr, q_ptr, dfop_ptr, dk_ptr, push_ptr, A, T, D, L_eff,
                    stride_pb, stride_pr, stride_qb, stride_qt, stride_ob, stride_ot, stride_xb, stride_xt,
                    scale, BKEY: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    pid_j = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    j0 = pid_j * BKEY
    keys = j0 + tl.arange(0, BKEY)
    dcols = pid_d * BN + tl.arange(0, BN)
    dmask = dcols < D
    dl_ptr += pid_b * stride_pb + keys[None, :]
    n_ptr += pid_b * stride_pb + keys[None, :]
    q_ptr += pid_b * stride_qb + dcols[None, :]
    dfop_ptr += pid_b * stride_ob + dcols[None, :]
    acc_k = tl.zeros([BKEY, BN], dtype=tl.float32)
    acc_p = tl.zeros([BKEY, BN], dtype=tl.float32)
    first = tl.maximum(j0 - A, 0) // BT  # row tiles of this super-chunk that the dlogit kernel wrote
    for i in range(first, tl.cdiv(L_eff, BT)):
        rel = i * BT + tl.arange(0, BT)
        trows = A + rel
        mt = (trows < T)[:, None] & dmask[None, :]
        dl = tl.load(dl_ptr + rel[:, None] * stride_pr)
        qt = tl.load(q_ptr + trows[:, None] * stride_qt, mask=mt, other=0.0)
        acc_k = mma(tl.trans(dl), qt, acc_k, PREC)
        if j0 < A:
            nn = tl.load(n_ptr + rel[:, None] * stride_pr)
            w = tl.load(dfop_ptr + trows[:, None] * stride_ot, mask=mt, other=0.0)
            acc_p = mma(tl.trans(nn), w, acc_p, PREC)
    m2 = (keys < T)[:, None] & dmask[None, :]
    offs = pid_b * stride_xb + keys[:, None] * stride_xt + dcols[None, :]
    tl.store(dk_ptr + offs, tl.load(dk_ptr + offs, mask=m2, other=0.0) + acc_k * scale, mask=m2)
    if j0 < A:
        tl.store(push_ptr + offs, tl.load(push_ptr + offs, mask=m2, other=0.0) + acc_p, mask=m2)


@triton.jit
def _dq_kernel(dl_ptr, k_ptr, dq_ptr, A, T, D,
               stride_pb, stride_pr, stride_kb, stride_kt, scale,
               BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    r_start = A + pid_m * BM
    rows = r_start + tl.arange(0, BM)
    dcols = pid_d * BN + tl.arange(0, BN)
    dmask = dcols < D
    dl_ptr += pid_b * stride_pb + (rows - A)[:, None] * stride_pr
    k_ptr += pid_b * stride_kb + dcols[None, :]
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for c0 in range(0, tl.minimum(r_start + BM, T), BK):
        cols = c0 + tl.arange(0, BK)
        dl = tl.load(dl_ptr + cols[None, :])
        kt = tl.load(k_ptr + cols[:, None] * stride_kt, mask=(cols < T)[:, None] & dmask[None, :], other=0.0)
        acc = mma(dl, kt, acc, PREC)
    m2 = (rows < T)[:, None] & dmask[None, :]
    out = dq_ptr + pid_b * stride_kb + rows[:, None] * stride_kt + dcols[None, :]
    tl.store(out, (acc * scale).to(dq_ptr.dtype.element_ty), mask=m2)


def _launch_chunk(q_b, k_b, gamma, f, key_mask, st, ds, bufs, A, L_eff):
    """All backward launches of the super-chunk [A, A + L_eff)."""
    B, T, D = f.shape
    bl: Blocks = st.blocks
    p, dl, push, df, df_op, dpart, dgamma, dk, dq = bufs
    km, smb = _mask_arg(key_mask, q_b)
    scale = 1.0 / math.sqrt(D)
    nd = dpart.shape[-1]
    launch_probs(q_b, k_b, key_mask, st.lse, p, A, A, L_eff, bl)
    _intra_bwd_kernel[(triton.cdiv(D, bl.bd_solve), B)](
        p, st.inv, ds, push, f, st.s, gamma, df, df_op, dpart, A, T, D, triton.cdiv(L_eff, bl.C), nd,
        p.stride(0), p.stride(1), st.inv.stride(0), df.stride(0), df.stride(1), f.stride(0), f.stride(1),
        gamma.stride(0), gamma.stride(1), df_op.stride(0), df_op.stride(1), dpart.stride(0),
        C=bl.C, BD=bl.bd_solve, STORE_OP=df_op is not df, PREC=bl.prec, num_warps=4,
    )
    _dlogit_kernel[(triton.cdiv(L_eff, bl.bm), triton.cdiv(A + L_eff, bl.bn), B)](
        q_b, k_b, km, st.lse, gamma, df_op, st.s_op, dpart, dgamma, dl, p, A, T, D, nd,
        q_b.stride(0), q_b.stride(1), smb, st.lse.stride(0), gamma.stride(0), gamma.stride(1),
        df_op.stride(0), df_op.stride(1), dpart.stride(0), p.stride(0), p.stride(1), LOG2E * scale,
        HAS_MASK=key_mask is not None, BM=bl.bm, BN=bl.bn, BK=bl.bk, PREC=bl.prec, num_warps=4,
    )
    _dk_push_kernel[(triton.cdiv(A + L_eff, bl.bn), triton.cdiv(D, bl.bd), B)](
        dl, p, q_b, df_op, dk, push, A, T, D, L_eff, p.stride(0), p.stride(1), q_b.stride(0), q_b.stride(1),
        df_op.stride(0), df_op.stride(1), dk.stride(0), dk.stride(1), scale,
        BKEY=bl.bn, BT=bl.bm, BN=bl.bd, PREC=bl.prec, num_warps=4,
    )
    _dq_kernel[(triton.cdiv(L_eff, bl.bm), triton.cdiv(D, bl.bd), B)](
        dl, k_b, dq, A, T, D, dl.stride(0), dl.stride(1), k_b.stride(0), k_b.stride(1), scale,
        BM=bl.bm, BK=bl.bn, BN=bl.bd, PREC=bl.prec, num_warps=4,
    )


def backward_fixed(q_b, k_b, gamma, f, key_mask, st: ForwardState, ds: torch.Tensor, poison: bool = False):
    """Gradients (dq_b, dk_b, dgamma (B,T) fp32, df) of the fixed-length solve; inputs contiguous."""
    B, T, D = f.shape
    bl = st.blocks
    dev, odt = f.device, st.s_op.dtype
    p = torch.empty(B, bl.rows, bl.T_pad, device=dev, dtype=odt)  # P of the diagonal block, gamma P left of it
    dl = torch.empty_like(p)
    push = torch.zeros(B, T, D, device=dev, dtype=torch.float32)
    df = torch.empty(B, T, D, device=dev, dtype=torch.float32)
    df_op = df if odt == torch.float32 else torch.empty(B, T, D, device=dev, dtype=odt)
    dpart = torch.empty(B, T, triton.cdiv(D, bl.bd_solve), device=dev, dtype=torch.float32)
    dgamma = torch.zeros(B, T, device=dev, dtype=torch.float32)
    dk = torch.zeros(B, T, D, device=dev, dtype=torch.float32)
    dq = torch.empty_like(q_b)
    if poison:
        for x in (p, dl, df, df_op, dpart, dq):
            x.fill_(float("nan"))
    ds = ds.contiguous()
    bufs = (p, dl, push, df, df_op, dpart, dgamma, dk, dq)
    for A in reversed(range(0, T, bl.L)):  # the last super-chunk starts at the last multiple of L below T
        _launch_chunk(q_b, k_b, gamma, f, key_mask, st, ds, bufs, A, min(bl.L, T - A))
    return dq, dk.to(k_b.dtype), dgamma, df.to(f.dtype)
