"""Mamba-1's selective scan (Gu & Dao 2023): a chunked PyTorch fast path, its reference and the decode step.

Per channel c and state index k, with Δ_t >= 0 and A < 0 (d × n):

    h_t[c, k] = exp(Δ_t[c] A[c, k]) h_{t-1}[c, k] + Δ_t[c] B_t[k] u_t[c]
    y_t[c]    = Σ_k C_t[k] h_t[c, k] + D[c] u_t[c]

* :func:`selective_scan` — the fast path: the sequence is cut into chunks; the recurrence runs inside all
  chunks at once from a zero state (chunk_size vectorised steps), the chunk-end states are chained
  (T / chunk_size steps), and each chunk's outputs get the entering state decayed by exp of the in-chunk
  segment sum of Δ·A (always <= 0, so no exponential ever overflows).
* :func:`selective_scan_ref` — the recurrence one token at a time (readable reference).
* :func:`selective_scan_step` — one decoding step.

Shapes: b batch, T length, d channels (d_inner), n state size (d_state), c chunks, l positions in a chunk.
``resets`` (b, T) bool (packed rows, ``sessa.ops.packing``): True where a new sequence starts; the state
restarts from zero there (h_t = Δ_t B_t u_t), as in :mod:`sessa.ops.ssd`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sessa.ops.precision import work_dtype
from sessa.ops.state_passing import chain_chunk_states

# The Mamba mixer's scan backends: "chunked" (selective_scan), "reference" (selective_scan_ref) and "auto"
# (= chunked: fla-core has no selective scan with Mamba-1's per-channel, per-state decays).
BACKENDS = ("chunked", "reference", "auto")


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
    resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan as a plain loop over time.

    u, delta: (b, T, d), delta >= 0; A: (d, n), A < 0; B, C: (b, T, n); D: (d,) or None;
    initial_state: (b, d, n) or None; resets: (b, T) bool or None (module docstring). Returns y: (b, T, d)
    in u.dtype and the final state (b, d, n) in float32 (float64 for float64 inputs).
    """
    _check_scan_args(u, delta, A, B, C)
    in_dtype, work = u.dtype, work_dtype(u.dtype)
    u, delta, A, B, C = (m.to(work) for m in (u, delta, A, B, C))
    b, T, d = u.shape
    h = u.new_zeros(b, d, A.shape[1]) if initial_state is None else initial_state.to(work)
    ys = []
    for t in range(T):
        decay = torch.exp(delta[:, t, :, None] * A)
        if resets is not None:
            decay = decay * (~resets[:, t].to(u.device))[:, None, None]
        h = decay * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
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
    resets: torch.Tensor | None = None,
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
    reset_c = None if resets is None else chunked(resets.to(device=u.device, dtype=work))  # (b, c, l)

    # 1. recurrence inside every chunk at once, each from a zero state (a reset drops the state: factor 0)
    h = log_decay.new_zeros(b, log_decay.shape[1], d, A.shape[1])
    ys = []
    for i in range(L):
        decay = torch.exp(log_decay[:, :, i])
        if reset_c is not None:
            decay = decay * (1.0 - reset_c[:, :, i, None, None])
        h = decay * h + inputs[:, :, i]
        ys.append((h * C_c[:, :, i, None, :]).sum(-1))
    y = torch.stack(ys, dim=2)  # (b, c, l, d)

    # 2. chain chunk-end states; 3. add each entering state decayed by exp(in-chunk segment sum)
    decay_from_start = torch.exp(log_decay.cumsum(dim=2))
    if reset_c is not None:  # the entering state reaches row l only with no reset in rows 0..l
        decay_from_start = decay_from_start * (reset_c.cumsum(dim=2) == 0)[..., None, None]
    starts, final_state = chain_chunk_states(h, decay_from_start[:, :, -1], initial_state)
    y = y + torch.einsum("bcldn,bcln->bcld", decay_from_start * starts[:, :, None], C_c)
    y = y.reshape(b, -1, d)[:, :T]
    if D is not None:
        y = y + D.to(work) * u_w
    return y.to(in_dtype), final_state


def selective_scan_step(
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
