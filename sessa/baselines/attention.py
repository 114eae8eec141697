"""Multi-head causal softmax attention with GQA and RoPE: the Transformer baseline mixer.

    q = q_proj(x) (H heads), k = k_proj(x), v = v_proj(x) (Hkv heads, H % Hkv == 0), RoPE on q and k
    y = out_proj(concat_h softmax(q_h k_{h // (H/Hkv)}ᵀ / sqrt(hd) + causal mask) v_{h // (H/Hkv)})

The attention itself and RoPE live in :mod:`sessa.ops.attention` (SDPA fast path and einsum reference).
Shapes: B batch, T new tokens, S keys, D = d_model, H heads, Hkv key/value heads, hd = D / H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sessa.modules.contract import (
    MixerState,
    check_input,
    key_mask,
    record_key_mask,
    reorder_state_tensors,
    step_position,
)
from sessa.modules.stacking import bound_step, stacked_projection
from sessa.ops.attention import BACKENDS, attend_static, causal_attention, split_heads
from sessa.ops.packing import check_seq_idx, positions
from sessa.ops.prologue import step_prologue
from sessa.validation import check_choice, check_int, check_positive_float


class AttentionMixer(nn.Module):
    """Causal multi-head attention as a mixer: x (B, T, D) -> (B, T, D).

    n_kv_heads: None = n_heads (plain MHA), fewer for GQA/MQA. rope: rotary embeddings on q and k at
    absolute positions (left padding is counted in the positions; RoPE only sees differences, so a padded
    row gives the same outputs). backend: "sdpa" or "reference" (see :func:`causal_attention`).
    Padded keys (``attention_mask`` 0) are never attended; a padded query outputs out_proj(0).
    Incremental state: ``k`` (after RoPE), ``v``: (B, max_len, Hkv, hd) preallocated; ``t``; and, once a
    mask was given, ``key_mask`` (B, max_len) bool.
    """

    supports_packing = True  # forward takes seq_idx (packed rows)

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        rope: bool = True,
        rope_base: float = 10000.0,
        bias: bool = False,
        backend: str = "sdpa",
    ) -> None:
        super().__init__()
        check_int("d_model", d_model)
        check_int("n_heads", n_heads)
        self.d_model, self.layer_idx = d_model, check_int("layer_idx", layer_idx, minimum=0)
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads, got n_heads={n_heads}")
        n_kv_heads = n_heads if n_kv_heads is None else check_int("n_kv_heads", n_kv_heads)
        if n_kv_heads > n_heads or n_heads % n_kv_heads:
            raise ValueError(
                f"n_kv_heads must divide n_heads ({n_heads}) and be <= it, got n_kv_heads={n_kv_heads}"
            )
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        if rope and self.head_dim % 2:
            raise ValueError(
                f"RoPE needs an even head dim, got d_model / n_heads = {d_model} / {n_heads} "
                f"= {self.head_dim}"
            )
        self.rope, self.rope_base = bool(rope), check_positive_float("rope_base", rope_base)
        self.backend = check_choice("backend", backend, BACKENDS)

        kv_dim = n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        # no rope_inv_freq buffer: module.to(bfloat16) would round the frequencies

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"rope={self.rope}, backend={self.backend!r}"
        )

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, T, D), attention_mask: (B, T) 1 = real, 0 = left padding -> (B, T, D); seq_idx: optional
        (B, T) packed rows (``sessa.ops.packing``; each sequence at its own positions)."""
        check_input(x, self.d_model)
        B, T, _ = x.shape
        mask = key_mask(attention_mask, B, T)
        start = 0 if seq_idx is None else positions(check_seq_idx(seq_idx, B, T).to(x.device))
        q, k, v = self.qkv(x, start=start)
        out = causal_attention(q, k, v, key_mask=mask, backend=self.backend, seq_idx=seq_idx)
        return self.out_proj(out.reshape(B, T, self.d_model))

    def init_state(
        self,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MixerState:
        check_int("batch_size", batch_size)
        check_int("max_len", max_len)
        device = self.q_proj.weight.device if device is None else device
        dtype = self.q_proj.weight.dtype if dtype is None else dtype
        shape = (batch_size, max_len, self.n_kv_heads, self.head_dim)
        k = torch.zeros(shape, device=device, dtype=dtype)
        return {"k": k, "v": torch.zeros_like(k), "t": 0}

    def step(
        self, x: torch.Tensor, state: MixerState, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, T_new, D) after ``state["t"]`` tokens; attention_mask: (B, t + T_new) or None
        (None: the new tokens are real). Writes the new keys/values into the cache."""
        check_input(x, self.d_model)
        t = step_position(state, x, "k")
        B, T_new, _ = x.shape
        end, max_len = t + T_new, state["k"].shape[1]
        if end > max_len:
            raise ValueError(f"state is full: {t} tokens cached + {T_new} new > max_len={max_len}")
        mask = record_key_mask(state, "key_mask", key_mask(attention_mask, B, end), t, end, state["k"])
        if T_new == 1 and self.backend == "sdpa":  # the launches bound to the state (CUDA, no gradient)
            modules = [self.q_proj, self.k_proj, self.v_proj]
            out = bound_step(x, state, t, modules, keys=("k", "v", "key_mask"), n_heads=self.n_heads,
                             rope_base=self.rope_base if self.rope else None, out_proj=self.out_proj)
            if out is not None:
                state["t"] = end
                return out
        # without a gradient one GEMM for q, k, v (sessa.modules.stacking) and one launch for RoPE and the
        # cache writes of one token (sessa.ops.prologue): decoding is host-bound
        stacked = stacked_projection([self.q_proj, self.k_proj, self.v_proj], state)
        if stacked is None:
            q, k, v = self.qkv(x, start=t)
            state["k"].narrow(1, t, T_new).copy_(k)
            state["v"].narrow(1, t, T_new).copy_(v)
        else:
            proj = F.linear(x, stacked.weight, stacked.bias)
            base = self.rope_base if self.rope else None
            q, _ = step_prologue(proj, state["k"], state["v"], t, self.n_heads, base)
        keys, values = state["k"].narrow(1, 0, end), state["v"].narrow(1, 0, end)
        out = causal_attention(q, keys, values, key_mask=mask, backend=self.backend)
        state["t"] = end
        return self.out_proj(out.reshape(B, T_new, self.d_model))

    def step_static(
        self, x: torch.Tensor, state: MixerState, pos: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """One token x: (B, 1, D) at position ``pos`` (0-d device tensor) of the fixed-size state; mask (B, L)
        over every cache position with the new column set. Shapes do not depend on the position (graph
        capture); equals :meth:`step`; the state's "t" is left to the caller."""
        q, k, v = self.qkv(x, start=pos)
        out = attend_static(q, k, v, state["k"], state["v"], pos, mask, self.backend)
        return self.out_proj(out.reshape(x.shape[0], 1, self.d_model))

    def reorder_state(self, state: MixerState, index: torch.Tensor) -> MixerState:
        return reorder_state_tensors(state, index)

    def qkv(
        self, x: torch.Tensor, start: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project x (B, T, D) to q (B, T, H, hd) and k, v (B, T, Hkv, hd); RoPE at positions start..
        (start may be a 0-d device tensor)."""
        base = self.rope_base if self.rope else None
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return split_heads(q, k, v, self.n_heads, self.n_kv_heads, start, base)
