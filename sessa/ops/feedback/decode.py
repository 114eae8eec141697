"""Incremental decoding of the feedback solve (DESIGN §2.5): rows of n new tokens given t cached outputs.

Shapes: q_new, f_new: (B, n, D) for the new tokens at positions t..t+n-1; gamma_new: (B, n, 1) or (B, n);
k_all: (B, t + n, D) feedback keys of every position so far (cached and new); s_past: (B, t, D) the cached
mixer outputs; key_mask: optional (B, t + n) bool over every position (False = padding key).

Pair: :func:`feedback_continue` (the chunked solve's blocked forward rows; one new token is a single attention
call over the cache; the mixer's decode step calls it)
and :func:`feedback_continue_ref` (the equations, dense). Both are differentiable through plain autograd.
"""

from __future__ import annotations

import math
import os

import torch

from sessa.ops.attention import decode_lengths, sdpa_without_cudnn, triton_decode_usable
from sessa.ops.feedback.chunked import DEFAULT_CHUNK, forward_rows
from sessa.ops.precision import cast, work_dtype


def _check(q_new, k_all, gamma_new, f_new, s_past, key_mask) -> torch.Tensor:
    """Validate shapes; return gamma_new as (B, n, 1)."""
    if f_new.dim() != 3:
        raise ValueError(f"f_new must have shape (B, n, D), got {tuple(f_new.shape)}")
    B, n, D = f_new.shape
    if q_new.shape != f_new.shape:
        raise ValueError(f"q_new must have the shape of f_new {tuple(f_new.shape)}, got {tuple(q_new.shape)}")
    if s_past.dim() != 3 or s_past.shape[0] != B or s_past.shape[2] != D:
        raise ValueError(f"s_past must have shape (B, t, D) with B = {B}, D = {D}, got {tuple(s_past.shape)}")
    t = s_past.shape[1]
    if k_all.shape != (B, t + n, D):
        raise ValueError(f"k_all must be (B, t + n, D) = {(B, t + n, D)}, got {tuple(k_all.shape)}")
    if gamma_new.shape == (B, n):
        gamma_new = gamma_new[..., None]
    if gamma_new.shape != (B, n, 1):
        raise ValueError(f"gamma_new must have shape (B, n, 1) = {(B, n, 1)}, got {tuple(gamma_new.shape)}")
    if key_mask is not None and (key_mask.shape != (B, t + n) or key_mask.dtype != torch.bool):
        raise ValueError(
            f"key_mask must be a bool tensor of shape (B, t + n) = {(B, t + n)}, got {key_mask.dtype} "
            f"{tuple(key_mask.shape)}"
        )
    return gamma_new


def feedback_continue(
    q_new: torch.Tensor,
    k_all: torch.Tensor,
    gamma_new: torch.Tensor,
    f_new: torch.Tensor,
    s_past: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    backend: str = "auto",
) -> torch.Tensor:
    """s of the n new tokens (B, n, D), in f_new's dtype, given the t cached outputs s_past (shapes: module
    docstring). ``backend="auto"``: on CUDA with Triton, n > 1 new tokens after a non-empty cache go through
    :func:`feedback_continue_split` with the Triton solve of the new block; otherwise (and with "chunked")
    the rows are blocked like the chunked solve (chunk_size rows at a time), which suits short n and the CPU.
    One new token is always one attention-like pass over the cache."""
    gamma_new = _check(q_new, k_all, gamma_new, f_new, s_past, key_mask)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if backend not in ("auto", "chunked"):
        raise ValueError(f"backend must be 'auto' or 'chunked', got {backend!r}")
    B, n, D = f_new.shape
    t = s_past.shape[1]
    if n == 1:
        return _one_row(
            q_new, k_all[:, :t], gamma_new, f_new, s_past, None if key_mask is None else key_mask[:, :t]
        )
    if backend == "auto" and t > 0 and f_new.is_cuda and _triton_solve_available(f_new.dtype):
        return feedback_continue_split(q_new, k_all, gamma_new, f_new, s_past, key_mask, backend="triton")
    work = work_dtype(f_new.dtype)
    s = torch.cat([s_past.to(work), f_new.new_zeros(B, n, D, dtype=work)], 1)
    forward_rows(q_new, k_all, gamma_new, f_new, s, t, chunk_size, key_mask)
    return s[:, t:].to(f_new.dtype)


def feedback_decode(
    q_new: torch.Tensor,
    k_cache: torch.Tensor,
    gamma_new: torch.Tensor,
    f_new: torch.Tensor,
    s_cache: torch.Tensor,
    length: torch.Tensor | int,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """s of one new token per row that reads the first ``length`` positions of fixed-size caches.

    q_new, f_new: (B, 1, D); gamma_new: (B, 1, 1); k_cache, s_cache: (B, L, D) (positions >= length are
    ignored); length: int, or a 0-d / (B,) integer tensor on the caches' device (a graph-captured step passes
    its position tensor); key_mask: (B, L) bool or None. On CUDA the split-context Triton kernels
    (:mod:`sessa.ops.triton_decode`) run (forward only), elsewhere, or when a gradient is needed,
    :func:`feedback_decode_ref`. Returns (B, 1, D) in f_new's dtype."""
    B, L, D = k_cache.shape
    if f_new.shape != (B, 1, D) or q_new.shape != f_new.shape or s_cache.shape != k_cache.shape:
        raise ValueError(
            "feedback_decode needs q_new, f_new (B, 1, D) and caches (B, L, D) alike; got "
            f"q {tuple(q_new.shape)}, f {tuple(f_new.shape)}, k {tuple(k_cache.shape)}, "
            f"s {tuple(s_cache.shape)}"
        )
    length = decode_lengths(length, B, k_cache.device)
    if triton_decode_usable(k_cache, q_new, gamma_new, f_new, s_cache):
        return _feedback_decode_triton(q_new, k_cache, gamma_new, f_new, s_cache, length, key_mask)
    return feedback_decode_ref(q_new, k_cache, gamma_new, f_new, s_cache, length, key_mask)


def _feedback_decode_triton(q_new, k_cache, gamma_new, f_new, s_cache, length, key_mask) -> torch.Tensor:  # noqa: ANN001
    """:func:`feedback_decode` on the Triton kernels, for callers that ``triton_decode_usable`` accepted;
    while torch.compile traces, the opaque custom op (see sessa.ops.decode_ops)."""
    gamma_new = gamma_new.reshape(f_new.shape[0], 1, 1)
    if torch.compiler.is_compiling():
        op = torch.ops.sessa.feedback_decode
        return op(q_new, k_cache, gamma_new, f_new, s_cache, length, key_mask)
    from sessa.ops.triton_decode import feedback_decode_triton

    return feedback_decode_triton(q_new, k_cache, gamma_new, f_new, s_cache, length, key_mask)


def feedback_decode_ref(
    q_new: torch.Tensor,
    k_cache: torch.Tensor,
    gamma_new: torch.Tensor,
    f_new: torch.Tensor,
    s_cache: torch.Tensor,
    length: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`feedback_decode` from the equations, over the whole cache with the unread positions masked."""
    B, L, D = k_cache.shape
    work = work_dtype(f_new.dtype)
    logits = torch.einsum("bd,bjd->bj", q_new.reshape(B, D).to(work), k_cache.to(work)) / math.sqrt(D)
    readable = torch.arange(L, device=k_cache.device)[None, :] < length.reshape(-1, 1)
    if key_mask is not None:
        readable = readable & key_mask
    alpha = torch.softmax(logits.masked_fill(~readable, float("-inf")), dim=-1).nan_to_num(0.0)
    read = torch.einsum("bj,bjd->bd", alpha, s_cache.to(work))[:, None]
    return (f_new.to(work) + gamma_new.reshape(B, 1, 1).to(work) * read).to(f_new.dtype)


def _one_row(q_new, k_past, gamma_new, f_new, s_past, past_mask) -> torch.Tensor:  # noqa: ANN001
    """One new token at position t: s = f + gamma * softmax(q . k_j / sqrt(D)) s_j over the readable j < t.

    The weighted sum is one attention call (query q_new, keys k_past, values s_past; a single head of width
    D), so no copy of the cache is made and the per-token work is one pass over it. cuDNN is left out: it
    plans again for every new length (:func:`sessa.ops.attention.sdpa_without_cudnn`)."""
    t = s_past.shape[1]
    if t == 0:
        return f_new.clone()
    if triton_decode_usable(k_past, q_new, gamma_new, f_new, s_past):
        lengths = decode_lengths(t, f_new.shape[0], f_new.device)
        return _feedback_decode_triton(q_new, k_past, gamma_new, f_new, s_past, lengths, past_mask)
    q = q_new[:, None]
    k, v = cast(k_past, q.dtype)[:, None], cast(s_past, q.dtype)[:, None]
    mask = None if past_mask is None else past_mask[:, None, None, :]
    read = sdpa_without_cudnn(q, k, v, attn_mask=mask)[:, 0]  # (B, 1, D)
    if past_mask is not None:  # a token with no readable key reads nothing (SDPA gives NaN there)
        read = read.masked_fill(~past_mask.any(-1)[:, None, None], 0.0)
    work = work_dtype(f_new.dtype)
    return cast(cast(f_new, work) + cast(gamma_new, work) * cast(read, work), f_new.dtype)


def _triton_solver():  # noqa: ANN202
    from sessa.ops.feedback import _triton_solver

    return _triton_solver()


def _triton_solve_available(dtype: torch.dtype) -> bool:
    from sessa.ops.feedback import TRITON_DTYPES

    return dtype in TRITON_DTYPES and _triton_solver() is not None


PAST_TILE = 2**26  # logits (batch x rows x keys, float32) of one block of rows of the past product


def feedback_continue_split(
    q_new: torch.Tensor,
    k_all: torch.Tensor,
    gamma_new: torch.Tensor,
    f_new: torch.Tensor,
    s_past: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`feedback_continue` as one product with the past and one solve of the new block.

    With x_ij the logits of new row i (position t + i), lse_i the log-sum-exp over all its readable keys,
    lse_p,i over the past ones (j < t) and lse_n,i over the earlier new ones (t <= j < t + i):

        s_new = f' + gamma' * softmax_new(q_new k_new^T) s_new,   softmax over the new block alone, with
        gamma'_i = gamma_i exp(lse_n,i - lse_i)                    (the new keys' share of row i's mass)
        f'_i = f_i + gamma_i exp(lse_p,i - lse_i) softmax_past(x_i) s_past

    so the new rows are an ordinary feedback solve (:func:`sessa.ops.feedback.feedback_solve` with
    ``backend``; "triton" on CUDA) of the block with modified gains and right-hand side. The past product is
    one batched float32 matmul per block of rows (no sequential dependency). Shapes and result as
    :func:`feedback_continue`; differentiable (the solve's backward and plain autograd)."""
    from sessa.ops.feedback import feedback_solve

    gamma_new = _check(q_new, k_all, gamma_new, f_new, s_past, key_mask)
    B, n, D = f_new.shape
    t = s_past.shape[1]
    work = work_dtype(f_new.dtype)
    mask = torch.ones(B, t + n, dtype=torch.bool, device=f_new.device) if key_mask is None else key_mask
    causal = torch.arange(n, device=f_new.device)
    rows = max(1, PAST_TILE // max(1, B * (t + n)))
    keys_t, values = k_all.to(work).transpose(1, 2), s_past.to(work)  # once, not per block of rows
    lse_p, lse_n, read = [], [], []
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        x = torch.matmul(q_new[:, r0:r1].to(work), keys_t[:, :, : t + r1]) / math.sqrt(D)
        past = x[:, :, :t].masked_fill(~mask[:, None, :t], float("-inf"))
        strict = causal[None, :r1] < causal[r0:r1, None]  # new key j before new row i
        new = x[:, :, t:].masked_fill(~(strict[None] & mask[:, None, t : t + r1]), float("-inf"))
        lse_p.append(torch.logsumexp(past, -1))
        lse_n.append(torch.logsumexp(new, -1))
        probs = torch.exp(past - torch.where(torch.isinf(lse_p[-1]), 0.0, lse_p[-1])[..., None])
        read.append(torch.matmul(probs, values))
    lse_p, lse_n, read = torch.cat(lse_p, 1), torch.cat(lse_n, 1), torch.cat(read, 1)
    lse = torch.logaddexp(lse_p, lse_n)
    safe = torch.where(torch.isinf(lse), 0.0, lse)  # a row with no readable key: both shares 0
    share_new, share_past = torch.exp(lse_n - safe)[..., None], torch.exp(lse_p - safe)[..., None]
    g = gamma_new.to(work)
    f_block = f_new.to(work) + g * share_past * read
    g_block = g * share_new
    dt = f_new.dtype
    block = (q_new, k_all[:, t:].to(dt), g_block.to(dt), f_block.to(dt))
    if backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1":  # CPU tensors in the interpreter
        return _triton_solver()(*block, key_mask=mask[:, t:]).to(dt)
    return feedback_solve(*block, backend=backend, key_mask=mask[:, t:]).to(dt)


def feedback_continue_ref(
    q_new: torch.Tensor,
    k_all: torch.Tensor,
    gamma_new: torch.Tensor,
    f_new: torch.Tensor,
    s_past: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same rows from the equations. New token i sits at position t + i and reads the keys j < t + i:

        alpha[i, j] = softmax_j(q_new,i . k_j / sqrt(D)) over the readable keys (a row with none: zeros)
        B[i, j]     = gamma_i alpha[i, j],  split into the columns of the past (j < t) and of the new tokens
        (I - B_new) s_new = f_new + B_past s_past          (B_new strictly lower triangular, n x n)

    Computed in float32 (float64 for float64 inputs); returns s_new: (B, n, D) in f_new's dtype.
    """
    gamma_new = _check(q_new, k_all, gamma_new, f_new, s_past, key_mask)
    work = work_dtype(f_new.dtype)
    q, k, g, f, s_p = (x.to(work) for x in (q_new, k_all, gamma_new, f_new, s_past))
    n, t, D = f.shape[1], s_p.shape[1], f.shape[2]
    logits = torch.einsum("bid,bjd->bij", q, k) / math.sqrt(D)
    position = torch.arange(t, t + n, device=f.device)[:, None]
    allowed = (torch.arange(t + n, device=f.device)[None, :] < position)[None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, :]
    alpha = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
    b_fb = g * alpha
    rhs = f + b_fb[:, :, :t] @ s_p
    eye = torch.eye(n, dtype=work, device=f.device)
    s_new = torch.linalg.solve_triangular(eye - b_fb[:, :, t:], rhs, upper=False, unitriangular=True)
    return s_new.to(f_new.dtype)
