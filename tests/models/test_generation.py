"""generate() with the SessaCache: cached == uncached decoding, left padding, sampling, eos, pipelines."""

from __future__ import annotations

import pytest
import torch
from transformers import pipeline
from transformers.generation.utils import GenerateDecoderOnlyOutput

from sessa.models import SessaByteTokenizer, SessaCache, SessaConfig, SessaForCausalLM
from tests.helpers import rel_err
from tests.models.common import MIXERS, left_pad, prompts, tiny_model

PAD = SessaConfig().pad_token_id


# transformers < 5.24 decodes with the cache but does not return it from generate() (its output has only
# ``past_key_values``, which stays None for a model whose cache argument is named ``cache``)
RETURNS_CACHE = pytest.mark.skipif(
    "cache" not in GenerateDecoderOnlyOutput.__dataclass_fields__,
    reason="this transformers version does not return the cache from generate()",
)


def greedy_by_full_forwards(model, ids: torch.Tensor, n_new: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Reference decoding: argmax of a full forward over the whole sequence at every step (no cache)."""
    logits_per_step = []
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(ids).logits[:, -1]
            logits_per_step.append(logits)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids, logits_per_step


@pytest.mark.parametrize("mixer", MIXERS)
def test_cached_greedy_equals_full_forward_decoding(mixer: str) -> None:
    model = tiny_model(mixer)
    ids = torch.stack(prompts((9, 9), seed=1))
    expected, _ = greedy_by_full_forwards(model, ids, 12)
    cached = model.generate(ids, max_new_tokens=12, do_sample=False)
    uncached = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(cached, expected)
    assert torch.equal(uncached, expected)
    assert len(set(cached[:, 9:].flatten().tolist())) > 3, "degenerate decoding would make the test vacuous"


@pytest.mark.parametrize("mixer", MIXERS)
def test_cached_step_logits_equal_full_forward_float64(mixer: str) -> None:
    """Prefill + one-token cached steps give the full-forward logits to float64 rounding, and the prompt's
    first tokens matter (so a cache that forgot them would be caught)."""
    model = tiny_model(mixer, dtype=torch.float64)
    ids = torch.stack(prompts((10, 10), seed=2))
    expected, reference = greedy_by_full_forwards(model, ids, 6)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        steps = [out.logits[:, -1]]
        for t in range(10, 15):
            out = model(expected[:, t : t + 1], cache=out.cache)
            steps.append(out.logits[:, -1])
        changed = ids.clone()
        changed[:, :3] = (changed[:, :3] + 1) % 256
        shift = (model(changed).logits[:, -1] - reference[0]).abs().max()
    for step, (got, want) in enumerate(zip(steps, reference, strict=True)):
        assert rel_err(got, want) < 1e-10, f"step {step}"
    assert shift > 1e-6


@pytest.mark.parametrize("mixer", ["sessa", "mamba"])
def test_generate_output_logits_match_full_forwards(mixer: str) -> None:
    model = tiny_model(mixer)
    ids = torch.stack(prompts((8, 8), seed=3))
    out = model.generate(
        ids, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    _, reference = greedy_by_full_forwards(model, ids, 5)
    for step, (got, want) in enumerate(zip(out.logits, reference, strict=True)):
        assert rel_err(got, want) < 1e-5, f"step {step}"


def test_generate_runs_prefill_once_then_single_tokens() -> None:
    model = tiny_model("sessa")
    seen: list[tuple[int, ...]] = []
    model.model.embed_tokens.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    out = model.generate(
        torch.stack(prompts((7, 7))), max_new_tokens=5, do_sample=False, return_dict_in_generate=True
    )
    assert seen == [(2, 7)] + [(2, 1)] * 4
    if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__:  # transformers >= 5.24 returns it
        assert isinstance(out.cache, SessaCache) and out.cache.get_seq_length() == 7 + 4


@pytest.mark.parametrize("mixer", MIXERS)
def test_left_padded_batch_equals_one_by_one(mixer: str) -> None:
    model = tiny_model(mixer)
    rows = prompts((11, 4, 7), seed=3)
    ids, mask = left_pad(rows, PAD)
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=PAD)
    for i, row in enumerate(rows):
        alone = model.generate(row[None], max_new_tokens=8, do_sample=False)
        assert torch.equal(batched[i, ids.shape[1] :], alone[0, len(row) :]), f"row {i}"


@pytest.mark.parametrize("mixer", ["sessa", "mamba2"])
def test_sampling_with_top_k_top_p_matches_uncached(mixer: str) -> None:
    model = tiny_model(mixer)
    ids, mask = left_pad(prompts((6, 9), seed=4), PAD)
    kwargs = dict(
        attention_mask=mask, max_new_tokens=10, do_sample=True, top_k=20, top_p=0.9, temperature=0.8
    )
    torch.manual_seed(7)
    cached = model.generate(ids, **kwargs)
    torch.manual_seed(7)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    torch.manual_seed(8)
    other_seed = model.generate(ids, **kwargs)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, other_seed)


def test_eos_stops_generation_and_pads() -> None:
    model = tiny_model("attention")
    ids = torch.stack(prompts((8, 8), seed=5))
    free = model.generate(ids, max_new_tokens=10, do_sample=False)
    eos = int(free[0, 8 + 2])  # row 0 emits this token at its 3rd step
    first_hit = [
        int((free[i, 8:] == eos).nonzero()[0]) if (free[i, 8:] == eos).any() else None for i in range(2)
    ]
    stopped = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=PAD)
    for i, hit in enumerate(first_hit):
        if hit is None:
            assert torch.equal(stopped[i, 8:], free[i, 8 : stopped.shape[1]])
        else:
            assert torch.equal(stopped[i, 8 : 8 + hit + 1], free[i, 8 : 8 + hit + 1])
            assert (stopped[i, 8 + hit + 1 :] == PAD).all()
    assert first_hit[0] == 2 and stopped.shape[1] <= free.shape[1]


@RETURNS_CACHE
@pytest.mark.parametrize("mixer", ["sessa", "attention", "mamba"])
def test_continue_from_returned_cache_grows_it(mixer: str) -> None:
    """A second generate() on the returned cache (left-padded batch, so the states carry a padding mask)
    outgrows the first call's exact allocation and still equals one long generation."""
    model = tiny_model(mixer)
    ids, mask = left_pad(prompts((6, 3), seed=6), PAD)
    kwargs = dict(do_sample=False, pad_token_id=PAD)
    one_shot = model.generate(ids, attention_mask=mask, max_new_tokens=10, **kwargs)
    first = model.generate(ids, attention_mask=mask, max_new_tokens=4, return_dict_in_generate=True, **kwargs)
    cache = first.cache
    capacity = cache.get_max_length()
    mask = torch.cat([mask, torch.ones(2, 4, dtype=mask.dtype)], dim=1)
    resumed = model.generate(first.sequences, attention_mask=mask, cache=cache, max_new_tokens=6, **kwargs)
    assert torch.equal(resumed, one_shot)
    assert cache.get_seq_length() == 6 + 9 and cache.get_max_length() >= 6 + 9 > capacity


def test_beam_search_reorders_the_cache() -> None:
    model = tiny_model("sessa")
    ids = torch.stack(prompts((6, 6), seed=8))
    kwargs = dict(max_new_tokens=6, num_beams=3, do_sample=False, early_stopping=True)
    assert torch.equal(model.generate(ids, **kwargs), model.generate(ids, use_cache=False, **kwargs))


def test_hybrid_stack_decodes_consistently() -> None:
    layers = SessaConfig.hybrid_pattern(4, every=2, other="mamba2")
    model = tiny_model("mamba2", n_layers=4, layer_mixers=layers)
    assert [type(block.mixer).__name__ for block in model.model.layers] == [
        "Mamba2Mixer",
        "SessaMixer",
        "Mamba2Mixer",
        "SessaMixer",
    ]
    rows = prompts((9, 5), seed=9)
    ids, mask = left_pad(rows, PAD)
    expected, _ = greedy_by_full_forwards(model, rows[0][None], 8)
    assert torch.equal(model.generate(rows[0][None], max_new_tokens=8, do_sample=False), expected)
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=PAD)
    assert torch.equal(batched[0, ids.shape[1] :], expected[0, 9:])


def test_text_generation_pipeline_with_byte_tokenizer() -> None:
    model, tok = tiny_model("sessa"), SessaByteTokenizer()
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    text = pipe("héllo", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    ids = torch.tensor([tok("héllo")["input_ids"]])
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert text == tok.decode(expected[0], skip_special_tokens=True)
    assert text.startswith("héllo") and len(text) > len("héllo")


def test_generate_allocates_the_cache_as_it_goes(monkeypatch):
    """A huge max_new_tokens does not allocate its whole cache up front: the first allocation stops at
    max_position_embeddings and the cache grows as tokens come."""
    from sessa.models import cache as cache_module

    sizes = []
    original = cache_module.SessaCache.__init__

    def record(self, layers, max_len):
        sizes.append(max_len)
        original(self, layers, max_len)

    monkeypatch.setattr(cache_module.SessaCache, "__init__", record)
    model = tiny_model("sessa", max_position_embeddings=16)
    ids = torch.tensor([[72, 105, 33, 10]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=40, do_sample=False, min_new_tokens=40)
    assert out.shape == (1, 44) and sizes == [16]


def test_training_after_generating_under_inference_mode():
    """Decoding keeps RoPE tables between layers; ones made under inference_mode must not reach a later
    training step at the same positions (inference tensors cannot be saved for backward)."""
    torch.manual_seed(0)
    model = SessaForCausalLM(SessaConfig.from_preset("tiny", mixer="sessa"))
    ids = torch.randint(3, 200, (2, 12))
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for p in model.model.layers[0].parameters() if p.requires_grad)
