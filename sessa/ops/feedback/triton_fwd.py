"""Triton kernels of the forward feedback solve (DESIGN §2.4), and their launcher.

Two-level blocking: the sequence is cut into *super-chunks* of L rows (``chunk_size``), each into
*sub-blocks* of C rows (16..64). Per batch element:

1. ``_lse_kernel`` (all rows in parallel): per-row log-sum-exp of the strict-past logits (log2 units);
   few rows (B * T): keys split over several programs per row tile, merged by ``_lse_combine_kernel``;
2. ``triton_tril.build_w_range`` (all super-chunks in parallel): W = (I - G P)^{-1} inside each super-chunk.
   1 and 2 run before the loop for the first ``Blocks.head`` super-chunks and, when there are more (long
   sequences), for the rest on the side stream during the loop (``forward_fixed``);
3. for each super-chunk [a, a + L) in order (the only sequential loop, 2 launches per super-chunk):
   ``_step_kernel``   rhs = f + gamma * (P[:, :a] @ s[:a]) (``_inter_tile``: a tiled GEMM parallel over rows
                      and D) and, in the same launch, the next super-chunk's P[rows, 0:a'] =
                      exp2(logit - lse) (``_probs_tile``, into an (L x T) scratch, bf16 for bf16/fp16
                      inputs, double-buffered): P does not depend on s;
   ``w_applier``      s = W rhs, a tiled GEMM (W in bf16 times rhs split in two bf16 parts; fp32 inputs:
                      fp32 in tf32x3).

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
    _allowed,
    _first_key,
    _load_d,
    _logits,
    _mask_arg,
    _row_lse,
    cdiv,
    mma,
    op_dtype,
)
from sessa.ops.feedback.triton_launch import BoundKernel, Streams
from sessa.ops.feedback.triton_tril import WBuffers, build_w_range, w_applier


# ----------------------------------------------------------------------------------------------- kernels
@triton.jit
def _lse_kernel(q_ptr, k_ptr, km_ptr, out_ptr, T, D, KS, R0, R1,
                stride_qb, stride_qt, stride_kb, stride_kt, stride_mb, stride_ob, stride_os, scale2,
                MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                PREC: tl.constexpr, EVEN_D: tl.constexpr):
    """Log-sum-exp (log2 units) of the strict-past logits of one tile of the rows [R0, R1), over the keys
    [s KS, (s + 1) KS) of split s = program_id(1), to out[b, s, rows] (-inf where a row reads no key there).
    One split: out is the row log-sum-exp itself; more: partial sums that ``_lse_combine_kernel`` merges."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest rows first: less tail imbalance
    pid_s = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    q_ptr += pid_b * stride_qb
    k_ptr += pid_b * stride_kb
    km_ptr += pid_b * stride_mb
    r_start = R0 + pid_m * BM
    rows = r_start + tl.arange(0, BM)
    m = tl.full([BM], float("-inf"), tl.float32)
    acc = tl.zeros([BM], tl.float32)
    lo = tl.maximum(_first_key(km_ptr, r_start, T, BN, MASK), pid_s * KS)
    hi = tl.minimum(tl.minimum(r_start + BM, T), pid_s * KS + KS)
    for c0 in range(lo, hi, BN):
        cols = c0 + tl.arange(0, BN)
        x = _logits(q_ptr, k_ptr, rows, cols, T, D, stride_qt, stride_kt, BM, BN, BK, PREC, EVEN_D) * scale2
        x = tl.where(_allowed(rows, cols, T, km_ptr, MASK), x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no exp2(-inf - -inf)
        acc = acc * tl.exp2(m - m_safe) + tl.sum(tl.exp2(x - m_safe[:, None]), 1)
        m = m_new
    lse = tl.where(acc > 0, m + tl.log2(acc), float("-inf"))
    tl.store(out_ptr + pid_b * stride_ob + pid_s * stride_os + rows, lse, mask=rows < R1)


@triton.jit
def _lse_combine_kernel(part_ptr, lse_ptr, R0, R1, S, stride_pb, stride_ps, stride_lb, BLOCK: tl.constexpr):
    """lse[b, t] = log2 sum_s 2^part[b, s, t] over the S key splits of ``_lse_kernel``, rows t in [R0, R1)
    (-inf: no key)."""
    pid_b = tl.program_id(1).to(tl.int64)
    rows = R0 + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < R1
    part_ptr += pid_b * stride_pb + rows
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    for i in range(0, S):
        m = tl.maximum(m, tl.load(part_ptr + i * stride_ps, mask=ok, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(0, S):
        acc += tl.exp2(tl.load(part_ptr + i * stride_ps, mask=ok, other=float("-inf")) - m_safe)
    tl.store(lse_ptr + pid_b * stride_lb + rows, tl.where(acc > 0, m_safe + tl.log2(acc), float("-inf")),
             mask=ok)


@triton.jit
def _probs_tile(pid_m, pid_n, pid_b, q_ptr, k_ptr, km_ptr, lse_ptr, p_ptr, A, T, D,
                stride_qb, stride_qt, stride_kb, stride_kt, stride_mb, stride_lb, stride_pb, stride_pr,
                scale2, MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                PREC: tl.constexpr, EVEN_D: tl.constexpr):
    """One (BM rows, BN keys) tile of P[rows A.., keys < A] into the scratch p (rows relative to A)."""
    r_start = A + pid_m * BM
    c_start = pid_n * BN
    km_ptr += pid_b * stride_mb
    # tiles wholly above the diagonal, or (packed sequences) before the rows' sequences, are never read
    if (c_start < r_start + BM) & (c_start >= _first_key(km_ptr, r_start, T, BN, MASK)):
        q_ptr += pid_b * stride_qb
        k_ptr += pid_b * stride_kb
        rows = r_start + tl.arange(0, BM)
        cols = c_start + tl.arange(0, BN)
        x = _logits(q_ptr, k_ptr, rows, cols, T, D, stride_qt, stride_kt, BM, BN, BK, PREC, EVEN_D) * scale2
        lse = _row_lse(lse_ptr + pid_b * stride_lb, rows, T)
        p = tl.where(_allowed(rows, cols, T, km_ptr, MASK), tl.exp2(x - lse[:, None]), 0.0)
        ptrs = p_ptr + pid_b * stride_pb + (rows - A)[:, None] * stride_pr + cols[None, :]
        tl.store(ptrs, p.to(p_ptr.dtype.element_ty))


@triton.jit
def _inter_tile(pid_m, pid_n, pid_b, km_ptr, p_ptr, sop_ptr, f_ptr, g_ptr, rhs_ptr, A, T, D,
                stride_pb, stride_pr, stride_ob, stride_ot, stride_fb, stride_ft, stride_gb, stride_gt,
                stride_rb, stride_rt,
                MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
                EVEN_D: tl.constexpr):
    """rhs[r] = f[A + r] + gamma (P[r, :A] @ s[:A]) for the local rows r of the super-chunk at A (one BM x BN
    tile; BN over D). The K loop starts at the first key tile ``_probs_tile`` wrote for these rows."""
    rl = pid_m * BM + tl.arange(0, BM)
    rows = A + rl
    dcols = pid_n * BN + tl.arange(0, BN)
    dmask = dcols < D
    p_ptr += pid_b * stride_pb + rl[:, None] * stride_pr
    sop_ptr += pid_b * stride_ob + dcols[None, :]
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(_first_key(km_ptr, A + pid_m * BM, T, BK, MASK), A, BK):
        kk = k0 + tl.arange(0, BK)
        p = tl.load(p_ptr + kk[None, :])
        sv = _load_d(sop_ptr + kk[:, None] * stride_ot, dmask[None, :], EVEN_D)
        acc = mma(p, sv, acc, PREC)
    m2 = (rows < T)[:, None] & dmask[None, :]
    f = tl.load(f_ptr + pid_b * stride_fb + rows[:, None] * stride_ft + dcols[None, :], mask=m2, other=0.0)
    g = tl.load(g_ptr + pid_b * stride_gb + rows * stride_gt, mask=rows < T, other=0.0).to(tl.float32)
    rhs = f.to(tl.float32) + g[:, None] * acc
    tl.store(rhs_ptr + pid_b * stride_rb + rl[:, None] * stride_rt + dcols[None, :], rhs, mask=m2)


@triton.jit
def _step_kernel(q_ptr, k_ptr, km_ptr, lse_ptr, pn_ptr, p_ptr, sop_ptr, f_ptr, g_ptr, rhs_ptr,
                 A, A_next, T, D, N_INTER, N_PROBS_M,
                 stride_qb, stride_qt, stride_kb, stride_kt, stride_mb, stride_lb, stride_pb, stride_pr,
                 stride_ob, stride_ot, stride_fb, stride_ft, stride_gb, stride_gt, stride_rb, stride_rt,
                 scale2, MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 BD: tl.constexpr, BN_P: tl.constexpr, PREC: tl.constexpr, EVEN_D: tl.constexpr):
    """One launch per super-chunk: the first N_INTER programs build this super-chunk's right-hand side
    (``_inter_tile``, reading P from p), the rest fill the next super-chunk's P into pn (``_probs_tile``,
    independent of s). One launch instead of two on two streams: less launch overhead, no stream sync."""
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    if pid < N_INTER:
        n_d = tl.cdiv(D, BD)
        _inter_tile(pid // n_d, pid % n_d, pid_b, km_ptr + pid_b * stride_mb, p_ptr, sop_ptr, f_ptr, g_ptr,
                    rhs_ptr, A, T, D, stride_pb, stride_pr, stride_ob, stride_ot, stride_fb, stride_ft,
                    stride_gb, stride_gt, stride_rb, stride_rt, MASK, BM, BD, BN, PREC, EVEN_D)
    else:
        pid -= N_INTER
        _probs_tile(pid % N_PROBS_M, pid // N_PROBS_M, pid_b, q_ptr, k_ptr, km_ptr, lse_ptr, pn_ptr, A_next,
                    T, D, stride_qb, stride_qt, stride_kb, stride_kt, stride_mb, stride_lb, stride_pb,
                    stride_pr, scale2, MASK, BM, BN_P, BK, PREC, EVEN_D)


# ----------------------------------------------------------------------------------------------- launcher
@dataclass
class ForwardState:
    """What the backward needs besides the inputs. s: (B,T,D) fp32; s_op: operand copy (bf16 or s itself);
    lse: (B,T) fp32 log2-units log-sum-exp; w: the intra-chunk inverses (B, T/L, L, L) as returned by
    triton_tril.build_w (fp32, or bf16 for bf16 operands)."""

    s: torch.Tensor
    s_op: torch.Tensor
    lse: torch.Tensor
    w: torch.Tensor
    blocks: Blocks


_SMS: dict[int, int] = {}  # SM count per CUDA device index
LSE_PROGRAMS_PER_SM = 4  # a split log-sum-exp pass aims at about this many programs per SM
LSE_COMBINE_ROWS = 1024  # rows per program of the merge of split log-sum-exp partials


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (0 elsewhere), looked up once per device."""
    if device.type != "cuda":
        return 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    n = _SMS.get(index)
    if n is None:
        n = _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return n


def lse_split(B: int, T: int, bl: Blocks, sms: int, rows: int | None = None) -> int:
    """Keys per split of the log-sum-exp pass over ``rows`` rows (default T) that read keys below T (a
    multiple of its key tile; >= T: no split). Its programs are row tiles, B * rows / bm_lse of them: 32 at
    (B, T) = (1, 4096) with 128-row tiles, a quarter of an H200's 132 SMs, and the longest of them reads every
    key. When the row tiles do not fill the SMs once, the keys of each row tile are split over several
    programs (partial sums merged by a second, small launch), up to about LSE_PROGRAMS_PER_SM programs per
    SM: row tiles whose rows all precede a split's keys exit at once. With more row tiles the one pass is
    kept. (H200, bf16, D = 1024: 128-row tiles split this way take 48 us at T = 4096 and 548 us at 16384,
    against 60-70 and 641-708 us for the former 64-row tiles; benchmarks/lse_variants_h200.txt.)"""
    tiles = cdiv(T if rows is None else rows, bl.bm_lse) * B
    if tiles >= sms:
        return cdiv(T, bl.bn_lse) * bl.bn_lse
    splits = min(cdiv(LSE_PROGRAMS_PER_SM * sms, tiles), cdiv(T, bl.bn_lse))
    return cdiv(cdiv(T, splits), bl.bn_lse) * bl.bn_lse


def _lse(q_b, k_b, key_mask, bl: Blocks, streams: Streams, keys_per_split: int | None = None, *,
         lse: torch.Tensor | None = None, r0: int = 0, r1: int | None = None, side: bool = False,
         keep: list | None = None) -> torch.Tensor:
    """The (B, T) fp32 row log-sum-exp (log2 units) of the strict-past logits, of the rows [r0, r1) (default
    all) into ``lse`` (default a new tensor); keys_per_split: as :func:`lse_split` picks for the device
    (None) or given (a multiple of bl.bn_lse); ``side``: on the side stream of ``streams``. The partial sums'
    buffer is appended to ``keep`` (when given): a caller launching on another stream than its own holds it
    until its own stream has waited for those launches."""
    B, T, D = q_b.shape
    r1 = T if r1 is None else r1
    km, smb, mode = _mask_arg(key_mask, q_b)
    ks = lse_split(B, r1, bl, sm_count(q_b.device), r1 - r0) if keys_per_split is None else keys_per_split
    splits = cdiv(r1, ks)
    if lse is None:
        lse = torch.empty(B, T, device=q_b.device, dtype=torch.float32)
    out = lse[:, None] if splits == 1 else torch.empty(B, splits, T, device=q_b.device, dtype=torch.float32)
    if keep is not None:
        keep.append(out)
    BoundKernel.get(_lse_kernel, streams, MASK=mode, BM=bl.bm_lse, BN=bl.bn_lse, BK=bl.bk,
                    PREC=bl.prec, EVEN_D=bl.even_d, num_warps=bl.warps, num_stages=bl.stages_lse)(
        (cdiv(r1 - r0, bl.bm_lse), splits, B), q_b, k_b, km, out, T, D, ks, r0, r1, q_b.stride(0),
        q_b.stride(1), k_b.stride(0), k_b.stride(1), smb, out.stride(0), out.stride(1), LOG2E / math.sqrt(D),
        side=side,
    )
    if splits > 1:
        BoundKernel.get(_lse_combine_kernel, streams, BLOCK=LSE_COMBINE_ROWS, num_warps=4)(
            (cdiv(r1 - r0, LSE_COMBINE_ROWS), B), out, lse, r0, r1, splits, out.stride(0), out.stride(1),
            lse.stride(0), side=side)
    return lse


def step_launcher(q_b, k_b, gamma, f, key_mask, lse, s_op, rhs, pbuf, bl: Blocks, streams: Streams):
    """A launcher ``(p, pn, A, L_eff, A_next, L_next) -> None``: the right-hand side of the super-chunk
    [A, A + L_eff) (reading its P from p) and, when L_next > 0, P of the next one (rows A_next.., keys
    < A_next) into pn, in one launch; p and pn are buffers of pbuf. The rest is fixed here, once per solve."""
    B, T, D = f.shape
    km, smb, mode = _mask_arg(key_mask, q_b)
    kern = BoundKernel.get(_step_kernel, streams, MASK=mode, BM=bl.bm, BN=bl.bn, BK=bl.bk, BD=bl.bd,
                           BN_P=bl.bn_p, PREC=bl.prec, EVEN_D=bl.even_d, num_warps=bl.warps,
                           num_stages=bl.stages)
    inputs = (q_b, k_b, km, lse)
    outputs = (s_op, f, gamma, rhs)
    qs, ks, os_, fs, gs, rs = (x.stride() for x in (q_b, k_b, s_op, f, gamma, rhs))
    strides_in = (qs[0], qs[1], ks[0], ks[1], smb, lse.stride(0))
    strides_out = (os_[0], os_[1], fs[0], fs[1], gs[0], gs[1], rs[0], rs[1], LOG2E / math.sqrt(D))  # + scale
    n_d = cdiv(D, bl.bd)
    ps = pbuf[0].stride()
    assert all(x.stride() == ps for x in pbuf)

    def launch(p, pn, A: int, L_eff: int, A_next: int, L_next: int) -> None:
        n_inter = cdiv(L_eff, bl.bm) * n_d
        n_probs_m = cdiv(L_next, bl.bm)
        n_probs = n_probs_m * (A_next // bl.bn_p)
        kern((n_inter + n_probs, B), *inputs, pn, p, *outputs, A, A_next, T, D, n_inter, max(n_probs_m, 1),
             *strides_in, ps[0], ps[1], *strides_out)

    return launch


def forward_fixed(q_b, k_b, gamma, f, key_mask, blocks: Blocks, poison: bool = False) -> ForwardState:
    """Fixed-length forward on dense (B, T, D) tensors (triton_common.dense); gamma (B, T, 1).

    Launches go to the lead stream (``Streams(lead=True)``). The log-sum-exp and W of the first
    ``blocks.head`` super-chunks are built before the sequential loop; those of the rest (when there are
    more) on the side stream while the loop runs, until the step that forms the first of their probabilities
    waits for them: the loop's launches leave SMs idle that the build can use."""
    B, T, D = f.shape
    bl = blocks
    L = bl.L
    starts = list(range(0, T, L))
    head = bl.head  # at most len(starts) (choose_blocks)
    odt = op_dtype(f.dtype)
    lse = torch.empty(B, T, device=f.device, dtype=torch.float32)
    wb = WBuffers.alloc(B, T, bl, odt != torch.float32, f.device)
    s = torch.empty(B, T, D, device=f.device, dtype=torch.float32)
    s_op = s if odt == torch.float32 else torch.empty(B, T, D, device=f.device, dtype=odt)
    pbuf = [torch.empty(B, bl.rows, bl.T_pad, device=f.device, dtype=odt) for _ in range(min(2, len(starts)))]
    rhs = torch.empty(B, bl.rows, D, device=f.device, dtype=torch.float32)
    if poison:
        for x in (s, s_op, rhs, *pbuf, wb.pd, *([] if wb.y is None else [wb.y])):
            x.fill_(float("nan"))
    streams = Streams.shared(f.device, side=True, lead=True)
    keep: list = []  # buffers allocated below: freed on return, after the caller's stream waits for them
    # leaves before the scratches (pbuf, rhs, wb's fp32 buffers, keep) are freed on return
    with streams.entered():
        _lse(q_b, k_b, key_mask, bl, streams, lse=lse, r1=min(T, head * L), keep=keep)
        build_w_range(q_b, k_b, gamma, key_mask, lse, wb, 0, head, bl, streams)
        built = None
        if head < len(starts):
            streams.fork()
            _lse(q_b, k_b, key_mask, bl, streams, lse=lse, r0=head * L, side=True, keep=keep)
            build_w_range(q_b, k_b, gamma, key_mask, lse, wb, head, len(starts), bl, streams, side=True)
            built = streams.side_event()
        step = step_launcher(q_b, k_b, gamma, f, key_mask, lse, s_op, rhs, pbuf, bl, streams)
        solve = w_applier(wb.out, rhs, s, s_op, bl, streams)
        for i, A in enumerate(starts):
            if i + 1 == head and built is not None:  # this step forms P of the first super-chunk built aside
                streams.join(built)
            # The next P goes to the other buffer: the one super-chunk i - 1 read, in an earlier launch.
            A_next = starts[i + 1] if i + 1 < len(starts) else T
            L_eff = min(L, T - A)
            step(pbuf[i % 2], pbuf[(i + 1) % len(pbuf)], A, L_eff, A_next, min(L, T - A_next))
            solve(A, L_eff)
    return ForwardState(s, s_op, lse, wb.out, bl)
