"""Mamba-2 (SSD, Dao & Gu 2024) as a sequence mixer, with the chunked SSD scan and its references.

Per head h (scalar decay), with dt_t = softplus(dt_raw_t + dt_bias_h) and A_h = -exp(A_log_h) < 0:

    S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t B_tᵀ        S: (headdim, d_state)
    y_t = S_t C_t + D_h x_t

Three ways to compute the same thing (DESIGN §5, M = L ∘ (C Bᵀ) block-wise):

* :func:`ssd_chunked` — the fast path: quadratic (attention-like) inside chunks, chunk states, a linear
  state-passing recurrence between chunks, state -> output; any T (padded to the chunk internally).
* :func:`ssd_minimal_ref` — the paper's minimal listing (four einsum steps), readable.
* :func:`ssd_sequential_ref` — the plain recurrence above, one token at a time.

Shapes: b batch, T length, h heads, p head width (headdim), g groups (h % g == 0, head i reads
group i // (h / g)), n state size (d_state), c chunks, l/s positions inside a chunk.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Segment sums of log-decays: a (..., L) -> (..., L, L), out[..., i, j] = a[j+1] + ... + a[i].

    Zero on the diagonal, -inf above it (so exp gives the causal decay matrix). Built by a masked cumsum
    rather than a difference of cumsums, which would cancel catastrophically for long segments.
    """
    L = a.shape[-1]
    ones = torch.ones(L, L, dtype=torch.bool, device=a.device)
    rows = a[..., :, None].expand(*a.shape, L).masked_fill(~ones.tril(-1), 0.0)  # rows[k, j] = a[k] if k > j
    return rows.cumsum(dim=-2).masked_fill(~ones.tril(0), -torch.inf)


def _pad_time(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad dim 1 (time) of t on the right by ``pad``."""
    return F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) if pad else t


def ssd_minimal_ref(
    x: torch.Tensor,
    a: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The minimal SSD listing of the paper, on *discretised* inputs (no D skip).

    x: (b, T, h, p) already multiplied by dt; a: (b, T, h) = dt * A (log-decays, <= 0);
    B, C: (b, T, g, n); initial_state: (b, h, p, n) or None.
    Returns y: (b, T, h, p) and the final state (b, h, p, n).
    """
    b, T, h, p = x.shape
    B, C = (m.repeat_interleave(h // m.shape[2], dim=2) for m in (B, C))  # one B and C per head
    pad = -T % chunk_size
    x, a, B, C = (_pad_time(m, pad).reshape(b, -1, chunk_size, *m.shape[2:]) for m in (x, a, B, C))
    a = a.permute(0, 3, 1, 2)  # (b, h, c, l)
    a_cum = a.cumsum(dim=-1)

    # 1. diagonal blocks: inside each chunk y = (L ∘ C Bᵀ) x, like masked attention
    decay = torch.exp(segsum(a))
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, decay, x)

    # 2. the state each chunk leaves at its end, starting from zero
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_to_end, x)

    # 3. pass states across chunks: a recurrence over chunk boundaries, also written as a decay matrix
    if initial_state is None:
        initial_state = torch.zeros_like(chunk_states[:, 0])
    chunk_states = torch.cat([initial_state[:, None], chunk_states], dim=1)
    chunk_decay = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    boundary_states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, chunk_states)
    start_states, final_state = boundary_states[:, :-1], boundary_states[:, -1]

    # 4. contribution of the state entering each chunk to that chunk's outputs
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, start_states, torch.exp(a_cum))
    return (y_diag + y_off).reshape(b, -1, h, p)[:, :T], final_state


def _check_ssd_args(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> None:
    if x.dim() != 4 or dt.shape != x.shape[:3] or A.shape != x.shape[2:3]:
        raise ValueError(
            f"expected x (b,T,h,p), dt (b,T,h), A (h,); got {tuple(x.shape)}, {tuple(dt.shape)}, "
            f"{tuple(A.shape)}"
        )
    if B.dim() != 4 or B.shape != C.shape or B.shape[:2] != x.shape[:2] or x.shape[2] % B.shape[2]:
        raise ValueError(
            f"expected B, C (b,T,g,n) with h % g == 0; got {tuple(B.shape)}, {tuple(C.shape)} for x "
            f"{tuple(x.shape)}"
        )


def ssd_sequential_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence one token at a time (readable reference; O(T) Python steps).

    x: (b, T, h, p); dt: (b, T, h) >= 0; A: (h,) < 0; B, C: (b, T, g, n); D: (h,) or None;
    initial_state: (b, h, p, n) or None. Returns y: (b, T, h, p) in x.dtype and the final state
    (b, h, p, n) in float32 (float64 for float64 inputs).
    """
    _check_ssd_args(x, dt, A, B, C)
    b, T, h, p = x.shape
    in_dtype, work = x.dtype, work_dtype(x.dtype)
    x, dt, A = x.to(work), dt.to(work), A.to(work)
    B, C = (m.to(work).repeat_interleave(h // m.shape[2], dim=2) for m in (B, C))
    state = x.new_zeros(b, h, p, B.shape[-1]) if initial_state is None else initial_state.to(work)
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((state * C[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1) if T else x.clone()
    if D is not None:
        y = y + D.to(work)[:, None] * x
    return y.to(in_dtype), state


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan (the fast path), same arguments and results as :func:`ssd_sequential_ref`.

    Works in float32 (float64 for float64 inputs); every exponent is a sum of log-decays <= 0. Cost
    O(T·chunk·h·(n + p)) and memory O(T·chunk·h) for the intra-chunk part; the state passing between
    chunks is a short loop over T / chunk_size boundaries.
    """
    _check_ssd_args(x, dt, A, B, C)
    b, T, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    in_dtype, work = x.dtype, work_dtype(x.dtype)
    if T == 0:
        state = x.new_zeros(b, h, p, n, dtype=work) if initial_state is None else initial_state.to(work)
        return x.clone(), state
    pad = -T % chunk_size

    def chunked(m: torch.Tensor) -> torch.Tensor:  # (b, T, ...) -> (b, c, l, ...), zero-padded at the end
        return _pad_time(m.to(work), pad).reshape(b, -1, chunk_size, *m.shape[2:])

    x_c, dt_c, B_c, C_c = chunked(x), chunked(dt), chunked(B), chunked(C)
    n_chunks = x_c.shape[1]
    # padded steps have dt = 0: no decay and no input, so outputs and the final state are unaffected
    a = (dt_c * A.to(work)).transpose(2, 3)  # (b, c, h, l)
    a_cum = a.cumsum(dim=-1)
    xdt = (x_c * dt_c[..., None]).reshape(b, n_chunks, chunk_size, g, h // g, p)

    y = _ssd_intra_chunk(xdt, a, B_c, C_c)
    start_states, final_state = _ssd_pass_states(xdt, a_cum, B_c, initial_state)
    # contribution of the state entering each chunk: exp(a_cum[l]) C_l · S_start
    into = torch.exp(a_cum).reshape(b, n_chunks, g, h // g, chunk_size).permute(0, 1, 4, 2, 3)[..., None]
    start_states = start_states.reshape(b, n_chunks, g, h // g, p, n)
    y = y + torch.einsum("bclgn,bcgrpn->bclgrp", C_c, start_states) * into
    y = y.reshape(b, n_chunks * chunk_size, h, p)[:, :T]
    if D is not None:
        y = y + D.to(work)[:, None] * x.to(work)
    return y.to(in_dtype), final_state


def _ssd_intra_chunk(
    xdt: torch.Tensor, a: torch.Tensor, B_c: torch.Tensor, C_c: torch.Tensor
) -> torch.Tensor:
    """Diagonal blocks: y_l = Σ_{s<=l} exp(a_{s+1} + ... + a_l) (C_l·B_s) dt_s x_s within each chunk.

    xdt: (b, c, l, g, r, p) with r = h / g; a: (b, c, h, l); B_c, C_c: (b, c, l, g, n) -> (b, c, l, g, r, p).
    """
    b, c, L, g, r, _ = xdt.shape
    scores = torch.einsum("bclgn,bcsgn->bcgls", C_c, B_c)  # shared by the r heads of a group
    weights = scores[:, :, :, None] * torch.exp(segsum(a)).reshape(b, c, g, r, L, L)
    return torch.einsum("bcgrls,bcsgrp->bclgrp", weights, xdt)


def _ssd_pass_states(
    xdt: torch.Tensor, a_cum: torch.Tensor, B_c: torch.Tensor, initial_state: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """States entering every chunk (b, c, h, p, n) and the final state (b, h, p, n)."""
    b, c, L, g, r, p = xdt.shape
    h, n = g * r, B_c.shape[-1]
    # state left by each chunk alone: Σ_s exp(a_{s+1} + ... + a_end) B_s (dt_s x_s)ᵀ
    to_end = torch.exp(a_cum[..., -1:] - a_cum).reshape(b, c, g, r, L).permute(0, 1, 4, 2, 3)[..., None]
    local = torch.einsum("bclgn,bclgrp->bcgrpn", B_c, xdt * to_end).reshape(b, c, h, p, n)
    chunk_decay = torch.exp(a_cum[..., -1])[..., None, None]  # (b, c, h, 1, 1)
    return chain_chunk_states(local, chunk_decay, initial_state)


def ssd_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step. state: (b, h, p, n); x: (b, h, p); dt: (b, h); B, C: (b, g, n).

    Returns y: (b, h, p) in x.dtype and the new state (a new tensor, in state.dtype).
    """
    h = x.shape[1]
    work = state.dtype
    B, C = (m.to(work).repeat_interleave(h // m.shape[1], dim=1) for m in (B, C))
    xw, dt = x.to(work), dt.to(work)
    decay = torch.exp(dt * A.to(work))[..., None, None]
    state = decay * state + (dt[..., None] * xw)[..., None] * B[:, :, None, :]
    y = (state * C[:, :, None, :]).sum(-1)
    if D is not None:
        y = y + D.to(work)[:, None] * xw
    return y.to(x.dtype), state


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
        gated = y.to(work) * F.silu(z.to(work))
        groups = gated.reshape(*gated.shape[:-1], gated.shape[-1] // self.group_size, self.group_size)
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return (groups.reshape(gated.shape) * self.weight.to(work)).to(z.dtype)


class Mamba2Mixer(RecurrentMixer):
    """Mamba-2 block as a mixer: x (B, T, d_model) -> (B, T, d_model).

    in_proj -> [z, x, B, C, dt]; causal depthwise conv (K = d_conv, with bias) + SiLU on [x, B, C];
    dt = softplus(dt + dt_bias); A = -exp(A_log) per head; SSD scan with D skip; gated RMSNorm
    norm(y ⊙ silu(z)); out_proj. Parameter names follow ``mamba_ssm.modules.mamba2.Mamba2``.

    Heads: ``headdim`` (default 32) or ``n_heads``; d_inner = expand * d_model = n_heads * headdim.
    Left padding (``attention_mask`` 0): the conv input is zeroed and dt = 0 at padded steps, so the state
    stays exactly zero through the padding and real tokens see what an unpadded row sees.
    backend: "chunked" (:func:`ssd_chunked`) or "reference" (:func:`ssd_sequential_ref`).
    Incremental state: ``conv`` (B, conv_dim, d_conv-1) last conv inputs, ``ssm`` (B, h, headdim, d_state)
    in float32 (float64 for float64), ``t``; ``max_len`` is ignored.
    """

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
        self.backend = check_choice("backend", backend, ("chunked", "reference"))

        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.n_heads, bias=bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=conv_bias)
        self.dt_bias = nn.Parameter(init_dt_bias(self.n_heads, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(torch.empty(self.n_heads).uniform_(a_lo, a_hi).log())
        self.D = nn.Parameter(torch.ones(self.n_heads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # same convention as mamba_ssm
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // ngroups, eps=norm_eps)
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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block on x (B, T, d_model) continuing from the given states; returns (out, conv, ssm)."""
        b, T, _ = x.shape
        z, xbc, dt = torch.split(self.in_proj(x), [self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        if mask is not None:
            xbc = xbc.masked_fill(~mask[..., None], 0.0)
        xbc, conv_history = causal_conv(xbc, self.conv1d.weight, self.conv1d.bias, conv_history)
        xs, Bm, Cm = torch.split(F.silu(xbc), [self.d_inner] + [self.ngroups * self.d_state] * 2, dim=-1)
        work = work_dtype(x.dtype)
        dt = F.softplus(dt.to(work) + self.dt_bias.to(work))
        if mask is not None:
            dt = dt.masked_fill(~mask[..., None], 0.0)
        A = -torch.exp(self.A_log.to(work))
        xs = xs.reshape(b, T, self.n_heads, self.headdim)
        Bm, Cm = (m.reshape(b, T, self.ngroups, self.d_state) for m in (Bm, Cm))
        if self.backend == "reference":
            y, ssm_state = ssd_sequential_ref(xs, dt, A, Bm, Cm, self.D, ssm_state)
        elif T == 1 and ssm_state is not None:
            y, ssm_state = ssd_step(ssm_state, xs[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], self.D)
            y = y[:, None]
        else:
            y, ssm_state = ssd_chunked(xs, dt, A, Bm, Cm, self.chunk_size, self.D, ssm_state)
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
