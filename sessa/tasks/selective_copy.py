"""Selective copying (Gu & Dao 2023, "Mamba", §4.1.1): copy the data tokens scattered among noise.

A row is a region of ``region_len`` tokens holding ``n_data`` data tokens at random, sorted, distinct
positions (``<noise>`` everywhere else), followed by ``n_data`` ``<mark>`` tokens. At the j-th marker the
model must output the j-th data token of the region, so it has to select the data by content, not by a
fixed offset (that would be the ordinary copying task, solvable by a time-invariant convolution).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from sessa.tasks.base import IGNORE_INDEX, TaskConfig, TaskData, TaskSplit, register_task
from sessa.tasks.mqar import rows_unseen

SPECIALS = ("<pad>", "<noise>", "<mark>")
PAD, NOISE, MARK = 0, 1, 2
SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}
METRICS = ("accuracy", "sequence_accuracy")


def copy_rows(rng: np.random.Generator, n: int, region_len: int, n_data: int, data_vocab: int) -> tuple[
    np.ndarray, np.ndarray
]:
    """n rows: (inputs, targets), each (n, region_len + n_data) int64; targets -100 except at the markers."""
    data = rng.integers(len(SPECIALS), len(SPECIALS) + data_vocab, size=(n, n_data))
    positions = np.sort(np.argsort(rng.random((n, region_len)), axis=1)[:, :n_data], axis=1)
    inputs = np.full((n, region_len + n_data), NOISE, dtype=np.int64)
    np.put_along_axis(inputs, positions, data, axis=1)
    inputs[:, region_len:] = MARK
    targets = np.full_like(inputs, IGNORE_INDEX)
    targets[:, region_len:] = data
    return inputs, targets


@register_task("selective_copy")
@dataclass
class SelectiveCopyTask(TaskConfig):
    """Selective copying, scored at the ``n_data`` marker positions.

    Vocabulary: ``<pad> <noise> <mark>`` and the data tokens ``d0 .. d{data_vocab - 1}``. Defaults are
    CPU-sized (region of 256 tokens, rows of 272); the Mamba paper used 16 data tokens over a vocabulary
    of 16 and sequences of 4096 tokens (``region_len=4080``), reporting 99.8% for Mamba and 18.3% for S4.
    ``metric="accuracy"`` (the default, per-token accuracy over the markers, as the paper reports) or
    ``"sequence_accuracy"`` (a row counts only if all its data tokens are copied). Rows of "valid" and
    "test" never equal a training row or each other (duplicates are redrawn). Splits come from
    independent RNGs, ``numpy.random.default_rng([seed, split_index])``.

    Example: ``copy_rows(numpy.random.default_rng(1), 1, region_len=10, n_data=3, data_vocab=16)``::

        inputs:   d7 <noise> d8 <noise> <noise> <noise> <noise> d12 <noise> <noise> <mark> <mark> <mark>
        targets:  -100 at the 10 region positions, then d7 d8 d12 at the three markers

        >>> split = SelectiveCopyTask(n_train=4, n_valid=2, n_test=2).build(seed=0).splits["train"]
        >>> tuple(split.inputs.shape), int((split.targets[0] != -100).sum())
        ((4, 272), 16)
    """

    region_len: int = 256  # tokens of the region holding data and noise (paper: 4080)
    n_data: int = 16  # data tokens to copy (paper: 16)
    data_vocab: int = 16  # distinct data tokens (paper: 16)
    metric: str = "accuracy"  # "accuracy" (per token) or "sequence_accuracy" (per row)
    n_train: int = 10_000  # training rows
    n_valid: int = 1_000  # validation rows
    n_test: int = 1_000  # test rows

    def __post_init__(self) -> None:
        for name in ("region_len", "n_data", "data_vocab", "n_train", "n_valid", "n_test"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.n_data > self.region_len:
            raise ValueError(f"n_data={self.n_data} must be <= region_len={self.region_len}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")

    def _build(self, seed: int) -> TaskData:
        sizes = {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}
        seen: set[bytes] = set()
        splits = {}
        for name, n in sizes.items():
            rng = np.random.default_rng([seed, SPLIT_IDS[name]])
            make = functools.partial(
                copy_rows, rng, region_len=self.region_len, n_data=self.n_data, data_vocab=self.data_vocab
            )
            x, y = rows_unseen(make, n, seen)
            splits[name] = TaskSplit(
                inputs=torch.from_numpy(x),
                targets=torch.from_numpy(y),
                lengths=torch.full((n,), self.region_len + self.n_data, dtype=torch.long),
            )
        return TaskData(
            name=self.name,
            vocab=[*SPECIALS, *(f"d{i}" for i in range(self.data_vocab))],
            pad_id=PAD,
            splits=splits,
            metric=self.metric,
            info={"region_len": self.region_len, "n_data": self.n_data, **sizes},
        )
