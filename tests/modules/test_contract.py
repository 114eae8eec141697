"""The mixer contract (sessa.modules.contract), checked once for every mixer of the registry.

Each mixer is built the way a model builds it (registry class + the options a tiny SessaConfig gives it)
and run in float64, so "equal" means ~1e-12 relative. Parametrised over the registry's mixers and over
their default and "reference" backends. Mixer-specific behaviour lives in tests/baselines and
tests/modules/test_sessa_layer.py.
"""

from __future__ import annotations

import pytest
import torch

from sessa import registry
from sessa.models import SessaConfig
from sessa.modules.contract import Mixer
from tests.helpers import assert_same, randn

D = 16
CASES = [(name, backends) for name in registry.mixer_names() for backends in ("default", "reference")]


def make_mixer(name: str, backends: str = "default", layer_idx: int = 0) -> torch.nn.Module:
    """Mixer ``name`` as a tiny model would build it, width D; "reference" sets every backend field of the
    mixer to its plain PyTorch reference. A small feedback chunk so the solve crosses chunk boundaries."""
    fields = dict(d_model=D, chunk_size=8)
    if backends == "reference":
        fields.update(dict.fromkeys(registry.mixer_spec(name).backends, "reference"))
    config = SessaConfig.from_preset("tiny", mixer=name, match=False, **fields)
    torch.manual_seed(0)
    mixer = registry.mixer_class(name)(D, layer_idx=layer_idx, **config.mixer_options(name))
    return mixer.double().eval()


@pytest.mark.parametrize("name", registry.mixer_names())
def test_follows_the_protocol(name: str) -> None:
    mixer = make_mixer(name, layer_idx=3)
    assert isinstance(mixer, Mixer) and mixer.layer_idx == 3 and mixer.d_model == D


@pytest.mark.parametrize(("name", "backends"), CASES)
def test_step_equals_forward(name: str, backends: str) -> None:
    """A whole-prompt step (prefill), token-by-token steps, and prefix + one token + rest as multi-token
    steps all give the rows of the parallel forward."""
    mixer, x = make_mixer(name, backends), randn(2, 21, D)
    B, T, _ = x.shape
    with torch.no_grad():
        y = mixer(x)
        state = mixer.init_state(B, T)
        assert_same(mixer.step(x, state), y, "prefill (one step over the prompt)")
        assert state["t"] == T
        state = mixer.init_state(B, T + 2)
        one_by_one = torch.cat([mixer.step(x[:, t : t + 1], state) for t in range(T)], dim=1)
        assert_same(one_by_one, y, "token-by-token steps")
        state = mixer.init_state(B, T)
        parts = [x[:, :13], x[:, 13:14], x[:, 14:]]
        assert_same(torch.cat([mixer.step(p, state) for p in parts], dim=1), y, "prefix + multi-token step")


@pytest.mark.parametrize("name", registry.mixer_names())
def test_chunked_prefill_then_decode_equals_forward(name: str) -> None:
    mixer, x = make_mixer(name), randn(2, 23, D, seed=1)
    with torch.no_grad():
        y = mixer(x)
        state = mixer.init_state(2, 23)
        parts = [mixer.step(x[:, a:b], state) for a, b in [(0, 5), (5, 6), (6, 14)]]
        parts += [mixer.step(x[:, t : t + 1], state) for t in range(14, 23)]
    assert_same(torch.cat(parts, dim=1), y, "chunked prefill + decode")


@pytest.mark.parametrize(("name", "backends"), CASES)
def test_left_padding_forward_and_step(name: str, backends: str) -> None:
    """Real tokens of left-padded rows (with attention_mask) give the outputs of the unpadded rows, in
    forward and in step mode (padded prefill, then decoding with and without a mask)."""
    mixer = make_mixer(name, backends)
    lengths, n_decode = (11, 6, 1), 3
    width = max(lengths) + 2
    rows = [randn(1, n + n_decode, D, seed=10 + i) for i, n in enumerate(lengths)]
    garbage = randn(len(lengths), width, D, seed=99) * 5
    padded = zip(lengths, rows, strict=True)
    x = torch.stack([torch.cat([garbage[i, : width - n], r[0, :n]]) for i, (n, r) in enumerate(padded)])
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


@pytest.mark.parametrize(("name", "backends"), CASES)
def test_future_tokens_do_not_change_past_outputs(name: str, backends: str) -> None:
    mixer, x, t0 = make_mixer(name, backends), randn(2, 21, D), 9
    x2 = x.clone()
    x2[:, t0:] = randn(2, 21 - t0, D, seed=123)
    with torch.no_grad():
        y, y2 = mixer(x), mixer(x2)
    torch.testing.assert_close(y2[:, :t0], y[:, :t0], rtol=0, atol=1e-13)
    assert (y2[:, t0] - y[:, t0]).abs().max() > 1e-6


@pytest.mark.parametrize("name", registry.mixer_names())
def test_reorder_state(name: str) -> None:
    """reorder_state between steps equals running the reordered batch from the start."""
    mixer, x, split = make_mixer(name), randn(3, 12, D), 7
    index = torch.tensor([2, 0, 1])
    with torch.no_grad():
        expected = mixer(x[index])
        state = mixer.init_state(3, 12)
        mixer.step(x[:, :split], state)
        state = mixer.reorder_state(state, index)
        y = mixer.step(x[index, split:], state)
    assert_same(y, expected[:, split:], "step after reorder_state")


@pytest.mark.parametrize("name", registry.mixer_names())
def test_bad_inputs_and_states_raise_clear_errors(name: str) -> None:
    mixer = make_mixer(name)
    x = randn(2, 5, D)
    with pytest.raises(ValueError, match="last dim"):
        mixer(randn(2, 5, D + 1))
    with pytest.raises(ValueError, match=r"shape \(B, T, D"):
        mixer(randn(5, D))
    with pytest.raises(TypeError, match="floating-point"):
        mixer(torch.ones(2, 5, D, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        mixer([[0.0] * D])
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        mixer(x, attention_mask=torch.ones(2, 4))
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor"):
        mixer(x, attention_mask=[[1] * 5] * 2)
    state = mixer.init_state(2, 16)
    mixer.step(x, state)
    with pytest.raises(ValueError, match="batch size 3"):
        mixer.step(randn(3, 1, D), state)
    with pytest.raises(ValueError, match=r"\(B, t \+ T_new\) = \(2, 6\)"):
        mixer.step(x[:, :1], state, attention_mask=torch.ones(2, 1))
    with pytest.raises(ValueError, match="at least one new token"):
        mixer.step(x[:, :0], state)
    with pytest.raises(TypeError, match="state must be the dict returned by init_state"):
        mixer.step(x, {})
    with pytest.raises(TypeError, match="state must be the dict returned by init_state"):
        mixer.step(x, None)
    with pytest.raises(ValueError, match="batch_size"):
        mixer.init_state(0, 16)
    with pytest.raises(ValueError, match="max_len"):
        mixer.init_state(2, 0)
