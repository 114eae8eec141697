"""The prologue of a cached step: from the stacked input projection of the new tokens to the queries, the
cache writes and the feedback gain (DESIGN §2.5).

``proj``: (B, n, W), the new tokens' projections side by side, [q (D) | k (KV) | v (KV)] for attention and
[q | k | v | q_b (D) | k_b (D) | gain logit (1)] for Sessa (``sessa.modules.stacking``), KV = Hkv * hd.
:func:`step_prologue_ref` reads like the step it replaces (RoPE of q and k, three cache writes, the gain
gamma_max * tanh(gamma_bias + logit)); :func:`step_prologue` runs it as one Triton launch for one token per
row on CUDA, where an eager decoding step is bound by the host time of its ~30 small launches per layer.
"""

from __future__ import annotations

import torch

from sessa.ops.attention import TRITON_DECODE_MAX_WIDTH, apply_rope, rope_tables, triton_decode_usable
from sessa.ops.feedback.reference import feedback_gain


def step_prologue_ref(
    proj: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    t: int,
    n_heads: int,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
    kb_cache: torch.Tensor | None = None,
    gain: tuple[torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Write the new tokens' k (after RoPE) and v into k_cache, v_cache (B, L, Hkv, hd) at positions t..t+n-1,
    and with feedback (``kb_cache`` (B, L, D) and ``gain`` = (gamma_bias, gamma_max)) their k_b into kb_cache.
    ``rope``: :func:`~sessa.ops.attention.rope_tables`' pair tables of those positions, or None (no RoPE).
    Returns q (B, n, H, hd) after RoPE and the gain gamma (B, n, 1) (None without feedback), in proj's dtype
    (q_b is ``proj[..., D + 2 KV : 2 D + 2 KV]``)."""
    B, n, _ = proj.shape
    Hkv, hd = k_cache.shape[2:]
    D, KV = n_heads * hd, Hkv * hd
    q, k, v = proj[..., :D], proj[..., D : D + KV], proj[..., D + KV : D + 2 * KV]
    q, k, v = q.view(B, n, n_heads, hd), k.view(B, n, Hkv, hd), v.view(B, n, Hkv, hd)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    k_cache.narrow(1, t, n).copy_(k)  # copy_ casts to the cache's dtype
    v_cache.narrow(1, t, n).copy_(v)
    if kb_cache is None:
        return q, None
    kb_cache.narrow(1, t, n).copy_(proj[..., 2 * D + 2 * KV : 3 * D + 2 * KV])
    return q, feedback_gain(proj[..., 3 * D + 2 * KV :], *gain)


def prologue_usable(proj: torch.Tensor, width: int, *caches: torch.Tensor) -> bool:
    """Whether :func:`step_prologue` takes the Triton launch: one token per row, the decode kernels usable
    on the caches (``triton_decode_usable``: CUDA, dtype, no gradient, the switch), a model width ``width``
    the kernel holds in registers (<= TRITON_DECODE_MAX_WIDTH), no gradient wanted of proj, and the caches
    in proj's dtype with unit stride over each token's (heads x width)."""
    if proj.shape[1] != 1 or width > TRITON_DECODE_MAX_WIDTH or not triton_decode_usable(*caches):
        return False
    if proj.stride(-1) != 1 or (torch.is_grad_enabled() and proj.requires_grad):
        return False
    for c in caches:
        if c.dtype != proj.dtype or (c.dim() == 4 and c.stride(2) != c.shape[3]):
            return False
    return True


def step_prologue(
    proj: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    t: int,
    n_heads: int,
    rope_base: float | None,
    kb_cache: torch.Tensor | None = None,
    gain: tuple[torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`step_prologue_ref` with RoPE of base ``rope_base`` (None: none); one Triton launch where
    :func:`prologue_usable`."""
    hd = k_cache.shape[3]
    n = proj.shape[1]
    rope = rope_tables(t, n, hd, rope_base, proj.dtype, proj.device) if rope_base is not None else None
    caches = (k_cache, v_cache) if kb_cache is None else (k_cache, v_cache, kb_cache)
    if not prologue_usable(proj, n_heads * hd, *caches):
        return step_prologue_ref(proj, k_cache, v_cache, t, n_heads, rope, kb_cache, gain)
    from sessa.ops.triton_decode import step_prologue_triton

    return step_prologue_triton(proj, k_cache, v_cache, t, n_heads, rope, kb_cache, gain)
