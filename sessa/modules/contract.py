"""The one contract every sequence mixer follows (Sessa and every baseline).

A block takes a mixer *class* and builds it as ``cls(d_model, layer_idx=i, **options)``, so a comparison
changes one name. Shapes: B batch, T sequence length, D = d_model.

* ``forward(x, attention_mask=None) -> y``: parallel (training) pass, ``x: (B, T, D) -> y: (B, T, D)``.
  ``attention_mask: (B, T)`` with 1 for real tokens and 0 for left padding; padded positions never
  influence real ones (their own outputs are unspecified but finite).
* ``init_state(batch_size, max_len, device=None, dtype=None) -> dict``: empty incremental state able to
  hold ``max_len`` tokens (recurrent mixers ignore ``max_len``). The dict holds tensors plus the int
  position counter ``"t"``.
* ``step(x, state, attention_mask=None) -> y``: process ``x: (B, T_new, D)`` (T_new >= 1) continuing from
  ``state`` (updated in place); ``attention_mask: (B, t + T_new)`` covers every token seen so far. The
  outputs equal the matching rows of ``forward`` on the whole sequence. Raises ``ValueError`` when the
  state is full or shapes do not match.
* ``reorder_state(state, index)``: select/reorder the batch rows of a state (beam search, batch pruning).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

MixerState = dict[str, Any]


@runtime_checkable
class Mixer(Protocol):
    d_model: int
    layer_idx: int

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def init_state(
        self,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MixerState: ...

    def step(
        self, x: torch.Tensor, state: MixerState, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def reorder_state(self, state: MixerState, index: torch.Tensor) -> MixerState: ...


def reorder_state_tensors(state: MixerState, index: torch.Tensor) -> MixerState:
    """Default ``reorder_state``: index dim 0 of every tensor in the state."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            state[key] = value.index_select(0, index.to(value.device))
    return state


def check_input(x: torch.Tensor, d_model: int, name: str = "x") -> None:
    """Raise a clear error unless ``x`` is a floating (B, T, d_model) tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (B, T, D={d_model}), got {tuple(x.shape)}")
    if x.shape[-1] != d_model:
        raise ValueError(f"{name} last dim must be D={d_model}, got {x.shape[-1]} (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
