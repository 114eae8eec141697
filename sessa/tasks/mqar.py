"""Multi-query associative recall (MQAR, Arora, Eyuboglu et al. 2023, "Zoology"), DESIGN §4.

Our own generator of the Zoology definition. With vocabulary V, sequence length L and N key-value pairs:

* keys are N distinct tokens from ``[1, V // 2)``, values N distinct tokens from ``[V // 2, V)``;
* the context is ``k1 v1 k2 v2 ... kN vN`` (2N tokens);
* the remaining ``L - 2N`` positions hold ``(L - 2N) // 2`` query slots at even offsets; each key is
  queried once, at slot g drawn without replacement with ``p(g) ∝ (g + 1) ** (alpha - 1)`` (alpha = 0.01:
  a power law that favours short gaps, as repeated bigrams do in text);
* every other position is filler: token 0, or (``random_filler``) a uniform token of ``[0, V)``;
* the target at a query position is the queried key's value, ``IGNORE_INDEX`` everywhere else (so,
  unlike next-token data, the target there is not the next input token).

Sampling without replacement under ``p`` uses the Gumbel-top-k trick, which has the same distribution as
drawing the slots one at a time from ``p`` renormalised over the slots left.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from sessa.tasks.base import IGNORE_INDEX, TaskConfig, TaskData, TaskSplit, register_task

SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}


def _distinct_rows(rng: np.random.Generator, n: int, low: int, high: int, k: int) -> np.ndarray:
    """(n, k) int64: each row k distinct uniform tokens of [low, high)."""
    return np.argsort(rng.random((n, high - low)), axis=1)[:, :k] + low


def query_slots(rng: np.random.Generator, n: int, n_slots: int, k: int, alpha: float) -> np.ndarray:
    """(n, k) int64: per row, k distinct slots of [0, n_slots), no replacement, p(g) ∝ (g+1)^(α-1)."""
    log_p = (alpha - 1.0) * np.log(np.arange(1, n_slots + 1, dtype=np.float64))
    scores = log_p + rng.gumbel(size=(n, n_slots))
    return np.argsort(-scores, axis=1)[:, :k]


def _mqar_chunk(rng: np.random.Generator, n: int, cfg: MQARTask) -> tuple[np.ndarray, np.ndarray]:
    vocab_size, seq_len, n_pairs = cfg.vocab_size, cfg.seq_len, cfg.n_pairs
    keys = _distinct_rows(rng, n, 1, vocab_size // 2, n_pairs)
    values = _distinct_rows(rng, n, vocab_size // 2, vocab_size, n_pairs)
    inputs = np.zeros((n, seq_len), dtype=np.int64)
    if cfg.random_filler:
        inputs[:] = rng.integers(0, vocab_size, size=(n, seq_len))
    inputs[:, 0 : 2 * n_pairs : 2] = keys
    inputs[:, 1 : 2 * n_pairs : 2] = values
    slots = query_slots(rng, n, (seq_len - 2 * n_pairs) // 2, n_pairs, cfg.alpha)
    positions = 2 * n_pairs + 2 * slots
    np.put_along_axis(inputs, positions, keys, axis=1)
    targets = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(targets, positions, values, axis=1)
    return inputs, targets


def mqar_rows(rng: np.random.Generator, n: int, cfg: MQARTask) -> tuple[np.ndarray, np.ndarray]:
    """n MQAR rows: (inputs, targets), each (n, seq_len) int64; see the module docstring.

    Drawn in chunks of rows so the (rows, V // 2) sort buffers stay near 2^22 entries for any V.
    """
    chunk = max(1, 2**22 // max(cfg.vocab_size // 2, cfg.seq_len))
    parts = [_mqar_chunk(rng, min(chunk, n - start), cfg) for start in range(0, n, chunk)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def rows_unseen(
    make: Callable[[int], tuple[np.ndarray, np.ndarray]], n: int, seen: set[bytes], max_rounds: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """n rows (inputs, targets) from ``make(count)`` whose inputs are not in ``seen`` (then added to it).

    Raises ``ValueError`` when ``max_rounds`` batches do not yield n new rows (too few distinct rows exist).
    """
    kept_x, kept_y = [], []
    for _ in range(max_rounds):
        x, y = make(n - len(kept_x))
        for row_x, row_y in zip(x, y, strict=True):
            key = row_x.tobytes()
            if key not in seen:
                seen.add(key)
                kept_x.append(row_x)
                kept_y.append(row_y)
        if len(kept_x) == n:
            return np.stack(kept_x), np.stack(kept_y)
    raise ValueError(
        f"could not draw {n} rows distinct from each other and from earlier splits in {max_rounds} rounds "
        f"(got {len(kept_x)}); the configuration allows too few distinct rows: enlarge it or ask for fewer"
    )


@register_task("mqar")
@dataclass
class MQARTask(TaskConfig):
    """Zoology's multi-query associative recall, scored by token accuracy at the query positions.

    Defaults are CPU-sized (V = 256, L = 64, N = 8). The paper grid is V = 8192 with (L, N) in
    {(64, 4), (128, 8), (256, 16), (512, 64)}, 100k training and 3k test examples, 2-layer models of
    width 64-512 (attention solves every cell). Zoology's own generator defaults to random filler;
    DESIGN §4 makes token 0 the filler, so ``random_filler`` defaults to False. The vocabulary is the
    token ids ``"0" .. str(V - 1)``; rows never need padding, so ``pad_id`` is 0 (the filler). Every row of
    "valid" and "test" differs from every training row and from each other (duplicates are redrawn).
    Splits come from independent RNGs, ``numpy.random.default_rng([seed, split_index])``.

    Example: row 2 of ``MQARTask(vocab_size=16, seq_len=16, n_pairs=2, n_train=4).build(seed=1)``'s train
    split (keys from [1, 8), values from [8, 16))::

        inputs:   3  12   5   9   0   0   5   0   0   0   3   0   0   0   0   0
        targets:  .   .   .   .   .   .   9   .   .   .  12   .   .   .   .   .     (. = -100)

    Key 5 is queried at slot 1 (position 2N + 2 = 6) and key 3 at slot 3 (position 2N + 6 = 10).

        >>> split = MQARTask(n_train=4, n_valid=2, n_test=2).build(seed=0).splits["train"]
        >>> tuple(split.inputs.shape), int((split.targets != -100).sum(dim=1)[0])
        ((4, 64), 8)
    """

    vocab_size: int = 256  # V: keys from [1, V // 2), values from [V // 2, V), token 0 is the filler
    seq_len: int = 64  # L: tokens per row (context 2N + query region L - 2N)
    n_pairs: int = 8  # N: key-value pairs, each key queried once
    alpha: float = 0.01  # power-law exponent of the query-slot distribution (1.0 = uniform)
    random_filler: bool = False  # fill non-query positions with uniform tokens of [0, V) instead of 0
    n_train: int = 20_000  # training rows (paper: 100k)
    n_valid: int = 1_000  # validation rows
    n_test: int = 1_000  # test rows (paper: 3k)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "n_pairs", "n_train", "n_valid", "n_test"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.vocab_size // 2 - 1 < self.n_pairs:
            raise ValueError(
                f"vocab_size={self.vocab_size} gives {self.vocab_size // 2 - 1} keys in [1, V // 2), fewer "
                f"than n_pairs={self.n_pairs}; need vocab_size >= 2 * n_pairs + 2"
            )
        if 4 * self.n_pairs > self.seq_len:
            raise ValueError(
                f"seq_len={self.seq_len} must be >= 4 * n_pairs = {4 * self.n_pairs} (2N context tokens plus "
                f"N query slots of 2 tokens)"
            )
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")
        if not isinstance(self.random_filler, bool):
            raise ValueError(f"random_filler must be a bool, got {self.random_filler!r}")

    def _build(self, seed: int) -> TaskData:
        sizes = {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}
        seen: set[bytes] = set()
        splits = {}
        for name, n in sizes.items():
            rng = np.random.default_rng([seed, SPLIT_IDS[name]])
            make = functools.partial(mqar_rows, rng, cfg=self)
            if name == "train":
                x, y = make(n)
                seen.update(row.tobytes() for row in x)
            else:
                x, y = rows_unseen(make, n, seen)
            splits[name] = TaskSplit(
                inputs=torch.from_numpy(x),
                targets=torch.from_numpy(y),
                lengths=torch.full((n,), self.seq_len, dtype=torch.long),
            )
        return TaskData(
            name=self.name,
            vocab=[str(i) for i in range(self.vocab_size)],
            pad_id=0,
            splits=splits,
            metric="accuracy",
            info={"n_pairs": self.n_pairs, "seq_len": self.seq_len, **sizes},
        )
