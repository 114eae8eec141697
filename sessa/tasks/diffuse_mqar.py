"""Diffuse MQAR: associative recall of multi-token keys across a block of near-miss distractors.

The Sessa paper describes this task only qualitatively (DESIGN §4): multi-token keys, a memory block of
key-value pairs, a noise block of distractor pairs whose keys share a prefix with real keys but differ in
the suffix, then queries, with a controlled source-query lag and test lags up to 4x the training ones.
This is our own concrete generator of that description. A row is::

    <bos> | memory: N real pairs | noise: D distractor pairs | <q> | N queries

* a pair is ``key_len`` key tokens (``k*``) followed by one value token (``v*``); key and value tokens
  are disjoint, so a run of ``key_len`` key tokens is always one whole key;
* the N real keys are distinct, uniform over all ``key_vocab ** key_len`` keys; real values are uniform
  (with replacement);
* each distractor copies the first ``shared_prefix`` tokens of a uniformly chosen real key and draws the
  remaining tokens uniformly, redrawn until the key equals no real key (distractors may repeat among
  themselves); its value differs from that real key's value, so matching on the prefix alone is wrong;
* the queries are the N real keys in a random order, each followed by its value (teacher forcing: the
  value is the next token); only the last key token of each query is scored, its target the value.

Every query is answerable: its key occurs exactly once before it (in the memory block). The lag is set by
the noise block: ``meta["lag"] = D * (key_len + 1)``, the number of noise tokens between the memory
and the queries. The exact distance from the value of real pair i (memory slot i) to the last key token
of its query (query slot j) is ``(N - i + j + D) * (key_len + 1)`` tokens. D is uniform in
``[min_noise_pairs, max_noise_pairs]`` for "train" and "valid" and in
``[min_noise_pairs, test_lag_factor * max_noise_pairs]`` for "test".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from sessa.tasks.base import IGNORE_INDEX, TaskConfig, TaskData, TaskSplit, pad_rows, register_task

SPECIALS = ("<pad>", "<bos>", "<q>")
PAD, BOS, QUERY = 0, 1, 2


@register_task("diffuse_mqar")
@dataclass
class DiffuseMQARTask(TaskConfig):
    """Diffuse MQAR (our concrete version of the paper's task), scored by token accuracy at the queries.

    Default sizes: 8 real pairs of 3-token keys over 16 key tokens (4096 possible keys) and 16 values;
    distractors share the first 2 key tokens with a real key (15 near misses per real key); training
    noise blocks of 4-16 pairs (lag 16-64 tokens, rows of 82-130 tokens), test up to 64 pairs (lag 256,
    rows up to 322 tokens). Vocabulary: ``<pad> <bos> <q>``, ``k0..k15``, ``v0..v15`` (35 tokens).
    Splits come from independent RNGs, ``random.Random(f"diffuse_mqar/{seed}/{split}")``.

    Example: the train row of
    ``DiffuseMQARTask(n_pairs=2, min_noise_pairs=2, max_noise_pairs=2, n_train=1).build(seed=0)``
    (N = 2, key_len = 3, shared_prefix = 2, D = 2), with ``|`` marking the blocks::

        <bos> k7 k14 k9 v4  k8 k12 k5 v3 | k8 k12 k0 v1  k7 k14 k14 v11 | <q> k7 k14 k9 v4  k8 k12 k5 v3
        targets: v4 at the query's k9, v3 at the query's k5, -100 elsewhere; meta["lag"] = 8

    The distractor ``k8 k12 k0`` shares ``k8 k12`` with the real key ``k8 k12 k5`` but not its value.

        >>> split = DiffuseMQARTask(n_train=8, n_valid=4, n_test=4).build(seed=0).splits["test"]
        >>> int((split.targets != -100).sum(dim=1)[0])
        8
    """

    n_pairs: int = 8  # N: real key-value pairs in the memory block, each queried once
    key_len: int = 3  # tokens per key
    shared_prefix: int | None = None  # key tokens a distractor shares with its real key (None: key_len - 1)
    key_vocab: int = 16  # distinct key tokens
    value_vocab: int = 16  # distinct value tokens
    min_noise_pairs: int = 4  # fewest distractor pairs in the noise block (all splits)
    max_noise_pairs: int = 16  # most distractor pairs for train/valid
    test_lag_factor: int = 4  # test noise blocks reach test_lag_factor * max_noise_pairs pairs
    n_train: int = 20_000  # training rows
    n_valid: int = 1_000  # validation rows (training lags)
    n_test: int = 1_000  # test rows (lags up to test_lag_factor x)

    def __post_init__(self) -> None:
        positive = ("n_pairs", "key_vocab", "value_vocab", "test_lag_factor", "n_train", "n_valid", "n_test")
        for name in (*positive, "key_len", "min_noise_pairs", "max_noise_pairs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if name in positive and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.key_len < 2:
            raise ValueError(f"key_len must be >= 2 (multi-token keys), got {self.key_len}")
        if not isinstance(self.prefix_len, int) or not 1 <= self.prefix_len <= self.key_len - 1:
            raise ValueError(
                f"shared_prefix must be None or an int in [1, key_len - 1 = {self.key_len - 1}], "
                f"got {self.shared_prefix!r}"
            )
        if self.value_vocab < 2:
            raise ValueError(f"value_vocab must be >= 2 (distractor values differ), got {self.value_vocab}")
        n_suffixes = self.key_vocab ** (self.key_len - self.prefix_len)
        if n_suffixes <= self.n_pairs:
            raise ValueError(
                f"key_vocab ** (key_len - shared_prefix) = {n_suffixes} must exceed n_pairs={self.n_pairs} "
                f"so every real key has a near-miss distractor (and n_pairs distinct keys exist)"
            )
        if not 0 <= self.min_noise_pairs <= self.max_noise_pairs:
            raise ValueError(
                f"need 0 <= min_noise_pairs <= max_noise_pairs, got min_noise_pairs={self.min_noise_pairs}, "
                f"max_noise_pairs={self.max_noise_pairs}"
            )

    @property
    def prefix_len(self) -> int:
        """Key tokens shared by a distractor and its real key."""
        return self.key_len - 1 if self.shared_prefix is None else self.shared_prefix

    @property
    def vocab(self) -> list[str]:
        keys = [f"k{i}" for i in range(self.key_vocab)]
        return [*SPECIALS, *keys, *(f"v{i}" for i in range(self.value_vocab))]

    def _key(self, rng: random.Random, prefix: tuple[int, ...] = ()) -> tuple[int, ...]:
        """A key (token ids) starting with ``prefix``, the rest uniform key tokens."""
        rest = self.key_len - len(prefix)
        return prefix + tuple(len(SPECIALS) + rng.randrange(self.key_vocab) for _ in range(rest))

    def make_row(self, rng: random.Random, n_noise: int) -> tuple[list[int], list[int]]:
        """One row with ``n_noise`` distractor pairs: (input ids, targets), both of length T."""
        first_value = len(SPECIALS) + self.key_vocab
        keys: list[tuple[int, ...]] = []
        while len(keys) < self.n_pairs:
            key = self._key(rng)
            if key not in keys:
                keys.append(key)
        values = [first_value + rng.randrange(self.value_vocab) for _ in keys]
        row = [BOS]
        for key, value in zip(keys, values, strict=True):
            row += [*key, value]
        for _ in range(n_noise):
            real = rng.randrange(self.n_pairs)
            key = self._key(rng, keys[real][: self.prefix_len])
            while key in keys:
                key = self._key(rng, keys[real][: self.prefix_len])
            value = first_value + rng.randrange(self.value_vocab - 1)
            row += [*key, value + (value >= values[real])]  # uniform over the values != the real one
        row.append(QUERY)
        targets = [IGNORE_INDEX] * len(row)
        for i in rng.sample(range(self.n_pairs), self.n_pairs):
            row += [*keys[i], values[i]]
            targets += [IGNORE_INDEX] * (self.key_len - 1) + [values[i], IGNORE_INDEX]
        return row, targets

    def make_split(self, n: int, max_noise: int, rng: random.Random) -> TaskSplit:
        """n rows with noise blocks of [min_noise_pairs, max_noise] pairs; meta["lag"]: (n,) noise tokens."""
        rows, targets, lags = [], [], []
        for _ in range(n):
            n_noise = rng.randint(self.min_noise_pairs, max_noise)
            row, target = self.make_row(rng, n_noise)
            rows.append(row)
            targets.append(target)
            lags.append(n_noise * (self.key_len + 1))
        return TaskSplit(
            inputs=pad_rows(rows, PAD),
            targets=pad_rows(targets, PAD, fill=IGNORE_INDEX),
            lengths=torch.tensor([len(r) for r in rows], dtype=torch.long),
            meta={"lag": torch.tensor(lags, dtype=torch.long)},
        )

    def _build(self, seed: int) -> TaskData:
        test_max = self.test_lag_factor * self.max_noise_pairs
        pair = self.key_len + 1
        plan = {
            "train": (self.n_train, self.max_noise_pairs),
            "valid": (self.n_valid, self.max_noise_pairs),
            "test": (self.n_test, test_max),
        }
        splits = {
            name: self.make_split(n, max_noise, random.Random(f"diffuse_mqar/{seed}/{name}"))
            for name, (n, max_noise) in plan.items()
        }
        return TaskData(
            name=self.name,
            vocab=self.vocab,
            pad_id=PAD,
            splits=splits,
            metric="accuracy",
            info={
                "train_lag_tokens": (self.min_noise_pairs * pair, self.max_noise_pairs * pair),
                "test_lag_tokens": (self.min_noise_pairs * pair, test_max * pair),
            },
        )
