"""``SessaCache``: the per-layer incremental states of a Sessa language model, for ``generate()``.

Each layer's state is the dict of its block's ``init_state`` (:mod:`sessa.modules.contract`): forward
keys/values, feedback keys and past outputs for Sessa (O(t·D) work per new token), keys/values for
attention, a fixed-size conv + SSM state for Mamba/Mamba-2 (O(1) per token). States are allocated on the
first step, so the batch size (after ``generate`` expands beams or return sequences), device and dtype
come from the inputs.

The object follows the parts of the Transformers ``Cache`` interface that ``generate`` uses on a model
that supplies its own cache (``get_seq_length``, ``reorder_cache``, ``is_linear``, ``is_compileable``,
``is_croppable``); it is not a ``transformers.Cache`` subclass because its layers are not key/value pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sessa.modules.contract import MixerState


class SessaCache:
    """States of ``layers`` (blocks of the mixer contract), first allocated for ``max_len`` tokens.

    ``max_len`` is the initial capacity of the Sessa/attention caches (preallocated, B × max_len × ...;
    recurrent mixers ignore it). A step past the capacity grows the state to twice its size (or to what
    the step needs), so decoding never fails for lack of room; ``generate`` sizes the cache exactly.
    """

    is_compileable = False  # states are dicts updated in Python
    is_croppable = False  # recurrent (Mamba) states cannot be rolled back

    def __init__(self, layers: Sequence[nn.Module], max_len: int) -> None:
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        self.layers = list(layers)
        self.max_len = max_len
        self.states: list[MixerState | None] = [None] * len(self.layers)
        self.capacity: list[int] = [max_len] * len(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def is_linear(self) -> list[bool]:
        # generate() only slices already-cached prompt tokens off when some layer is "not linear";
        # every layer here counts its tokens, so all report False and slicing always happens.
        return [False] * len(self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen so far (0 before the first step)."""
        state = self.states[layer_idx]
        return 0 if state is None else int(state["t"])

    def get_max_length(self) -> int:
        return max(self.capacity)

    def step(
        self, layer_idx: int, x: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run layer ``layer_idx`` on new tokens x: (B, T_new, D) continuing its state; returns (B, T_new, D).

        attention_mask: (B, t + T_new) over every token so far (1 = real, 0 = left padding) or None.
        """
        layer, needed = self.layers[layer_idx], self.get_seq_length(layer_idx) + x.shape[1]
        if self.states[layer_idx] is None:
            self.capacity[layer_idx] = max(self.capacity[layer_idx], needed)
            self.states[layer_idx] = layer.init_state(x.shape[0], self.capacity[layer_idx], device=x.device)
        elif needed > self.capacity[layer_idx]:
            self._grow(layer_idx, max(2 * self.capacity[layer_idx], needed))
        return layer.step(x, self.states[layer_idx], attention_mask=attention_mask)

    def _grow(self, layer_idx: int, capacity: int) -> None:
        """Move a state into one allocated for ``capacity`` tokens.

        A tensor whose shape depends on the capacity (compared with a fresh ``init_state``; for tensors the
        mixer added later, such as a padding mask, dim 1 == the old capacity) is copied into the front of
        its time dimension; everything else is kept as is.
        """
        old, layer, before = self.states[layer_idx], self.layers[layer_idx], self.capacity[layer_idx]
        anchor = next(v for v in old.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
        new = layer.init_state(anchor.shape[0], capacity, device=anchor.device)
        for key, value in old.items():
            if not isinstance(value, torch.Tensor):
                new[key] = value
            elif key in new and new[key].shape != value.shape:
                grown = [
                    i for i, (a, b) in enumerate(zip(new[key].shape, value.shape, strict=True)) if a != b
                ]
                assert len(grown) == 1, f"state {key!r}: only the time dimension may depend on max_len"
                new[key].narrow(grown[0], 0, value.shape[grown[0]]).copy_(value)
            elif key not in new and value.dim() >= 2 and value.shape[1] == before:
                new[key] = value.new_zeros(value.shape[0], capacity, *value.shape[2:])
                new[key][:, :before] = value
            else:
                new[key] = value
        self.states[layer_idx], self.capacity[layer_idx] = new, capacity

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep batch rows ``beam_idx`` (in that order) of every state: beam search, batch pruning."""
        for i, (layer, state) in enumerate(zip(self.layers, self.states, strict=True)):
            if state is not None:
                self.states[i] = layer.reorder_state(state, beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every batch row ``repeats`` times (row b -> rows b*repeats .. b*repeats + repeats - 1)."""
        rows = self._batch_size()
        if rows is not None:
            self.reorder_cache(torch.arange(rows).repeat_interleave(repeats))

    def _batch_size(self) -> int | None:
        for state in self.states:
            if state is not None:
                return next(v.shape[0] for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
        return None

    def __repr__(self) -> str:
        return f"SessaCache(layers={len(self.layers)}, max_len={self.max_len}, seen={self.get_seq_length()})"
