"""SCAN (Lake & Baroni 2018): map navigation commands to action sequences, as decoder-only seq2seq.

The grammar (DESIGN §4)::

    C -> S and S | S after S | S
    S -> V twice | V thrice | V
    V -> D[1] opposite D[2] | D[1] around D[2] | D | U
    D -> U left | U right | turn left | turn right
    U -> walk | look | run | jump

where in ``D[1] opposite D[2]`` / ``D[1] around D[2]`` D[1] contributes its verb (U or "turn") and D[2]
its direction, e.g. "jump around left". That is 4 U + 10 D + 20 opposite/around = 34 V phrases, 102 S
phrases and 102 + 2 x 102^2 = 20,910 commands. ``interpret`` is our own evaluator of its semantics:

    walk                 -> I_WALK          (look, run, jump alike)
    x left / x right     -> I_TURN_LEFT x   / I_TURN_RIGHT x       ("turn left" -> I_TURN_LEFT)
    x opposite left      -> I_TURN_LEFT I_TURN_LEFT x               ("turn opposite left" -> 2 x I_TURN_LEFT)
    x around left        -> (I_TURN_LEFT x) repeated 4 times         ("turn around left" -> 4 x I_TURN_LEFT)
    s twice / s thrice   -> s repeated 2 / 3 times
    s1 and s2            -> s1 then s2
    s1 after s2          -> s2 then s1
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import torch

from sessa.tasks.base import IGNORE_INDEX, TaskConfig, TaskData, TaskSplit, pad_rows, register_task

PRIMITIVES = {"walk": "I_WALK", "look": "I_LOOK", "run": "I_RUN", "jump": "I_JUMP"}
TURNS = {"left": "I_TURN_LEFT", "right": "I_TURN_RIGHT"}
REPEATS = {"twice": 2, "thrice": 3}
CONJUNCTIONS = ("and", "after")
COMMAND_WORDS = (*PRIMITIVES, "turn", *TURNS, "opposite", "around", *REPEATS, *CONJUNCTIONS)
ACTIONS = (*PRIMITIVES.values(), *TURNS.values())
SPECIALS = ("<pad>", "<bos>", "<sep>", "<eos>")
VOCAB = [*SPECIALS, *COMMAND_WORDS, *ACTIONS]

# The length split of the SCAN repository: train on short outputs, test on long ones (no command has 23).
MAX_TRAIN_ACTIONS = 22
MIN_TEST_ACTIONS = 24


def _interpret_verb_phrase(words: list[str], command: str) -> list[str]:
    """Actions of a V phrase: ``u``, ``u dir``, ``turn dir``, ``u|turn opposite|around dir``."""
    head = words[0] if words else ""
    if head not in PRIMITIVES and head != "turn":
        raise ValueError(f"command {command!r}: expected walk/look/run/jump/turn, got {head!r}")
    if len(words) == 1:
        if head == "turn":
            raise ValueError(f"command {command!r}: 'turn' needs a direction (left/right)")
        return [PRIMITIVES[head]]
    direction = words[-1]
    if (
        direction not in TURNS
        or len(words) > 3
        or (len(words) == 3 and words[1] not in ("opposite", "around"))
    ):
        raise ValueError(f"command {command!r}: malformed phrase {' '.join(words)!r}")
    turn = TURNS[direction]
    act = [] if head == "turn" else [PRIMITIVES[head]]
    if len(words) == 2:
        return [turn, *act]
    if words[1] == "opposite":
        return [turn, turn, *act]
    return [turn, *act] * 4  # around


def _interpret_sentence(words: list[str], command: str) -> list[str]:
    """Actions of an S phrase: a V phrase, optionally followed by twice/thrice."""
    if words and words[-1] in REPEATS:
        return _interpret_verb_phrase(words[:-1], command) * REPEATS[words[-1]]
    return _interpret_verb_phrase(words, command)


def interpret(command: str) -> str:
    """The action sequence (space-separated) of a SCAN command, e.g. "jump twice" -> "I_JUMP I_JUMP".

    Raises ``ValueError`` for a string outside the grammar.
    """
    if not isinstance(command, str):
        raise TypeError(f"command must be a str, got {type(command).__name__}")
    words = command.split()
    joins = [i for i, w in enumerate(words) if w in CONJUNCTIONS]
    if len(joins) > 1:
        raise ValueError(f"command {command!r}: at most one 'and'/'after' is allowed, found {len(joins)}")
    if not joins:
        return " ".join(_interpret_sentence(words, command))
    i = joins[0]
    first = _interpret_sentence(words[:i], command)
    second = _interpret_sentence(words[i + 1 :], command)
    return " ".join(first + second if words[i] == "and" else second + first)


def _verb_phrases() -> list[str]:
    """All 34 V phrases: 4 U, 10 D (8 ``u dir`` + 2 ``turn dir``) and 20 ``opposite``/``around`` ones."""
    subjects = [*PRIMITIVES, "turn"]
    phrases = list(PRIMITIVES)
    phrases += [f"{s} {d}" for s in subjects for d in TURNS]
    phrases += [f"{s} {m} {d}" for s in subjects for m in ("opposite", "around") for d in TURNS]
    return phrases


def scan_commands() -> list[str]:
    """All 20,910 SCAN commands, sorted: 102 S phrases, plus 102^2 joined by 'and' and 102^2 by 'after'."""
    sentences = [f"{v}{suffix}" for v in _verb_phrases() for suffix in ("", " twice", " thrice")]
    joined = [f"{a} {c} {b}" for c in CONJUNCTIONS for a, b in itertools.product(sentences, sentences)]
    return sorted(sentences + joined)


def scan_pairs() -> list[tuple[str, str]]:
    """All 20,910 (command, actions) pairs, sorted by command."""
    return [(c, interpret(c)) for c in scan_commands()]


def length_split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """SCAN's length split: (train, test) = (16,990 pairs with <= 22 actions, 3,920 with 24-48), sorted."""
    pairs = scan_pairs()
    train = [p for p in pairs if len(p[1].split()) <= MAX_TRAIN_ACTIONS]
    test = [p for p in pairs if len(p[1].split()) >= MIN_TEST_ACTIONS]
    assert len(train) + len(test) == len(pairs), "a SCAN command has 23 actions"
    return train, test


def encode_pairs(pairs: list[tuple[str, str]]) -> TaskSplit:
    """Decoder-only rows ``<bos> command <sep> actions <eos>``, scored on the actions and ``<eos>``.

    inputs/targets: (N, T) with T = longest row - 1; targets[t] is the token at t + 1 from the ``<sep>``
    position onward and ``IGNORE_INDEX`` before it. meta["length"]: (N,) number of actions.
    """
    ids = {tok: i for i, tok in enumerate(VOCAB)}
    inputs, targets, n_actions = [], [], []
    for command, actions in pairs:
        seq = [ids["<bos>"], *(ids[w] for w in command.split()), ids["<sep>"]]
        sep = len(seq) - 1
        seq += [*(ids[a] for a in actions.split()), ids["<eos>"]]
        inputs.append(seq[:-1])
        targets.append([IGNORE_INDEX] * sep + seq[sep + 1 :])
        n_actions.append(len(actions.split()))
    pad = ids["<pad>"]
    return TaskSplit(
        inputs=pad_rows(inputs, pad),
        targets=pad_rows(targets, pad, fill=IGNORE_INDEX),
        lengths=torch.tensor([len(r) for r in inputs], dtype=torch.long),
        meta={"length": torch.tensor(n_actions, dtype=torch.long)},
    )


@register_task("scan")
@dataclass
class ScanTask(TaskConfig):
    """SCAN as decoder-only seq2seq, scored by exact match of the whole action sequence.

    Each row is ``<bos> command words <sep> action tokens <eos>`` over a 23-token word vocabulary
    (4 specials, 13 command words, 6 actions); the loss covers the actions and ``<eos>`` only (teacher
    forced: ``sequence_accuracy`` counts a row right when every scored position is predicted exactly).
    ``split="length"`` is SCAN's length split (train 16,990 outputs of <= 22 actions, test 3,920 of 24-48;
    fixed, the seed is unused); ``split="simple"`` is a seeded random split with ``train_fraction`` in train
    (SCAN's own simple split is 80/20: 16,728 / 4,182).

    Example:
        >>> data = ScanTask().build(seed=0)
        >>> len(data.splits["train"]), len(data.splits["test"])
        (16990, 3920)
        >>> interpret("jump around left twice").split().count("I_JUMP")
        8
        >>> interpret("walk after run opposite right")
        'I_TURN_RIGHT I_TURN_RIGHT I_RUN I_WALK'

    The row for "walk twice" is ``<bos> walk twice <sep> I_WALK I_WALK <eos>``; inputs drop the last
    token and targets are ``[-100, -100, -100, I_WALK, I_WALK, <eos>]``; meta["length"] = 2.
    """

    split: str = "length"  # "length" (SCAN length split) or "simple" (seeded random split)
    train_fraction: float = 0.8  # share of commands in train for split="simple"; unused for "length"

    def __post_init__(self) -> None:
        if self.split not in ("length", "simple"):
            raise ValueError(f"split must be 'length' or 'simple', got {self.split!r}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction!r}")

    def _split_pairs(self, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        if self.split == "length":
            return length_split()
        pairs = scan_pairs()
        order = list(range(len(pairs)))
        random.Random(seed).shuffle(order)
        n_train = round(self.train_fraction * len(pairs))
        return [pairs[i] for i in order[:n_train]], [pairs[i] for i in order[n_train:]]

    def _build(self, seed: int) -> TaskData:
        train, test = self._split_pairs(seed)
        return TaskData(
            name=self.name,
            vocab=list(VOCAB),
            pad_id=VOCAB.index("<pad>"),
            splits={"train": encode_pairs(train), "test": encode_pairs(test)},
            metric="sequence_accuracy",
            info={"split": self.split, "n_train": len(train), "n_test": len(test)},
        )
