"""SCAN: the grammar's exact counts, hand-derived interpretations, splits and decoder-only formatting."""

from __future__ import annotations

import pytest
import torch

from sessa.tasks import IGNORE_INDEX, get_task
from sessa.tasks.scan import ACTIONS, VOCAB, ScanTask, interpret, length_split, scan_pairs

L, R = "I_TURN_LEFT", "I_TURN_RIGHT"


@pytest.fixture(scope="module")
def pairs():
    return scan_pairs()


def test_grammar_has_exactly_20910_distinct_sorted_commands(pairs):
    commands = [c for c, _ in pairs]
    assert len(pairs) == 20_910
    assert len(set(commands)) == 20_910
    assert commands == sorted(commands)


def test_length_split_counts_bounds_and_no_overlap():
    train, test = length_split()
    assert (len(train), len(test)) == (16_990, 3_920)
    train_lengths = [len(a.split()) for _, a in train]
    test_lengths = [len(a.split()) for _, a in test]
    assert max(train_lengths) == 22 and min(train_lengths) == 1
    assert min(test_lengths) == 24 and max(test_lengths) == 48
    assert not {c for c, _ in train} & {c for c, _ in test}


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("jump", ["I_JUMP"]),
        ("jump left", [L, "I_JUMP"]),
        ("turn left twice", [L, L]),
        ("turn around left", [L] * 4),
        ("turn opposite left", [L, L]),
        ("turn opposite right thrice", [R, R] * 3),
        ("jump around left twice", [L, "I_JUMP"] * 4 * 2),
        ("walk after run opposite right", [R, R, "I_RUN", "I_WALK"]),
        ("jump opposite left and walk thrice", [L, L, "I_JUMP", "I_WALK", "I_WALK", "I_WALK"]),
        ("jump opposite left after walk around left", [L, "I_WALK"] * 4 + [L, L, "I_JUMP"]),
        ("look right twice after turn around right", [R] * 4 + [R, "I_LOOK"] * 2),
        ("run around right thrice and turn left", [R, "I_RUN"] * 12 + [L]),
    ],
)
def test_interpretations_derived_by_hand(command, expected):
    assert interpret(command).split() == expected


def test_longest_outputs_are_48_actions(pairs):
    longest = [c for c, a in pairs if len(a.split()) == 48]
    # only "u around dir thrice" has 24 actions (4 x 2 x 3); both sides of and/after: (4 u x 2 dirs)^2 x 2
    assert len(longest) == (4 * 2) ** 2 * 2
    assert "turn around left thrice and turn around right thrice" not in longest  # 12 + 12 actions
    assert "jump around left thrice after walk around right thrice" in longest


@pytest.mark.parametrize(
    "bad",
    ["", "fly", "turn", "walk twice twice", "walk and run and look", "jump and", "walk opposite", "left"],
)
def test_commands_outside_the_grammar_raise(bad):
    with pytest.raises(ValueError, match="command"):
        interpret(bad)


def test_decoder_only_rows_score_only_actions_and_eos():
    data = ScanTask().build(seed=0)
    assert data.metric == "sequence_accuracy"
    ids = {tok: i for i, tok in enumerate(data.vocab)}
    allowed = torch.tensor([ids[a] for a in ACTIONS] + [ids["<eos>"]])
    for split in data.splits.values():
        scored = split.targets != IGNORE_INDEX
        assert torch.isin(split.targets[scored], allowed).all()
        assert (scored.sum(1) == split.meta["length"] + 1).all()  # every action plus <eos>
        # the first scored position is the <sep>; targets there and after are the next input token
        first = scored.float().argmax(1)
        assert (split.inputs[torch.arange(len(split)), first] == ids["<sep>"]).all()
        nxt = split.inputs[:, 1:]
        both = scored[:, :-1] & (torch.arange(nxt.shape[1]) < (split.lengths[:, None] - 1))
        assert torch.equal(split.targets[:, :-1][both], nxt[both])
        last = split.targets[torch.arange(len(split)), split.lengths - 1]
        assert (last == ids["<eos>"]).all()
        assert (split.inputs[:, 0] == ids["<bos>"]).all()


def test_row_of_a_known_command_round_trips():
    data = ScanTask().build(seed=0)
    split = data.splits["train"]
    decode = lambda row: [data.vocab[i] for i in row]
    rows = [
        i
        for i in range(len(split))
        if decode(split.inputs[i, :4].tolist()) == ["<bos>", "walk", "twice", "<sep>"]
    ]
    assert len(rows) == 1
    i = rows[0]
    n = split.lengths[i].item()
    assert decode(split.inputs[i, :n].tolist()) == ["<bos>", "walk", "twice", "<sep>", "I_WALK", "I_WALK"]
    targets = split.targets[i, :n].tolist()
    assert targets[:3] == [IGNORE_INDEX] * 3
    assert decode(targets[3:]) == ["I_WALK", "I_WALK", "<eos>"]
    assert split.meta["length"][i].item() == 2


def test_simple_split_is_seeded_and_disjoint():
    a = ScanTask(split="simple").build(seed=0)
    b = ScanTask(split="simple")._build(0)
    c = ScanTask(split="simple")._build(1)
    assert (len(a.splits["train"]), len(a.splits["test"])) == (16_728, 4_182)
    assert torch.equal(a.splits["train"].inputs, b.splits["train"].inputs)
    assert not torch.equal(a.splits["train"].inputs[:50], c.splits["train"].inputs[:50])
    train_rows = {tuple(r) for r in a.splits["train"].inputs[:, :12].tolist()}
    test_rows = {tuple(r) for r in a.splits["test"].inputs[:, :12].tolist()}
    assert not train_rows & test_rows  # commands are at most 9 words, so 12 tokens identify a command


def test_registry_vocab_and_validation():
    assert isinstance(get_task("scan"), ScanTask)
    assert len(VOCAB) == len(set(VOCAB)) == 23
    with pytest.raises(ValueError, match="split"):
        ScanTask(split="addprim")
    with pytest.raises(ValueError, match="train_fraction"):
        ScanTask(split="simple", train_fraction=1.0)
