"""Induction heads (Olsson et al. 2022; the synthetic of the Mamba paper, §4.1.2, and H3/Hyena).

A row of length T is uniform random data tokens with one trigger token ``<trig>`` placed early, at
position p uniform in ``[0, max(1, int(trigger_frac * (T - 2))))``; the token right after it (at p + 1)
is the target. The row ends with ``<trig>`` again, and at that last position the model must output the
target: find the earlier trigger and copy what followed it. ``<trig>`` is never a data token, so it
occurs exactly twice. Trained at one length, tested at several, to measure length extrapolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sessa.tasks.base import IGNORE_INDEX, TaskConfig, TaskData, TaskSplit, register_task

SPECIALS = ("<pad>", "<trig>")
PAD, TRIGGER = 0, 1


def induction_rows(
    rng: np.random.Generator, n: int, length: int, vocab_size: int, trigger_frac: float
) -> TaskSplit:
    """n rows of ``length`` tokens; the last position's target is the token after the first trigger.

    inputs/targets: (n, length); meta["length"]: (n,) = length; meta["trigger_pos"]: (n,) p.
    """
    inputs = rng.integers(len(SPECIALS), len(SPECIALS) + vocab_size, size=(n, length))
    span = max(1, int(trigger_frac * (length - 2)))
    pos = rng.integers(0, span, size=n)
    rows = np.arange(n)
    inputs[rows, pos] = TRIGGER
    inputs[:, -1] = TRIGGER
    targets = np.full_like(inputs, IGNORE_INDEX)
    targets[:, -1] = inputs[rows, pos + 1]
    return TaskSplit(
        inputs=torch.from_numpy(inputs),
        targets=torch.from_numpy(targets),
        lengths=torch.full((n,), length, dtype=torch.long),
        meta={"length": torch.full((n,), length, dtype=torch.long), "trigger_pos": torch.from_numpy(pos)},
    )


@register_task("induction")
@dataclass
class InductionTask(TaskConfig):
    """Induction heads, scored at the final position only (one target token per row).

    Vocabulary: ``<pad> <trig>`` and the data tokens ``t0 .. t{vocab_size - 1}`` (18 by default). Splits:
    "train" and "valid" at ``seq_len``, and ``f"test_{L}"`` for every L in ``test_lengths``. The Mamba paper
    trains at 256 with vocabulary 16 and tests from 2^6 to 2^20 (Mamba stays at 100%; attention with
    absolute positions fails past 2x); the default test lengths stop at 4096 to stay CPU-sized (a 2^20
    split of 256 rows is 2 GiB of int64 inputs and targets). Splits come from independent RNGs,
    ``numpy.random.default_rng`` seeded ``[seed, 0]`` (train), ``[seed, 1]`` (valid), ``[seed, 2, L]``
    (test_L). Overlap is not checked: rows of different lengths never coincide, and two rows of the
    default length 256 coincide with probability about 16^-250.

    Example: ``induction_rows(numpy.random.default_rng(5), 1, 10, 16, 0.5)`` (length 10, trigger at p = 1)::

        inputs:   t10 <trig> t0 t12 t7 t8 t10 t4 t15 <trig>
        targets:  -100 at positions 0-8, then t0 at the final <trig>      meta: length 10, trigger_pos 1

        >>> data = InductionTask(n_train=4, n_valid=2, n_test=2, test_lengths=(64, 512)).build(seed=0)
        >>> sorted(data.splits), tuple(data.splits["test_512"].inputs.shape)
        (['test_512', 'test_64', 'train', 'valid'], (2, 512))
    """

    vocab_size: int = 16  # data tokens (paper: 16)
    seq_len: int = 256  # training (and validation) row length (paper: 256)
    test_lengths: tuple[int, ...] = (64, 256, 512, 1024, 2048, 4096)  # one test split per length
    trigger_frac: float = 0.5  # the first trigger sits in the first trigger_frac of the row ("early")
    n_train: int = 10_000  # training rows
    n_valid: int = 500  # validation rows
    n_test: int = 500  # rows per test length

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_train", "n_valid", "n_test"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.seq_len, int) or self.seq_len < 3:
            raise ValueError(f"seq_len must be an int >= 3 (trigger, target, trigger), got {self.seq_len!r}")
        if isinstance(self.test_lengths, list):
            self.test_lengths = tuple(self.test_lengths)
        if not isinstance(self.test_lengths, tuple) or not self.test_lengths:
            raise ValueError(f"test_lengths must be a non-empty tuple of ints, got {self.test_lengths!r}")
        for length in self.test_lengths:
            if not isinstance(length, int) or length < 3:
                raise ValueError(f"test_lengths must hold ints >= 3, got {length!r} in {self.test_lengths!r}")
        if len(set(self.test_lengths)) != len(self.test_lengths):
            raise ValueError(f"test_lengths must not repeat a length, got {self.test_lengths}")
        if not 0.0 < self.trigger_frac <= 1.0:
            raise ValueError(f"trigger_frac must be in (0, 1], got {self.trigger_frac!r}")

    def _build(self, seed: int) -> TaskData:
        plan = [("train", [0], self.n_train, self.seq_len), ("valid", [1], self.n_valid, self.seq_len)]
        plan += [(f"test_{length}", [2, length], self.n_test, length) for length in self.test_lengths]
        splits = {
            name: induction_rows(
                np.random.default_rng([seed, *key]), n, length, self.vocab_size, self.trigger_frac
            )
            for name, key, n, length in plan
        }
        return TaskData(
            name=self.name,
            vocab=[*SPECIALS, *(f"t{i}" for i in range(self.vocab_size))],
            pad_id=PAD,
            splits=splits,
            metric="accuracy",
            info={"seq_len": self.seq_len, "test_lengths": list(self.test_lengths)},
        )
