"""Blocks that wrap any mixer of the contract (sessa.modules.contract).

``GatedBlock`` is the paper's block (DESIGN §1), used for Sessa and, with the mixer swapped, for the matched
baselines: y = x + W_out(mixer(GELU(a)) * g), [a, g] = W_in(LayerNorm(x)). ``PreNormBlock`` is the usual
Transformer layout: x + mixer(norm(x)), then x + MLP(norm(x)) with a gated (SwiGLU) MLP.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sessa.modules.contract import MixerState, check_input, mix
from sessa.validation import check_int, check_positive_float


class GatedBlock(nn.Module):
    """The paper's gated block around ``mixer_cls(d_model, layer_idx=..., **mixer_options)``.

    Parameter names (ln, W_in, mixer, W_out) match the original SessaLayer checkpoints.
    """

    def __init__(
        self,
        d_model: int,
        mixer_cls: type[nn.Module],
        *,
        layer_idx: int = 0,
        ln_eps: float = 1e-5,
        **mixer_options: Any,
    ) -> None:
        super().__init__()
        check_int("d_model", d_model)
        check_positive_float("ln_eps", ln_eps)
        self.d_model, self.layer_idx = d_model, layer_idx
        self.ln = nn.LayerNorm(d_model, eps=ln_eps)
        self.W_in = nn.Linear(d_model, 2 * d_model, bias=True)
        self.mixer = mixer_cls(d_model, layer_idx=layer_idx, **mixer_options)
        self.W_out = nn.Linear(d_model, d_model, bias=True)

    def _gate_in(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, g = self.W_in(self.ln(x)).chunk(2, dim=-1)
        return F.gelu(a), g

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D); seq_idx: optional (B, T) packed rows (``sessa.ops.packing``)."""
        check_input(x, self.d_model)
        bar_a, g = self._gate_in(x)
        return x + self.W_out(mix(self.mixer, bar_a, attention_mask, seq_idx) * g)

    def init_state(self, batch_size: int, max_len: int, device=None, dtype=None) -> MixerState:  # noqa: ANN001
        return self.mixer.init_state(batch_size, max_len, device=device, dtype=dtype)

    def step(
        self, x: torch.Tensor, state: MixerState, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, n, D) new tokens after the state's; returns (B, n, D)."""
        check_input(x, self.d_model)
        bar_a, g = self._gate_in(x)
        return x + self.W_out(self.mixer.step(bar_a, state, attention_mask=attention_mask) * g)

    def step_static(
        self, x: torch.Tensor, state: MixerState, pos: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """One token at device position ``pos`` of a fixed-size state (the mixer's ``step_static``)."""
        bar_a, g = self._gate_in(x)
        return x + self.W_out(self.mixer.step_static(bar_a, state, pos, mask) * g)

    def reorder_state(self, state: MixerState, index: torch.Tensor) -> MixerState:
        return self.mixer.reorder_state(state, index)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def default_mlp_hidden(d_model: int) -> int:
    """The usual SwiGLU width: 8/3 * d_model rounded to a multiple of 8 (at least 8)."""
    return max(8, int(round(8 / 3 * d_model / 8)) * 8)


class PreNormBlock(nn.Module):
    """x + mixer(RMSNorm(x)), then x + W_down(SiLU(W_gate h) * W_up h), h = RMSNorm(x).

    mlp_hidden: width of the MLP (None = :func:`default_mlp_hidden`).
    """

    def __init__(
        self,
        d_model: int,
        mixer_cls: type[nn.Module],
        *,
        layer_idx: int = 0,
        mlp_hidden: int | None = None,
        norm_eps: float = 1e-5,
        **mixer_options: Any,
    ) -> None:
        super().__init__()
        check_int("d_model", d_model)
        check_positive_float("norm_eps", norm_eps)
        hidden = default_mlp_hidden(d_model) if mlp_hidden is None else check_int("mlp_hidden", mlp_hidden)
        self.d_model, self.layer_idx = d_model, layer_idx
        self.norm1, self.norm2 = RMSNorm(d_model, norm_eps), RMSNorm(d_model, norm_eps)
        self.mixer = mixer_cls(d_model, layer_idx=layer_idx, **mixer_options)
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm2(x)
        return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h))

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_input(x, self.d_model)
        return self._mlp(x + mix(self.mixer, self.norm1(x), attention_mask, seq_idx))

    def init_state(self, batch_size: int, max_len: int, device=None, dtype=None) -> MixerState:  # noqa: ANN001
        return self.mixer.init_state(batch_size, max_len, device=device, dtype=dtype)

    def step(
        self, x: torch.Tensor, state: MixerState, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_input(x, self.d_model)
        return self._mlp(x + self.mixer.step(self.norm1(x), state, attention_mask=attention_mask))

    def step_static(
        self, x: torch.Tensor, state: MixerState, pos: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """One token at device position ``pos`` of a fixed-size state (the mixer's ``step_static``)."""
        return self._mlp(x + self.mixer.step_static(self.norm1(x), state, pos, mask))

    def reorder_state(self, state: MixerState, index: torch.Tensor) -> MixerState:
        return self.mixer.reorder_state(state, index)
