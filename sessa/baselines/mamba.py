"""Mamba (Gu & Dao 2023, "Mamba-1") as a sequence mixer; the selective scan lives in
:mod:`sessa.ops.selective_scan`.

Per channel c and state index k, with Δ_t = softplus(dt_proj(dt_low_t)) and A = -exp(A_log) (d × n):

    h_t[c, k] = exp(Δ_t[c] A[c, k]) h_{t-1}[c, k] + Δ_t[c] B_t[k] u_t[c]
    y_t[c]    = Σ_k C_t[k] h_t[c, k] + D[c] u_t[c]

There is no fla (Triton) path for Mamba-1: fla-core has no selective scan, and its decay exp(Δ[c] A[c, k])
varies over both state axes, which no simple-GLA / GLA kernel expresses.
"""

from __future__ import annotations

import math

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
from sessa.ops.packing import positions
from sessa.ops.precision import work_dtype
from sessa.ops.selective_scan import BACKENDS as SCAN_BACKENDS
from sessa.ops.selective_scan import selective_scan, selective_scan_ref, selective_scan_step

selective_state_update = selective_scan_step  # the old name of the decode step, kept importable


class MambaMixer(RecurrentMixer):
    """Mamba-1 block as a mixer: x (B, T, d_model) -> (B, T, d_model).

    in_proj -> [x, z]; causal depthwise conv (K = d_conv) + SiLU; x_proj -> [dt_low, B, C];
    Δ = softplus(dt_proj(dt_low)); selective scan with A = -exp(A_log) (d_inner × d_state) and D skip;
    y ⊙ silu(z); out_proj. Parameter names follow ``mamba_ssm.modules.mamba_simple.Mamba``; A starts at
    the S4D-real values A[c, k] = -(k + 1), dt_proj's bias at softplus^{-1} of log-uniform dt.

    Left padding (``attention_mask`` 0): the conv input is zeroed and Δ = 0 at padded steps, so the state
    stays exactly zero through the padding. backend: "chunked" (:func:`selective_scan`), "reference"
    (:func:`selective_scan_ref`) or "auto" (= "chunked": Mamba-1 has no fla path, so a config shared with
    Mamba-2 layers may say "auto"). Incremental state: ``conv`` (B, d_inner, d_conv-1), ``ssm``
    (B, d_inner, d_state) in float32 (float64 for float64), ``t``; ``max_len`` is ignored.
    Packed rows (``seq_idx``, ``sessa.ops.packing``): the conv reads no input of an earlier sequence and the
    scan restarts at each sequence start (``resets`` of the selective scans).
    """

    supports_packing = True  # forward takes seq_idx (packed rows)

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        chunk_size: int = 32,
        backend: str = "chunked",
    ) -> None:
        super().__init__()
        for name, value in (
            ("d_model", d_model),
            ("d_state", d_state),
            ("d_conv", d_conv),
            ("expand", expand),
            ("chunk_size", chunk_size),
        ):
            check_int(name, value)
        self.d_model, self.layer_idx = d_model, check_int("layer_idx", layer_idx, minimum=0)
        self.d_state, self.d_conv, self.chunk_size = d_state, d_conv, chunk_size
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else check_int("dt_rank", dt_rank)
        check_dt_range(dt_min, dt_max, dt_init_floor)
        check_choice("dt_init", dt_init, ("random", "constant"))
        check_positive_float("dt_scale", dt_scale)
        if backend == "fla":
            raise ValueError(
                "backend='fla' is not available for Mamba-1 (fla-core has no selective scan); "
                "use 'auto', 'chunked' or 'reference'"
            )
        self.backend = check_choice("backend", backend, SCAN_BACKENDS)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, bias=conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        std = self.dt_rank**-0.5 * dt_scale  # keeps dt_proj's output near its bias at init
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            self.dt_proj.bias.copy_(init_dt_bias(self.d_inner, dt_min, dt_max, dt_init_floor))
        s4d_real = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(s4d_real.log())
        self.D = nn.Parameter(torch.ones(self.d_inner))
        for p in (self.A_log, self.D):
            p._no_weight_decay = True  # same convention as mamba_ssm
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
            f"dt_rank={self.dt_rank}, chunk_size={self.chunk_size}, backend={self.backend!r}"
        )

    def _state_shapes(self) -> tuple[int, tuple[int, ...]]:
        return self.d_inner, (self.d_inner, self.d_state)

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
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        if mask is not None:
            xs = xs.masked_fill(~mask[..., None], 0.0)
        pos = None if seq_idx is None else positions(seq_idx)
        resets = None if pos is None else pos == 0
        xs, conv_history = causal_conv(xs, self.conv1d.weight, self.conv1d.bias, conv_history, pos)
        xs = F.silu(xs)
        dt_low, Bm, Cm = torch.split(self.x_proj(xs), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        work = work_dtype(x.dtype)
        delta = F.softplus(F.linear(dt_low, self.dt_proj.weight).to(work) + self.dt_proj.bias.to(work))
        if mask is not None:
            delta = delta.masked_fill(~mask[..., None], 0.0)
        A = -torch.exp(self.A_log.to(work))
        if self.backend == "reference":
            y, ssm_state = selective_scan_ref(xs, delta, A, Bm, Cm, self.D, ssm_state, resets)
        elif x.shape[1] == 1 and ssm_state is not None:
            y, ssm_state = selective_scan_step(
                ssm_state, xs[:, 0], delta[:, 0], A, Bm[:, 0], Cm[:, 0], self.D
            )
            y = y[:, None]
        else:
            y, ssm_state = selective_scan(xs, delta, A, Bm, Cm, self.D, ssm_state, self.chunk_size, resets)
        return self.out_proj(y * F.silu(z)), conv_history, ssm_state
