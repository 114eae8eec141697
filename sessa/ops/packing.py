"""Packed rows: several sequences laid end to end in one row of a batch, told apart by ``seq_idx``.

``seq_idx``: (B, T) integer tensor (mamba_ssm's convention); a row's tokens with one value in a run of
equal values form one sequence, and a new sequence starts wherever the value changes (and at t = 0). No token
reads a token of another sequence: each sequence computes exactly what it would alone, at positions 0, 1, ..
of its own. The trainer packs short examples this way (``sessa.train.data``).

The pieces every packed path shares: :func:`check_seq_idx`, :func:`sequence_starts`, :func:`sequence_bounds`,
:func:`positions`, :func:`stream_offsets` (the batch as one stream of sequences, for flash-attention's kernel)
and :func:`same_sequence` (the (B, T, T) mask the readable references use).
"""

from __future__ import annotations

import weakref

import torch

INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_seq_idx(seq_idx: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """seq_idx after checking it is an integer (B, T) = (batch, length) tensor."""
    if not isinstance(seq_idx, torch.Tensor):
        raise TypeError(f"seq_idx must be a torch.Tensor, got {type(seq_idx).__name__}")
    if seq_idx.dtype not in INT_DTYPES:
        raise TypeError(f"seq_idx must be an integer tensor (each token's sequence), got {seq_idx.dtype}")
    if tuple(seq_idx.shape) != (batch, length):
        raise ValueError(f"seq_idx must have shape (B, T) = ({batch}, {length}), got {tuple(seq_idx.shape)}")
    return seq_idx


def sequence_starts(seq_idx: torch.Tensor) -> torch.Tensor:
    """(B, T) bool, True where a sequence begins: t = 0 and wherever seq_idx changes."""
    starts = torch.ones_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return starts


def sequence_bounds(starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, end), each (B, T) int64, of starts: (B, T) bool (True where a sequence begins; t = 0 always
    counts): the index of the first token of each token's sequence, and one past its last."""
    B, T = starts.shape
    idx = torch.arange(T, device=starts.device).expand(B, T)
    begin = starts.clone()
    begin[:, 0] = True
    first = torch.where(begin, idx, torch.zeros_like(idx)).cummax(1).values
    nxt = torch.cat([begin[:, 1:], torch.ones_like(begin[:, :1])], 1)  # token t + 1 starts a sequence
    end = torch.where(nxt, idx + 1, torch.full_like(idx, T)).flip(1).cummin(1).values.flip(1)
    return first, end


def positions(seq_idx: torch.Tensor) -> torch.Tensor:
    """(B, T) int64 position of each token inside its own sequence (0 at each start)."""
    first, _ = sequence_bounds(sequence_starts(seq_idx))
    return torch.arange(seq_idx.shape[1], device=seq_idx.device) - first


_LAST_OFFSETS: list = [None]  # (weakref to a seq_idx, its version, offsets, longest): see stream_offsets


def stream_offsets(seq_idx: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The packed batch as one stream of B * T tokens cut at every sequence start (row starts included):
    its offsets (S + 1,) int32 on seq_idx's device, flash-attn's ``cu_seqlens``, and the longest sequence.
    Both need the host to wait for the device, so the result for the last seq_idx seen is kept (the same
    tensor object, not changed in place since): every layer of a forward asks for it again."""
    keep = not torch.compiler.is_compiling() and not seq_idx.is_inference()  # inference tensors: no version
    last = _LAST_OFFSETS[0]
    if keep and last is not None and last[0]() is seq_idx and last[1] == seq_idx._version:
        return last[2], last[3]
    starts = sequence_starts(seq_idx).flatten()
    ends = starts.new_tensor([starts.numel()], dtype=torch.long)
    offsets = torch.cat([starts.nonzero().flatten(), ends]).to(torch.int32)
    longest = int((offsets[1:] - offsets[:-1]).max())
    if keep:
        _LAST_OFFSETS[0] = (weakref.ref(seq_idx), seq_idx._version, offsets, longest)
    return offsets, longest


def same_sequence(seq_idx: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool: [b, t, j] True iff tokens t and j of row b belong to one sequence (references only:
    T^2 memory)."""
    first = torch.arange(seq_idx.shape[1], device=seq_idx.device) - positions(seq_idx)
    return first[:, :, None] == first[:, None, :]
