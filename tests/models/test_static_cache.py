"""``StaticSessaCache``: the fixed-shape decode step equals the ordinary cache for every model, through
``generate(cache_implementation="static")`` and step by step (float64), with left padding; full caches and
wrong batches are refused; beam reordering keeps the buffers."""

from __future__ import annotations

import pytest
import torch

from sessa import registry
from sessa.models import SessaConfig, SessaForCausalLM, model_config


def _model(name: str) -> SessaForCausalLM:
    torch.manual_seed(0)
    target = SessaConfig.from_preset("tiny", mixer="sessa")
    config = target if name == "sessa" else model_config(target, name)
    return SessaForCausalLM(config).eval().double()


def _prompt() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 200, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("name", registry.model_names())
def test_static_steps_equal_the_dynamic_cache(name):
    model, (ids, mask) = _model(name), _prompt()
    static, dynamic = model.model.new_static_cache(2, 16), model.model.new_cache(16)
    with torch.no_grad():
        a = model(ids, attention_mask=mask, cache=static).logits
        b = model(ids, attention_mask=mask, cache=dynamic).logits
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        gen = torch.Generator().manual_seed(2)
        for step in range(5):
            token = torch.randint(3, 200, (2, 1), generator=gen)
            mask = torch.cat([mask, torch.tensor([[1], [0 if step == 1 else 1]])], dim=1)  # a padded step too
            a = model(token, attention_mask=mask, cache=static).logits
            b = model(token, attention_mask=mask, cache=dynamic).logits
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert static.get_seq_length() == dynamic.get_seq_length() == 14 and int(static.pos) == 14


@pytest.mark.parametrize("name", ["sessa", "attention", "mamba2"])
def test_generate_with_a_static_cache_equals_the_dynamic_one(name):
    model, (ids, mask) = _model(name), _prompt()
    common = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    want = model.generate(ids, **common)
    got = model.generate(ids, cache_implementation="static", **common)
    assert torch.equal(got, want)
    beams = dict(common, num_beams=2)
    assert torch.equal(
        model.generate(ids, cache_implementation="static", **beams), model.generate(ids, **beams)
    )


@pytest.mark.parametrize("name", registry.model_names())
def test_generate_reuses_a_fitting_static_cache_after_a_reset(name):
    """A second generate of the same batch size resets and reuses the first one's static cache (its graph is
    kept), whatever the first left in it (padding, a recurrent state); a larger or differently shaped
    request gets a new cache."""
    model, (ids, mask) = _model(name), _prompt()
    common = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, cache_implementation="static")
    first = model.generate(ids, attention_mask=mask, **common)
    cache = model._sessa_static_cache
    other = torch.randint(3, 200, (2, 6), generator=torch.Generator().manual_seed(5))
    for prompt, prompt_mask in ((other, torch.ones_like(other)), (ids, mask)):
        got = model.generate(prompt, attention_mask=prompt_mask, **common)
        assert model._sessa_static_cache is cache
        want = model.generate(prompt, attention_mask=prompt_mask, **dict(common, cache_implementation=None))
        assert torch.equal(got, want)
    assert torch.equal(got, first)
    model.generate(ids, attention_mask=mask, **dict(common, max_new_tokens=30))  # more positions
    assert model._sessa_static_cache is not cache
    cache = model._sessa_static_cache
    model.generate(ids[:1], **common)  # another batch size
    assert model._sessa_static_cache is not cache and model._sessa_static_cache.batch_size == 1
    cache = model._sessa_static_cache
    with torch.no_grad():  # updated in place: the captured graph sees it, the cache is kept
        model.model.norm.weight.mul_(1.5)
    model.generate(ids[:1], **common)
    assert model._sessa_static_cache is cache
    norm = model.model.norm  # replaced by another tensor: a graph would read the old memory
    norm.weight = torch.nn.Parameter(norm.weight.detach().clone() * 0.5)
    got = model.generate(ids[:1], **common)
    assert model._sessa_static_cache is not cache
    assert torch.equal(got, model.generate(ids[:1], **dict(common, cache_implementation=None)))


def test_static_cache_refuses_a_full_cache_and_a_wrong_batch():
    model = _model("sessa")
    cache = model.model.new_static_cache(1, 4)
    with torch.no_grad():
        model(torch.tensor([[5, 6, 7]]), cache=cache)
        model(torch.tensor([[8]]), cache=cache)
        with pytest.raises(ValueError, match="static cache is full: 5 tokens > max_len 4"):
            model(torch.tensor([[9]]), cache=cache)
        with pytest.raises(ValueError, match="holds 1 rows, got a batch of 2"):
            model(torch.tensor([[1], [2]]), cache=model.model.new_static_cache(1, 4))
    with pytest.raises(ValueError, match="fixed batch size"):
        cache.batch_repeat_interleave(2)


def test_reorder_keeps_the_buffers_and_moves_the_rows():
    model = _model("sessa")
    cache = model.model.new_static_cache(2, 8)
    with torch.no_grad():
        model(torch.tensor([[5, 6], [7, 8]]), cache=cache)
    before = {k: v.clone() for k, v in cache.buffers[0].items()}
    tensors = {k: v for k, v in cache.states[0].items() if isinstance(v, torch.Tensor)}
    cache.reorder_cache(torch.tensor([1, 0]))
    for key, buffer in cache.buffers[0].items():
        assert buffer is tensors[key]  # a captured graph keeps reading the same memory
        torch.testing.assert_close(buffer, before[key].flip(0))


def test_a_mixer_without_step_static_is_refused_clearly():
    from torch import nn

    class Plain(nn.Module):
        def init_state(self, batch_size, max_len, device=None, dtype=None):
            return {"t": 0}

    from sessa.models.static_cache import StaticSessaCache

    with pytest.raises(TypeError, match="Plain has no step_static"):
        StaticSessaCache([Plain()], 8, 1, "cpu", torch.float32)


def test_a_compiled_static_step_equals_the_eager_one():
    """``compile=True`` runs the one-token step through torch.compile (inductor on CPU here): same logits as
    the eager fixed-shape step, with no recompilation from one position to the next, and a second cache
    reuses the compiled step on its own buffers."""
    torch.manual_seed(0)
    model = SessaForCausalLM(SessaConfig.from_preset("tiny", mixer="sessa")).eval()
    torch._dynamo.reset()
    for _ in range(2):
        ids, mask = _prompt()
        compiled = model.model.new_static_cache(2, 16, compile=True)
        eager = model.model.new_static_cache(2, 16)
        assert "compiled=True" in repr(compiled)
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
            model(ids, attention_mask=mask, cache=compiled), model(ids, attention_mask=mask, cache=eager)
            gen = torch.Generator().manual_seed(2)
            for step in range(4):
                token = torch.randint(3, 200, (2, 1), generator=gen)
                mask = torch.cat([mask, torch.tensor([[1], [0 if step == 1 else 1]])], dim=1)
                a = model(token, attention_mask=mask, cache=compiled).logits
                b = model(token, attention_mask=mask, cache=eager).logits
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("compile_step", [False, True])
def test_a_finished_static_cache_is_freed_without_the_garbage_collector(compile_step):
    """No reference cycle keeps a static cache (and its buffers) alive after its last use."""
    import gc
    import weakref

    model, (ids, mask) = _model("sessa"), _prompt()
    cache = model.model.new_static_cache(2, 16, compile=compile_step)
    with torch.no_grad():
        model(ids, attention_mask=mask, cache=cache)
        model(ids[:, :1], attention_mask=torch.cat([mask, mask[:, :1]], 1), cache=cache)
    ref = weakref.ref(cache)
    gc.disable()
    try:
        del cache
        assert ref() is None
    finally:
        gc.enable()
