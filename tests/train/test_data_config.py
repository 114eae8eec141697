import pytest
import torch

from sessa.tasks import TaskSplit
from sessa.train.config import TrainConfig
from sessa.train.data import Batches, eval_batches


def toy_split(n=40, width=12):
    lengths = torch.randint(3, width + 1, (n,), generator=torch.Generator().manual_seed(0))
    inputs = torch.arange(n)[:, None].repeat(1, width)  # row id in every position
    targets = inputs.clone()
    for i, length in enumerate(lengths):
        targets[i, length:] = -100
    return TaskSplit(inputs, targets, lengths)


def test_batches_deterministic_and_resumable():
    split = toy_split()
    a = Batches(split, 4, seed=1)
    seq = [next(a)[0][:, 0].tolist() for _ in range(25)]  # crosses two epoch boundaries (10 batches/epoch)
    b = Batches(split, 4, seed=1)
    for _ in range(13):
        next(b)
    c = Batches(split, 4, seed=1)
    c.load_state_dict(b.state_dict())
    assert [next(c)[0][:, 0].tolist() for _ in range(12)] == seq[13:]
    epoch0 = sorted(sum(seq[:10], []))
    assert epoch0 == list(range(40))  # every row once per epoch
    assert seq[:10] != seq[10:20]  # reshuffled each epoch


def test_ranks_partition_the_global_batch():
    split = toy_split()
    single = Batches(split, 8, seed=3)
    ranks = [Batches(split, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(7):
        rows = next(single)[0][:, 0].tolist()
        assert rows == next(ranks[0])[0][:, 0].tolist() + next(ranks[1])[0][:, 0].tolist()


def test_batches_trimmed_to_longest_real_row():
    split = toy_split()
    x, y = next(Batches(split, 5, seed=0))
    assert x.shape[1] == int(split.lengths[x[:, 0]].max())


def test_eval_batches_cover_every_row_once_across_ranks():
    split = toy_split(n=23)
    rows = [int(i) for r in range(3) for batch in eval_batches(split, 4, r, 3) for i in batch]
    assert sorted(rows) == list(range(23))


def test_batches_errors():
    with pytest.raises(ValueError, match="batch_size"):
        Batches(toy_split(), 0, seed=0)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        Batches(toy_split(n=5), 4, seed=0, world_size=2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(model="gpt"), "model must be one of"),
        (dict(steps=0), "steps"),
        (dict(lr=0.0), "lr"),
        (dict(amp="int8"), "amp"),
        (dict(min_lr_ratio=2.0), "min_lr_ratio"),
        (dict(distributed="zero3"), "distributed"),
    ],
)
def test_train_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_train_config_from_dict_rejects_unknown():
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"stepz": 3})
