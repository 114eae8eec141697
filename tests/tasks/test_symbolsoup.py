"""SymbolSoup: layout, lengths, balance, scoring, style statistics, determinism, config errors."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
import torch

from sessa.tasks import IGNORE_INDEX, get_task
from sessa.tasks.symbolsoup import (
    LEFT_STYLES,
    LETTERS,
    RIGHT_STYLES,
    SymbolSoupTask,
    decode,
    letter_budget,
    make_example,
    sample_style_block,
)

SMALL = dict(n_train=60, n_valid=20, n_test=20)
# <bos>\nN0\n<sep1>\nB1\n<sep2>\nN1\n<sep1>\nB2\n<sep2>\nN2\n<sep> <label>, blocks = letters joined by spaces
BLOCK = r"([a-p](?: [a-p])*)"
LAYOUT = re.compile(
    rf"<bos>\n{BLOCK}\n<sep1>\n{BLOCK}\n<sep2>\n{BLOCK}\n<sep1>\n{BLOCK}\n<sep2>\n{BLOCK}\n<sep> <label>"
)


@pytest.fixture(scope="module")
def data():
    return SymbolSoupTask(**SMALL).build(seed=0)


def parse(split, i: int) -> list[str]:
    """The five letter blocks of row i (N0, B1, N1, B2, N2), read from the decoded text."""
    text = decode(split.inputs[i, : split.lengths[i]])
    match = LAYOUT.fullmatch(text)
    assert match is not None, f"row {i} does not follow the layout: {text!r}"
    return [block.replace(" ", "") for block in match.groups()]


def test_layout_and_length_is_2m_plus_13(data):
    for split in data.splits.values():
        for i in range(len(split)):
            blocks = parse(split, i)
            m = sum(len(b) for b in blocks)
            assert int(split.lengths[i]) == 2 * m + 13
            assert 400 <= int(split.lengths[i]) <= 600
            assert (split.inputs[i, split.lengths[i] :] == data.pad_id).all()


def test_noise_share_between_30_and_60_percent(data):
    split = data.splits["train"]
    for i in range(len(split)):
        blocks = parse(split, i)
        m = sum(len(b) for b in blocks)
        noise = len(blocks[0]) + len(blocks[2]) + len(blocks[4])
        assert max(3, int(0.3 * m)) <= noise <= max(3, int(0.6 * m))
        assert min(len(b) for b in blocks) >= 1


def test_only_the_final_position_is_scored_with_the_class_token(data):
    for split in data.splits.values():
        last = split.lengths - 1
        rows = torch.arange(len(split))
        mask = torch.ones_like(split.targets, dtype=torch.bool)
        mask[rows, last] = False
        assert (split.targets[mask] == IGNORE_INDEX).all()
        labels = split.meta["label"]
        scored = [data.vocab[t] for t in split.targets[rows, last].tolist()]
        assert scored == [f"<c{k}>" for k in labels.tolist()]
        # the input holds no class token: the class is predicted at the <label> placeholder
        assert (split.inputs[rows, last] == data.vocab.index("<label>")).all()
        class_ids = torch.tensor([data.vocab.index(f"<c{k}>") for k in range(20)])
        assert not torch.isin(split.inputs, class_ids).any()


@pytest.mark.parametrize("n", [60, 37])
def test_classes_are_balanced(n):
    split = SymbolSoupTask(n_train=n, n_valid=1, n_test=1).build(seed=1).splits["train"]
    counts = Counter(split.meta["label"].tolist())
    assert set(counts) <= set(range(20))
    full = [counts.get(k, 0) for k in range(20)]
    assert max(full) - min(full) <= 1 and sum(full) == n
    if n % 20 == 0:
        assert set(full) == {n // 20}


def test_style_families_are_the_public_ones():
    # style-family RNGs random.Random(123) / random.Random(456), one shuffle of a-p per style
    left = [s.primaries + s.secondaries for s in LEFT_STYLES]
    assert left == ["jdifchkl", "bjmkpnhg", "ngpfedio", "gpcknjao"]
    assert [s.primaries for s in RIGHT_STYLES] == ["fmpe", "lfpo", "kbje", "opfm", "lnag"]


def test_style_blocks_favour_primaries_and_alphabet_motifs():
    rng = random.Random(0)
    style = LEFT_STYLES[0]
    block = sample_style_block(style, 20_000, rng)
    counts = Counter(block)
    per_letter = {group: sum(counts[c] for c in letters) / 4 for group, letters in
                  (("prim", style.primaries), ("sec", style.secondaries))}
    others = [c for c in LETTERS if c not in style.primaries + style.secondaries]
    per_other = sum(counts[c] for c in others) / len(others)
    assert per_letter["prim"] > per_letter["sec"] > per_other
    # motifs are runs of the alphabet: consecutive triples like "cde" are far above the uniform 1/256
    steps = [ord(b) - ord(a) for a, b in zip(block, block[1:], strict=False)]
    runs = sum(1 for s, t in zip(steps, steps[1:], strict=False) if s == t == 1)
    assert runs / len(block) > 0.1


def test_example_letter_count_and_label_tokens():
    rng = random.Random(3)
    row = make_example(7, 10, rng)
    text = decode(row)
    assert len(row) == 33 and text.startswith("<bos>\n") and text.endswith("\n<sep> <label>")
    assert letter_budget(400, 600) == (194, 293)


def test_deterministic_by_seed():
    cfg = SymbolSoupTask(n_train=20, n_valid=20, n_test=20)
    a, b, c = cfg._build(5), cfg._build(5), cfg._build(6)
    for name in ("train", "valid", "test"):
        assert torch.equal(a.splits[name].inputs, b.splits[name].inputs)
        assert torch.equal(a.splits[name].targets, b.splits[name].targets)
        assert not torch.equal(a.splits[name].inputs[:, :50], c.splits[name].inputs[:, :50])
    assert cfg.build(5) is cfg.build(5)


def test_resizing_train_keeps_test():
    a = SymbolSoupTask(n_train=20, n_valid=20, n_test=20).build(seed=2)
    b = SymbolSoupTask(n_train=40, n_valid=20, n_test=20).build(seed=2)
    assert torch.equal(a.splits["test"].inputs, b.splits["test"].inputs)


def test_custom_length_range():
    split = SymbolSoupTask(n_train=40, n_valid=1, n_test=1, min_len=60, max_len=80).build(0).splits["train"]
    assert 60 <= int(split.lengths.min()) and int(split.lengths.max()) <= 80
    assert ((split.lengths - 13) % 2 == 0).all()


def test_registry_and_errors():
    cfg = get_task("symbolsoup", n_train=20)
    assert isinstance(cfg, SymbolSoupTask) and cfg.n_train == 20
    with pytest.raises(ValueError, match="unknown task"):
        get_task("symbol_soup")
    with pytest.raises(ValueError, match="unknown option"):
        get_task("symbolsoup", n_classes=10)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(n_train=0), "n_train"),
        (dict(n_test=-3), "n_test"),
        (dict(max_len=20), "max_len"),
        (dict(min_len=500, max_len=450), "min_len"),
        (dict(min_len=400, max_len=400), "min_len"),
    ],
)
def test_invalid_config(overrides, field):
    with pytest.raises(ValueError, match=field):
        SymbolSoupTask(**overrides)
