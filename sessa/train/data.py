"""Deterministic, resumable batching of a task split, sharded over data-parallel ranks."""

from __future__ import annotations

import torch

from sessa.tasks.base import TaskSplit
from sessa.tokens import IGNORE_INDEX


class Batches:
    """Endless epoch-shuffled batches of a split; the position (epoch, index) makes resuming exact.

    Every rank draws the same permutation (seeded by seed and epoch) and takes its own slice of each global
    batch of ``batch_size * world_size`` rows, so N ranks see exactly the rows one process would see with the
    global batch size. Batches are trimmed to the longest real row they contain.

    ``pack=True``: each batch's examples are laid end to end in as few rows of that width as hold them
    (:func:`pack_rows`; pad_id fills the rest), and a batch is ``(inputs, targets, seq_idx)``: the same
    examples, so the same loss and gradient as the padded batch, on fewer positions.
    """

    def __init__(
        self,
        split: TaskSplit,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        pack: bool = False,
        pad_id: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.pack = rank, world_size, shuffle, pack
        self.pad_id = pad_id
        self.global_batch = batch_size * world_size
        if len(split) < self.global_batch:
            raise ValueError(
                f"the split has {len(split)} rows, fewer than one global batch of {self.global_batch} "
                f"(batch_size {batch_size} x {world_size} ranks)"
            )
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.split))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.split), generator=gen)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.split) // self.global_batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation()

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation()
        start = self.index * self.global_batch + self.rank * self.batch_size
        rows = self._order[start : start + self.batch_size]
        self.index += 1
        if self.pack:
            return pack_rows(*trim(self.split, rows), self.split.lengths[rows], self.pad_id)
        return trim(self.split, rows)


def trim(split: TaskSplit, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of the given rows, cut to their longest real length."""
    width = int(split.lengths[rows].max())
    return split.inputs[rows, :width], split.targets[rows, :width]


def pack_rows(
    inputs: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded rows (inputs, targets: (B, W); lengths: (B,)) laid end to end in as few rows of width W
    as hold them (first fit, longest first; ties in row order): (inputs, targets, seq_idx), each (R, W) with
    R <= B. seq_idx numbers the examples of a packed row 0, 1, ... (``sessa.ops.packing``); the padding
    after the last example is one more sequence, with targets IGNORE_INDEX and inputs pad_id."""
    B, W = inputs.shape
    sizes = [int(n) for n in lengths.tolist()]
    if any(n < 1 or n > W for n in sizes):
        raise ValueError(f"pack_rows needs lengths in [1, {W}], got {sizes}")
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(B), key=lambda i: -sizes[i]):
        r = next((r for r, room in enumerate(free) if room >= sizes[i]), None)
        if r is None:
            bins.append([])
            free.append(W)
            r = len(bins) - 1
        bins[r].append(i)
        free[r] -= sizes[i]
    x = inputs.new_full((len(bins), W), pad_id)
    y = targets.new_full((len(bins), W), IGNORE_INDEX)
    seq_idx = torch.zeros(len(bins), W, dtype=torch.int32)
    for r, members in enumerate(bins):
        at = 0
        for k, i in enumerate(members):
            n = sizes[i]
            x[r, at : at + n], y[r, at : at + n] = inputs[i, :n], targets[i, :n]
            seq_idx[r, at : at + n] = k
            at += n
        seq_idx[r, at:] = len(members)
    return x, y, seq_idx


def eval_batches(
    split: TaskSplit, batch_size: int, rank: int = 0, world_size: int = 1, limit: int | None = None
):
    """Ordered, non-overlapping batches of row indices for evaluation, sharded over ranks."""
    n = len(split) if limit is None else min(limit, len(split))
    order = torch.arange(n)
    # Sort by length so padding stays small, then deal rows to ranks.
    order = order[torch.argsort(split.lengths[:n], stable=True)]
    mine = order[rank::world_size]
    for start in range(0, len(mine), batch_size):
        yield mine[start : start + batch_size]
