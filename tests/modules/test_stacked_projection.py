"""The stacked input projections of a no-gradient ``SessaMixer.step`` (one GEMM for q, k, v, proj_fb and
gamma_ctx): the same outputs as the separate projections, rebuilt when a parameter changes, and left out
when a gradient, an adapter or a hook needs the separate calls."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sessa.modules.sessa_mixer as sessa_mixer
from sessa.modules.sessa_mixer import SessaMixer, stacked_projection


def _steps(mixer: SessaMixer, x: torch.Tensor) -> torch.Tensor:
    """A 5-token prompt, then one token at a time through a fresh cache."""
    cache = mixer.init_cache(x.shape[0], max_len=x.shape[1])
    outs = [mixer.step(x[:, :5], cache)]
    outs += [mixer.step(x[:, i : i + 1], cache) for i in range(5, x.shape[1])]
    return torch.cat(outs, 1)


@pytest.mark.parametrize(
    "options", [dict(n_heads=4, n_kv_heads=2), dict(n_heads=1), dict(use_feedback=False)]
)
def test_stacked_steps_equal_the_separate_projections_and_the_forward(options, monkeypatch):
    torch.manual_seed(0)
    mixer = SessaMixer(16, **{"n_heads": 2, **options}).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        stacked = _steps(mixer, x)
        cache = mixer.init_cache(2, max_len=9)
        mixer.step(x[:, :1], cache)
        assert "stacked_projection" in cache
        monkeypatch.setattr(sessa_mixer, "stacked_projection", lambda mixer, cache: None)
        separate = _steps(mixer, x)
        torch.testing.assert_close(stacked, separate, rtol=0, atol=1e-13)
        torch.testing.assert_close(stacked, mixer(x), rtol=0, atol=1e-12)


def test_a_changed_parameter_rebuilds_the_stack():
    torch.manual_seed(0)
    mixer = SessaMixer(16, n_heads=2).double()
    x = torch.randn(1, 3, 16, dtype=torch.float64)
    cache = mixer.init_cache(1, max_len=8)
    with torch.no_grad():
        mixer.step(x, cache)
        first = cache["stacked_projection"]
        assert stacked_projection(mixer, cache) is first  # kept while nothing changes
        mixer.k_proj.weight.mul_(2.0)  # in place: a new version of the same storage
        again = stacked_projection(mixer, cache)
        assert again is not first
        assert again.sizes == (16, 16, 16, 16, 16, 1)  # q, k, v, q_b, k_b, gamma
        assert torch.equal(again.weight[16:32], mixer.k_proj.weight)
        mixer.proj_fb.weight = nn.Parameter(torch.zeros_like(mixer.proj_fb.weight))  # a new tensor
        assert stacked_projection(mixer, cache).weight[48:80].abs().max() == 0


def test_no_stack_when_a_gradient_an_adapter_or_a_hook_needs_the_calls():
    torch.manual_seed(0)
    mixer = SessaMixer(16, n_heads=2)
    cache: dict = {}
    assert stacked_projection(mixer, cache) is None  # gradients on: the separate calls
    with torch.no_grad():
        assert stacked_projection(mixer, cache) is not None
        seen = []
        handle = mixer.q_proj.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        assert stacked_projection(mixer, cache) is None
        mixer.step(torch.randn(1, 1, 16), mixer.init_cache(1, max_len=4))
        assert seen == [torch.Size([1, 1, 16])]
        handle.remove()

        class Adapter(nn.Linear):  # e.g. a LoRA wrapper replacing the projection
            pass

        mixer.v_proj = Adapter(16, 16)
        assert stacked_projection(mixer, cache) is None
