"""Packed variable-length sequences: the ``cu_seqlens`` convention and the reference solve.

S sequences of lengths n_1..n_S are packed along the time axis of one batch row: q_b, k_b, f: (1, N, D),
gamma: (1, N, 1), N = n_1 + ... + n_S; cu_seqlens: (S + 1,) int32/int64 offsets
0 = c_0 <= c_1 <= ... <= c_S = N (flash-attn's convention; a segment may be empty). Segment i is
[c_{i-1}, c_i); no row reads a key of another segment.

Pair: ``sessa.ops.feedback.triton.feedback_solve_varlen`` (fused kernels, CUDA) and
:func:`feedback_solve_varlen_ref` (one dense reference solve per segment). Packed rows of a (B, T) batch
(``seq_idx``, ``sessa.ops.packing``) go through ``feedback_solve(..., seq_idx=...)``: the Triton op in one
launch sequence, other backends by :func:`solve_per_sequence`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sessa.ops.feedback.reference import feedback_solve_ref
from sessa.ops.packing import sequence_starts


def segments(cu_seqlens: torch.Tensor, n_packed: int) -> list[tuple[int, int]]:
    """The (start, end) of each non-empty segment, after checking cu_seqlens against the packed length
    n_packed."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor of offsets, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must hold int32 or int64 offsets, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with >= 2 offsets, got shape {tuple(cu_seqlens.shape)}")
    bounds = [int(x) for x in cu_seqlens.tolist()]
    if bounds[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got cu_seqlens[0] = {bounds[0]}")
    if bounds[-1] != n_packed:
        raise ValueError(f"cu_seqlens must end at the packed length N = {n_packed}, got {bounds[-1]}")
    pairs = list(zip(bounds, bounds[1:], strict=False))
    for i, (a, b) in enumerate(pairs):
        if b < a:
            raise ValueError(f"cu_seqlens must not decrease (a segment has length >= 0), got "
                             f"cu_seqlens[{i}] = {a} > cu_seqlens[{i + 1}] = {b}")
    return [(a, b) for a, b in pairs if b > a]


def check_packed(f: torch.Tensor, cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    """Check that f is a packed (1, N, D) tensor and cu_seqlens splits it; return the segments."""
    if f.dim() != 3 or f.shape[0] != 1:
        raise ValueError(f"packed sequences need f of shape (1, N, D), got {tuple(f.shape)}")
    return segments(cu_seqlens, f.shape[1])


def feedback_solve_varlen_ref(
    q_b: torch.Tensor, k_b: torch.Tensor, gamma: torch.Tensor, f: torch.Tensor, cu_seqlens: torch.Tensor
) -> torch.Tensor:
    """s of the packed sequences (1, N, D): :func:`feedback_solve_ref` on each segment, concatenated.
    q_b, k_b, f: (1, N, D); gamma: (1, N, 1) or (1, N); cu_seqlens: (S + 1,) offsets (module docstring)."""
    pairs = check_packed(f, cu_seqlens)
    solves = [feedback_solve_ref(q_b[:, a:b], k_b[:, a:b], gamma[:, a:b], f[:, a:b]) for a, b in pairs]
    return torch.cat(solves, 1) if solves else f.clone()


def solve_per_sequence(
    solver: Callable[..., torch.Tensor],
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    gamma: torch.Tensor,
    f: torch.Tensor,
    seq_idx: torch.Tensor,
) -> torch.Tensor:
    """The solve of packed rows (``sessa.ops.packing``; q_b, k_b, f: (B, T, D), gamma (B, T, 1), seq_idx
    (B, T)): ``solver(q_b, k_b, gamma, f)`` on each sequence of each row alone, reassembled (the readable
    path: one call per sequence; the Triton op does the whole batch in one launch sequence)."""
    bounds = sequence_starts(seq_idx).cpu()
    rows = []
    for b in range(f.shape[0]):
        cuts = [*bounds[b].nonzero().flatten().tolist(), f.shape[1]]
        parts = [solver(q_b[b : b + 1, a:e], k_b[b : b + 1, a:e], gamma[b : b + 1, a:e], f[b : b + 1, a:e])
                 for a, e in zip(cuts, cuts[1:], strict=False)]
        rows.append(torch.cat(parts, 1))
    return torch.cat(rows, 0)
