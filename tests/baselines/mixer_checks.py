"""Mixer-contract checks shared by the baseline tests (run in float64, so "equal" means ~1e-12 relative)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import rel_err

EXACT = 1e-10  # relative RMS error allowed between two float64 computations of the same quantity


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert expected.abs().max() > 1e-6, f"{what}: reference is ~0, the comparison would be vacuous"
    err = rel_err(actual, expected)
    assert err < EXACT, f"{what}: relative error {err:.3e}"


def check_decode_matches_forward(mixer: torch.nn.Module, x: torch.Tensor, split: int) -> None:
    """Token-by-token steps, and prefix + one token + rest as multi-token steps, equal forward."""
    B, T, _ = x.shape
    with torch.no_grad():
        y = mixer(x)
        state = mixer.init_state(B, T + 2)
        one_by_one = torch.cat([mixer.step(x[:, t : t + 1], state) for t in range(T)], dim=1)
        assert state["t"] == T
        assert_same(one_by_one, y, "token-by-token step")
        state = mixer.init_state(B, T)
        parts = [x[:, :split], x[:, split : split + 1], x[:, split + 1 :]]
        chunked = torch.cat([mixer.step(part, state) for part in parts], dim=1)
        assert_same(chunked, y, "prefix + multi-token step")


def check_left_padding(mixer: torch.nn.Module, d_model: int, lengths: tuple[int, ...] = (11, 6, 1)) -> None:
    """Real tokens of left-padded rows (with attention_mask) give the outputs of the unpadded rows, in
    forward and in step mode (padded prefill, then decoding with and without a mask)."""
    n_decode, width = 3, max(lengths) + 2
    rows = [randn(1, n + n_decode, d_model, seed=10 + i) for i, n in enumerate(lengths)]
    garbage = randn(len(lengths), width, d_model, seed=99) * 5
    x = torch.stack(
        [
            torch.cat([garbage[i, : width - n], r[0, :n]])
            for i, (n, r) in enumerate(zip(lengths, rows, strict=True))
        ]
    )
    mask = torch.stack([torch.arange(width) >= width - n for n in lengths]).long()
    with torch.no_grad():
        expected = [mixer(r) for r in rows]
        y = mixer(x, attention_mask=mask)
        assert torch.isfinite(y).all(), "padded positions must stay finite"
        state = mixer.init_state(len(lengths), width + n_decode)
        y_prefill = mixer.step(x, state, attention_mask=mask)
        decoded = []
        for t in range(n_decode):
            new = torch.cat([r[:, n + t : n + t + 1] for n, r in zip(lengths, rows, strict=True)])
            step_mask = torch.cat([mask, torch.ones(len(lengths), t + 1, dtype=mask.dtype)], dim=1)
            decoded.append(mixer.step(new, state, attention_mask=step_mask if t % 2 else None))
        decoded = torch.cat(decoded, dim=1)
    for i, n in enumerate(lengths):
        assert_same(y[i, width - n :], expected[i][0, :n], f"forward, padded row {i}")
        assert_same(y_prefill[i, width - n :], expected[i][0, :n], f"step prefill, padded row {i}")
        assert_same(decoded[i], expected[i][0, n:], f"decode after padded prefill, row {i}")


def check_causal(mixer: torch.nn.Module, x: torch.Tensor, t0: int) -> None:
    """Changing tokens t0.. leaves outputs 0..t0-1 bit-for-bit unchanged (and does change output t0)."""
    x2 = x.clone()
    x2[:, t0:] = randn(x.shape[0], x.shape[1] - t0, x.shape[2], seed=123)
    with torch.no_grad():
        y, y2 = mixer(x), mixer(x2)
    torch.testing.assert_close(y2[:, :t0], y[:, :t0], rtol=0, atol=1e-13)
    assert (y2[:, t0] - y[:, t0]).abs().max() > 1e-6


def check_reorder(mixer: torch.nn.Module, x: torch.Tensor, split: int) -> None:
    """reorder_state between steps equals running the reordered batch from the start."""
    index = torch.arange(x.shape[0] - 1, -1, -1)
    with torch.no_grad():
        expected = mixer(x[index])
        state = mixer.init_state(x.shape[0], x.shape[1])
        mixer.step(x[:, :split], state)
        state = mixer.reorder_state(state, index)
        y = mixer.step(x[index, split:], state)
    assert_same(y, expected[:, split:], "step after reorder_state")


def check_bad_inputs(mixer: torch.nn.Module, d_model: int) -> None:
    """Wrong shapes/types of x, attention_mask and state raise errors that name the problem."""
    x = randn(2, 5, d_model).to(next(mixer.parameters()).dtype)
    with pytest.raises(ValueError, match="last dim"):
        mixer(randn(2, 5, d_model + 1))
    with pytest.raises(ValueError, match=r"shape \(B, T, D"):
        mixer(randn(5, d_model))
    with pytest.raises(TypeError, match="floating-point"):
        mixer(torch.ones(2, 5, d_model, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        mixer([[0.0] * d_model])
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        mixer(x, attention_mask=torch.ones(2, 4))
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor"):
        mixer(x, attention_mask=[[1] * 5] * 2)
    state = mixer.init_state(2, 16)
    mixer.step(x, state)
    with pytest.raises(ValueError, match="batch size 3"):
        mixer.step(randn(3, 1, d_model).to(x.dtype), state)
    with pytest.raises(ValueError, match=r"\(B, t \+ T_new\) = \(2, 6\)"):
        mixer.step(x[:, :1], state, attention_mask=torch.ones(2, 1))
    with pytest.raises(ValueError, match="at least one new token"):
        mixer.step(x[:, :0], state)
    with pytest.raises(TypeError, match="init_state"):
        mixer.step(x, {})
    with pytest.raises(ValueError, match="batch_size"):
        mixer.init_state(0, 16)
