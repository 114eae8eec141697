"""Triton kernels for one new query per row over a cache, split over the context (flash-decoding style).

One kernel pair serves both attentions of a decoding step:

* the forward branch: query heads h = 0..H-1 of width hd read key/value head h // (H / Hkv) (GQA) of the
  cached keys and values, ``out[b, h] = sum_j softmax_j(q[b, h] . k[b, j] / sqrt(hd)) v[b, j]``;
* the feedback row (DESIGN §2.5): one "head" of the full width D whose values are the cached outputs s, with
  the epilogue ``s_new[b] = f[b] + gamma[b] * read[b]``.

Row b reads the positions j < ``length[b]`` whose ``key_mask[b, j]`` is set; a row with no readable key reads
0. ``_partial`` gives every (b, split, head) program one slice of the context (at least 64 keys; as many
slices as bring the launch to about 2K programs, at most 128 per row and head) and keeps a running max, sum
of exponentials and weighted sum of values (float32); ``_combine`` merges the slices of each (b, head) and
applies the epilogue. The lengths are read from device memory, so no launch depends on
them: a graph-captured decode step replays the same launches at every position.

References: :func:`sessa.ops.attention.decode_attention_ref` and
:func:`sessa.ops.feedback.decode.feedback_decode_ref`.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sessa.ops.feedback.triton_launch import BoundKernel, Streams, on_device

MAX_SPLITS = 128  # programs per (row, head) at most
MIN_SPLIT = 64  # keys per program at least
TARGET_PROGRAMS = 2048  # splits are chosen so that the launch has about this many programs
COMBINE_CHUNK = 128  # splits merged per step of the combine loop


def _partial_fn(
    q,
    k,
    v,
    mask,
    length,
    m_out,
    l_out,
    acc_out,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_mb,
    HD,
    GROUP,
    SPLIT,
    scale,
    HAS_MASK: tl.constexpr,
    BLOCK_T: tl.constexpr,
    DP: tl.constexpr,
):
    """Program (b, split, h): query head h of row b over one slice of the context."""
    b = tl.program_id(0)
    sp = tl.program_id(1)
    h = tl.program_id(2)
    n_split = tl.num_programs(1)
    kvh = h // GROUP
    t = tl.load(length + b)
    d = tl.arange(0, DP)
    dm = d < HD
    qv = tl.load(q + b * stride_qb + h * stride_qh + d, mask=dm, other=0.0).to(tl.float32)
    k += b * stride_kb + kvh * stride_kh
    v += b * stride_vb + kvh * stride_vh
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
        kt = tl.load(k + j[:, None] * stride_kt + d[None, :], mask=tile, other=0.0)
        logit = tl.sum(kt.to(tl.float32) * qv[None, :], axis=1) * scale
        logit = tl.where(ok, logit, float("-inf"))
        m_new = tl.maximum(m, tl.max(logit, axis=0))
        base = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: keep everything at 0
        alpha = tl.exp(m - base)
        p = tl.exp(logit - base)
        vt = tl.load(v + j[:, None] * stride_vt + d[None, :], mask=tile, other=0.0)
        acc = acc * alpha + tl.sum(p[:, None] * vt.to(tl.float32), axis=0)
        l_sum = l_sum * alpha + tl.sum(p, axis=0)
        m = m_new
    row = (b * tl.num_programs(2) + h) * n_split + sp
    tl.store(m_out + row, m)
    tl.store(l_out + row, l_sum)
    tl.store(acc_out + row * DP + d, acc)


# The split and a mask sliced per step change with the context length in eager decoding: never specialised
# on (Triton would compile again whenever one changes its divisibility by 16). The strides of q and the
# caches are specialised for narrow heads only, where the vectorised loads that this allows halve the time
# (12 heads of 64, 8K context, bf16 on an H200: 13.3 us instead of 26.9); for rows of 768 it made the kernel
# slower (24.1 us instead of 16.6), so wide rows take them as plain ints (scripts/decode_kernel_variants.py).
_partial_narrow = triton.jit(do_not_specialize=["stride_mb", "SPLIT"])(_partial_fn)
_partial_wide = triton.jit(do_not_specialize=["stride_qb", "stride_kb", "stride_vb", "stride_mb", "SPLIT"])(
    _partial_fn
)
WIDE = 512  # padded widths from which _partial_wide runs


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
    stride_oh,
    H,
    N_SPLIT,
    HD,
    HAS_F: tl.constexpr,
    CHUNK: tl.constexpr,
    DP: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    m_in += bh * N_SPLIT
    l_in += bh * N_SPLIT
    acc_in += bh * N_SPLIT * DP
    top = tl.full((), float("-inf"), tl.float32)
    for s0 in range(0, N_SPLIT, CHUNK):  # the largest running max over the splits
        sp = s0 + tl.arange(0, CHUNK)
        top = tl.maximum(top, tl.max(tl.load(m_in + sp, mask=sp < N_SPLIT, other=float("-inf")), axis=0))
    top = tl.where(top == float("-inf"), 0.0, top)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < HD
    total = tl.zeros((), tl.float32)
    read = tl.zeros((BLOCK_D,), tl.float32)
    for s0 in range(0, N_SPLIT, CHUNK):  # the splits' sums, rescaled to that max
        sp = s0 + tl.arange(0, CHUNK)
        spm = sp < N_SPLIT
        w = tl.exp(tl.load(m_in + sp, mask=spm, other=float("-inf")) - top)
        total += tl.sum(tl.load(l_in + sp, mask=spm, other=0.0) * w, axis=0)
        acc = tl.load(acc_in + sp[:, None] * DP + d[None, :], mask=spm[:, None] & dm[None, :], other=0.0)
        read += tl.sum(acc * w[:, None], axis=0)
    read = read / tl.where(total > 0, total, 1.0)
    if HAS_F:  # the feedback row (H = 1): f + gamma * read
        fv = tl.load(f + b * stride_fb + d, mask=dm, other=0.0).to(tl.float32)
        read = fv + tl.load(gamma + b * stride_gb).to(tl.float32) * read
    tl.store(out + b * stride_ob + h * stride_oh + d, read.to(out.dtype.element_ty), mask=dm)


@dataclass(frozen=True)
class DecodePlan:
    """Launch geometry for B rows, H heads, a cache of ``capacity`` positions and width hd (independent of
    the lengths)."""

    split: int
    n_split: int
    block_t: int
    dp: int
    block_d: int
    warps: int


@functools.lru_cache(maxsize=256)
def plan(capacity: int, width: int, programs_per_split: int = 1) -> DecodePlan:
    """``programs_per_split``: B x H, the (row, head) pairs that each slice of the context has."""
    dp = triton.next_power_of_2(max(width, 16))
    block_t = 8 if dp >= 1024 else 16 if dp >= 512 else 32 if dp >= 128 else 64  # tiles of <= 8K elements
    max_splits = min(MAX_SPLITS, max(1, math.ceil(TARGET_PROGRAMS / programs_per_split)))
    per = max(MIN_SPLIT, math.ceil(capacity / max_splits))
    split = math.ceil(per / block_t) * block_t
    n_split = max(1, math.ceil(capacity / split))
    return DecodePlan(split, n_split, block_t, dp, min(dp, 64), 4 if dp <= 512 else 8)


def launches(q, k, v, key_mask, length, out, f=None, gamma=None):  # noqa: ANN001, ANN201
    """The two launches as (kernel, grid, args, constexprs/options).

    q, out: (B, H, hd); k, v: (B, capacity, Hkv, hd) with unit stride in hd; key_mask (B, capacity) bool or
    None; length (B,) int32; f (B, hd) and gamma (B,) for the feedback epilogue (H = 1), else None."""
    B, H, hd = q.shape
    capacity, Hkv = k.shape[1], k.shape[2]
    p = plan(capacity, hd, B * H)
    # one float32 workspace: running max, sum and accumulator of each program (each part 16-byte aligned)
    n = B * H * p.n_split
    n4 = -(-n // 4) * 4
    workspace = torch.empty(2 * n4 + n * p.dp, device=q.device, dtype=torch.float32)
    m, lsum = workspace.narrow(0, 0, n4), workspace.narrow(0, n4, n4)  # cheaper on the host than split
    acc = workspace.narrow(0, 2 * n4, n * p.dp)
    has_mask, has_f = key_mask is not None, f is not None
    mask_arg = key_mask.view(torch.uint8) if has_mask else length
    part = (
        _partial_wide if p.dp >= WIDE else _partial_narrow,
        (B, p.n_split, H),
        (
            q, k, v, mask_arg, length, m, lsum, acc,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1),
            v.stride(2), key_mask.stride(0) if has_mask else 0, hd, H // Hkv, p.split, 1.0 / math.sqrt(hd),
        ),
        {"HAS_MASK": has_mask, "BLOCK_T": p.block_t, "DP": p.dp, "num_warps": p.warps},
    )  # fmt: skip
    comb = (
        _combine,
        (B * H, triton.cdiv(hd, p.block_d)),
        (
            m, lsum, acc, f if has_f else out, gamma if has_f else out, out,
            f.stride(0) if has_f else 0, gamma.stride(0) if has_f else 0, out.stride(0), out.stride(1),
            H, p.n_split, hd,
        ),
        {"HAS_F": has_f, "CHUNK": min(COMBINE_CHUNK, triton.next_power_of_2(p.n_split)), "DP": p.dp,
         "BLOCK_D": p.block_d, "num_warps": 4},
    )  # fmt: skip
    return [part, comb]


def _lengths(length: torch.Tensor, B: int) -> torch.Tensor:
    return length.to(torch.int32).reshape(-1).expand(B).contiguous()


def _bound(kernel, consts: dict, device: torch.device) -> BoundKernel:  # noqa: ANN001
    """The kernel bound to its constexprs and the current stream, kept (``BoundKernel.get``): a decoding
    step launches the same few every token, and launches through
    :class:`~sessa.ops.feedback.triton_launch.BoundKernel` skip Triton's JIT entry once their specialisation
    has been seen (~7 instead of ~27 us of host time per launch, measured for the solve's kernels on an H100
    host)."""
    return BoundKernel.get(kernel, Streams.shared(device), **consts)


def _run(q, k, v, key_mask, length, out, f=None, gamma=None) -> None:  # noqa: ANN001
    mask = key_mask if key_mask is None or key_mask.stride(-1) == 1 else key_mask.contiguous()
    other = q.is_cuda and q.device.index != torch.cuda.current_device()
    with on_device(q) if other else contextlib.nullcontext():  # Triton launches on the current device
        for kernel, grid, args, consts in launches(q, k, v, mask, length, out, f, gamma):
            _bound(kernel, consts, q.device)(grid, *args)


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    length: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query per row: q (B, 1, H, hd) over caches k_cache, v_cache (B, L, Hkv, hd) (unit stride in hd),
    reading positions j < length[b] (a 0-d or (B,) integer tensor on the device) that key_mask (B, L) allows.
    Returns (B, 1, H, hd) in q's dtype; forward only."""
    B, _, H, hd = q.shape
    out = torch.empty(B, 1, H, hd, device=q.device, dtype=q.dtype)
    _run(q[:, 0], k_cache, v_cache, key_mask, _lengths(length, B), out[:, 0])
    return out


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
    out = torch.empty(B, 1, D, device=f_new.device, dtype=f_new.dtype)
    q, f = q_new.reshape(B, 1, D).contiguous(), f_new.reshape(B, D).contiguous()
    g = gamma_new.reshape(B).contiguous()
    _run(q, k_cache[:, :, None], s_cache[:, :, None], key_mask, _lengths(length, B), out, f, g)
    return out


# ------------------------------------------------------------------------ the prologue of a one-token step
@triton.jit
def _rope_part(src, cos, sin, j, jm, HD, ROPE: tl.constexpr):
    """x * cos + swap(x) * sin, written with PyTorch's roundings (each product rounded to x's dtype); the GPU
    compiler may contract the products and the sum into one rounding (the interpreter keeps all three)."""
    x = tl.load(src + j, mask=jm, other=0.0)
    if ROPE:
        swapped = tl.load(src + (j ^ 1), mask=jm, other=0.0)
        c = tl.load(cos + j % HD, mask=jm, other=0.0)
        s = tl.load(sin + j % HD, mask=jm, other=0.0)
        a = (x.to(tl.float32) * c.to(tl.float32)).to(x.dtype)
        b = (swapped.to(tl.float32) * s.to(tl.float32)).to(x.dtype)
        x = (a.to(tl.float32) + b.to(tl.float32)).to(x.dtype)
    return x


@triton.jit
def _prologue_kernel(
    proj, cos, sin, q_out, k_cache, v_cache, kb_cache, gamma_out, gamma_bias, gamma_max, t,
    stride_pb, stride_kb, stride_kt, stride_vb, stride_vt, stride_bb, stride_bt,
    D, KV, HD, ROPE: tl.constexpr, FEEDBACK: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    row = proj + b * stride_pb  # [q (D) | k (KV) | v (KV) | q_b (D) | k_b (D) | gain logit (1)]
    j = tl.arange(0, BLOCK)
    qm, km = j < D, j < KV
    tl.store(q_out + b * D + j, _rope_part(row, cos, sin, j, qm, HD, ROPE), mask=qm)
    k = _rope_part(row + D, cos, sin, j, km, HD, ROPE)
    tl.store(k_cache + b * stride_kb + t * stride_kt + j, k, mask=km)
    tl.store(v_cache + b * stride_vb + t * stride_vt + j, tl.load(row + D + KV + j, mask=km), mask=km)
    if FEEDBACK:
        kb = tl.load(row + 2 * D + 2 * KV + j, mask=qm)
        tl.store(kb_cache + b * stride_bb + t * stride_bt + j, kb, mask=qm)
        ctx = tl.load(row + 3 * D + 2 * KV)
        # PyTorch's roundings: the bias cast to the logit's dtype, then each op rounded to it
        u = tl.load(gamma_bias).to(ctx.dtype).to(tl.float32) + ctx.to(tl.float32)
        u = u.to(ctx.dtype).to(tl.float32)
        th = (1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)).to(ctx.dtype).to(tl.float32)  # tanh(u), to ~1 ulp
        tl.store(gamma_out + b, (gamma_max * th).to(gamma_out.dtype.element_ty))


def prologue_launch(proj, k_cache, v_cache, t, n_heads, rope, kb_cache, gain, q, gamma):  # noqa: ANN001, ANN201
    """The prologue's launch as (kernel, grid, args, constexprs/options), writing q and gamma (outputs)."""
    KV = k_cache.shape[2] * k_cache.shape[3]
    D = q.shape[2] * q.shape[3]
    fb = kb_cache is not None
    cos, sin = rope if rope is not None else (q, q)
    kb = kb_cache if fb else k_cache
    bias, gmax = gain if fb else (q, 0.0)
    args = (  # q stands in for the pointers a variant never reads
        proj, cos, sin, q, k_cache, v_cache, kb, gamma, bias, float(gmax), t, proj.stride(0),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1), kb.stride(0),
        kb.stride(1), D, KV, q.shape[3],
    )  # fmt: skip
    consts = {"ROPE": rope is not None, "FEEDBACK": fb, "BLOCK": triton.next_power_of_2(max(D, 16)),
              "num_warps": 4}
    return _prologue_kernel, (proj.shape[0],), args, consts


def step_prologue_triton(
    proj: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    t: int,
    n_heads: int,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
    kb_cache: torch.Tensor | None = None,
    gain: tuple[torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`sessa.ops.prologue.step_prologue_ref` in one launch (arguments and returns there); the caches
    need unit stride over each token's (heads x width) and proj (B, 1, W) unit stride in W."""
    B, hd = proj.shape[0], k_cache.shape[3]
    q = torch.empty(B, 1, n_heads, hd, device=proj.device, dtype=proj.dtype)
    gamma = torch.empty(B, 1, 1, device=proj.device, dtype=proj.dtype) if kb_cache is not None else q
    kernel, grid, args, consts = prologue_launch(proj, k_cache, v_cache, t, n_heads, rope, kb_cache, gain, q,
                                                 gamma)
    other = proj.is_cuda and proj.device.index != torch.cuda.current_device()
    with on_device(proj) if other else contextlib.nullcontext():
        _bound(kernel, consts, proj.device)(grid, *args)
    return q, gamma if kb_cache is not None else None
