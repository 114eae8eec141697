"""Mamba-2's one-token decoding step after the input projection, as two Triton launches (eager decoding).

The block's step on one new token per row is, after ``in_proj`` gives [z | x, B, C | dt] (``zxbcdt``):

    xBC  <- the new input (0 at a padded token) after the cached K - 1, through the depthwise causal conv
            (with bias) and SiLU;   dt = softplus(dt + dt_bias) (0 at a padded token);   A = -exp(A_log)
    h    <- exp(dt A) h + dt x Bᵀ   (per head, state h: headdim x d_state, in float32)
    y     = h C + D x
    out   = RMSNorm_group(y * silu(z)) * weight     (Mamba-2's gated norm, RMS over groups of channels)

:func:`mamba2_step_ref` is that sequence of PyTorch ops (what the mixer's generic step runs: about 40 small
launches per layer, each with its host time). :func:`mamba2_step_triton` runs it as two launches: one
program per (row, head) for the conv, the gate, the state update, y and the gated value with its partial
sum of squares; then one per (row, group) for the norm. The roundings of the reference are kept where it
rounds to the model's dtype (the conv's products and sum, its bias, SiLU, y); the state is float32 in both.
The new conv history and state are new tensors, as the reference returns them.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F

from sessa.ops.precision import cast
from sessa.ops.ssd import ssd_step

_HAS_TRITON = importlib.util.find_spec("triton") is not None
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Mamba2Dims(NamedTuple):
    """Sizes of a Mamba-2 block: d_inner channels in n_heads heads of headdim, d_state, ngroups groups of B
    and C (and of the norm), conv width d_conv."""

    d_inner: int
    n_heads: int
    headdim: int
    d_state: int
    ngroups: int
    d_conv: int


class Mamba2Params(NamedTuple):
    """The block's parameters the step reads: conv weight (C, 1, K) and bias (C,) or None (C = d_inner +
    2 ngroups d_state), dt_bias, A_log, D (n_heads,), the norm's weight (d_inner,) and eps."""

    conv_weight: torch.Tensor
    conv_bias: torch.Tensor | None
    dt_bias: torch.Tensor
    A_log: torch.Tensor
    D: torch.Tensor
    norm_weight: torch.Tensor
    norm_eps: float


def mamba2_step_ref(
    zxbcdt: torch.Tensor, mask: torch.Tensor | None, conv_history: torch.Tensor, ssm_state: torch.Tensor,
    params: Mamba2Params, dims: Mamba2Dims,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step in PyTorch ops. zxbcdt: (B, d_inner + C + n_heads) the new token's input projection; mask:
    (B,) bool (False = padding) or None; conv_history: (B, C, K - 1); ssm_state: (B, n_heads, headdim,
    d_state) float32. Returns the normed gated y (B, d_inner) in zxbcdt's dtype (out_proj's input), the new
    history and the new state."""
    from sessa.baselines.common import causal_conv
    from sessa.ops.precision import work_dtype

    di, h, p, n, g, _ = dims
    z, xbc, dt = torch.split(zxbcdt[:, None], [di, di + 2 * g * n, h], dim=-1)
    if mask is not None:
        xbc = xbc.masked_fill(~mask[:, None, None], 0.0)
    xbc, history = causal_conv(xbc, params.conv_weight, params.conv_bias, conv_history)
    xs, Bm, Cm = torch.split(F.silu(xbc[:, 0]), [di, g * n, g * n], dim=-1)
    work = work_dtype(zxbcdt.dtype)
    dt = F.softplus(cast(dt[:, 0], work) + cast(params.dt_bias, work))
    if mask is not None:
        dt = dt.masked_fill(~mask[:, None], 0.0)
    A = -torch.exp(cast(params.A_log, work))
    b = zxbcdt.shape[0]
    Bm, Cm = Bm.reshape(b, g, n), Cm.reshape(b, g, n)
    y, state = ssd_step(ssm_state, xs.reshape(b, h, p), dt, A, Bm, Cm, params.D)
    gated = cast(y.reshape(b, di), work) * F.silu(cast(z[:, 0], work))
    groups = gated.reshape(b, g, di // g)
    groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + params.norm_eps)
    out = cast(groups.reshape(b, di) * cast(params.norm_weight, work), zxbcdt.dtype)
    return out, history, state


def usable(
    zxbcdt: torch.Tensor, conv_history: torch.Tensor, ssm_state: torch.Tensor, dims: Mamba2Dims
) -> bool:
    """Whether :func:`mamba2_step` takes the Triton launches: CUDA with Triton, a dtype among DTYPES with a
    float32 state, no gradient wanted, contiguous states, not while torch.compile traces or a CUDA graph is
    captured (the static cache's step keeps its PyTorch ops), ``SESSA_TRITON_DECODE`` not "0"."""
    if not (zxbcdt.is_cuda and _HAS_TRITON) or torch.compiler.is_compiling():
        return False
    if torch.cuda.is_current_stream_capturing() or os.environ.get("SESSA_TRITON_DECODE", "1") == "0":
        return False
    return _fits(zxbcdt, conv_history, ssm_state, dims)


def _fits(
    zxbcdt: torch.Tensor, conv_history: torch.Tensor, ssm_state: torch.Tensor, dims: Mamba2Dims
) -> bool:
    if zxbcdt.dtype not in DTYPES or conv_history.dtype != zxbcdt.dtype or ssm_state.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and (zxbcdt.requires_grad or ssm_state.requires_grad):
        return False
    if zxbcdt.stride(-1) != 1 or conv_history.stride(-1) != 1 or not ssm_state.is_contiguous():
        return False
    return dims.headdim <= 256 and dims.d_state <= 256 and dims.d_conv <= 8


def mamba2_step(
    zxbcdt: torch.Tensor, mask: torch.Tensor | None, conv_history: torch.Tensor, ssm_state: torch.Tensor,
    params: Mamba2Params, dims: Mamba2Dims,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`mamba2_step_triton` where :func:`usable`, else None (the caller runs its PyTorch ops)."""
    if not usable(zxbcdt, conv_history, ssm_state, dims):
        return None
    from sessa.ops.triton_mamba2_step import mamba2_step_triton

    return mamba2_step_triton(zxbcdt, mask, conv_history, ssm_state, params, dims)
