"""Common pieces of the benchmark tasks: the data containers, the config base class and the registry.

Every task is a next-token problem for a decoder-only model: ``inputs[i, t]`` is the token at position
``t`` and ``targets[i, t]`` is what the model must predict *at* position ``t`` (already shifted, so no
label shift is applied by the trainer), or ``IGNORE_INDEX`` where nothing is scored. Classification tasks
score one position (the final one) whose target is a class token. Sequences are right-padded with
``pad_id``; ``lengths`` gives the real length of each row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from sessa.tokens import IGNORE_INDEX  # noqa: F401  (importable from here: the tasks speak of it)


@dataclass
class TaskSplit:
    """One split of a task.

    inputs:  (N, T) int64 token ids, right-padded with the task's ``pad_id``
    targets: (N, T) int64 target ids at each position, ``IGNORE_INDEX`` where not scored
    lengths: (N,) int64 real length of each row
    meta:    per-example labels for breakdowns, each (N,) (for example "length", "lag", "label", "depth")
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor
    meta: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.inputs.shape != self.targets.shape or self.inputs.dim() != 2:
            raise ValueError(
                f"inputs and targets must both be (N, T); got {tuple(self.inputs.shape)} and "
                f"{tuple(self.targets.shape)}"
            )
        n = self.inputs.shape[0]
        if self.lengths.shape != (n,):
            raise ValueError(f"lengths must be ({n},), got {tuple(self.lengths.shape)}")
        for key, value in self.meta.items():
            if value.shape[0] != n:
                raise ValueError(f"meta[{key!r}] has {value.shape[0]} rows, expected {n}")

    def __len__(self) -> int:
        return self.inputs.shape[0]


@dataclass
class TaskData:
    """A built task: vocabulary, splits and how to score it.

    metric: "accuracy" (fraction of scored positions predicted exactly; for classification tasks this is
    per-example accuracy) or "sequence_accuracy" (an example counts only if every scored position is right).
    splits: "train" plus one or more evaluation splits ("valid", "test", "test_long", ...).
    """

    name: str
    vocab: list[str]
    pad_id: int
    splits: dict[str, TaskSplit]
    metric: str = "accuracy"
    info: dict[str, object] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def max_len(self) -> int:
        return max(split.inputs.shape[1] for split in self.splits.values())


class TaskConfig:
    """Base of the task configs (each a dataclass). ``build(seed)`` is deterministic and cached in memory."""

    name: ClassVar[str] = ""
    _cache: ClassVar[dict[tuple, TaskData]] = {}

    def build(self, seed: int = 0) -> TaskData:
        key = (type(self).__name__, repr(self), int(seed))
        if key not in TaskConfig._cache:
            TaskConfig._cache[key] = self._build(int(seed))
        return TaskConfig._cache[key]

    def _build(self, seed: int) -> TaskData:  # pragma: no cover - abstract
        raise NotImplementedError

    def replace(self, **changes: object) -> TaskConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


TASKS: dict[str, type[TaskConfig]] = {}


def register_task(name: str):
    """Class decorator adding a task config to the registry under ``name``."""

    def wrap(cls: type[TaskConfig]) -> type[TaskConfig]:
        if name in TASKS:
            raise ValueError(f"task {name!r} registered twice")
        cls.name = name
        TASKS[name] = cls
        return cls

    return wrap


def get_task(name: str, **overrides: object) -> TaskConfig:
    """The config of task ``name`` with field overrides; unknown names or fields raise ``ValueError``."""
    import sessa.tasks  # noqa: F401  (registers every task)

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    valid = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task {name!r}; valid: {sorted(valid)}")
    return cls(**overrides)


def pad_rows(rows: list[list[int]], pad_id: int, fill: int | None = None) -> torch.Tensor:
    """Stack ragged int lists into an (N, max_len) int64 tensor, right-padded with ``fill`` (or pad_id)."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), pad_id if fill is None else fill, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
