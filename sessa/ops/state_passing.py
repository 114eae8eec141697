"""State passing between chunks, shared by the chunked scans (:mod:`sessa.ops.ssd`,
:mod:`sessa.ops.selective_scan`).

A chunked scan computes, for every chunk c, the state the chunk would leave from a zero start
(``local_end[c]``) and its total decay (``chunk_decay[c]``); the true state entering chunk c then follows
the short linear recurrence start[c + 1] = chunk_decay[c] · start[c] + local_end[c].
"""

from __future__ import annotations

import torch


def chain_chunk_states(
    local_end: torch.Tensor, chunk_decay: torch.Tensor, initial_state: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The states entering each chunk (b, c, ...) and the final state (b, ...).

    local_end: (b, c, ...) each chunk's own end state; chunk_decay: broadcastable to local_end, each
    chunk's total decay; initial_state: (b, ...) or None (zeros). A loop of c vectorised steps.
    """
    state = torch.zeros_like(local_end[:, 0]) if initial_state is None else initial_state.to(local_end.dtype)
    starts = []
    for i in range(local_end.shape[1]):
        starts.append(state)
        state = chunk_decay[:, i] * state + local_end[:, i]
    return torch.stack(starts, dim=1), state
