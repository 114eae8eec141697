"""Readable dense reference of the feedback solve (DESIGN §2.2): builds the T x T matrices, O(T^2) memory."""

from __future__ import annotations

import math

import torch


def feedback_gain(logit: torch.Tensor, gamma_bias: torch.Tensor, gamma_max: float) -> torch.Tensor:
    """gamma = gamma_max * tanh(gamma_bias + logit): the feedback gain of each position from its gain logit
    (B, T, 1), |gamma| < gamma_max <= 1 (DESIGN §2.1)."""
    return gamma_max * torch.tanh(gamma_bias + logit)


def feedback_weights_ref(
    q_b: torch.Tensor, k_b: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """alpha_fb: (B, T, T), softmax over the strict past j < t of q_b,t . k_b,j / sqrt(D); rows with no
    readable key (row 0, or only masked keys) are all zeros."""
    B, T, D = q_b.shape
    logits = torch.einsum("btd,bsd->bts", q_b, k_b) / math.sqrt(D)
    allowed = torch.ones(T, T, dtype=torch.bool, device=q_b.device).tril(-1)[None]
    if key_mask is not None:
        allowed = allowed & key_mask.to(torch.bool)[:, None, :]
    logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1).nan_to_num(0.0)  # an all -inf row gives NaN -> 0


def feedback_solve_ref(
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    gamma: torch.Tensor,
    f: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Solve (I - B_fb) s = f with B_fb[t, j] = gamma_t * alpha_fb[t, j] by a dense triangular solve.

    q_b, k_b, f: (B, T, D); gamma: (B, T, 1) or (B, T); key_mask: optional (B, T) bool, False = padding.
    Low-precision inputs are solved in float32 and cast back. Returns s: (B, T, D).
    """
    work = torch.float64 if f.dtype == torch.float64 else torch.float32
    q, k, g, rhs = (x.to(work) for x in (q_b, k_b, gamma, f))
    if g.dim() == 2:
        g = g[..., None]
    b_fb = g * feedback_weights_ref(q, k, key_mask)
    eye = torch.eye(f.shape[1], dtype=work, device=f.device)
    s = torch.linalg.solve_triangular(eye - b_fb, rhs, upper=False, unitriangular=True)
    return s.to(f.dtype)


def feedback_solve_loop(
    q_b: torch.Tensor, k_b: torch.Tensor, gamma: torch.Tensor, f: torch.Tensor
) -> torch.Tensor:
    """The recursion row by row (s_0 = f_0, s_t = f_t + gamma_t sum_{j<t} alpha[t, j] s_j): a second,
    independent reference used by the tests."""
    B, T, D = f.shape
    g = gamma if gamma.dim() == 3 else gamma[..., None]
    rows = [f[:, 0]]
    for t in range(1, T):
        weights = torch.softmax(torch.einsum("bd,bsd->bs", q_b[:, t], k_b[:, :t]) / math.sqrt(D), dim=-1)
        past = torch.stack(rows, dim=1)
        rows.append(f[:, t] + g[:, t] * torch.einsum("bs,bsd->bd", weights, past))
    return torch.stack(rows, dim=1)
