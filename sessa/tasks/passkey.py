"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention"), byte level, DESIGN §4.

A prompt is a task line, repeated filler sentences, the key line at a random depth, more filler and the
question (lines joined by ``\\n``)::

    TASK_LINE
    <filler prefix>
    The pass key is K. Remember it. K is the pass key.
    <filler suffix>
    What is the pass key? The pass key is

and the answer is `` K.`` (a space, the digits, a full stop as terminator). K is uniform in
``[1, max_key]`` (50000 as in the original test). The filler is one endless stream of our own sentences,
cut at byte level: the prefix is its first ``a`` bytes, the suffix the next ``b``, so that the whole row
(prompt + answer) has exactly the requested length; the depth ``a / (a + b)`` is uniform in [0, 1].
Tokens are the bytes 0..255 (ASCII text), plus ``<pad>`` = 256, so the rows suit any byte-level LM.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sessa.tasks.base import IGNORE_INDEX, TaskConfig, TaskData, TaskSplit, pad_rows, register_task

TASK_LINE = "A pass key is hidden in the long text below. Find it and remember it: you will be asked for it."
FILLER = (
    "The river keeps moving toward the sea. The hills stay quiet in the evening. "
    "Birds rest on the old stone wall. The lamps come on one by one. "
)
QUESTION = "What is the pass key? The pass key is"
PAD = 256
VOCAB = [chr(i) for i in range(256)] + ["<pad>"]


def key_line(key: int) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def answer_text(key: int) -> str:
    """The scored continuation of the prompt: a space, the digits of ``key`` and a full stop."""
    return f" {key}."


def fixed_bytes(key: int) -> int:
    """Bytes of a row that are not filler: the four line breaks, task, key and question lines, answer."""
    return len(TASK_LINE) + len(key_line(key)) + len(QUESTION) + len(answer_text(key)) + 4


def passkey_prompt(key: int, length: int, prefix_bytes: int) -> str:
    """The prompt whose row (prompt + answer) is ``length`` bytes, with ``prefix_bytes`` of filler first.

    Raises ``ValueError`` if ``length`` cannot hold the fixed lines or ``prefix_bytes`` is out of range.
    """
    budget = length - fixed_bytes(key)
    if budget < 0:
        raise ValueError(f"length={length} is below the {fixed_bytes(key)} fixed bytes for key={key}")
    if not 0 <= prefix_bytes <= budget:
        raise ValueError(f"prefix_bytes must be in [0, {budget}] for length={length}, got {prefix_bytes}")
    stream = FILLER * (budget // len(FILLER) + 1)
    lines = [TASK_LINE, stream[:prefix_bytes], key_line(key), stream[prefix_bytes:budget], QUESTION]
    return "\n".join(lines)


def passkey_correct(generated_text: str, key: int) -> bool:
    """True when the first number in the model's continuation equals ``key`` (e.g. " 4211. And" -> 4211)."""
    match = re.search(r"\d+", generated_text)
    return match is not None and int(match.group()) == key


def decode(tokens: Sequence[int] | torch.Tensor) -> str:
    """Text of byte ids, padding dropped."""
    ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
    return bytes(i for i in ids if i != PAD).decode("latin-1")


def make_split(n: int, length: int, max_key: int, rng: random.Random) -> TaskSplit:
    """n rows of ``length`` bytes; targets are the answer bytes (-100 elsewhere, incl. the last position).

    inputs/targets: (n, length). meta (each (n,)): "length", "depth" (filler before the key, percent of
    all filler, rounded), "key", "prompt_len" (bytes before the answer: generation starts there).
    """
    rows, targets, meta = [], [], {"length": [], "depth": [], "key": [], "prompt_len": []}
    for _ in range(n):
        key = rng.randint(1, max_key)
        budget = length - fixed_bytes(key)
        prefix = rng.randint(0, budget)
        prompt = passkey_prompt(key, length, prefix)
        row = list((prompt + answer_text(key)).encode("ascii"))
        start = len(prompt)
        target = [IGNORE_INDEX] * length
        target[start - 1 : length - 1] = row[start:]
        rows.append(row)
        targets.append(target)
        depth = round(100 * prefix / budget) if budget else 0
        for name, value in zip(meta, (length, depth, key, start), strict=True):
            meta[name].append(value)
    return TaskSplit(
        inputs=pad_rows(rows, PAD),
        targets=pad_rows(targets, PAD, fill=IGNORE_INDEX),
        lengths=torch.full((n,), length, dtype=torch.long),
        meta={name: torch.tensor(values, dtype=torch.long) for name, values in meta.items()},
    )


@register_task("passkey")
@dataclass
class PasskeyTask(TaskConfig):
    """Byte-level passkey retrieval, scored on the answer bytes `` K.`` with ``sequence_accuracy``.

    Teacher-forced sequence accuracy (every answer byte right) equals "greedy decoding from the prompt
    produces K followed by a full stop"; for free generation use ``meta["prompt_len"]`` to cut the prompt
    and ``passkey_correct``. Splits: "train" and "valid" at ``train_length`` bytes, and ``f"test_{L}"`` for
    every L in ``test_lengths``, each row exactly that long; break results down by ``meta["depth"]``.
    The original evaluation used 50 prompts per filler size, up to ~38,000 characters of filler. Splits
    come from independent RNGs, ``random.Random(f"passkey/{seed}/{split}")``. Keys may repeat across
    splits (the key is in the context, so memorising training keys does not help).

    Example: ``passkey_prompt(4211, 250, 18) + answer_text(4211)``, a 250-byte row with key 4211 and 18
    of its 52 filler bytes before the key line (meta["depth"] = 35)::

        A pass key is hidden in the long text below. Find it and remember it: you will be asked for it.
        The river keeps mo
        The pass key is 4211. Remember it. 4211 is the pass key.
        ving toward the sea. The hills sta
        What is the pass key? The pass key is 4211.

    Targets are -100 except at the 6 positions before the last: the question's final "s" has target " ",
    then " ", "4", "2", "1", "1" have targets "4", "2", "1", "1", "." (the last byte "." is unscored).

        >>> data = PasskeyTask(n_train=2, n_valid=2, n_test=2, test_lengths=(1024,)).build(seed=0)
        >>> tuple(data.splits["test_1024"].inputs.shape), passkey_correct(" 42.", 42)
        ((2, 1024), True)
    """

    train_length: int = 512  # bytes per training/validation row (prompt + answer)
    test_lengths: tuple[int, ...] = (512, 1024, 2048, 4096)  # one test split per row length in bytes
    max_key: int = 50_000  # keys are uniform in [1, max_key]
    n_train: int = 5_000  # training rows
    n_valid: int = 200  # validation rows
    n_test: int = 100  # rows per test length

    def __post_init__(self) -> None:
        for name in ("max_key", "n_train", "n_valid", "n_test"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.test_lengths, list):
            self.test_lengths = tuple(self.test_lengths)
        if not isinstance(self.test_lengths, tuple) or not self.test_lengths:
            raise ValueError(f"test_lengths must be a non-empty tuple of ints, got {self.test_lengths!r}")
        if len(set(self.test_lengths)) != len(self.test_lengths):
            raise ValueError(f"test_lengths must not repeat a length, got {self.test_lengths}")
        shortest = fixed_bytes(self.max_key)
        checks = [("train_length", self.train_length), *(("test_lengths", t) for t in self.test_lengths)]
        for name, length in checks:
            if not isinstance(length, int) or isinstance(length, bool) or length < shortest:
                raise ValueError(
                    f"{name} must hold ints >= {shortest} (the fixed lines with a "
                    f"{len(str(self.max_key))}-digit key), got {length!r}"
                )

    def _build(self, seed: int) -> TaskData:
        plan = [("train", self.n_train, self.train_length), ("valid", self.n_valid, self.train_length)]
        plan += [(f"test_{length}", self.n_test, length) for length in self.test_lengths]
        splits = {
            name: make_split(n, length, self.max_key, random.Random(f"passkey/{seed}/{name}"))
            for name, n, length in plan
        }
        return TaskData(
            name=self.name,
            vocab=list(VOCAB),
            pad_id=PAD,
            splits=splits,
            metric="sequence_accuracy",
            info={"train_length": self.train_length, "test_lengths": list(self.test_lengths)},
        )
