"""Pieces shared by the baseline mixers: the dt range check, the short causal convolution, the Mamba dt
initialisation and the recurrent half of the contract. The value checks live in :mod:`sessa.validation`
and the mask/state checks in :mod:`sessa.modules.contract` (both re-exported here).

Shapes: B batch, T sequence length, C channels, K convolution width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sessa.modules.contract import (  # noqa: F401  (key_mask, step_position: re-exported for the mixers)
    MixerState,
    check_input,
    key_mask,
    reorder_state_tensors,
    step_position,
)
from sessa.ops.packing import check_seq_idx
from sessa.ops.precision import cast, work_dtype  # noqa: F401  (work_dtype re-exported for attention.py)
from sessa.validation import check_choice, check_int, check_positive_float  # noqa: F401  (re-exported)


def check_dt_range(dt_min: float, dt_max: float, dt_init_floor: float) -> None:
    """The dt initialisation needs 0 < dt_min <= dt_max and dt_init_floor >= 0."""
    check_positive_float("dt_min", dt_min)
    check_positive_float("dt_max", dt_max)
    if dt_max < dt_min:
        raise ValueError(f"dt_max must be >= dt_min, got dt_min={dt_min}, dt_max={dt_max}")
    if isinstance(dt_init_floor, bool) or not isinstance(dt_init_floor, (int, float)) or dt_init_floor < 0:
        raise ValueError(f"dt_init_floor must be a number >= 0, got {dt_init_floor!r}")


def init_dt_bias(n: int, dt_min: float, dt_max: float, dt_init_floor: float) -> torch.Tensor:
    """Bias b with softplus(b) = dt, dt log-uniform in [dt_min, dt_max] (floored): (n,) float32.

    softplus^{-1}(dt) = dt + log(1 - exp(-dt)), written with expm1 so small dt stays accurate.
    """
    log_dt = torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = log_dt.exp().clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


def causal_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    history: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution y_t = bias + sum_k weight[:, 0, k] * x_{t - K + 1 + k}.

    x: (B, T, C); weight: (C, 1, K); bias: (C,) or None; history: (B, C, K-1), the K-1 inputs before x
    (zeros when None, i.e. the sequence starts here). positions: (B, T) each token's position in its own
    sequence (packed rows, ``sessa.ops.packing``): input t - d counts only when d <= positions[t]. Returns
    y: (B, T, C) and the new history (B, C, K-1).
    """
    K = weight.shape[-1]
    xt = x.transpose(1, 2)
    if history is None:
        history = xt.new_zeros(xt.shape[0], xt.shape[1], K - 1)
    if x.shape[1] == 0:
        return x.clone(), history
    full = torch.cat([cast(history, xt.dtype), xt], dim=-1)
    if positions is not None:  # windows (B, C, T, K) with the taps before each token's sequence zeroed
        lag = torch.arange(K - 1, -1, -1, device=x.device)  # tap k reads x_{t - lag[k]}
        reach = (lag <= positions.to(x.device)[..., None]).to(xt.dtype)  # (B, T, K)
        y = (full.unfold(-1, K, 1) * reach[:, None] * cast(weight[:, 0], xt.dtype)[None, :, None]).sum(-1)
        y = y if bias is None else y + cast(bias, xt.dtype)[:, None]
        return y.transpose(1, 2), full[..., full.shape[-1] - (K - 1) :].clone()
    if x.shape[1] == 1:  # a decoding step: one weighted sum (conv1d's call costs ~75 us of host time on CPU)
        y = (full * cast(weight[:, 0], xt.dtype)).sum(-1, keepdim=True)
        y = y if bias is None else y + cast(bias, xt.dtype)[:, None]
        return y.transpose(1, 2), full[..., 1:]
    b = None if bias is None else cast(bias, xt.dtype)
    y = F.conv1d(full, cast(weight, xt.dtype), b, groups=xt.shape[1])
    return y.transpose(1, 2), full[..., full.shape[-1] - (K - 1) :].clone()


class RecurrentMixer(nn.Module):
    """The parallel and incremental halves of the contract shared by the Mamba mixers.

    Subclasses keep a state {"conv", "ssm", "t"} and implement
    ``_mix(x, mask, conv, ssm) -> (out, conv, ssm)``.
    """

    d_model: int
    d_conv: int
    in_proj: nn.Linear

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, T, d_model), attention_mask: (B, T) 1 = real, 0 = left padding -> (B, T, d_model);
        seq_idx: (B, T) packed rows (``sessa.ops.packing``), for subclasses that set supports_packing."""
        check_input(x, self.d_model)
        mask = key_mask(attention_mask, x.shape[0], x.shape[1])
        if seq_idx is None:
            return self._mix(x, mask, None, None)[0]
        check_seq_idx(seq_idx, x.shape[0], x.shape[1])
        return self._mix(x, mask, None, None, seq_idx=seq_idx.to(x.device))[0]

    def init_state(
        self,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MixerState:
        """Zero conv history (B, channels, d_conv - 1) and SSM state in the work dtype; max_len unused."""
        check_int("batch_size", batch_size)
        check_int("max_len", max_len)
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        channels, ssm_shape = self._state_shapes()
        conv = torch.zeros(batch_size, channels, self.d_conv - 1, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, *ssm_shape, device=device, dtype=work_dtype(dtype))
        return {"conv": conv, "ssm": ssm, "t": 0}

    def step(
        self, x: torch.Tensor, state: MixerState, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, T_new, d_model) after ``state["t"]`` tokens; attention_mask: (B, t + T_new) or None."""
        check_input(x, self.d_model)
        t = step_position(state, x, "ssm")
        mask = key_mask(attention_mask, x.shape[0], t + x.shape[1])
        mask = None if mask is None else mask[:, t:]
        out, state["conv"], state["ssm"] = self._mix(x, mask, state["conv"], state["ssm"])
        state["t"] = t + x.shape[1]
        return out

    def step_static(
        self, x: torch.Tensor, state: MixerState, pos: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """One token x: (B, 1, D) at position ``pos`` (0-d device tensor); mask: (B, L) over every position.
        The states are updated in place (their tensors stay the same objects: graph capture); equals
        :meth:`step`; the state's "t" is left to the caller."""
        real = mask.index_select(1, pos.reshape(1))  # (B, 1): is the new token real?
        out, conv, ssm = self._mix(x, real, state["conv"], state["ssm"])
        state["conv"].copy_(conv)
        state["ssm"].copy_(ssm)
        return out

    def reorder_state(self, state: MixerState, index: torch.Tensor) -> MixerState:
        return reorder_state_tensors(state, index)

    def _state_shapes(self) -> tuple[int, tuple[int, ...]]:
        """(conv channels, per-row SSM state shape)."""
        raise NotImplementedError

    def _mix(self, x, mask, conv_history, ssm_state):  # noqa: ANN001, ANN202
        raise NotImplementedError
