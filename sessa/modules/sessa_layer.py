"""The Sessa layer (DESIGN §1): the paper's gated block around a SessaMixer, with the original's API."""

from __future__ import annotations

from typing import Any

import torch

from sessa.modules.blocks import GatedBlock
from sessa.modules.contract import MixerState
from sessa.modules.sessa_mixer import SessaMixer


class SessaLayer(GatedBlock):
    """y = x + W_out(SessaMixer(GELU(a)) * g), [a, g] = W_in(LayerNorm(x)).  x: (B, T, D) -> (B, T, D).

    Same constructor, parameter names and decoding methods as the original implementation; extra keyword
    options (``layer_idx``, ``feedback_backend``, ``attention_backend``, ``chunk_size``, ``use_feedback``)
    go to :class:`SessaMixer`.

    Example:
        >>> layer = SessaLayer(64, n_heads=4)
        >>> y = layer(torch.randn(2, 10, 64))
        >>> cache = layer.init_cache(2, max_len=16)
        >>> y0, cache = layer.prefill(x[:, :8], cache)          # doctest: +SKIP
        >>> y8, cache = layer.decode_step(x[:, 8], cache)       # doctest: +SKIP
    """

    def __init__(
        self,
        D: int,
        n_heads: int = 1,
        n_kv_heads: int | None = None,
        max_len: int | None = None,
        ln_eps: float = 1e-5,
        use_flash: bool = False,
        use_forward_rope: bool = True,
        gamma_max: float = 0.999,
        **options: Any,
    ) -> None:
        super().__init__(
            D,
            SessaMixer,
            ln_eps=ln_eps,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            max_len=max_len,
            use_flash=use_flash,
            use_forward_rope=use_forward_rope,
            gamma_max=gamma_max,
            **options,
        )

    def init_cache(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
    ) -> MixerState:
        return self.mixer.init_cache(batch_size, device=device, dtype=dtype, max_len=max_len)

    def prefill(self, x: torch.Tensor, cache: MixerState) -> tuple[torch.Tensor, MixerState]:
        """Run x: (B, T, D) through the cache (continuing from cache["t"]); returns (y, cache)."""
        return self.step(x, cache), cache

    def decode_step(
        self, x_t: torch.Tensor, cache: MixerState, use_flash_decode: bool = False
    ) -> tuple[torch.Tensor, MixerState]:
        """x_t: (B, D) or (B, n, D) -> (y with the same shape, cache)."""
        if x_t.dim() == 2:
            return self.step(x_t[:, None], cache)[:, 0], cache
        if x_t.dim() != 3:
            raise ValueError(f"decode_step expects x_t of shape (B, D) or (B, n, D), got {tuple(x_t.shape)}")
        return self.step(x_t, cache), cache
