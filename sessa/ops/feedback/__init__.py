"""The feedback solve (I - B_fb) s = f of DESIGN §2.2, with selectable backends.

Shapes: q_b, k_b, f: (B, T, D); gamma: (B, T, 1) or (B, T); key_mask: (B, T) bool (False = padding key).

Backends:
  "reference" dense masked softmax + triangular solve (the paper's equations), O(T^2) memory
  "chunked"   blocked forward substitution with a custom backward, O(T*D) memory, CPU and CUDA
  "triton"    fused Triton kernels (CUDA only; see sessa.ops.feedback.triton)
  "auto"      "triton" on CUDA when its kernels are available, else "chunked"
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

from sessa.ops.feedback.chunked import DEFAULT_CHUNK, feedback_solve_chunked, forward_rows, work_dtype
from sessa.ops.feedback.reference import feedback_solve_loop, feedback_solve_ref, feedback_weights_ref

BACKENDS = ("auto", "reference", "chunked", "triton")
_warned_fallback = False

__all__ = [
    "BACKENDS",
    "feedback_solve",
    "feedback_solve_ref",
    "feedback_solve_loop",
    "feedback_weights_ref",
    "feedback_continue",
]


def _triton_solver():
    """The Triton solve function, or None when Triton or its kernels are not importable here."""
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        from sessa.ops.feedback.triton import feedback_solve_triton
    except ImportError:
        return None
    return feedback_solve_triton


def _check(q_b, k_b, gamma, f, key_mask) -> torch.Tensor:
    """Validate shapes/dtypes/devices; return gamma as (B, T, 1)."""
    for name, x in (("q_b", q_b), ("k_b", k_b), ("gamma", gamma), ("f", f)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.device != f.device:
            raise ValueError(f"{name} is on {x.device} but f is on {f.device}")
    if f.dim() != 3:
        raise ValueError(f"f must have shape (B, T, D), got {tuple(f.shape)}")
    for name, x in (("q_b", q_b), ("k_b", k_b)):
        if x.shape != f.shape:
            raise ValueError(f"{name} must have the shape of f {tuple(f.shape)}, got {tuple(x.shape)}")
        if x.dtype != f.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but f has {f.dtype}; pass one dtype")
    B, T, _ = f.shape
    if gamma.shape == (B, T):
        gamma = gamma[..., None]
    if gamma.shape != (B, T, 1):
        raise ValueError(f"gamma must have shape (B, T, 1) or (B, T) = {(B, T)}, got {tuple(gamma.shape)}")
    if key_mask is not None and (key_mask.shape != (B, T) or key_mask.dtype != torch.bool):
        raise ValueError(
            f"key_mask must be a bool tensor of shape {(B, T)}, got {key_mask.dtype} {tuple(key_mask.shape)}"
        )
    return gamma


def feedback_solve(
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    gamma: torch.Tensor,
    f: torch.Tensor,
    *,
    backend: str = "auto",
    chunk_size: int | None = None,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Solve s_t = f_t + gamma_t * sum_{j<t} softmax_j(q_b,t . k_b,j / sqrt(D)) s_j (s_0 = f_0).

    Args:
        q_b, k_b: (B, T, D) feedback queries and keys (one head over the full width D).
        gamma: (B, T, 1) or (B, T) feedback gains, |gamma| < 1 for a stable solve.
        f: (B, T, D) forward-branch output.
        backend: one of "auto", "reference", "chunked", "triton".
        chunk_size: rows per block. "chunked": default 128 (fastest on CPU). "triton": the super-chunk
            length L, a multiple of 16, default min(1024, T rounded up to 128); leave None unless tuning.
        key_mask: optional (B, T) bool; False marks padding keys that no row reads.
    Returns:
        s: (B, T, D) in f's dtype (computed in float32 for bf16/fp16 inputs).
    """
    global _warned_fallback
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    gamma = _check(q_b, k_b, gamma, f, key_mask)
    if f.shape[1] == 0:
        return f.clone()
    if backend == "reference":
        return feedback_solve_ref(q_b, k_b, gamma, f, key_mask)
    if backend in ("auto", "triton"):
        solver = _triton_solver() if f.is_cuda else None
        if solver is not None:
            return solver(q_b, k_b, gamma, f, key_mask=key_mask, chunk_size=chunk_size)
        if backend == "triton":
            reason = "it needs a CUDA tensor" if not f.is_cuda else "triton or its kernels are not available"
            if not _warned_fallback:
                warnings.warn(
                    f"feedback_solve: backend 'triton' unavailable ({reason}); using 'chunked'", stacklevel=2
                )
                _warned_fallback = True
    return feedback_solve_chunked(q_b, k_b, gamma, f, key_mask, chunk_size or DEFAULT_CHUNK)


def feedback_continue(
    q_new: torch.Tensor,
    k_all: torch.Tensor,
    gamma_new: torch.Tensor,
    f_new: torch.Tensor,
    s_past: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Solve the rows of n new tokens given the t cached past outputs (incremental decoding).

    q_new, f_new: (B, n, D); gamma_new: (B, n, 1); k_all: (B, t + n, D) keys of every position;
    s_past: (B, t, D); key_mask: optional (B, t + n). Returns s_new: (B, n, D) in f_new's dtype.
    Differentiable through plain autograd (meant for short n).
    """
    B, n, D = f_new.shape
    t = s_past.shape[1]
    if k_all.shape != (B, t + n, D):
        raise ValueError(f"k_all must be (B, t + n, D) = {(B, t + n, D)}, got {tuple(k_all.shape)}")
    s = torch.cat(
        [s_past.to(work_dtype(f_new.dtype)), f_new.new_zeros(B, n, D, dtype=work_dtype(f_new.dtype))], 1
    )
    forward_rows(q_new, k_all, gamma_new, f_new, s, t, chunk_size, key_mask)
    return s[:, t:].to(f_new.dtype)
