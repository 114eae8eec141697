"""Triton kernels of Mamba-2's one-token step (:mod:`sessa.ops.mamba2_step`, whose ``mamba2_step_ref`` is the
readable form): ``_state_kernel`` per (row, head), ``_norm_kernel`` per (row, group)."""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from sessa.ops.feedback.triton_launch import on_device
from sessa.ops.mamba2_step import Mamba2Dims, Mamba2Params


@triton.jit
def _rounded(x, DTYPE: tl.constexpr):
    """x (float32) rounded to the model's dtype, as PyTorch rounds each op's result; back in float32."""
    return x.to(DTYPE).to(tl.float32)


@triton.jit
def _conv_silu(row, hist, w, cbias, hist_out, chan, cm, keep, write, stride_hc, stride_oc, K,
               HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, DTYPE: tl.constexpr):
    """SiLU of the causal conv of channels ``chan`` (mask cm) over their K - 1 cached inputs and the new one
    in ``row`` (0 unless keep); where ``write``, also the new history of those channels (their last K - 1
    inputs) into hist_out."""
    kk = tl.arange(0, BLOCK_K)
    new = tl.load(row + chan, mask=cm, other=0.0).to(tl.float32)
    new = tl.where(keep, new, 0.0)
    old = tl.load(hist + chan[:, None] * stride_hc + kk[None, :], mask=cm[:, None] & (kk[None, :] < K - 1),
                  other=0.0).to(tl.float32)
    full = tl.where(kk[None, :] == K - 1, new[:, None], old)
    wt = tl.load(w + chan[:, None] * K + kk[None, :], mask=cm[:, None] & (kk[None, :] < K), other=0.0)
    acc = tl.sum(_rounded(full * wt.to(tl.float32), DTYPE), 1)  # each product rounded, the sum in float32
    acc = _rounded(acc, DTYPE)
    if HAS_BIAS:
        acc = _rounded(acc + tl.load(cbias + chan, mask=cm, other=0.0).to(tl.float32), DTYPE)
    # input k of the new history is input k + 1 of this window
    tl.store(hist_out + chan[:, None] * stride_oc + (kk[None, :] - 1), full.to(DTYPE),
             mask=(cm & write)[:, None] & (kk[None, :] >= 1) & (kk[None, :] < K))
    return _rounded(acc / (1.0 + tl.exp(-acc)), DTYPE)


@triton.jit
def _state_kernel(zx, mask, hist, w, cbias, dt_bias, A_log, Dp, state, hist_out, state_out, gz, part,
                  stride_zb, stride_hb, stride_hc, stride_ob, stride_oc,
                  DI, H, HG, P, N, K,
                  HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program (b, h): the conv and SiLU of head h's x channels and of its group's B and C channels, dt, the
    state update, y = h C + D x (rounded to the dtype) and gz = y * silu(z) in float32, with its sum of
    squares in part[b, h]. The first head of a group writes the group's B and C history."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    g = h // HG
    DTYPE: tl.constexpr = zx.dtype.element_ty
    row = zx + b * stride_zb  # [z (DI) | x (DI) | B (G N) | C (G N) | dt (H)]
    GN = (H // HG) * N
    if HAS_MASK:
        keep = tl.load(mask + b) != 0
    else:
        keep = b >= 0
    hist += b * stride_hb
    hist_out += b * stride_ob
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    pm, nm = p < P, n < N
    first = (n * 0 + h % HG) == 0  # a vector: the interpreter keeps a scalar & vector as an int mask
    x = _conv_silu(row + DI, hist, w, cbias, hist_out, h * P + p, pm, keep, pm, stride_hc, stride_oc, K,
                   HAS_BIAS, BLOCK_K, DTYPE)
    Bv = _conv_silu(row + DI, hist, w, cbias, hist_out, DI + g * N + n, nm, keep, nm & first, stride_hc,
                    stride_oc, K, HAS_BIAS, BLOCK_K, DTYPE)
    Cv = _conv_silu(row + DI, hist, w, cbias, hist_out, DI + GN + g * N + n, nm, keep, nm & first, stride_hc,
                    stride_oc, K, HAS_BIAS, BLOCK_K, DTYPE)
    v = tl.load(row + 2 * DI + 2 * GN + h).to(tl.float32) + tl.load(dt_bias + h).to(tl.float32)
    # softplus as PyTorch computes it (threshold 20); log(1 + e^v) ~ e^v to 1e-7 below -15
    dt = tl.where(v > 20.0, v, tl.where(v < -15.0, tl.exp(v), tl.log(1.0 + tl.exp(v))))
    dt = tl.where(keep, dt, 0.0)
    A = -tl.exp(tl.load(A_log + h).to(tl.float32))
    sp = (b * H + h) * P * N + p[:, None] * N + n[None, :]
    sm = pm[:, None] & nm[None, :]
    s = tl.load(state + sp, mask=sm, other=0.0)
    s = tl.exp(dt * A) * s + (dt * x)[:, None] * Bv[None, :]
    tl.store(state_out + sp, s, mask=sm)
    y = tl.sum(s * Cv[None, :], 1) + tl.load(Dp + h).to(tl.float32) * x
    y = _rounded(y, DTYPE)
    zv = tl.load(row + h * P + p, mask=pm, other=0.0).to(tl.float32)
    gated = tl.where(pm, y * (zv / (1.0 + tl.exp(-zv))), 0.0)
    tl.store(gz + b * DI + h * P + p, gated, mask=pm)
    tl.store(part + b * H + h, tl.sum(gated * gated, 0))


@triton.jit
def _norm_kernel(gz, part, weight, out, stride_outb, DI, H, HG, eps,
                 BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (b, g): the RMS of group g's gated channels (from the heads' partial sums) and the normed,
    weighted output of those channels in out's dtype."""
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    hh = tl.arange(0, BLOCK_H)
    total = tl.sum(tl.load(part + b * H + g * HG + hh, mask=hh < HG, other=0.0), 0)
    GS = DI // (H // HG)
    r = 1.0 / tl.sqrt(total / GS + eps)
    for c0 in range(0, GS, BLOCK_C):
        c = g * GS + c0 + tl.arange(0, BLOCK_C)
        cm = c < (g + 1) * GS
        v = tl.load(gz + b * DI + c, mask=cm, other=0.0) * r
        v = v * tl.load(weight + c, mask=cm, other=0.0).to(tl.float32)
        tl.store(out + b * stride_outb + c, v.to(out.dtype.element_ty), mask=cm)


def mamba2_step_launches(zxbcdt, mask, conv_history, ssm_state, params: Mamba2Params, dims: Mamba2Dims,  # noqa: ANN001
                         hist_out, state_out, work, out):  # noqa: ANN001, ANN201
    """The two launches as (kernel, grid, args, constexprs/options); work: float32 (B * (d_inner + n_heads),)
    for the gated values and the partial sums."""
    di, h, p, n, g, K = dims
    B = zxbcdt.shape[0]
    gz, part = work.narrow(0, 0, B * di), work.narrow(0, B * di, B * h)
    has_mask, has_bias = mask is not None, params.conv_bias is not None
    mask_arg = mask.view(torch.uint8) if has_mask else zxbcdt
    hg = h // g
    state_launch = (
        _state_kernel, (B, h),
        (zxbcdt, mask_arg, conv_history, params.conv_weight, params.conv_bias if has_bias else zxbcdt,
         params.dt_bias, params.A_log, params.D, ssm_state, hist_out, state_out, gz, part,
         zxbcdt.stride(0), conv_history.stride(0), conv_history.stride(1), hist_out.stride(0),
         hist_out.stride(1), di, h, hg, p, n, K),
        {"HAS_MASK": has_mask, "HAS_BIAS": has_bias, "BLOCK_P": triton.next_power_of_2(p),
         "BLOCK_N": triton.next_power_of_2(n), "BLOCK_K": triton.next_power_of_2(K), "num_warps": 4},
    )  # fmt: skip
    norm_launch = (
        _norm_kernel, (B, g),
        (gz, part, params.norm_weight, out, out.stride(0), di, h, hg, float(params.norm_eps)),
        {"BLOCK_H": triton.next_power_of_2(hg), "BLOCK_C": min(1024, triton.next_power_of_2(di // g)),
         "num_warps": 4},
    )  # fmt: skip
    return [state_launch, norm_launch]


def mamba2_step_triton(
    zxbcdt: torch.Tensor, mask: torch.Tensor | None, conv_history: torch.Tensor, ssm_state: torch.Tensor,
    params: Mamba2Params, dims: Mamba2Dims,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`sessa.ops.mamba2_step.mamba2_step_ref` in two launches (arguments and returns there)."""
    from sessa.ops.triton_decode import _bound

    B, dev = zxbcdt.shape[0], zxbcdt.device
    di, h = dims.d_inner, dims.n_heads
    hist_out = torch.empty(conv_history.shape, device=dev, dtype=conv_history.dtype)
    state_out = torch.empty_like(ssm_state)
    work = torch.empty(B * (di + h), device=dev, dtype=torch.float32)
    out = torch.empty(B, di, device=dev, dtype=zxbcdt.dtype)
    m = None if mask is None else mask.reshape(B).contiguous()
    other = zxbcdt.is_cuda and dev.index != torch.cuda.current_device()
    with on_device(zxbcdt) if other else contextlib.nullcontext():
        launches = mamba2_step_launches(zxbcdt, m, conv_history, ssm_state, params, dims, hist_out, state_out,
                                        work, out)
        for kernel, grid, args, consts in launches:
            _bound(kernel, consts, dev)(grid, *args)
    return out, hist_out, state_out
