"""ListOps: known expressions (MED on even counts, SM), lengths, labels, sampler, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sessa.tasks import IGNORE_INDEX, get_task
from sessa.tasks.listops import VOCAB, ListOpsTask, evaluate, sample_expressions


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("7", 7),
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[MIN 3 [MAX 1 8 ] 5 ]", 3),
        ("[SM 5 6 7 ]", 8),  # 18 mod 10
        ("[SM 9 9 ]", 8),
        ("[SM 0 0 0 ]", 0),
        ("[MED 7 1 5 ]", 5),
        ("[MED 1 2 ]", 1),  # even count: (1 + 2) // 2, LRA's int(np.median) = int(1.5)
        ("[MED 2 4 ]", 3),
        ("[MED 3 9 4 1 ]", 3),  # sorted 1 3 4 9 -> int(3.5)
        ("[MED 9 9 8 8 ]", 8),  # int(8.5)
        ("[MED [SM 9 9 ] 1 [MAX 0 2 ] 6 ]", 4),  # [8, 1, 2, 6] -> sorted 1 2 6 8 -> int(4.0)
        ("[MAX [MED 0 9 ] [MIN 5 [SM 3 4 ] ] ]", 5),  # MED 0 9 = 4, MIN 5 7 = 5
    ],
)
def test_known_expressions(expr, value):
    assert evaluate(expr) == value
    assert evaluate(expr.split()) == value


def test_median_matches_lra_numpy_convention_on_random_lists():
    rng = np.random.default_rng(0)
    for _ in range(300):
        values = rng.integers(0, 10, size=rng.integers(2, 11)).tolist()
        expr = "[MED " + " ".join(map(str, values)) + " ]"
        assert evaluate(expr) == int(np.median(values)), values


@pytest.mark.parametrize("bad", ["[MAX 1 2", "]", "[MIN ]", "[FOO 1 ]", "1 2", "", "[SM 1 ] 2"])
def test_malformed_expressions_raise(bad):
    with pytest.raises(ValueError, match="expr_tokens"):
        evaluate(bad)


@pytest.fixture(scope="module")
def small():
    return ListOpsTask(n_train=60, n_valid=20, n_test=20).build(seed=0)


def test_rows_lengths_and_targets(small):
    ids = {tok: i for i, tok in enumerate(VOCAB)}
    seen = set()
    for split in small.splits.values():
        length = split.meta["length"]
        assert ((length > 500) & (length < 2000)).all()
        assert torch.equal(split.lengths, length + 1)
        rows = torch.arange(len(split))
        assert (split.inputs[rows, split.lengths - 1] == ids["<cls>"]).all()
        for i in range(len(split)):
            n = split.lengths[i].item()
            tokens = [VOCAB[t] for t in split.inputs[i, : n - 1].tolist()]
            assert "<cls>" not in tokens and "<pad>" not in tokens
            label = evaluate(tokens)  # independent re-evaluation of the stored expression
            assert split.meta["label"][i].item() == label
            assert split.targets[i, n - 1].item() == ids[str(label)]
            assert (split.targets[i, : n - 1] == IGNORE_INDEX).all() and (
                split.targets[i, n:] == IGNORE_INDEX
            ).all()
            assert (split.inputs[i, n:] == small.pad_id).all()
            assert tokens.count("]") == sum(t.startswith("[") for t in tokens)
            seen.add(tuple(tokens))
    assert len(seen) == 100  # distinct across splits


def test_custom_length_bounds_and_labels_cover_all_classes():
    data = ListOpsTask(n_train=400, n_valid=0, n_test=0, min_length=20, max_length=60).build(seed=3)
    split = data.splits["train"]
    assert set(data.splits) == {"train"}
    assert ((split.meta["length"] > 20) & (split.meta["length"] < 60)).all()
    counts = torch.bincount(split.meta["label"], minlength=10)
    assert (counts > 0).all() and counts.tolist() == data.info["label_counts"]


def test_deterministic_per_seed():
    cfg = ListOpsTask(n_train=20, n_valid=5, n_test=5)
    a, b, c = cfg._build(0), cfg._build(0), cfg._build(1)
    for name in a.splits:
        assert torch.equal(a.splits[name].inputs, b.splits[name].inputs)
    assert not torch.equal(a.splits["train"].inputs[:, :500], c.splits["train"].inputs[:, :500])


def _reference_tree_length(rng: np.random.Generator, depth: int, cfg: ListOpsTask) -> int:
    """LRA's depth-first recursion, written plainly, returning only the length."""
    if depth < cfg.max_depth and rng.random() >= cfg.leaf_prob:
        return 2 + sum(
            _reference_tree_length(rng, depth + 1, cfg) for _ in range(rng.integers(2, cfg.max_args + 1))
        )
    return 1


def test_breadth_first_sampler_matches_the_depth_first_recursion_in_distribution():
    cfg = ListOpsTask(n_train=1, min_length=4, max_length=40, max_depth=4, max_args=4)
    rng = np.random.default_rng(0)
    reference = []
    while len(reference) < 2000:
        n = _reference_tree_length(rng, 1, cfg)
        if cfg.min_length < n < cfg.max_length:
            reference.append(n)
    expressions, depths = sample_expressions(cfg, 2000, np.random.default_rng(1))
    ours = np.array([len(e) for e in expressions])
    reference = np.array(reference)
    assert all(cfg.min_length < n < cfg.max_length for n in ours)
    assert max(depths) <= cfg.max_depth
    # distinct trees are kept, so compare with a tolerance: means within 4 standard errors
    se = np.sqrt(ours.var() / len(ours) + reference.var() / len(reference))
    assert abs(ours.mean() - reference.mean()) < 4 * se


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"min_length": 10, "max_length": 11}, "min_length"),
        ({"leaf_prob": 1.0}, "leaf_prob"),
        ({"max_args": 1}, "max_args"),
        ({"max_depth": 2, "max_args": 3, "min_length": 10, "max_length": 20}, "min_length"),
        ({"n_train": 0}, "n_train"),
    ],
)
def test_bad_config_raises(overrides, field):
    with pytest.raises(ValueError, match=field):
        get_task("listops", **overrides)
