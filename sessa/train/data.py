"""Deterministic, resumable batching of a task split, sharded over data-parallel ranks."""

from __future__ import annotations

import torch

from sessa.tasks.base import TaskSplit


class Batches:
    """Endless epoch-shuffled batches of a split; the position (epoch, index) makes resuming exact.

    Every rank draws the same permutation (seeded by seed and epoch) and takes its own slice of each global
    batch of ``batch_size * world_size`` rows, so N ranks see exactly the rows one process would see with the
    global batch size. Batches are trimmed to the longest real row they contain.
    """

    def __init__(
        self,
        split: TaskSplit,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
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

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation()
        start = self.index * self.global_batch + self.rank * self.batch_size
        rows = self._order[start : start + self.batch_size]
        self.index += 1
        return trim(self.split, rows)


def trim(split: TaskSplit, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of the given rows, cut to their longest real length."""
    width = int(split.lengths[rows].max())
    return split.inputs[rows, :width], split.targets[rows, :width]


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
