"""Stacked input projections of a no-gradient cached step (``sessa.modules.stacking``: one GEMM for Sessa's
q, k, v, proj_fb and gamma_ctx, or attention's q, k, v): the same outputs as the separate projections,
rebuilt when a parameter changes, and left out when a gradient, an adapter or a hook needs the calls."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sessa.baselines.attention as attention_module
import sessa.modules.sessa_mixer as sessa_mixer
from sessa.baselines.attention import AttentionMixer
from sessa.modules.sessa_mixer import SessaMixer
from sessa.modules.stacking import CACHE_KEY, stacked_projection

MIXERS = {
    "sessa-gqa": lambda: SessaMixer(16, n_heads=4, n_kv_heads=2),
    "sessa-one-head": lambda: SessaMixer(16, n_heads=1),
    "sessa-no-feedback": lambda: SessaMixer(16, n_heads=2, use_feedback=False),
    "attention-gqa": lambda: AttentionMixer(16, n_heads=4, n_kv_heads=2),
    "attention-no-bias": lambda: AttentionMixer(16, n_heads=2, bias=False),
}


def _steps(mixer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 5-token prompt, then one token at a time through a fresh cache."""
    cache = mixer.init_state(x.shape[0], x.shape[1])
    outs = [mixer.step(x[:, :5], cache)]
    outs += [mixer.step(x[:, i : i + 1], cache) for i in range(5, x.shape[1])]
    return torch.cat(outs, 1)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_stacked_steps_equal_the_separate_projections_and_the_forward(name, monkeypatch):
    torch.manual_seed(0)
    mixer = MIXERS[name]().double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        stacked = _steps(mixer, x)
        cache = mixer.init_state(2, 9)
        mixer.step(x[:, :1], cache)
        assert CACHE_KEY in cache
        for module in (sessa_mixer, attention_module):
            monkeypatch.setattr(module, "stacked_projection", lambda *args: None)
        separate = _steps(mixer, x)
        torch.testing.assert_close(stacked, separate, rtol=0, atol=1e-13)
        torch.testing.assert_close(stacked, mixer(x), rtol=0, atol=1e-12)


def test_a_changed_parameter_rebuilds_the_stack():
    torch.manual_seed(0)
    mixer = SessaMixer(16, n_heads=2).double()
    modules = [mixer.q_proj, mixer.k_proj, mixer.v_proj, mixer.proj_fb, mixer.gamma_ctx]
    cache: dict = {}
    with torch.no_grad():
        first = stacked_projection(modules, cache)
        assert first.sizes == (16, 16, 16, 32, 1) and first.bias[-1] == 0  # gamma_ctx has no bias
        assert stacked_projection(modules, cache) is first  # kept while nothing changes
        mixer.k_proj.weight.mul_(2.0)  # in place: a new version of the same storage
        again = stacked_projection(modules, cache)
        assert again is not first and torch.equal(again.weight[16:32], mixer.k_proj.weight)
        mixer.proj_fb.weight = nn.Parameter(torch.zeros_like(mixer.proj_fb.weight))  # a new tensor
        assert stacked_projection(modules, cache).weight[48:80].abs().max() == 0


def test_no_stack_when_a_gradient_an_adapter_or_a_hook_needs_the_calls():
    torch.manual_seed(0)
    mixer = SessaMixer(16, n_heads=2)
    modules = [mixer.q_proj, mixer.k_proj, mixer.v_proj]
    cache: dict = {}
    assert stacked_projection(modules, cache) is None  # gradients on: the separate calls
    with torch.no_grad():
        assert stacked_projection(modules, cache) is not None
        seen = []
        handle = mixer.q_proj.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        assert stacked_projection(modules, cache) is None
        mixer.step(torch.randn(1, 1, 16), mixer.init_cache(1, max_len=4))
        assert seen == [torch.Size([1, 1, 16])]
        handle.remove()

        class Adapter(nn.Linear):  # e.g. a LoRA wrapper replacing the projection
            pass

        mixer.v_proj = Adapter(16, 16)
        assert stacked_projection([mixer.q_proj, mixer.k_proj, mixer.v_proj], cache) is None


def test_a_model_moved_under_inference_mode_decodes():
    """Parameters made under inference_mode are inference tensors without a version counter: the stack is
    keyed by their memory alone, and decoding gives the forward's outputs."""
    torch.manual_seed(0)
    with torch.inference_mode():
        mixer = SessaMixer(16, n_heads=2).to(torch.float64)
        assert mixer.q_proj.weight.is_inference()
        x = torch.randn(2, 9, 16, dtype=torch.float64)
        torch.testing.assert_close(_steps(mixer, x), mixer(x), rtol=0, atol=1e-12)
