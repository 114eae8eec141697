"""SymbolSoup (the Sessa paper's long-context task): 20-way classification of letter soups by two styles.

An example hides one "left" style block (4 styles) and one "right" style block (5 styles), in random order,
among three blocks of uniform noise letters; the class is ``left * 5 + right``. A style is a fixed
distribution over the letters a-p (DESIGN §4):

* the 16 letters shuffled by a style-family RNG (``random.Random(123)`` for the left family, ``456`` for
  the right one, one shuffle per style in style order, as in the public generator, so our 9 styles are
  the original ones); the first 4 letters are primaries (unigram weight 3), the next 4 secondaries (2),
  the rest weight 1;
* preferred bigrams ``(p_i, p_{i+1 mod 4})``, ``(p_i, p_i)``, ``(s_i, s_i)``, ``(p_i, s_i)``, ``(s_i, p_i)``
  multiply the next letter's weight by 4;
* motifs: the 39 contiguous substrings of "abcdefghijklmnop" of length 3, 4, 5, weighted
  ``1 + 0.9 * |letters in primaries| + 0.5 * |letters in secondaries|``.

A style block of length n grows left to right: while it is shorter than n, with probability 0.3 (when at
least 3 letters remain) it appends a motif drawn among those that fit, otherwise one Markov letter drawn
from the unigram weights, boosted by the bigram rule given the previous letter (the first letter of a
block uses the unigram weights alone). Then every letter flips to a different uniform letter with
probability 0.03.

An example has M letters in all, M uniform in ``[ceil((min_len - 13) / 2), floor((max_len - 13) / 2)]``
(at least 5); the noise total is uniform in ``[max(3, int(0.3 M)), max(.., int(0.6 M))]`` (clamped to
``[3, M - 2]``), the rest is split uniformly between the left and the right block (each >= 1 letter),
and the noise total uniformly into three blocks (each >= 1), in the public generator's order of draws.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch

from sessa.tasks.base import IGNORE_INDEX, TaskConfig, TaskData, TaskSplit, register_task

LETTERS = "abcdefghijklmnop"
N_LEFT, N_RIGHT = 4, 5
N_CLASSES = N_LEFT * N_RIGHT
LEFT_FAMILY_SEED, RIGHT_FAMILY_SEED = 123, 456  # the public generator's style-family seeds
BIGRAM_BOOST = 4.0  # weight x (1 + 3) for a preferred bigram
MOTIF_PROB = 0.3
FLIP_PROB = 0.03
MOTIFS = [LETTERS[i : i + n] for n in (3, 4, 5) for i in range(len(LETTERS) - n + 1)]

SPECIALS = ("<pad>", "<bos>", "<sep1>", "<sep2>", "<sep>", "<label>")
CLASS_TOKENS = tuple(f"<c{k}>" for k in range(N_CLASSES))
VOCAB = [*SPECIALS, *CLASS_TOKENS, *LETTERS, " ", "\n"]
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
# Tokens around the five letter blocks; the letter blocks go between them (length = 2M + 13).
_FRAME = (
    ["<bos>", "\n"],
    ["\n", "<sep1>", "\n"],
    ["\n", "<sep2>", "\n"],
    ["\n", "<sep1>", "\n"],
    ["\n", "<sep2>", "\n"],
    ["\n", "<sep>", " ", "<label>"],
)


@dataclass(frozen=True)
class Style:
    """A style's sampling tables: cumulative weights of the first letter, of each next letter, of motifs."""

    primaries: str
    secondaries: str
    first_cum: list[float]  # (16,) cumulative unigram weights
    next_cum: dict[str, list[float]]  # previous letter -> (16,) cumulative weights with the bigram boost
    motif_cum: list[float]  # (39,) cumulative motif weights, motifs ordered by length (3s, 4s, 5s)


def _make_style(order: list[str]) -> Style:
    prim, sec = order[:4], order[4:8]
    unigram = {c: 3.0 if c in prim else 2.0 if c in sec else 1.0 for c in LETTERS}
    preferred = {(prim[i], prim[(i + 1) % 4]) for i in range(4)} | {(p, p) for p in prim}
    preferred |= {(s, s) for s in sec}
    preferred |= {pair for p, s in zip(prim, sec, strict=True) for pair in ((p, s), (s, p))}
    boost = {(prev, c): BIGRAM_BOOST if (prev, c) in preferred else 1.0 for prev in LETTERS for c in LETTERS}
    next_cum = {prev: list(accumulate(unigram[c] * boost[prev, c] for c in LETTERS)) for prev in LETTERS}
    motif_w = [1.0 + 0.9 * len(set(m) & set(prim)) + 0.5 * len(set(m) & set(sec)) for m in MOTIFS]
    return Style(
        primaries="".join(prim),
        secondaries="".join(sec),
        first_cum=list(accumulate(unigram[c] for c in LETTERS)),
        next_cum=next_cum,
        motif_cum=list(accumulate(motif_w)),
    )


def style_family(n_styles: int, family_seed: int) -> list[Style]:
    """The styles of one family: style s shuffles the letters with the family RNG's s-th shuffle."""
    rng = random.Random(family_seed)
    styles = []
    for _ in range(n_styles):
        order = list(LETTERS)
        rng.shuffle(order)
        styles.append(_make_style(order))
    return styles


LEFT_STYLES = style_family(N_LEFT, LEFT_FAMILY_SEED)
RIGHT_STYLES = style_family(N_RIGHT, RIGHT_FAMILY_SEED)
# Number of motifs of length <= r (motifs are sorted by length): the candidates when r letters remain.
_MOTIFS_UP_TO = {r: sum(len(m) <= r for m in MOTIFS) for r in (3, 4, 5)}


def sample_style_block(style: Style, n: int, rng: random.Random) -> list[str]:
    """n letters of one style: motif insertions (p 0.3) and bigram-boosted Markov letters, then 3% flips."""
    out: list[str] = []
    while len(out) < n:
        remaining = n - len(out)
        if remaining >= 3 and rng.random() < MOTIF_PROB:
            k = _MOTIFS_UP_TO[min(remaining, 5)]
            out.extend(rng.choices(MOTIFS[:k], cum_weights=style.motif_cum[:k])[0])
            continue
        cum = style.next_cum[out[-1]] if out else style.first_cum
        out.append(rng.choices(LETTERS, cum_weights=cum)[0])
    for i, c in enumerate(out):
        if rng.random() < FLIP_PROB:
            out[i] = rng.choice(LETTERS.replace(c, ""))
    return out


def letter_budget(min_len: int, max_len: int) -> tuple[int, int]:
    """Range of the letter count M for token lengths 2M + 13 in [min_len, max_len] (M >= 5)."""
    return max(5, math.ceil((min_len - 13) / 2)), max(5, (max_len - 13) // 2)


def _block_sizes(m: int, rng: random.Random) -> tuple[list[int], int, int]:
    """Sizes ([noise0, noise1, noise2], left, right) summing to m, drawn in the public generator's order."""
    lo = max(3, int(0.3 * m))
    noise = min(max(rng.randint(lo, max(lo, int(0.6 * m))), 3), m - 2)
    styled = m - noise
    left = rng.randint(1, styled - 1)
    n0 = rng.randint(1, noise - 2)
    n1 = rng.randint(1, noise - n0 - 1)
    return [n0, n1, noise - n0 - n1], left, styled - left


def make_example(label: int, m: int, rng: random.Random) -> list[int]:
    """Token ids (2m + 13,) of one example of class ``label`` with m letters, ending with ``<label>``."""
    noise_sizes, n_left, n_right = _block_sizes(m, rng)
    left = sample_style_block(LEFT_STYLES[label // N_RIGHT], n_left, rng)
    right = sample_style_block(RIGHT_STYLES[label % N_RIGHT], n_right, rng)
    styled = [left, right] if rng.random() < 0.5 else [right, left]
    noise = [rng.choices(LETTERS, k=n) for n in noise_sizes]
    blocks = [noise[0], styled[0], noise[1], styled[1], noise[2]]
    tokens = list(_FRAME[0])
    for block, frame in zip(blocks, _FRAME[1:], strict=True):
        tokens += [t for c in block for t in (c, " ")][:-1]
        tokens += frame
    return [TOKEN_ID[t] for t in tokens]


def decode(tokens: Sequence[int] | torch.Tensor) -> str:
    """Text of token ids (special tokens by name, padding dropped), e.g. ``decode(split.inputs[0])``."""
    ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
    return "".join(VOCAB[i] for i in ids if i != TOKEN_ID["<pad>"])


def make_split(n: int, min_len: int, max_len: int, rng: random.Random) -> TaskSplit:
    """n examples with classes balanced (counts differ by at most 1), right-padded.

    inputs/targets: (n, T), T = longest row; the only scored position is each row's last real one (the
    ``<label>`` placeholder), whose target is the class token ``<c{k}>``. meta["label"]: (n,) class k.
    """
    labels = [i % N_CLASSES for i in range(n)]
    rng.shuffle(labels)
    m_lo, m_hi = letter_budget(min_len, max_len)
    rows = [make_example(label, rng.randint(m_lo, m_hi), rng) for label in labels]
    width = max(len(r) for r in rows)
    inputs = torch.full((n, width), TOKEN_ID["<pad>"], dtype=torch.long)
    targets = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        inputs[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        targets[i, len(row) - 1] = TOKEN_ID[CLASS_TOKENS[label]]
    return TaskSplit(
        inputs=inputs,
        targets=targets,
        lengths=torch.tensor([len(r) for r in rows], dtype=torch.long),
        meta={"label": torch.tensor(labels, dtype=torch.long)},
    )


@register_task("symbolsoup")
@dataclass
class SymbolSoupTask(TaskConfig):
    """SymbolSoup: 20-way classification of two hidden style blocks among noise, scored at the last token.

    Vocabulary (44 tokens): ``<pad> <bos> <sep1> <sep2> <sep> <label>``, the class tokens ``<c0>..<c19>``,
    the letters a-p, space and newline. A row is the public layout, tokenised character by character::

        <bos>\\nN0\\n<sep1>\\nB1\\n<sep2>\\nN1\\n<sep1>\\nB2\\n<sep2>\\nN2\\n<sep> <label>

    (N = noise block, B = style block, letters joined by single spaces), so a row with M letters has
    2M + 13 tokens, in [min_len, max_len]. ``<label>`` is a fixed placeholder, as in the public data (it
    carries no class information); the model predicts the class token ``<c{k}>`` at that final position,
    the only scored one (``targets[i, lengths[i] - 1]``). Classes are balanced in every split (counts
    differ by at most 1; exactly equal when n is a multiple of 20). Splits are drawn from independent RNGs
    (``random.Random(f"symbolsoup/{seed}/{split}")``), so resizing one split leaves the others unchanged.

    Choices where DESIGN §4 and the public generator leave room: the class k is predicted at the ``<label>``
    position (the last of the 2M + 13 tokens; the public text also ends with this placeholder and keeps
    the answer in a separate column), not at ``<sep>``, so the length stays 2M + 13; split sizes need
    not be multiples of 20 (the public script requires it); the public ``<eos>`` and ``[MASK]`` tokens are
    not in the vocabulary because no row uses them.

    Example: a real short row of class 7 (left style 1, right style 2), made by
    ``make_example(7, 10, random.Random(3))`` (M = 10 letters, 33 tokens). The right block "d" came
    first; the left block "j m k j g" is mostly left style 1's primaries (b j m k) and secondary g::

        <bos>
        g
        <sep1>
        d
        <sep2>
        a m
        <sep1>
        j m k j g
        <sep2>
        c
        <sep> <label>         target at <label> (position 32): <c7>; every other target is -100

    Generation speed (``make_split(10_000, 400, 600, rng)``, one CPU core, Python 3.11): 2.1 s on an idle
    core (~4,700 examples/s), 3.5-5.8 s while the shared 2-core development machine was busy; the
    default 24k-example build takes ~5-11 s.

        >>> data = SymbolSoupTask(n_train=40, n_valid=20, n_test=20).build(seed=0)
        >>> split = data.splits["train"]
        >>> int(split.lengths.min()) >= 400 and int(split.lengths.max()) <= 600
        True
        >>> decode(split.inputs[0][:2])
        '<bos>\\n'
    """

    n_train: int = 20_000  # training examples (paper: 20k)
    n_valid: int = 2_000  # validation examples (paper: 2k)
    n_test: int = 2_000  # test examples (paper: 2k)
    min_len: int = 400  # shortest row in tokens (2M + 13 >= min_len)
    max_len: int = 600  # longest row in tokens (2M + 13 <= max_len)

    def __post_init__(self) -> None:
        for name in ("n_train", "n_valid", "n_test", "min_len", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.max_len < 23:
            raise ValueError(f"max_len must be >= 23 (5 letters: 2 * 5 + 13), got {self.max_len}")
        m_lo, m_hi = letter_budget(self.min_len, self.max_len)
        if m_lo > m_hi:
            raise ValueError(
                f"min_len={self.min_len}, max_len={self.max_len}: no letter count M has 2M + 13 in "
                f"[min_len, max_len]; widen the range"
            )

    def _build(self, seed: int) -> TaskData:
        sizes = {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}
        splits = {
            name: make_split(n, self.min_len, self.max_len, random.Random(f"symbolsoup/{seed}/{name}"))
            for name, n in sizes.items()
        }
        return TaskData(
            name=self.name,
            vocab=list(VOCAB),
            pad_id=TOKEN_ID["<pad>"],
            splits=splits,
            metric="accuracy",
            info={"n_classes": N_CLASSES, "class_tokens": list(CLASS_TOKENS), **sizes},
        )
