"""Mamba-2 (SSD, Dao & Gu 2024) as a sequence mixer; the SSD scan lives in :mod:`sessa.ops.ssd` (PyTorch)
and :mod:`sessa.ops.ssd_fla` (fla-core's Triton kernels).

Per head h (scalar decay), with dt_t = softplus(dt_raw_t + dt_bias_h) and A_h = -exp(A_log_h) < 0:

    S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t B_tᵀ        S: (headdim, d_state)
    y_t = S_t C_t + D_h x_t

The short causal conv stays :func:`~sessa.baselines.common.causal_conv` for every backend: fla's Triton
conv caches the last d_conv inputs as (B, C, d_conv) where the mixer state keeps (B, C, d_conv - 1), so it
would need a layout shim on every call, and the conv is a small part of the block's cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sessa.baselines.common import (
    RecurrentMixer,
    causal_conv,
    check_choice,
    check_dt_range,
    check_int,
    check_positive_float,
    init_dt_bias,
)
from sessa.ops import mamba2_step, ssd_fla
from sessa.ops.packing import positions
from sessa.ops.precision import cast, work_dtype
from sessa.ops.ssd import BACKENDS as SSD_BACKENDS
from sessa.ops.ssd import segsum, ssd_chunked, ssd_minimal_ref, ssd_sequential_ref, ssd_step

# the scan used to live here: keep its old import paths working
__all__ = [
    "GatedRMSNorm",
    "Mamba2Mixer",
    "segsum",
    "ssd_chunked",
    "ssd_minimal_ref",
    "ssd_sequential_ref",
    "ssd_step",
]


class GatedRMSNorm(nn.Module):
    """norm(y ⊙ silu(z)) · weight, RMS taken over groups of ``group_size`` channels (Mamba-2's output norm).

    y, z: (..., d) -> (..., d) in z.dtype; computed in float32 (float64 for float64).
    """

    def __init__(self, d: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        work = work_dtype(z.dtype)
        gated = cast(y, work) * F.silu(cast(z, work))
        groups = gated.reshape(*gated.shape[:-1], gated.shape[-1] // self.group_size, self.group_size)
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return cast(groups.reshape(gated.shape) * cast(self.weight, work), z.dtype)


class Mamba2Mixer(RecurrentMixer):
    """Mamba-2 block as a mixer: x (B, T, d_model) -> (B, T, d_model).

    in_proj -> [z, x, B, C, dt]; causal depthwise conv (K = d_conv, with bias) + SiLU on [x, B, C];
    dt = softplus(dt + dt_bias); A = -exp(A_log) per head; SSD scan with D skip; gated RMSNorm
    norm(y ⊙ silu(z)); out_proj. Parameter names follow ``mamba_ssm.modules.mamba2.Mamba2``.

    Heads: ``headdim`` (default 32) or ``n_heads``; d_inner = expand * d_model = n_heads * headdim.
    Left padding (``attention_mask`` 0): the conv input is zeroed and dt = 0 at padded steps, so the state
    stays exactly zero through the padding and real tokens see what an unpadded row sees.
    backend: "chunked" (:func:`~sessa.ops.ssd.ssd_chunked`, PyTorch), "reference"
    (:func:`~sessa.ops.ssd.ssd_sequential_ref`), "fla" (:func:`~sessa.ops.ssd_fla.ssd_fla`, fla-core's Triton
    kernels, CUDA only) or "auto" ("fla" for CUDA inputs when fla-core is installed and the dtype is not
    float64, else "chunked"). Decoding one token with a state uses :func:`~sessa.ops.ssd.ssd_step` except
    under "reference".
    Incremental state: ``conv`` (B, conv_dim, d_conv-1) last conv inputs, ``ssm`` (B, h, headdim, d_state)
    in float32 (float64 for float64), ``t``; ``max_len`` is ignored.
    Packed rows (``seq_idx``, ``sessa.ops.packing``): the conv reads no input of an earlier sequence and the
    scan restarts at each sequence start (``resets`` of the SSD scans; "auto" takes "chunked" then).
    """

    supports_packing = True  # forward takes seq_idx (packed rows)

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int | None = None,
        n_heads: int | None = None,
        ngroups: int = 1,
        chunk_size: int = 64,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        A_init_range: Sequence[float] = (1.0, 16.0),
        bias: bool = False,
        conv_bias: bool = True,
        norm_eps: float = 1e-5,
        backend: str = "chunked",
    ) -> None:
        super().__init__()
        for name, value in (
            ("d_model", d_model),
            ("d_state", d_state),
            ("d_conv", d_conv),
            ("expand", expand),
            ("ngroups", ngroups),
            ("chunk_size", chunk_size),
        ):
            check_int(name, value)
        self.d_model, self.layer_idx = d_model, check_int("layer_idx", layer_idx, minimum=0)
        self.d_state, self.d_conv, self.ngroups, self.chunk_size = d_state, d_conv, ngroups, chunk_size
        self.d_inner = expand * d_model
        self.headdim, self.n_heads = _resolve_heads(self.d_inner, headdim, n_heads)
        if self.n_heads % ngroups:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by ngroups, got ngroups={ngroups}")
        check_dt_range(dt_min, dt_max, dt_init_floor)
        a_lo, a_hi = _check_A_range(A_init_range)
        check_positive_float("norm_eps", norm_eps)
        self.backend = check_choice("backend", backend, SSD_BACKENDS)

        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.n_heads, bias=bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=conv_bias)
        self.dt_bias = nn.Parameter(init_dt_bias(self.n_heads, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(torch.empty(self.n_heads).uniform_(a_lo, a_hi).log())
        self.D = nn.Parameter(torch.ones(self.n_heads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # same convention as mamba_ssm
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // ngroups, eps=norm_eps)
        dims = (self.d_inner, self.n_heads, self.headdim, d_state, ngroups, d_conv)
        self._dims = mamba2_step.Mamba2Dims(*dims)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, headdim={self.headdim}, "
            f"d_state={self.d_state}, ngroups={self.ngroups}, chunk_size={self.chunk_size}, "
            f"backend={self.backend!r}"
        )

    def _state_shapes(self) -> tuple[int, tuple[int, ...]]:
        return self.conv_dim, (self.n_heads, self.headdim, self.d_state)

    def _mix(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        conv_history: torch.Tensor | None,
        ssm_state: torch.Tensor | None,
        seq_idx: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block on x (B, T, d_model) continuing from the given states; returns (out, conv, ssm).
        seq_idx: packed rows (no states given): the conv and the scan restart at every sequence."""
        b, T, _ = x.shape
        zxbcdt = self.in_proj(x)
        if T == 1 and ssm_state is not None and conv_history is not None and self.backend != "reference":
            # one token after a state: the rest of the step as two Triton launches on CUDA (ops.mamba2_step)
            params = mamba2_step.Mamba2Params(self.conv1d.weight, self.conv1d.bias, self.dt_bias, self.A_log,
                                              self.D, self.norm.weight, self.norm.eps)
            real = None if mask is None else mask[:, 0]
            fused = mamba2_step.mamba2_step(zxbcdt[:, 0], real, conv_history, ssm_state, params, self._dims)
            if fused is not None:
                y, conv_history, ssm_state = fused
                return self.out_proj(y[:, None]), conv_history, ssm_state
        z, xbc, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        if mask is not None:
            xbc = xbc.masked_fill(~mask[..., None], 0.0)
        pos = None if seq_idx is None else positions(seq_idx)
        xbc, conv_history = causal_conv(xbc, self.conv1d.weight, self.conv1d.bias, conv_history, pos)
        xs, Bm, Cm = torch.split(F.silu(xbc), [self.d_inner] + [self.ngroups * self.d_state] * 2, dim=-1)
        work = work_dtype(x.dtype)
        dt = F.softplus(cast(dt, work) + cast(self.dt_bias, work))
        if mask is not None:
            dt = dt.masked_fill(~mask[..., None], 0.0)
        A = -torch.exp(cast(self.A_log, work))
        xs = xs.reshape(b, T, self.n_heads, self.headdim)
        Bm, Cm = (m.reshape(b, T, self.ngroups, self.d_state) for m in (Bm, Cm))
        backend = self.backend
        resets = None if pos is None else pos == 0
        if backend == "auto":
            backend = "fla" if ssd_fla.fla_usable(xs) and resets is None else "chunked"
        if resets is not None and backend == "fla":  # fla's kernels take packed sequences as one row only
            raise ValueError("packed rows (seq_idx) need ssm_backend 'chunked', 'reference' or 'auto', "
                             "not 'fla'")
        if backend == "reference":
            y, ssm_state = ssd_sequential_ref(xs, dt, A, Bm, Cm, self.D, ssm_state, resets)
        elif T == 1 and ssm_state is not None:
            y, ssm_state = ssd_step(ssm_state, xs[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], self.D)
            y = y[:, None]
        elif backend == "fla":
            y, ssm_state = ssd_fla.ssd_fla(xs, dt, A, Bm, Cm, self.D, ssm_state)
        else:
            y, ssm_state = ssd_chunked(xs, dt, A, Bm, Cm, self.chunk_size, self.D, ssm_state, resets)
        y = self.norm(y.reshape(b, T, self.d_inner), z)
        return self.out_proj(y), conv_history, ssm_state


def _resolve_heads(d_inner: int, headdim: int | None, n_heads: int | None) -> tuple[int, int]:
    """(headdim, n_heads) from either option; headdim defaults to 32."""
    if n_heads is None:
        headdim = 32 if headdim is None else check_int("headdim", headdim)
        if d_inner % headdim:
            raise ValueError(
                f"expand * d_model ({d_inner}) must be divisible by headdim, got headdim={headdim}"
            )
        return headdim, d_inner // headdim
    check_int("n_heads", n_heads)
    if d_inner % n_heads:
        raise ValueError(f"expand * d_model ({d_inner}) must be divisible by n_heads, got n_heads={n_heads}")
    if headdim is not None and headdim * n_heads != d_inner:
        raise ValueError(
            f"headdim * n_heads must equal expand * d_model ({d_inner}), "
            f"got headdim={headdim}, n_heads={n_heads}"
        )
    return d_inner // n_heads, n_heads


def _check_A_range(A_init_range: Sequence[float]) -> tuple[float, float]:
    if not isinstance(A_init_range, Sequence) or len(A_init_range) != 2:
        raise ValueError(f"A_init_range must be a pair (low, high), got {A_init_range!r}")
    lo, hi = (check_positive_float("A_init_range", v) for v in A_init_range)
    if hi < lo:
        raise ValueError(f"A_init_range must satisfy 0 < low <= high, got {tuple(A_init_range)}")
    return lo, hi
