"""The feedback solve (I - B_fb) s = f of DESIGN §2.2, with selectable backends.

Shapes: q_b, k_b, f: (B, T, D); gamma: (B, T, 1) or (B, T); key_mask: (B, T) bool (False = padding key).

Backends:
  "reference" dense masked softmax + triangular solve (the paper's equations), O(T^2) memory
  "chunked"   blocked forward substitution with a custom backward, O(T*D) memory, CPU and CUDA
  "triton"    fused Triton kernels (CUDA only; see sessa.ops.feedback.triton)
  "auto"      the fastest of these that fits, by :func:`choose_backend`: "triton" on CUDA (fp32/bf16/fp16);
              on CUDA without Triton "reference" while its T x T working set fits DENSE_BUDGET_BYTES, else
              "chunked"; on CPU "reference" while B * T^2 <= 2^17, else "chunked". "chunked" on CUDA only on
              request.

Beside the solve: :func:`feedback_continue` / :func:`feedback_continue_ref` (incremental decoding, ``decode``)
and :func:`feedback_solve_varlen_ref` (packed sequences, ``varlen``; the fused op is in ``triton``).
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

from sessa.ops.feedback.chunked import DEFAULT_CHUNK, feedback_solve_chunked
from sessa.ops.feedback.decode import feedback_continue, feedback_continue_ref
from sessa.ops.feedback.reference import feedback_solve_loop, feedback_solve_ref, feedback_weights_ref
from sessa.ops.feedback.varlen import feedback_solve_varlen_ref, solve_per_sequence
from sessa.ops.packing import check_seq_idx
from sessa.ops.precision import work_dtype

BACKENDS = ("auto", "reference", "chunked", "triton")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Most memory "auto" lets the dense reference take on CUDA (dense_working_set_bytes, per call): 4 GiB admits
# T up to about 12.7K at B = 1, D = 1024 in float32. Per layer, about 2/3 of it stays saved for the backward.
DENSE_BUDGET_BYTES = 4 * 2**30
# On CPU the dense reference is faster while a batch of its T x T matrices holds at most this many elements
# (B * T^2), see choose_backend.
CPU_DENSE_MAX_ELEMENTS = 2**17
_warned_fallback = False

__all__ = [
    "BACKENDS",
    "DENSE_BUDGET_BYTES",
    "CPU_DENSE_MAX_ELEMENTS",
    "choose_backend",
    "dense_working_set_bytes",
    "feedback_solve",
    "feedback_solve_ref",
    "feedback_solve_loop",
    "feedback_weights_ref",
    "feedback_solve_varlen_ref",
    "feedback_continue",
    "feedback_continue_ref",
]


def dense_working_set_bytes(B: int, T: int, D: int, dtype: torch.dtype) -> int:
    """Peak extra memory of the dense reference's forward + backward: six T x T matrices per batch element in
    the work dtype (logits, probabilities, B_fb, I - B_fb, the solve's gradients; measured 5.6-5.9 on an H100
    at T = 8K-16K, benchmarks/kernels_h100_bf16.json) and a few (T, D) tensors."""
    itemsize = torch.finfo(work_dtype(dtype)).bits // 8
    return (6 * B * T * T + 8 * B * T * D) * itemsize


def choose_backend(
    device: torch.device | str,
    B: int,
    T: int,
    D: int,
    dtype: torch.dtype,
    triton_available: bool,
    dense_budget: int | None = None,
) -> str:
    """The backend "auto" runs for a (B, T, D) solve in ``dtype`` on ``device``: the fastest one measured
    that fits (benchmarks/RESULTS.md, "Which backend auto picks").

    - CUDA with Triton's kernels (fp32/bf16/fp16): "triton" (H200, bf16, D = 1024, T = 16K, fwd+bwd: 7.4 ms
      against 76 ms for the dense reference and 193 ms chunked).
    - CUDA otherwise: "reference" while :func:`dense_working_set_bytes` <= ``dense_budget`` (default
      DENSE_BUDGET_BYTES), else "chunked". The dense reference beat the chunked op at every measured shape
      (H100, bf16, D = 1024: 2.0 vs 12.4 ms at T = 1K, 22 vs 73 ms at 8K, 79.5 vs 142 ms at 16K; 16 x 1K:
      7.2 vs 18.7 ms), but its memory grows as T^2 (5.6 GiB at 16K).
    - CPU (any other device): "reference" while B * T^2 <= CPU_DENSE_MAX_ELEMENTS, else "chunked". On a
      2-core x86 (fp32, (B, D) in (1, 64), (1, 256), (8, 64), (4, 1024), T from 32 to 1024) the reference was
      1.3-1.8x faster at every shape within that bound (there the chunked op's per-chunk overhead dominates);
      beyond it the chunked op was even or faster (B = 1, T = 512: 1.0-1.3x; B = 8, T = 256: 1.1-1.2x;
      T = 1024: 1.3-6x), except B = 4, D = 1024, T = 256 (the reference 1.3x faster; at 512 0.95-1.45x).

    "chunked" on CUDA is never chosen while the reference fits: only on request.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return "reference" if B * T * T <= CPU_DENSE_MAX_ELEMENTS else "chunked"
    if triton_available and dtype in TRITON_DTYPES:
        return "triton"
    budget = DENSE_BUDGET_BYTES if dense_budget is None else dense_budget
    return "reference" if dense_working_set_bytes(B, T, D, dtype) <= budget else "chunked"


def _triton_solver():
    """The Triton solve function, or None when Triton or its kernels are not importable here."""
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        from sessa.ops.feedback.triton import feedback_solve_triton
    except ImportError:
        return None
    return feedback_solve_triton


def _warn_once(message: str) -> None:
    global _warned_fallback
    if not _warned_fallback:
        warnings.warn(f"feedback_solve: {message}", stacklevel=3)
        _warned_fallback = True


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
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Solve s_t = f_t + gamma_t * sum_{j<t} softmax_j(q_b,t . k_b,j / sqrt(D)) s_j (s_0 = f_0).

    Args:
        q_b, k_b: (B, T, D) feedback queries and keys (one head over the full width D).
        gamma: (B, T, 1) or (B, T) feedback gains, |gamma| < 1 for a stable solve.
        f: (B, T, D) forward-branch output.
        backend: one of "auto", "reference", "chunked", "triton".
        chunk_size: rows per block. "chunked": default 128 (fastest on CPU). "triton": the super-chunk
            length L, a multiple of 16, default 2048 while B * T <= 8192 else 1024, at most T rounded up to
            128 (``triton_common.default_chunk``); leave None unless tuning.
        key_mask: optional (B, T) bool; False marks padding keys that no row reads.
        seq_idx: optional (B, T) integer sequence of each token, for packed rows (``sessa.ops.packing``):
            each sequence is solved alone. "triton": one launch sequence for the batch; other backends: one
            solve per sequence (``varlen.solve_per_sequence``). Not together with key_mask.
    Returns:
        s: (B, T, D) in f's dtype (computed in float32 for bf16/fp16 inputs).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    gamma = _check(q_b, k_b, gamma, f, key_mask)
    if seq_idx is not None:
        check_seq_idx(seq_idx, *f.shape[:2])
        if key_mask is not None:
            raise ValueError("pass key_mask (padding) or seq_idx (packed rows), not both")
    if f.shape[1] == 0:
        return f.clone()
    solver = _triton_solver() if f.is_cuda and backend in ("auto", "triton") else None
    if backend == "auto":
        backend = choose_backend(f.device, *f.shape, f.dtype, solver is not None)
        if f.is_cuda and solver is None:
            _warn_once(f"triton is not available on CUDA; 'auto' uses {backend!r}")
    if backend == "triton" and solver is None:
        reason = "it needs a CUDA tensor" if not f.is_cuda else "triton or its kernels are not available"
        _warn_once(f"backend 'triton' unavailable ({reason}); using 'chunked'")
        backend = "chunked"
    if seq_idx is not None and backend == "triton":
        from sessa.ops.feedback.triton import feedback_solve_packed

        return feedback_solve_packed(q_b, k_b, gamma, f, seq_idx, chunk_size=chunk_size)
    if seq_idx is not None:
        return solve_per_sequence(
            lambda *x: feedback_solve(*x, backend=backend, chunk_size=chunk_size), q_b, k_b, gamma, f, seq_idx
        )
    if backend == "reference":
        return feedback_solve_ref(q_b, k_b, gamma, f, key_mask)
    if backend == "triton":
        return solver(q_b, k_b, gamma, f, key_mask=key_mask, chunk_size=chunk_size)
    return feedback_solve_chunked(q_b, k_b, gamma, f, key_mask, chunk_size or DEFAULT_CHUNK)
