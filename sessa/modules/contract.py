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
  state is full or shapes do not match, ``TypeError`` when ``state`` is not a dict from ``init_state``.
* optional, packed rows: a mixer whose class sets ``supports_packing = True`` takes
  ``forward(x, attention_mask=None, seq_idx=None)`` with ``seq_idx: (B, T)`` the sequence of each token
  (``sessa.ops.packing``): each sequence of a row computes what it would alone, at positions 0, 1, ...
  Blocks pass ``seq_idx`` through :func:`mix`, which names a mixer that does not take it.
* ``reorder_state(state, index)``: select/reorder the batch rows of a state (beam search, batch pruning).
* optional, for ``StaticSessaCache``: ``step_static(x, state, pos, mask) -> y`` for one token x: (B, 1, D)
  at the position held by the 0-d device tensor ``pos``, mask: (B, max_len) bool over every position of
  the fixed-size state (its column ``pos`` already set). No shape or host value may depend on ``pos`` (the
  step is graph-captured); tensors of the state are updated in place; outputs equal ``step``'s.
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


def mix(
    mixer: torch.nn.Module, x: torch.Tensor, attention_mask: torch.Tensor | None, seq_idx: torch.Tensor | None
) -> torch.Tensor:
    """``mixer(x, attention_mask=...)``, with ``seq_idx`` (packed rows) when given; a ValueError naming the
    mixer when it does not take packed rows."""
    if seq_idx is None:
        return mixer(x, attention_mask=attention_mask)
    if not getattr(mixer, "supports_packing", False):
        raise ValueError(f"mixer {type(mixer).__name__} does not take packed rows (seq_idx); the mixers that "
                         "do set supports_packing = True (every built-in mixer does)")
    return mixer(x, attention_mask=attention_mask, seq_idx=seq_idx)


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


def key_mask(attention_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """Check an ``attention_mask`` (B, length) of 1 = real token / 0 = padding and return it as bool."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != (batch, length):
        raise ValueError(
            f"attention_mask must have shape (B, t + T_new) = ({batch}, {length}), "
            f"got {tuple(attention_mask.shape)}"
        )
    return attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0


def record_key_mask(
    state: MixerState, name: str, mask: torch.Tensor | None, t: int, end: int, like: torch.Tensor
) -> torch.Tensor | None:
    """Keep ``state[name]``, the (B, max_len) bool key mask of a cache, in step with the tokens 0..end-1:
    mask (B, end) bool (:func:`key_mask`) or None (the new tokens t..end-1 are real). The state's mask is made
    (all True, shaped like the first two dims of ``like``, a cache) when a mask is first given. Returns the
    mask of positions [0, end), or None while nothing was ever masked."""
    if mask is None and name not in state:
        return None
    if name not in state:
        state[name] = torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    seen = state[name].narrow(1, 0, end)  # narrow and copy_: less host time than slice assignment
    if mask is None:
        seen.narrow(1, t, end - t).fill_(True)
    else:
        seen.copy_(mask)
    return seen


def step_position(state: MixerState, x: torch.Tensor, batch_key: str) -> int:
    """Validate a state dict against the new input x (B, T_new, D); return its position counter ``t``.

    ``batch_key`` names a tensor of the state whose dim 0 is the batch.
    """
    if not isinstance(state, dict) or "t" not in state or batch_key not in state:
        raise TypeError(
            f"state must be the dict returned by init_state (with 't' and {batch_key!r}), "
            f"got {type(state).__name__}" + (f" with keys {sorted(state)}" if isinstance(state, dict) else "")
        )
    rows = state[batch_key].shape[0]
    if x.shape[0] != rows:
        raise ValueError(f"x has batch size {x.shape[0]} but the state holds {rows} rows")
    if x.shape[1] < 1:
        raise ValueError(f"step needs at least one new token, got x of shape {tuple(x.shape)}")
    return int(state["t"])
