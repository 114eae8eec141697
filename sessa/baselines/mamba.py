"""Mamba (Gu & Dao 2023, "Mamba-1") as a sequence mixer, with a chunked selective scan and its reference.

Per channel c and state index k, with Δ_t = softplus(dt_proj(dt_low_t)) and A = -exp(A_log) (d × n):

    h_t[c, k] = exp(Δ_t[c] A[c, k]) h_{t-1}[c, k] + Δ_t[c] B_t[k] u_t[c]
    y_t[c]    = Σ_k C_t[k] h_t[c, k] + D[c] u_t[c]

* :func:`selective_scan` — the fast path: the sequence is cut into chunks; the recurrence runs inside all
  chunks at once from a zero state (chunk_size vectorised steps), the chunk-end states are chained
  (T / chunk_size steps), and each chunk's outputs get the entering state decayed by exp of the in-chunk
  segment sum of Δ·A (always <= 0, so no exponential ever overflows).
* :func:`selective_scan_ref` — the recurrence one token at a time (readable reference).
* :func:`selective_state_update` — one decoding step.

Shapes: b batch, T length, d channels (d_inner), n state size (d_state), c chunks, l positions in a chunk.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sessa.baselines.common import (
    RecurrentMixer,
    causal_conv,
    chain_chunk_states,
    check_choice,
    check_dt_range,
    check_int,
    check_positive_float,
    init_dt_bias,
    work_dtype,
)


def _check_scan_args(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> None:
    if u.dim() != 3 or delta.shape != u.shape or A.dim() != 2 or A.shape[0] != u.shape[2]:
        raise ValueError(
            f"expected u, delta (b,T,d) and A (d,n); got {tuple(u.shape)}, {tuple(delta.shape)}, "
            f"{tuple(A.shape)}"
        )
    if B.shape != C.shape or B.shape != (*u.shape[:2], A.shape[1]):
        raise ValueError(f"expected B, C (b,T,n={A.shape[1]}); got {tuple(B.shape)}, {tuple(C.shape)}")


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan as a plain loop over time.

    u, delta: (b, T, d), delta >= 0; A: (d, n), A < 0; B, C: (b, T, n); D: (d,) or None;
    initial_state: (b, d, n) or None. Returns y: (b, T, d) in u.dtype and the final state (b, d, n) in
    float32 (float64 for float64 inputs).
    """
    _check_scan_args(u, delta, A, B, C)
    in_dtype, work = u.dtype, work_dtype(u.dtype)
    u, delta, A, B, C = (m.to(work) for m in (u, delta, A, B, C))
    b, T, d = u.shape
    h = u.new_zeros(b, d, A.shape[1]) if initial_state is None else initial_state.to(work)
    ys = []
    for t in range(T):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    y = torch.stack(ys, dim=1) if T else u.clone()
    if D is not None:
        y = y + D.to(work) * u
    return y.to(in_dtype), h


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked selective scan, same arguments and results as :func:`selective_scan_ref`.

    chunk_size + T / chunk_size vectorised Python steps (about 2·sqrt(T) at the best chunk); memory a few
    (b, T, d, n) tensors, like any parallel scan of Mamba-1 in plain PyTorch.
    """
    _check_scan_args(u, delta, A, B, C)
    in_dtype, work = u.dtype, work_dtype(u.dtype)
    b, T, d = u.shape
    if T == 0:
        state = u.new_zeros(b, d, A.shape[1], dtype=work) if initial_state is None else initial_state.to(work)
        return u.clone(), state
    L = min(chunk_size, T)
    pad = -T % L

    def chunked(m: torch.Tensor) -> torch.Tensor:  # (b, T, ...) -> (b, c, l, ...), zero-padded at the end
        m = F.pad(m, (0, 0) * (m.dim() - 2) + (0, pad)) if pad else m
        return m.reshape(b, -1, L, *m.shape[2:])

    u_w, delta_w, A_w = u.to(work), delta.to(work), A.to(work)
    # padded steps have delta = 0: no decay (log-decay 0) and no input
    log_decay = chunked(delta_w[..., None] * A_w)  # (b, c, l, d, n), <= 0
    inputs = chunked((delta_w * u_w)[..., None] * B.to(work)[:, :, None, :])
    C_c = chunked(C.to(work))  # (b, c, l, n)

    # 1. recurrence inside every chunk at once, each from a zero state
    h = log_decay.new_zeros(b, log_decay.shape[1], d, A.shape[1])
    ys = []
    for i in range(L):
        h = torch.exp(log_decay[:, :, i]) * h + inputs[:, :, i]
        ys.append((h * C_c[:, :, i, None, :]).sum(-1))
    y = torch.stack(ys, dim=2)  # (b, c, l, d)

    # 2. chain chunk-end states; 3. add each entering state decayed by exp(in-chunk segment sum)
    decay_from_start = torch.exp(log_decay.cumsum(dim=2))
    starts, final_state = chain_chunk_states(h, decay_from_start[:, :, -1], initial_state)
    y = y + torch.einsum("bcldn,bcln->bcld", decay_from_start * starts[:, :, None], C_c)
    y = y.reshape(b, -1, d)[:, :T]
    if D is not None:
        y = y + D.to(work) * u_w
    return y.to(in_dtype), final_state


def selective_state_update(
    state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step. state: (b, d, n); u, delta: (b, d); B, C: (b, n).

    Returns y: (b, d) in u.dtype and the new state (a new tensor, in state.dtype).
    """
    work = state.dtype
    u_w, delta_w = u.to(work), delta.to(work)
    state = (
        torch.exp(delta_w[..., None] * A.to(work)) * state + (delta_w * u_w)[..., None] * B.to(work)[:, None]
    )
    y = (state * C.to(work)[:, None]).sum(-1)
    if D is not None:
        y = y + D.to(work) * u_w
    return y.to(u.dtype), state


class MambaMixer(RecurrentMixer):
    """Mamba-1 block as a mixer: x (B, T, d_model) -> (B, T, d_model).

    in_proj -> [x, z]; causal depthwise conv (K = d_conv) + SiLU; x_proj -> [dt_low, B, C];
    Δ = softplus(dt_proj(dt_low)); selective scan with A = -exp(A_log) (d_inner × d_state) and D skip;
    y ⊙ silu(z); out_proj. Parameter names follow ``mamba_ssm.modules.mamba_simple.Mamba``; A starts at
    the S4D-real values A[c, k] = -(k + 1), dt_proj's bias at softplus^{-1} of log-uniform dt.

    Left padding (``attention_mask`` 0): the conv input is zeroed and Δ = 0 at padded steps, so the state
    stays exactly zero through the padding. backend: "chunked" (:func:`selective_scan`) or "reference"
    (:func:`selective_scan_ref`). Incremental state: ``conv`` (B, d_inner, d_conv-1), ``ssm``
    (B, d_inner, d_state) in float32 (float64 for float64), ``t``; ``max_len`` is ignored.
    """

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
        self.backend = check_choice("backend", backend, ("chunked", "reference"))

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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block on x (B, T, d_model) continuing from the given states; returns (out, conv, ssm)."""
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        if mask is not None:
            xs = xs.masked_fill(~mask[..., None], 0.0)
        xs, conv_history = causal_conv(xs, self.conv1d.weight, self.conv1d.bias, conv_history)
        xs = F.silu(xs)
        dt_low, Bm, Cm = torch.split(self.x_proj(xs), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        work = work_dtype(x.dtype)
        delta = F.softplus(F.linear(dt_low, self.dt_proj.weight).to(work) + self.dt_proj.bias.to(work))
        if mask is not None:
            delta = delta.masked_fill(~mask[..., None], 0.0)
        A = -torch.exp(self.A_log.to(work))
        if self.backend == "reference":
            y, ssm_state = selective_scan_ref(xs, delta, A, Bm, Cm, self.D, ssm_state)
        elif x.shape[1] == 1 and ssm_state is not None:
            y, ssm_state = selective_state_update(
                ssm_state, xs[:, 0], delta[:, 0], A, Bm[:, 0], Cm[:, 0], self.D
            )
            y = y[:, None]
        else:
            y, ssm_state = selective_scan(xs, delta, A, Bm, Cm, self.D, ssm_state, self.chunk_size)
        return self.out_proj(y * F.silu(z)), conv_history, ssm_state
