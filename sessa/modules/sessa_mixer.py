"""The Sessa mixer (DESIGN §2): causal attention feeding a softmax-routed recurrent feedback solve.

Shapes: B batch, T length, D width, H forward heads, Hkv key/value heads, hd = D / H.
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
from sessa.ops import attention as attention_ops
from sessa.ops import feedback as feedback_ops
from sessa.ops.attention import attend_static, causal_attention, rope_inv_freq, split_heads
from sessa.ops.feedback import feedback_continue, feedback_solve
from sessa.ops.feedback.decode import feedback_decode
from sessa.ops.feedback.reference import feedback_gain
from sessa.ops.packing import check_seq_idx, positions
from sessa.ops.precision import cast
from sessa.ops.prologue import step_prologue
from sessa.validation import check_choice, check_float, check_int

# Buffers the original implementation keeps in its state dict; they hold no learned information.
_LEGACY_BUFFERS = ("rope_inv_freq", "causal_mask_f_full", "causal_mask_fb_full")


def _validate(D: int, n_heads: int, n_kv_heads: int, use_forward_rope: bool, gamma_max: float) -> None:
    check_int("D", D)
    check_int("n_heads", n_heads)
    check_int("n_kv_heads", n_kv_heads)
    check_float("gamma_max", gamma_max, 0.0, 1.0)
    if D % n_heads:
        raise ValueError(f"D must be divisible by n_heads >= 1, got D={D}, n_heads={n_heads}")
    if n_kv_heads > n_heads or n_heads % n_kv_heads:
        raise ValueError(
            f"n_kv_heads must be in [1, n_heads] and divide n_heads, got n_kv_heads={n_kv_heads}, "
            f"n_heads={n_heads}"
        )
    if use_forward_rope and (D // n_heads) % 2:
        raise ValueError(
            f"RoPE needs an even head dim, got D / n_heads = {D // n_heads} (turn off use_forward_rope)"
        )


class SessaMixer(nn.Module):
    """Sessa mixer: ``s = (I - B_fb)^{-1} f`` with f the causal attention output (DESIGN §2).

    Constructor compatible with the original implementation; ``use_flash`` is accepted for compatibility
    (attention always goes through ``scaled_dot_product_attention``, which picks flash kernels on CUDA).
    Extra keyword options: ``layer_idx``, ``feedback_backend`` ("auto" | "reference" | "chunked" |
    "triton"), ``attention_backend`` ("sdpa" | "reference"), ``chunk_size``, ``use_feedback`` (False gives
    the paper's ablation gamma = 0; no feedback parameters are created then).
    """

    supports_packing = True  # forward takes seq_idx (packed rows)

    def __init__(
        self,
        D: int,
        n_heads: int = 1,
        n_kv_heads: int | None = None,
        max_len: int | None = None,
        use_flash: bool = False,
        use_forward_rope: bool = True,
        gamma_max: float = 0.999,
        *,
        layer_idx: int = 0,
        feedback_backend: str = "auto",
        attention_backend: str = "sdpa",
        chunk_size: int | None = None,
        use_feedback: bool = True,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        _validate(D, n_heads, n_kv_heads, use_forward_rope, gamma_max)
        check_choice("feedback_backend", feedback_backend, feedback_ops.BACKENDS)
        check_choice("attention_backend", attention_backend, attention_ops.BACKENDS)
        check_int("max_len", max_len, optional=True)
        check_int("chunk_size", chunk_size, optional=True)
        check_int("layer_idx", layer_idx, minimum=0)
        self.D = self.d_model = D
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, D // n_heads
        self.max_len, self.layer_idx = max_len, layer_idx
        self.use_flash, self.use_forward_rope = bool(use_flash), bool(use_forward_rope)
        self.gamma_max, self.use_feedback = float(gamma_max), bool(use_feedback)
        self.feedback_backend, self.attention_backend, self.chunk_size = (
            feedback_backend,
            attention_backend,
            chunk_size,
        )
        kv_dim = n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(D, D, bias=True)
        self.k_proj = nn.Linear(D, kv_dim, bias=True)
        self.v_proj = nn.Linear(D, kv_dim, bias=True)
        self.out_proj = nn.Identity() if n_heads == 1 else nn.Linear(D, D, bias=False)
        if self.use_feedback:
            self.proj_fb = nn.Linear(D, 2 * D, bias=True)
            self.gamma_bias = nn.Parameter(torch.tensor(1.0))
            self.gamma_ctx = nn.Linear(D, 1, bias=False)

    @property
    def rope_inv_freq(self) -> torch.Tensor:
        """(hd/2,) float32 RoPE frequencies, computed on use so no bf16 copy can ever be stored."""
        return rope_inv_freq(self.head_dim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        for name in _LEGACY_BUFFERS:
            state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- pieces shared by the parallel and the incremental paths ------------------------------------
    def qkv(
        self, a: torch.Tensor, start: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, T, H, hd), k, v (B, T, Hkv, hd) of a: (B, T, D) at positions start.. (RoPE applied; start
        may be a 0-d device tensor)."""
        base = 10000.0 if self.use_forward_rope else None
        q, k, v = self.q_proj(a), self.k_proj(a), self.v_proj(a)
        return split_heads(q, k, v, self.n_heads, self.n_kv_heads, start, base)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
        seq_idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        f = causal_attention(q, k, v, key_mask=mask, backend=self.attention_backend, seq_idx=seq_idx)
        return self.out_proj(f.reshape(q.shape[0], q.shape[1], self.D))

    def feedback_inputs(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feedback q_b, k_b (B, T, D) and gain gamma (B, T, 1) of a: (B, T, D) (needs use_feedback)."""
        q_b, k_b = self.proj_fb(a).split(self.D, dim=-1)
        return q_b, k_b, feedback_gain(self.gamma_ctx(a), self.gamma_bias, self.gamma_max)

    def _step_inputs(self, a: torch.Tensor, t: int, cache: MixerState) -> tuple:
        """q (:meth:`qkv`) and, with feedback, (q_b, k_b, gamma) (:meth:`feedback_inputs`) of new tokens
        a: (B, n, D) for :meth:`step`, their k, v and k_b written into the cache at t... Without a gradient
        one GEMM with the input projections stacked (kept in the cache, :mod:`sessa.modules.stacking`)
        replaces five, and :func:`~sessa.ops.prologue.step_prologue` does the rest (one launch for one token
        on CUDA): a decoding step is bound by host time per op."""
        stacked = stacked_projection(self._stacked_modules(), cache)
        n = a.shape[1]
        if stacked is None:
            q, k, v = self.qkv(a, t)
            cache["k_f"].narrow(1, t, n).copy_(k)  # copy_ casts to the cache's dtype
            cache["v_f"].narrow(1, t, n).copy_(v)
            if not self.use_feedback:
                return q, None
            q_b, k_b, gamma = self.feedback_inputs(a)
            cache["k_b"].narrow(1, t, n).copy_(k_b)
            return q, (q_b, k_b, gamma)
        proj = F.linear(a, stacked.weight, stacked.bias)
        base = 10000.0 if self.use_forward_rope else None
        fb = self.use_feedback
        kb_cache, gain = (cache["k_b"], (self.gamma_bias, self.gamma_max)) if fb else (None, None)
        q, gamma = step_prologue(proj, cache["k_f"], cache["v_f"], t, self.n_heads, base, kb_cache, gain)
        if not fb:
            return q, None
        start = self.D + 2 * self.n_kv_heads * self.head_dim  # q_b, then k_b
        return q, (proj[..., start : start + self.D], proj[..., start + self.D : start + 2 * self.D], gamma)

    def _stacked_modules(self) -> list[nn.Module]:
        modules = [self.q_proj, self.k_proj, self.v_proj]
        if self.use_feedback:
            modules += [self.proj_fb, self.gamma_ctx]  # proj_fb's rows are q_b, then k_b
        return modules

    # -- parallel forward ----------------------------------------------------------------------------
    def forward(
        self,
        bar_a: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        seq_idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """bar_a: (B, T, D) -> s: (B, T, D). attention_mask: optional (B, T), 0 marks (left) padding;
        seq_idx: optional (B, T) packed rows (``sessa.ops.packing``; each sequence at its own positions)."""
        check_input(bar_a, self.D, "bar_a")
        mask = key_mask(attention_mask, *bar_a.shape[:2])
        start = 0 if seq_idx is None else positions(check_seq_idx(seq_idx, *bar_a.shape[:2]).to(bar_a.device))
        f = self._attend(*self.qkv(bar_a, start), mask, seq_idx)
        if not self.use_feedback:
            return f
        q_b, k_b, gamma = self.feedback_inputs(bar_a)
        return feedback_solve(
            q_b, k_b, gamma, f, backend=self.feedback_backend, chunk_size=self.chunk_size, key_mask=mask,
            seq_idx=seq_idx,
        )

    # -- incremental decoding (DESIGN §2.5) -----------------------------------------------------------
    def init_cache(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
    ) -> MixerState:
        """Preallocated cache for ``max_len`` tokens (argument, else the constructor's max_len).

        Keys: "t" (tokens so far), "k_f"/"v_f" (B, L, Hkv, hd) forward keys (after RoPE) and values,
        "k_b" (B, L, D) feedback keys, "s" (B, L, D) past mixer outputs, and "mask" (B, L) bool once an
        attention mask has been given.
        """
        length = max_len if max_len is not None else self.max_len
        if length is None:
            raise ValueError("init_cache needs max_len (argument or constructor), got None")
        check_int("max_len", length)
        check_int("batch_size", batch_size)
        param = self.q_proj.weight
        device = param.device if device is None else device
        dtype = param.dtype if dtype is None else dtype
        B, L, kv = int(batch_size), int(length), (self.n_kv_heads, self.head_dim)
        cache: MixerState = {
            "t": 0,
            "k_f": torch.zeros(B, L, *kv, device=device, dtype=dtype),
            "v_f": torch.zeros(B, L, *kv, device=device, dtype=dtype),
        }
        if self.use_feedback:
            cache["k_b"] = torch.zeros(B, L, self.D, device=device, dtype=dtype)
            cache["s"] = torch.zeros(B, L, self.D, device=device, dtype=dtype)
        return cache

    def init_state(
        self,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MixerState:
        return self.init_cache(batch_size, device=device, dtype=dtype, max_len=max_len)

    def reorder_state(self, state: MixerState, index: torch.Tensor) -> MixerState:
        return reorder_state_tensors(state, index)

    def step(
        self, bar_a: torch.Tensor, cache: MixerState, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Process n new tokens bar_a: (B, n, D) after the cache's t tokens; returns s: (B, n, D).

        attention_mask: optional (B, t + n) over every token so far (0 = padding). Equals the rows
        t..t+n-1 of the parallel forward on the whole sequence.
        """
        check_input(bar_a, self.D, "bar_a")
        B, n, _ = bar_a.shape
        t, capacity = step_position(cache, bar_a, "k_f"), cache["k_f"].shape[1]
        if t + n > capacity:
            raise ValueError(f"cache is full: {t} cached + {n} new tokens > max_len {capacity}")
        mask = record_key_mask(cache, "mask", key_mask(attention_mask, B, t + n), t, t + n, cache["k_f"])
        if n == 1 and self.attention_backend == "sdpa":  # the launches bound to the cache (CUDA, no gradient)
            gain = (self.gamma_bias, self.gamma_max) if self.use_feedback else None
            base = 10000.0 if self.use_forward_rope else None
            s = bound_step(bar_a, cache, t, self._stacked_modules(), keys=("k_f", "v_f", "mask"),
                           n_heads=self.n_heads, rope_base=base, out_proj=self.out_proj, gain=gain)
            if s is not None:
                cache["t"] = t + 1
                return s
        q, feedback = self._step_inputs(bar_a, t, cache)
        keys = cast(cache["k_f"].narrow(1, 0, t + n), q.dtype)
        values = cast(cache["v_f"].narrow(1, 0, t + n), q.dtype)
        f = self._attend(q, keys, values, mask)
        if feedback is not None:
            q_b, k_b, gamma = feedback
            if t == 0 and n > 1:  # a prompt into an empty cache: the parallel solve (Triton on CUDA)
                f = feedback_solve(
                    q_b,
                    k_b,
                    gamma,
                    f,
                    backend=self.feedback_backend,
                    chunk_size=self.chunk_size,
                    key_mask=mask,
                )
            else:
                k_all = cast(cache["k_b"].narrow(1, 0, t + n), k_b.dtype)
                f = feedback_continue(q_b, k_all, gamma, f, cache["s"].narrow(1, 0, t), key_mask=mask)
            cache["s"].narrow(1, t, n).copy_(f)
        cache["t"] = t + n
        return f

    def step_static(
        self, bar_a: torch.Tensor, cache: MixerState, pos: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """One new token bar_a: (B, 1, D) at position ``pos`` (0-d long tensor on the device) of a fixed-size
        cache; mask: (B, L) bool over every cache position (False = padding), the new token's column set.
        No shape depends on the position, so the step can be graph-captured; equals :meth:`step`. The
        cache's "t" is left to the caller."""
        q, k, v = self.qkv(bar_a, pos)
        f = attend_static(q, k, v, cache["k_f"], cache["v_f"], pos, mask, self.attention_backend)
        f = self.out_proj(f.reshape(bar_a.shape[0], 1, self.D))
        if not self.use_feedback:
            return f
        q_b, k_b, gamma = self.feedback_inputs(bar_a)
        index = pos.reshape(1)
        cache["k_b"].index_copy_(1, index, k_b.to(cache["k_b"].dtype))
        k_all, s_all = cache["k_b"].to(k_b.dtype), cache["s"]
        s_new = feedback_decode(q_b, k_all, gamma, f, s_all.to(f.dtype), pos, key_mask=mask)
        cache["s"].index_copy_(1, index, s_new.to(cache["s"].dtype))
        return s_new

    def prefill(self, bar_a: torch.Tensor, cache: MixerState) -> MixerState:
        """Original API: run a prompt chunk (B, T, D) through the cache (continuing from cache["t"])."""
        if bar_a.dim() == 3 and bar_a.shape[1] == 0:
            return cache
        self.step(bar_a, cache)
        return cache

    def decode_step(
        self, bar_a_t: torch.Tensor, cache: MixerState, use_flash_decode: bool = False
    ) -> tuple[torch.Tensor, MixerState]:
        """Original API: one token (B, D) or (B, 1, D) -> (s_t (B, D), cache). A 3-D input with n > 1
        tokens is a multi-token step and returns (B, n, D)."""
        if bar_a_t.dim() == 2:
            return self.step(bar_a_t[:, None], cache)[:, 0], cache
        if bar_a_t.dim() != 3:
            raise ValueError(f"decode_step expects (B, D) or (B, n, D), got {tuple(bar_a_t.shape)}")
        s = self.step(bar_a_t, cache)
        return (s[:, 0] if s.shape[1] == 1 else s), cache

