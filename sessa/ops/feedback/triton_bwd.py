"""Triton kernels of the backward feedback solve (DESIGN §2.3), and their launcher.

Super-chunks [a, a + L) are visited in reverse. ``push`` (B, T, D) fp32 collects, for every earlier row j,
sum_{t in later super-chunks} gamma_t P[t, j] df_t. Per super-chunk (4 launches):

1. ``w_applier`` (triton_tril): df = W^T (ds + push) with the intra-chunk inverse W saved by the forward, and
   the per-D-tile partial sums of Delta_t = <df_t, s_t - f_t> (= gamma_t <df_t, c_t>, FlashAttention's
   rowsum(dO * O));
2. ``_dlogit_kernel`` tiles (rows, keys < a + L): logits and <df_t, s_j> in one pass over D, then
   dlogit = P (gamma_t <df_t, s_j> - Delta_t) and gamma_t P (bf16 scratches), and
   dgamma_t += sum_j P <df_t, s_j> (row sums, atomically over key tiles);
3. ``_tgemm_acc_kernel`` per (key tile, D-tile): push[j] += (gamma P)[:, j]^T df (on the sequential path;
   in pairs of super-chunks, so that each fp32 push row is read and written once per pair:
   ``_chunk_launcher``);
4. on a side stream of default priority (the launches above go to the higher-priority lead stream,
   ``Streams(lead=True)``; dlogit double-buffered), overlapping the next super-chunk, one ``_dq_dk_kernel``
   launch: dq = dlogit @ k / sqrt(D) per (row tile, D-tile) and dk[j] += dlogit[:, j]^T q / sqrt(D) per
   (key tile, D-tile); the super-chunk's own keys are then complete and go to dk_b in its dtype.

Every scratch tile a consumer reads was written by the producer (on the producer's tile grid; the dk / push
GEMM steps over bt_dk rows and dq over bm rows, so the producer writes whole blocks of SPAN = max(bm, bt_dk)
rows, including the zero tiles right of the diagonal inside each block; tiles wholly above those blocks
are neither written nor read).

Operands: the scratches, df_op and s_op are bf16 for bf16 and fp16 inputs (fp32 for fp32 ones). ``tl.dot``
needs one operand dtype, so for fp16 inputs the dq / dk products round the fp16 q_b / k_b tile to bf16 in
registers (the dlogit operand is bf16 already; fp16 could not hold it, nor s); for fp32 and bf16 inputs that
cast is a no-op. The accumulators stay fp32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from sessa.ops.feedback.triton_common import (
    LOG2E,
    Blocks,
    _allowed,
    _end_row,
    _first_key,
    _load_d,
    _mask_arg,
    _row_lse,
    cdiv,
    in_dtype,
    mma,
)
from sessa.ops.feedback.triton_fwd import ForwardState
from sessa.ops.feedback.triton_launch import BoundKernel, Streams
from sessa.ops.feedback.triton_tril import w_applier


@triton.jit
def _dlogit_kernel(q_ptr, k_ptr, km_ptr, lse_ptr, g_ptr, dfop_ptr, sop_ptr, dpart_ptr, dg_ptr, dl_ptr, n_ptr,
                   A, T, D, ND,
                   stride_qb, stride_qt, stride_mb, stride_lb, stride_gb, stride_gt, stride_ob, stride_ot,
                   stride_eb, stride_pb, stride_pr, scale2,
                   MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   SPAN: tl.constexpr, PREC: tl.constexpr, EVEN_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    r_start = A + pid_m * BM
    c_start = pid_n * BN
    km_ptr += pid_b * stride_mb
    # Written: every tile its readers touch, i.e. left of the end of the SPAN-row block holding this tile's
    # last row (SPAN: a power of two >= BM, a multiple of the dk / push GEMM's row step and of dq's row tile);
    # tiles right of the diagonal inside that block hold zeros. Packed sequences: from the first key tile
    # of the sequence holding the block's first row (the readers skip the same tiles, block by block).
    span0 = A + ((pid_m * BM) // SPAN) * SPAN
    if (c_start < span0 + SPAN) & (c_start >= _first_key(km_ptr, span0, T, BN, MASK)):
        rows = r_start + tl.arange(0, BM)
        cols = c_start + tl.arange(0, BN)
        rmask = rows < T
        # rows / keys at or past T read row T - 1 (finite values that p = 0 masks out): unpredicated loads
        rq = tl.minimum(rows, T - 1)[:, None]
        ck = tl.minimum(cols, T - 1)[None, :]
        q_rows = q_ptr + pid_b * stride_qb + rq * stride_qt
        k_rows = k_ptr + pid_b * stride_qb + ck * stride_qt
        df_rows = dfop_ptr + pid_b * stride_ob + rq * stride_ot
        s_rows = sop_ptr + pid_b * stride_ob + ck * stride_ot
        logit = tl.zeros([BM, BN], dtype=tl.float32)
        dps = tl.zeros([BM, BN], dtype=tl.float32)  # <df_t, s_j>
        for d0 in range(0, D, BK):
            dd = d0 + tl.arange(0, BK)
            in_row, in_col = (dd < D)[None, :], (dd < D)[:, None]
            qt = _load_d(q_rows + dd[None, :], in_row, EVEN_D)
            kt = _load_d(k_rows + dd[:, None], in_col, EVEN_D)
            dft = _load_d(df_rows + dd[None, :], in_row, EVEN_D)
            st = _load_d(s_rows + dd[:, None], in_col, EVEN_D)
            logit = mma(qt, kt, logit, PREC)
            dps = mma(dft, st, dps, PREC)
        lse = _row_lse(lse_ptr + pid_b * stride_lb, rows, T)
        ok = _allowed(rows, cols, T, km_ptr, MASK)
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
def _tgemm_tile(pid_j, pid_d, pid_b, km_ptr, a_ptr, b_ptr, out_ptr, out2_ptr, A, T, D, L_eff, fresh_end,
                final_from, stride_ab, stride_ar, stride_bb, stride_bt, stride_ob, stride_ot, scale,
                MASK: tl.constexpr, BKEY: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr,
                SPAN: tl.constexpr, PREC: tl.constexpr, EVEN_D: tl.constexpr):
    """out[j] += scale * sum_{t in the super-chunk} a[t - A, j] b[t] for a key tile j and a D tile.

    dk: a = dlogit, b = q_b; push: a = gamma P, b = df. Reads only scratch tiles the dlogit kernel wrote
    (packed sequences: the SPAN-row blocks starting before the end of the last key's sequence). Key tiles
    below fresh_end have no earlier sum in out (it is not read: no zero fill); those from final_from on get
    their last term here and go to out2, in out2's dtype (dk: the gradient itself, no conversion pass)."""
    j0 = pid_j * BKEY
    keys = j0 + tl.arange(0, BKEY)
    dcols = pid_d * BN + tl.arange(0, BN)
    dmask = dcols < D
    a_ptr += pid_b * stride_ab + keys[None, :]
    b_ptr += pid_b * stride_bb + dcols[None, :]
    acc = tl.zeros([BKEY, BN], dtype=tl.float32)
    first = tl.maximum(j0 - A, 0) // BT  # the first row tile whose scratch tile (rows, keys) was written
    last = tl.cdiv(L_eff, BT)
    if MASK == 2:
        last = tl.minimum(last, tl.cdiv(_end_row(km_ptr, j0 + BKEY - 1, T, MASK) - A, SPAN) * (SPAN // BT))
    for i in range(first, last):
        rel = i * BT + tl.arange(0, BT)
        trows = A + rel
        a = tl.load(a_ptr + rel[:, None] * stride_ar)
        # rows past T read row T - 1: they meet zero rows of a
        b = _load_d(b_ptr + tl.minimum(trows, T - 1)[:, None] * stride_bt, dmask[None, :], EVEN_D)
        acc = mma(tl.trans(a), b.to(a.dtype), acc, PREC)  # fp16 q_b times the bf16 dlogit scratch: bf16
    m2 = (keys < T)[:, None] & dmask[None, :]
    offs = pid_b * stride_ob + keys[:, None] * stride_ot + dcols[None, :]
    acc = acc * scale
    if j0 >= fresh_end:
        acc += tl.load(out_ptr + offs, mask=m2, other=0.0)
    if j0 >= final_from:
        tl.store(out2_ptr + offs, acc.to(out2_ptr.dtype.element_ty), mask=m2)
    else:
        tl.store(out_ptr + offs, acc, mask=m2)


@triton.jit
def _tgemm_acc_kernel(km_ptr, a_ptr, b_ptr, out_ptr, A, T, D, L_eff, J_LO, stride_mb,
                      stride_ab, stride_ar, stride_bb, stride_bt, stride_ob, stride_ot, scale,
                      MASK: tl.constexpr, BKEY: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr,
                      SPAN: tl.constexpr, PREC: tl.constexpr, EVEN_D: tl.constexpr):
    """The push GEMM over the key tiles from J_LO (a multiple of BKEY) on: ``_tgemm_tile`` per program."""
    pid_b = tl.program_id(2).to(tl.int64)
    _tgemm_tile(tl.program_id(0) + J_LO // BKEY, tl.program_id(1), pid_b, km_ptr + pid_b * stride_mb, a_ptr,
                b_ptr, out_ptr, out_ptr, A, T, D, L_eff, 0, T, stride_ab, stride_ar, stride_bb, stride_bt,
                stride_ob, stride_ot, scale, MASK, BKEY, BT, BN, SPAN, PREC, EVEN_D)


@triton.jit
def _dq_tile(pid_m, pid_d, pid_b, km_ptr, dl_ptr, k_ptr, dq_ptr, A, T, D,
             stride_pb, stride_pr, stride_kb, stride_kt, scale,
             MASK: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, SPAN: tl.constexpr,
             PREC: tl.constexpr, EVEN_D: tl.constexpr):
    """dq[rows] = scale * dlogit[rows, :] @ k for one (BM rows, BN of D) tile (packed sequences: from the
    first key tile the dlogit kernel wrote for the SPAN-row block of these rows)."""
    r_start = A + pid_m * BM
    rows = r_start + tl.arange(0, BM)
    dcols = pid_d * BN + tl.arange(0, BN)
    dmask = dcols < D
    dl_ptr += pid_b * stride_pb + (rows - A)[:, None] * stride_pr
    k_ptr += pid_b * stride_kb + dcols[None, :]
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    lo = _first_key(km_ptr, A + ((pid_m * BM) // SPAN) * SPAN, T, BK, MASK)
    for c0 in range(lo, tl.minimum(r_start + BM, T), BK):
        cols = c0 + tl.arange(0, BK)
        dl = tl.load(dl_ptr + cols[None, :])
        # keys past T read key T - 1: they meet zero columns of dl
        kt = _load_d(k_ptr + tl.minimum(cols, T - 1)[:, None] * stride_kt, dmask[None, :], EVEN_D)
        acc = mma(dl, kt.to(dl.dtype), acc, PREC)  # fp16 k_b times the bf16 dlogit scratch: bf16
    m2 = (rows < T)[:, None] & dmask[None, :]
    out = dq_ptr + pid_b * stride_kb + rows[:, None] * stride_kt + dcols[None, :]
    tl.store(out, (acc * scale).to(dq_ptr.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["dk_fresh"])  # T or 0: one compiled kernel for both
def _dq_dk_kernel(km_ptr, dl_ptr, q_ptr, k_ptr, dq_ptr, dk_ptr, dk2_ptr, A, T, D, L_eff, N_DQ, dk_fresh,
                  stride_mb, stride_pb, stride_pr, stride_qb, stride_qt, stride_ob, stride_ot, scale,
                  MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
                  BD_DK: tl.constexpr, SPAN: tl.constexpr, PREC: tl.constexpr, EVEN_D: tl.constexpr):
    """Both products of dlogit in one launch: the first N_DQ programs are dq tiles, the rest dk tiles
    (dk[j] += scale * dlogit[:, j]^T q; dk_fresh: T on the first super-chunk visited, where dk holds no sum
    yet, else 0; keys from A on are complete after this super-chunk: written to dk2, the gradient)."""
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    km_ptr += pid_b * stride_mb
    if pid < N_DQ:
        n_d = tl.cdiv(D, BD)
        _dq_tile(pid // n_d, pid % n_d, pid_b, km_ptr, dl_ptr, k_ptr, dq_ptr, A, T, D, stride_pb, stride_pr,
                 stride_qb, stride_qt, scale, MASK, BM, BN, BD, SPAN, PREC, EVEN_D)
    else:
        pid -= N_DQ
        n_d = tl.cdiv(D, BD_DK)
        _tgemm_tile(pid // n_d, pid % n_d, pid_b, km_ptr, dl_ptr, q_ptr, dk_ptr, dk2_ptr, A, T, D, L_eff,
                    dk_fresh, A, stride_pb, stride_pr, stride_qb, stride_qt, stride_ob, stride_ot, scale,
                    MASK, BN, BT, BD_DK, SPAN, PREC, EVEN_D)


def _chunk_launcher(q_b, k_b, gamma, f, key_mask, st: ForwardState, ds, bufs, streams: Streams):
    """A launcher ``(dl, A, L_eff, dl_free, step, L_later) -> None`` of all backward launches of the
    super-chunk [A, A + L_eff), the step-th visited (L_later: the length of the one visited before), with
    dlogit in the scratch dl (one of two buffers of one shape) once the side-stream event dl_free (None: at
    once) has passed; dq and dk go to the side stream. Everything but the super-chunk is fixed here, once
    per solve.

    Push in pairs, when the gamma P scratch p holds 2L rows (three super-chunks or more): an even step
    adds its super-chunk's terms to the L keys just before it only (the next super-chunk's right-hand side
    needs those) and keeps its gamma P in p's rows [L, 2L); the odd step after it writes its own gamma P to
    rows [0, L) and adds both super-chunks' terms to every key before it in one GEMM of 2L rows. Each key's
    fp32 push row is then read and written once per two super-chunks instead of every super-chunk."""
    B, T, D = f.shape
    bl: Blocks = st.blocks
    p, dl0, push, df, df_op, dpart, dgamma, dk, dk_out, dq = bufs
    L = bl.L
    paired = p.shape[1] == 2 * L
    km, smb, mode = _mask_arg(key_mask, q_b)
    scale = 1.0 / math.sqrt(D)
    solve = w_applier(st.w, ds, df, df_op, bl, streams, x2=push, trans=True, delta=dpart, s=st.s, f=f)
    opts = dict(PREC=bl.prec, EVEN_D=bl.even_d, num_warps=bl.warps, num_stages=bl.stages)
    dlogit = BoundKernel.get(_dlogit_kernel, streams, MASK=mode, BM=bl.bm, BN=bl.bn, BK=bl.bk, SPAN=bl.span,
                             **opts)
    dq_dk = BoundKernel.get(_dq_dk_kernel, streams, MASK=mode, BM=bl.bm, BN=bl.bn, BD=bl.bd, BT=bl.bt_dk,
                            BD_DK=bl.bd_dk, SPAN=bl.span, **opts)
    push_acc = BoundKernel.get(_tgemm_acc_kernel, streams, MASK=mode, BKEY=bl.bn, BT=bl.bt_dk, BN=bl.bd_dk,
                               SPAN=bl.span, PREC=bl.prec, EVEN_D=bl.even_d, num_warps=bl.warps,
                               num_stages=bl.stages_push)
    assert q_b.stride() == k_b.stride() == dq.stride() and p.stride() == dl0.stride()  # dk is fp32
    assert dk.stride() == dk_out.stride()
    qs, gs, ds_, ps, ks = q_b.stride(), gamma.stride(), df_op.stride(), p.stride(), dk.stride()
    dlogit_args = (T, D, dpart.shape[-1], qs[0], qs[1], smb, st.lse.stride(0), gs[0], gs[1], ds_[0], ds_[1],
                   dpart.stride(0), ps[0], ps[1], LOG2E * scale)
    n_dq, n_dk = cdiv(D, bl.bd), cdiv(D, bl.bd_dk)  # D tiles of dq, of dk and push
    pu = push.stride()
    p_later = p[:, L:]  # paired: gamma P of the super-chunk visited first of a pair

    def launch(dl, A: int, L_eff: int, dl_free, step: int, L_later: int) -> None:
        solve(A, L_eff)
        if dl_free is not None:
            streams.join(dl_free)
        defer = paired and step % 2 == 0  # this super-chunk's far keys go with the next one's push
        n_rows = cdiv(L_eff, bl.span) * (bl.span // bl.bm)  # whole SPAN-row blocks
        dlogit((n_rows, cdiv(A + L_eff, bl.bn), B), q_b, k_b, km, st.lse, gamma, df_op, st.s_op, dpart,
               dgamma, dl, p_later if defer else p, A, *dlogit_args)
        streams.fork()  # dq and dk only read dl: on the side stream they overlap the next launches
        nq = cdiv(L_eff, bl.bm) * n_dq
        fresh = T if A + L_eff == T else 0  # the first super-chunk visited: no earlier dk terms
        dq_dk((nq + cdiv(A + L_eff, bl.bn) * n_dk, B), km, dl, q_b, k_b, dq, dk, dk_out, A, T, D, L_eff, nq,
              fresh, smb, ps[0], ps[1], qs[0], qs[1], ks[0], ks[1], scale, side=True)
        if A == 0:
            return
        # push[j] += sum_t (gamma P)[t, j] df_t over rows t of this (and, paired, the later) super-chunk.
        # On the sequential path: the next super-chunk's right-hand side needs its own rows of push.
        if defer:  # the L keys before A only
            push_acc((L // bl.bn, n_dk, B), km, p_later, df_op, push, A, T, D, L_eff, A - L, smb, ps[0],
                     ps[1], ds_[0], ds_[1], pu[0], pu[1], 1.0)
        else:  # every key before A; paired: rows [A, A + L) of this super-chunk, then the later one's
            rows = L + L_later if paired else L_eff
            push_acc((cdiv(A, bl.bn), n_dk, B), km, p, df_op, push, A, T, D, rows, 0, smb, ps[0], ps[1],
                     ds_[0], ds_[1], pu[0], pu[1], 1.0)

    return launch


def backward_fixed(q_b, k_b, gamma, f, key_mask, st: ForwardState, ds: torch.Tensor, poison: bool = False):
    """Gradients (dq_b, dk_b, dgamma (B,T) fp32, df) of the fixed-length solve; inputs and ds dense
    (triton_common.dense)."""
    B, T, D = f.shape
    bl = st.blocks
    dev, odt = f.device, st.s_op.dtype
    starts = list(range(0, T, bl.L))
    # one scratch allocation, so that all views share their strides: dlogit double-buffered (dq runs behind)
    # and gamma P left of the super-chunk (2L rows: pushes in pairs, _chunk_launcher)
    n_dl, p_rows = min(2, len(starts)), 2 * bl.L if len(starts) >= 3 else bl.rows
    scratch = torch.empty(B, n_dl * bl.rows + p_rows, bl.T_pad, device=dev, dtype=odt)
    dls = [scratch[:, i * bl.rows:(i + 1) * bl.rows] for i in range(n_dl)]
    p = scratch[:, n_dl * bl.rows:]
    push = torch.zeros(B, T, D, device=dev, dtype=torch.float32)
    df = torch.empty(B, T, D, device=dev, dtype=torch.float32)
    df_op = df if odt == torch.float32 else torch.empty(B, T, D, device=dev, dtype=odt)
    dpart = torch.empty(B, T, cdiv(D, bl.bd_w), device=dev, dtype=torch.float32)
    dgamma = torch.zeros(B, T, device=dev, dtype=torch.float32)
    dk = torch.empty(B, T, D, device=dev, dtype=torch.float32)  # keys < A: the sum so far
    dk_out = dk if k_b.dtype == torch.float32 else torch.empty_like(k_b)
    dq = torch.empty_like(q_b)
    if poison:
        for x in (p, *dls, df, df_op, dpart, dk, dk_out, dq):
            x.fill_(float("nan"))
    streams = Streams.shared(dev, side=True, lead=True)
    bufs = (p, dls[0], push, df, df_op, dpart, dgamma, dk, dk_out, dq)
    with streams.entered():  # leaves before the scratches are freed on return
        chunk = _chunk_launcher(q_b, k_b, gamma, f, key_mask, st, ds, bufs, streams)
        # The last super-chunk starts at the last multiple of L below T (not at T - L).
        dq_events: list = []
        L_later = 0
        for i, A in enumerate(reversed(starts)):
            # the dq of two super-chunks ago read this dl buffer (its event: two side_event calls back, valid)
            L_eff = min(bl.L, T - A)
            chunk(dls[i % 2], A, L_eff, dq_events[i - 2] if i >= 2 else None, i, L_later)
            L_later = L_eff
            dq_events.append(streams.side_event())
        streams.join()
    return dq, dk_out, dgamma, in_dtype(df, df_op, f.dtype)
