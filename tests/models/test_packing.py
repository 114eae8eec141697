"""Packed rows (seq_idx): each sequence of a packed row computes exactly what it computes alone."""

from __future__ import annotations

import pytest
import torch

from sessa.ops.attention import causal_attention, causal_attention_ref
from sessa.ops.feedback import feedback_solve, feedback_solve_ref
from sessa.ops.packing import positions, same_sequence, sequence_starts, stream_offsets
from sessa.tokens import IGNORE_INDEX
from sessa.train.data import pack_rows
from tests.models.common import tiny_model

# two packed rows of width 12: lengths (5, 1, 4, + 2 padding) and (9, 3)
SEQ_IDX = torch.tensor([[0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 3, 3], [4, 4, 4, 4, 4, 4, 4, 4, 4, 7, 7, 7]])
SPANS = [(0, 0, 5), (0, 5, 6), (0, 6, 10), (0, 10, 12), (1, 0, 9), (1, 9, 12)]


def test_packing_helpers():
    starts = sequence_starts(SEQ_IDX)
    assert starts.nonzero().tolist() == [[0, 0], [0, 5], [0, 6], [0, 10], [1, 0], [1, 9]]
    assert positions(SEQ_IDX)[0].tolist() == [0, 1, 2, 3, 4, 0, 0, 1, 2, 3, 0, 1]
    same = same_sequence(SEQ_IDX)
    assert same[0, 6, 9] and not same[0, 5, 6] and same[1, 0, 8] and not same[1, 8, 9]
    # a value seen again after a change starts a new sequence (runs, not values)
    assert sequence_starts(torch.tensor([[0, 0, 1, 0]])).tolist() == [[True, False, True, True]]


def test_stream_offsets_cut_at_every_start_and_are_kept_for_the_same_tensor():
    seq_idx = SEQ_IDX.clone()
    offsets, longest = stream_offsets(seq_idx)
    assert offsets.dtype == torch.int32 and offsets.tolist() == [0, 5, 6, 10, 12, 21, 24] and longest == 9
    again = stream_offsets(seq_idx)
    assert again[0] is offsets and again[1] == longest  # every layer asks again: kept
    seq_idx[1, 9:] = 4  # changed in place: made again
    offsets, longest = stream_offsets(seq_idx)
    assert offsets.tolist() == [0, 5, 6, 10, 12, 24] and longest == 12
    assert stream_offsets(SEQ_IDX.clone())[0].tolist() == [0, 5, 6, 10, 12, 21, 24]  # another tensor
    with torch.inference_mode():  # inference tensors have no version: never kept, still right
        frozen = SEQ_IDX.clone()
        first, second = stream_offsets(frozen)[0], stream_offsets(frozen)[0]
        assert first is not second and first.tolist() == second.tolist() == [0, 5, 6, 10, 12, 21, 24]


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_feedback_solve_packed_equals_each_sequence_alone(backend):
    g = torch.Generator().manual_seed(0)
    q, k, f = (torch.randn(2, 12, 8, generator=g, dtype=torch.float64) for _ in range(3))
    gamma = 0.9 * torch.rand(2, 12, 1, generator=g, dtype=torch.float64)
    s = feedback_solve(q, k, gamma, f, backend=backend, seq_idx=SEQ_IDX, chunk_size=4)
    for b, a, e in SPANS:
        alone = feedback_solve_ref(*(x[b : b + 1, a:e] for x in (q, k, gamma, f)))
        assert torch.allclose(s[b, a:e], alone[0], atol=1e-12, rtol=0)


def test_attention_packed_sdpa_equals_reference_and_each_sequence_alone():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 12, 4, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 12, 2, 8, generator=g, dtype=torch.float64) for _ in range(2))  # GQA
    out = causal_attention(q, k, v, seq_idx=SEQ_IDX)
    assert torch.allclose(out, causal_attention_ref(q, k, v, seq_idx=SEQ_IDX), atol=1e-12, rtol=0)
    for b, a, e in SPANS:
        alone = causal_attention_ref(q[b : b + 1, a:e], k[b : b + 1, a:e], v[b : b + 1, a:e])
        assert torch.allclose(out[b, a:e], alone[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("mixer", ["sessa", "attention", "mamba2", "mamba"])
def test_model_packed_rows_equal_each_sequence_alone_with_gradients(mixer):
    """Logits of every packed sequence equal its own forward (RoPE at its own positions, no cross-reads), and
    the loss's gradients equal the sum over the sequences alone."""
    model = tiny_model(mixer, dtype=torch.float64).train()
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(2))
    out = model(ids, seq_idx=SEQ_IDX)
    for b, a, e in SPANS:
        alone = model(ids[b : b + 1, a:e]).logits
        assert torch.allclose(out.logits[b, a:e], alone[0], atol=1e-12, rtol=0)
    # loss: the first label of each packed sequence is not scored (the sequence before does not predict it)
    model.zero_grad()
    model(ids, seq_idx=SEQ_IDX, labels=ids).loss.backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    n_scored = sum(e - a - 1 for _, a, e in SPANS)
    for b, a, e in SPANS:
        if e - a > 1:
            (model(ids[b : b + 1, a:e], labels=ids[b : b + 1, a:e]).loss * (e - a - 1) / n_scored).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(packed[name], p.grad, atol=1e-10, rtol=1e-8), name


def test_packed_rows_are_refused_where_they_do_not_apply(monkeypatch):
    from sessa.baselines.mamba import MambaMixer

    monkeypatch.setattr(MambaMixer, "supports_packing", False)  # a mixer without packed rows
    with pytest.raises(ValueError, match="MambaMixer does not take packed rows"):
        tiny_model("mamba")(torch.zeros(1, 4, dtype=torch.long), seq_idx=torch.zeros(1, 4, dtype=torch.long))
    model = tiny_model("sessa")
    with pytest.raises(ValueError, match="without a cache"):
        model(torch.zeros(1, 4, dtype=torch.long), seq_idx=torch.zeros(1, 4, dtype=torch.long),
              use_cache=True)
    with pytest.raises(ValueError, match=r"seq_idx must have shape \(B, T\) = \(1, 4\)"):
        model(torch.zeros(1, 4, dtype=torch.long), seq_idx=torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        model(torch.zeros(1, 4, dtype=torch.long), seq_idx=torch.zeros(1, 4))


def test_pack_rows_first_fit_longest_first():
    lengths = torch.tensor([3, 6, 2, 5, 1])
    W = 6
    inputs = torch.stack([torch.cat([torch.full((n,), i + 1), torch.zeros(W - n, dtype=torch.long)])
                          for i, n in enumerate(lengths.tolist())])
    targets = inputs.masked_fill(inputs == 0, IGNORE_INDEX)
    x, y, seq_idx = pack_rows(inputs, targets, lengths, pad_id=0)
    # longest first: 6 | 5 + 1 | 3 + 2 (+ 1 padding)
    assert x.tolist() == [[2] * 6, [4] * 5 + [5], [1, 1, 1, 3, 3, 0]]
    assert y[2, 5] == IGNORE_INDEX and seq_idx.tolist()[2] == [0, 0, 0, 1, 1, 2]
    assert sorted((y != IGNORE_INDEX).sum(1).tolist()) == [5, 6, 6]
    with pytest.raises(ValueError, match=r"lengths in \[1, 6\]"):
        pack_rows(inputs, targets, torch.tensor([3, 7, 2, 5, 1]), pad_id=0)
