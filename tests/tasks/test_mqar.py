"""MQAR and Diffuse MQAR: every query answerable from the context, scoring, lags, overlap, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sessa.tasks import IGNORE_INDEX, get_task
from sessa.tasks.diffuse_mqar import DiffuseMQARTask
from sessa.tasks.mqar import MQARTask, query_slots


def rows_as_tuples(split) -> set[tuple[int, ...]]:
    return {tuple(row) for row in split.inputs.tolist()}


# ----------------------------------------------------------------------------------------------- MQAR


@pytest.fixture(scope="module")
def mqar():
    return MQARTask(vocab_size=64, seq_len=32, n_pairs=4, n_train=200, n_valid=50, n_test=50).build(seed=0)


def test_mqar_queries_are_answerable_from_the_context(mqar):
    cfg_v, cfg_n = 64, 4
    for split in mqar.splits.values():
        for x, y in zip(split.inputs.tolist(), split.targets.tolist(), strict=True):
            context = x[: 2 * cfg_n]
            keys, values = context[0::2], context[1::2]
            assert len(set(keys)) == cfg_n and all(1 <= k < cfg_v // 2 for k in keys)
            assert len(set(values)) == cfg_n and all(cfg_v // 2 <= v < cfg_v for v in values)
            scored = [t for t, target in enumerate(y) if target != IGNORE_INDEX]
            assert len(scored) == cfg_n
            assert sorted(x[t] for t in scored) == sorted(keys)  # each key queried exactly once
            for t in scored:
                assert t >= 2 * cfg_n and (t - 2 * cfg_n) % 2 == 0
                # independent scan: the query token's only earlier key occurrence is followed by the answer
                hits = [i for i in range(0, 2 * cfg_n, 2) if x[i] == x[t]]
                assert len(hits) == 1 and x[hits[0] + 1] == y[t]
            filler = [x[t] for t in range(2 * cfg_n, len(x)) if t not in scored]
            assert set(filler) == {0}


def test_mqar_random_filler():
    split = MQARTask(vocab_size=64, seq_len=32, n_pairs=4, random_filler=True, n_train=20,
                     n_valid=5, n_test=5).build(seed=0).splits["train"]
    query_region = split.inputs[:, 8:][split.targets[:, 8:] == IGNORE_INDEX]
    assert (query_region != 0).float().mean() > 0.9
    assert ((split.targets != IGNORE_INDEX).sum(dim=1) == 4).all()


def test_query_slots_follow_the_power_law():
    rng = np.random.default_rng(0)
    near = query_slots(rng, 4000, 28, 1, alpha=0.01)[:, 0]
    flat = query_slots(rng, 4000, 28, 1, alpha=1.0)[:, 0]
    # single draw: p(g) ∝ (g + 1)^(alpha - 1); slot 0 has 1 / H_28 ≈ 0.25 for alpha = 0.01
    p = np.arange(1, 29, dtype=float) ** (0.01 - 1)
    p /= p.sum()
    assert abs((near == 0).mean() - p[0]) < 0.03
    assert abs((near < 7).mean() - p[:7].sum()) < 0.03
    assert abs((flat < 7).mean() - 0.25) < 0.03
    slots = query_slots(rng, 100, 28, 5, alpha=0.01)
    assert all(len(set(row)) == 5 for row in slots.tolist())


def test_mqar_eval_rows_never_repeat_train_rows():
    # 144 distinct rows exist (6 key orders x 12 value orders x 2 slot orders): duplicates are certain
    data = MQARTask(vocab_size=8, seq_len=8, n_pairs=2, n_train=60, n_valid=20, n_test=20).build(seed=0)
    train, valid, test = (rows_as_tuples(data.splits[s]) for s in ("train", "valid", "test"))
    assert not (train & valid) and not (train & test) and not (valid & test)
    assert len(valid) == 20 and len(test) == 20


def test_mqar_too_few_distinct_rows_raises():
    with pytest.raises(ValueError, match="too few distinct rows"):
        MQARTask(vocab_size=4, seq_len=4, n_pairs=1, n_train=1, n_valid=5, n_test=1).build(seed=0)


def test_mqar_deterministic_by_seed():
    cfg = MQARTask(n_train=50, n_valid=10, n_test=10)
    a, b, c = cfg._build(1), cfg._build(1), cfg._build(2)
    for name in a.splits:
        assert torch.equal(a.splits[name].inputs, b.splits[name].inputs)
        assert torch.equal(a.splits[name].targets, b.splits[name].targets)
        assert not torch.equal(a.splits[name].inputs, c.splits[name].inputs)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(vocab_size=16, n_pairs=8), "vocab_size"),
        (dict(seq_len=30, n_pairs=8), "seq_len"),
        (dict(alpha=0.0), "alpha"),
        (dict(n_valid=0), "n_valid"),
        (dict(random_filler="yes"), "random_filler"),
    ],
)
def test_mqar_invalid_config(overrides, field):
    with pytest.raises(ValueError, match=field):
        MQARTask(**overrides)


def test_registry():
    assert isinstance(get_task("mqar", seq_len=128), MQARTask)
    assert isinstance(get_task("diffuse_mqar", key_len=2), DiffuseMQARTask)
    with pytest.raises(ValueError, match="unknown option"):
        get_task("mqar", num_kv_pairs=4)
    with pytest.raises(ValueError, match="unknown option"):
        get_task("diffuse_mqar", lag=3)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("multiquery_ar")


# --------------------------------------------------------------------------------------- Diffuse MQAR

DIFFUSE = dict(n_train=100, n_valid=20, n_test=100)


@pytest.fixture(scope="module")
def diffuse():
    cfg = DiffuseMQARTask(**DIFFUSE)
    return cfg, cfg.build(seed=0)


def occurrences(seq: list[int], key: list[int]) -> list[int]:
    """Start positions of ``key`` as a contiguous run in ``seq`` (any alignment)."""
    k = len(key)
    return [i for i in range(len(seq) - k + 1) if seq[i : i + k] == key]


def test_diffuse_queries_answerable_and_scored_at_last_key_token(diffuse):
    cfg, data = diffuse
    q = data.vocab.index("<q>")
    k = cfg.key_len
    for split in data.splits.values():
        rows = zip(split.inputs.tolist(), split.targets.tolist(), split.lengths.tolist(), strict=True)
        for x, y, n in rows:
            x, y = x[:n], y[:n]
            assert x[0] == data.vocab.index("<bos>") and x.count(q) == 1
            context = x[: x.index(q)]
            scored = [t for t, target in enumerate(y) if target != IGNORE_INDEX]
            assert len(scored) == cfg.n_pairs and all(t > x.index(q) for t in scored)
            for t in scored:
                key = x[t - k + 1 : t + 1]
                assert all(data.vocab[i].startswith("k") for i in key)
                hits = occurrences(x[: t - k + 1], key)  # everything before this query
                assert len(hits) == 1, "a query key must occur exactly once before its query"
                assert hits[0] < 1 + cfg.n_pairs * (k + 1)  # ... as a real pair of the memory block
                assert context[hits[0] + k] == y[t] == x[t + 1]  # answer = next input (teacher forcing)


def test_diffuse_distractors_share_a_prefix_but_not_the_key_or_value(diffuse):
    cfg, data = diffuse
    k, p = cfg.key_len, cfg.key_len - 1
    split = data.splits["train"]
    for x, lag in zip(split.inputs.tolist(), split.meta["lag"].tolist(), strict=True):
        memory = x[1 : 1 + cfg.n_pairs * (k + 1)]
        noise = x[1 + len(memory) : 1 + len(memory) + lag]
        assert x[1 + len(memory) + lag] == data.vocab.index("<q>")
        real = {tuple(memory[i : i + k]): memory[i + k] for i in range(0, len(memory), k + 1)}
        for i in range(0, len(noise), k + 1):
            key, value = tuple(noise[i : i + k]), noise[i + k]
            assert key not in real
            twins = [rk for rk in real if rk[:p] == key[:p]]
            assert twins, "each distractor shares its prefix with a real key"
            assert any(real[rk] != value for rk in twins)


def test_diffuse_lags(diffuse):
    cfg, data = diffuse
    pair = cfg.key_len + 1
    for name in ("train", "valid"):
        lag = data.splits[name].meta["lag"]
        assert (lag >= cfg.min_noise_pairs * pair).all() and (lag <= cfg.max_noise_pairs * pair).all()
    test_lag = data.splits["test"].meta["lag"]
    assert (test_lag <= 4 * cfg.max_noise_pairs * pair).all()
    assert (test_lag > cfg.max_noise_pairs * pair).float().mean() > 0.5  # mostly beyond the training lags
    lengths = data.splits["test"].lengths
    assert torch.equal(lengths, 2 + 2 * cfg.n_pairs * pair + test_lag)


def test_diffuse_shared_prefix_option():
    cfg = DiffuseMQARTask(key_len=4, shared_prefix=2, n_train=20, n_valid=2, n_test=2)
    data = cfg.build(seed=3)
    x = data.splits["train"].inputs[0].tolist()
    memory = x[1 : 1 + cfg.n_pairs * 5]
    real_prefixes = {tuple(memory[i : i + 2]) for i in range(0, len(memory), 5)}
    lag = int(data.splits["train"].meta["lag"][0])
    noise = x[1 + len(memory) : 1 + len(memory) + lag]
    assert all(tuple(noise[i : i + 2]) in real_prefixes for i in range(0, len(noise), 5))


def test_diffuse_deterministic_by_seed():
    cfg = DiffuseMQARTask(n_train=20, n_valid=5, n_test=5)
    a, b, c = cfg._build(0), cfg._build(0), cfg._build(1)
    for name in a.splits:
        assert torch.equal(a.splits[name].inputs, b.splits[name].inputs)
        assert torch.equal(a.splits[name].meta["lag"], b.splits[name].meta["lag"])
        assert not torch.equal(a.splits[name].inputs[:, :30], c.splits[name].inputs[:, :30])


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(key_len=1), "key_len"),
        (dict(shared_prefix=3), "shared_prefix"),
        (dict(shared_prefix=0), "shared_prefix"),
        (dict(shared_prefix=1.5), "shared_prefix"),
        (dict(key_vocab=2, key_len=2, n_pairs=8), "key_vocab"),
        (dict(value_vocab=1), "value_vocab"),
        (dict(min_noise_pairs=5, max_noise_pairs=4), "min_noise_pairs"),
        (dict(test_lag_factor=0), "test_lag_factor"),
        (dict(n_pairs=2.5), "n_pairs"),
    ],
)
def test_diffuse_invalid_config(overrides, field):
    with pytest.raises(ValueError, match=field):
        DiffuseMQARTask(**overrides)
