"""Selective copying, induction heads and passkey retrieval: format, scoring, splits, determinism, errors."""

from __future__ import annotations

import pytest
import torch

from sessa.tasks import IGNORE_INDEX, get_task
from sessa.tasks.induction import InductionTask
from sessa.tasks.passkey import PasskeyTask, answer_text, decode, fixed_bytes, passkey_correct, passkey_prompt
from sessa.tasks.selective_copy import SelectiveCopyTask


def assert_deterministic(cfg, seed: int = 0) -> None:
    a, b, c = cfg._build(seed), cfg._build(seed), cfg._build(seed + 1)
    assert a.splits.keys() == b.splits.keys() == c.splits.keys()
    for name in a.splits:
        assert torch.equal(a.splits[name].inputs, b.splits[name].inputs)
        assert torch.equal(a.splits[name].targets, b.splits[name].targets)
        assert not torch.equal(a.splits[name].inputs, c.splits[name].inputs)


# ------------------------------------------------------------------------------------- selective copy


def test_selective_copy_targets_are_the_data_tokens_in_order():
    cfg = SelectiveCopyTask(region_len=40, n_data=6, n_train=50, n_valid=10, n_test=10)
    data = cfg.build(seed=0)
    noise, mark = data.vocab.index("<noise>"), data.vocab.index("<mark>")
    for split in data.splits.values():
        assert split.inputs.shape == (len(split), 46) and (split.lengths == 46).all()
        for x, y in zip(split.inputs.tolist(), split.targets.tolist(), strict=True):
            region = x[:40]
            data_tokens = [t for t in region if t != noise]
            assert len(data_tokens) == 6 and all(data.vocab[t].startswith("d") for t in data_tokens)
            assert x[40:] == [mark] * 6
            assert y[:40] == [IGNORE_INDEX] * 40 and y[40:] == data_tokens


def test_selective_copy_positions_are_spread():
    cfg = SelectiveCopyTask(region_len=64, n_data=4, n_train=400, n_valid=1, n_test=1)
    split = cfg.build(0).splits["train"]
    first = (split.inputs[:, :64] != 1).float().argmax(dim=1)  # first non-noise position per row
    assert first.min() == 0 and first.max() > 20  # scattered, not a fixed prefix as in plain copying


def test_selective_copy_no_overlap_between_splits():
    # 6 position sets x 4 token pairs = 24 distinct rows: without the check, overlaps are certain
    data = SelectiveCopyTask(region_len=4, n_data=2, data_vocab=2, n_train=12, n_valid=6, n_test=6).build(0)
    rows = {name: {tuple(r) for r in split.inputs.tolist()} for name, split in data.splits.items()}
    assert len(rows["train"]) == 12 and len(rows["valid"]) == 6 and len(rows["test"]) == 6
    assert not (rows["train"] & rows["valid"]) and not (rows["train"] & rows["test"])
    assert not (rows["valid"] & rows["test"])


def test_selective_copy_metric_and_determinism():
    assert SelectiveCopyTask(n_train=4, n_valid=2, n_test=2).build(0).metric == "accuracy"
    cfg = SelectiveCopyTask(metric="sequence_accuracy", n_train=4, n_valid=2, n_test=2)
    assert cfg.build(0).metric == "sequence_accuracy"
    assert_deterministic(SelectiveCopyTask(region_len=32, n_train=20, n_valid=5, n_test=5))


@pytest.mark.parametrize(
    "overrides, field",
    [(dict(n_data=0), "n_data"), (dict(region_len=8, n_data=9), "n_data"), (dict(metric="f1"), "metric"),
     (dict(data_vocab=True), "data_vocab")],
)
def test_selective_copy_invalid_config(overrides, field):
    with pytest.raises(ValueError, match=field):
        SelectiveCopyTask(**overrides)


# ------------------------------------------------------------------------------------------ induction


@pytest.fixture(scope="module")
def induction():
    cfg = InductionTask(seq_len=64, test_lengths=(32, 128, 300), n_train=100, n_valid=20, n_test=20)
    return cfg, cfg.build(seed=0)


def test_induction_target_is_the_token_after_the_first_trigger(induction):
    cfg, data = induction
    trig = data.vocab.index("<trig>")
    for split in data.splits.values():
        for x, y, length in zip(split.inputs.tolist(), split.targets.tolist(), split.meta["length"].tolist(),
                                strict=True):
            assert len(x) == length and x[-1] == trig
            where = [i for i, t in enumerate(x) if t == trig]
            assert len(where) == 2, "the trigger occurs once early and once at the end"
            p = where[0]
            assert p < max(1, int(cfg.trigger_frac * (length - 2)))  # early
            assert y[-1] == x[p + 1] and data.vocab[y[-1]].startswith("t")
            assert y[:-1] == [IGNORE_INDEX] * (length - 1)


def test_induction_splits_and_lengths(induction):
    _, data = induction
    assert sorted(data.splits) == ["test_128", "test_300", "test_32", "train", "valid"]
    for name, length in [("train", 64), ("valid", 64), ("test_32", 32), ("test_128", 128), ("test_300", 300)]:
        split = data.splits[name]
        assert split.inputs.shape[1] == length and (split.meta["length"] == length).all()
        assert (split.meta["trigger_pos"] < length // 2).all()


def test_induction_targets_cover_the_vocabulary():
    split = InductionTask(n_train=2000, n_valid=1, n_test=1, test_lengths=(16,)).build(0).splits["train"]
    counts = torch.bincount(split.targets[:, -1] - 2, minlength=16)
    assert (counts > 80).all()  # ~125 each: the target is uniform, not a fixed token


def test_induction_determinism_and_list_lengths():
    assert_deterministic(InductionTask(seq_len=32, test_lengths=[16, 64], n_train=10, n_valid=5, n_test=5))
    assert get_task("induction", test_lengths=[16, 64]).test_lengths == (16, 64)


@pytest.mark.parametrize(
    "overrides, field",
    [(dict(seq_len=2), "seq_len"), (dict(test_lengths=()), "test_lengths"),
     (dict(test_lengths=(64, 2)), "test_lengths"), (dict(test_lengths=(64, 64)), "test_lengths"),
     (dict(trigger_frac=0.0), "trigger_frac"), (dict(vocab_size=0), "vocab_size")],
)
def test_induction_invalid_config(overrides, field):
    with pytest.raises(ValueError, match=field):
        InductionTask(**overrides)


# -------------------------------------------------------------------------------------------- passkey


@pytest.fixture(scope="module")
def passkey():
    cfg = PasskeyTask(train_length=300, test_lengths=(300, 700), n_train=40, n_valid=10, n_test=30)
    return cfg.build(seed=0)


def test_passkey_rows_hold_the_key_at_the_recorded_depth(passkey):
    for name, split in passkey.splits.items():
        length = 700 if name == "test_700" else 300
        assert (split.lengths == length).all() and (split.meta["length"] == length).all()
        for i in range(len(split)):
            text = decode(split.inputs[i])
            key = int(split.meta["key"][i])
            assert len(text) == length and 1 <= key <= 50_000
            assert text.count(f"The pass key is {key}. Remember it. {key} is the pass key.") == 1
            assert text.endswith(f"What is the pass key? The pass key is {key}.")
            lines = text.split("\n")
            assert len(lines) == 5 and lines[0].startswith("A pass key is hidden")
            prefix, suffix = len(lines[1]), len(lines[3])
            assert int(split.meta["depth"][i]) == round(100 * prefix / (prefix + suffix))
            assert int(split.meta["prompt_len"][i]) == len(text) - len(f" {key}.")


def test_passkey_scores_only_the_answer(passkey):
    split = passkey.splits["test_700"]
    for i in range(len(split)):
        scored = (split.targets[i] != IGNORE_INDEX).nonzero().flatten()
        start = int(split.meta["prompt_len"][i])
        key = int(split.meta["key"][i])
        assert scored.tolist() == list(range(start - 1, 699))  # predicting " K." from the prompt's last byte
        assert bytes(split.targets[i, scored].tolist()).decode() == f" {key}."
        assert torch.equal(split.targets[i, scored], split.inputs[i, scored + 1])


def test_passkey_depths_cover_the_range(passkey):
    depth = passkey.splits["train"].meta["depth"]
    assert depth.min() < 25 and depth.max() > 75


def test_passkey_prompt_helpers():
    prompt = passkey_prompt(4211, 250, 18)
    assert len(prompt + answer_text(4211)) == 250
    assert prompt.split("\n")[1] == "The river keeps mo"
    assert fixed_bytes(50_000) - fixed_bytes(5) == 3 * 4  # the key appears 3 times
    with pytest.raises(ValueError, match="length"):
        passkey_prompt(4211, 100, 0)
    with pytest.raises(ValueError, match="prefix_bytes"):
        passkey_prompt(4211, 250, 53)


@pytest.mark.parametrize(
    "text, key, ok",
    [(" 4211.", 4211, True), ("4211", 4211, True), (" 42110", 4211, False), (" 421", 4211, False),
     (" is 4211 or 7", 4211, True), (" no idea", 4211, False), ("", 7, False)],
)
def test_passkey_correct(text, key, ok):
    assert passkey_correct(text, key) is ok


def test_passkey_determinism_and_byte_vocab():
    cfg = PasskeyTask(train_length=256, test_lengths=(256,), n_train=5, n_valid=3, n_test=3)
    assert_deterministic(cfg)
    data = cfg.build(0)
    assert data.vocab_size == 257 and data.pad_id == 256 and data.metric == "sequence_accuracy"


@pytest.mark.parametrize(
    "overrides, field",
    [(dict(train_length=100), "train_length"), (dict(test_lengths=(512, 50)), "test_lengths"),
     (dict(test_lengths=()), "test_lengths"), (dict(max_key=0), "max_key"), (dict(n_test=0), "n_test")],
)
def test_passkey_invalid_config(overrides, field):
    with pytest.raises(ValueError, match=field):
        PasskeyTask(**overrides)


def test_registry():
    tasks = [("selective_copy", SelectiveCopyTask), ("induction", InductionTask), ("passkey", PasskeyTask)]
    for name, cls in tasks:
        assert isinstance(get_task(name), cls)
        with pytest.raises(ValueError, match="unknown option"):
            get_task(name, seq_length=3)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("pass_key")
