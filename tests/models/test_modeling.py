"""SessaForCausalLM: loss, padding, cache, save/load, Auto classes, parameter counting and matching."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from sessa import registry
from sessa.models import (
    PRESETS,
    SessaByteTokenizer,
    SessaConfig,
    SessaForCausalLM,
    SessaModel,
    count_params,
    match_params,
    model_config,
    param_table,
)
from sessa.tokens import ByteTokenizer
from tests.helpers import rel_err
from tests.models.common import MIXERS, left_pad, prompts, tiny_model

MATCHED = tuple(m for m in registry.model_names() if m != "sessa")  # every model matched to Sessa


# -- loss, padding, cache -------------------------------------------------------------------------------
def test_loss_shifts_labels_and_ignores_minus_100() -> None:
    model = tiny_model("sessa")
    ids = torch.stack(prompts((12, 12), seed=1))
    labels = ids.clone()
    labels[0, 5:8] = -100
    out = model(ids, labels=labels)
    logits = out.logits.detach()
    keep = labels[:, 1:] != -100
    manual = -torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    assert torch.allclose(out.loss, manual[keep].mean(), rtol=1e-6)
    summed = model(ids, labels=labels, num_items_in_batch=7).loss
    assert torch.allclose(summed, manual[keep].sum() / 7, rtol=1e-6)
    assert torch.allclose(
        out.loss, F.cross_entropy(logits[:, :-1].reshape(-1, 259), labels[:, 1:].reshape(-1))
    )


def test_bad_inputs_raise_clear_errors() -> None:
    model = tiny_model("sessa")
    ids = torch.stack(prompts((6, 6)))
    with pytest.raises(ValueError, match=r"labels must have shape \(B, T\) = \(2, 6\), got \(2, 4\)"):
        model(ids, labels=ids[:, :4])
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['position_ids'\]"):
        model(ids, position_ids=ids)
    with pytest.raises(ValueError, match="output_attentions=True is not supported"):
        model(ids, output_attentions=True)
    with pytest.raises(ValueError, match="pass exactly one of input_ids"):
        model()


@pytest.mark.parametrize("mixer", MIXERS)
def test_left_padding_leaves_real_positions_unchanged(mixer: str) -> None:
    model = tiny_model(mixer, dtype=torch.float64)
    rows = prompts((9, 3), seed=2)
    ids, mask = left_pad(rows, SessaConfig().pad_token_id)
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits
        for i, row in enumerate(rows):
            alone = model(row[None]).logits[0]
            assert rel_err(padded[i, ids.shape[1] - len(row) :], alone) < 1e-10


@pytest.mark.parametrize("mixer", MIXERS)
def test_chunked_prefill_and_cache_growth_equal_forward(mixer: str) -> None:
    """Prompt in 3 chunks through a cache first allocated for 4 tokens (so it grows twice) == forward."""
    model = tiny_model(mixer, dtype=torch.float64)
    ids = torch.stack(prompts((13, 13), seed=3))
    cache = model.model.new_cache(max_len=4)
    with torch.no_grad():
        full = model(ids).logits
        parts = [model(ids[:, a:b], cache=cache).logits for a, b in ((0, 3), (3, 4), (4, 13))]
    assert rel_err(torch.cat(parts, dim=1), full) < 1e-10
    assert cache.get_seq_length() == 13 and cache.get_max_length() >= 13


def test_attention_mask_must_cover_cached_tokens() -> None:
    model = tiny_model("sessa")
    ids = torch.stack(prompts((5, 5)))
    out = model(ids, use_cache=True)
    with pytest.raises(ValueError, match=r"attention_mask must have shape .*\(2, 6\)"):
        model(ids[:, :1], cache=out.cache, attention_mask=torch.ones(2, 1, dtype=torch.long))


def test_logits_to_keep_and_hidden_states() -> None:
    model = tiny_model("mamba")
    ids = torch.stack(prompts((7, 7)))
    with torch.no_grad():
        full = model(ids, output_hidden_states=True)
        last = model(ids, logits_to_keep=2).logits
    assert torch.equal(last, full.logits[:, -2:])
    assert len(full.hidden_states) == model.config.n_layers + 1
    assert torch.equal(full.hidden_states[0], model.model.embed_tokens(ids))


def test_tied_head_shares_the_embedding() -> None:
    model = SessaForCausalLM(SessaConfig.from_preset("tiny"))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert abs(model.lm_head.weight.std().item() - 0.02) < 0.002


# -- save / load and Auto classes ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [
        dict(mixer="sessa"),
        dict(mixer="mamba", tie_word_embeddings=True),
        dict(n_layers=2, layer_mixers=["attention", "sessa"], block="prenorm"),
    ],
)
def test_save_pretrained_round_trip(tmp_path, overrides: dict) -> None:
    model = tiny_model(**overrides)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is SessaForCausalLM
    assert {**loaded.config.to_dict(), "_name_or_path": ""} == model.config.to_dict()
    ids = torch.stack(prompts((8, 8), seed=4))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert type(AutoModel.from_pretrained(tmp_path)) is SessaModel


def test_tokenizer_save_load_and_byte_ids(tmp_path) -> None:
    tok = SessaByteTokenizer()
    text = "Sessa: ∑ memory ≠ attention\n"
    assert tok(text)["input_ids"] == ByteTokenizer().encode(text)
    assert tok.decode(tok(text)["input_ids"]) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, len(tok)) == (256, 257, 258, 259)
    assert tok.convert_ids_to_tokens([65, 10, 258]) == ["A", "<0x0A>", "<eos>"]
    assert tok("a<eos>b")["input_ids"] == [97, 258, 98]
    wrapped = SessaByteTokenizer(prepend_bos=True, append_eos=True)
    assert wrapped("hi")["input_ids"] == [257, 104, 105, 258]
    wrapped.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is SessaByteTokenizer and loaded("hi")["input_ids"] == [257, 104, 105, 258]
    batch = loaded(["abc", "z"], padding=True)
    assert batch["input_ids"][1] == [256, 256, 257, 122, 258] and batch["attention_mask"][1] == [
        0,
        0,
        1,
        1,
        1,
    ]
    with pytest.raises(ValueError, match="eos_token must be '<eos>'"):
        SessaByteTokenizer(eos_token="</s>")


def test_import_sessa_stays_light_and_models_registers() -> None:
    code = (
        "import sys, sessa; assert 'transformers' not in sys.modules, 'import sessa pulled transformers';"
        "import sessa.models; from transformers import AutoConfig;"
        "assert type(AutoConfig.for_model('sessa')).__name__ == 'SessaConfig'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    code = (  # transformers imported first: `import sessa` alone registers the Auto classes
        "import transformers, sessa; from transformers import AutoConfig;"
        "assert type(AutoConfig.for_model('sessa')).__name__ == 'SessaConfig'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- parameter counting and matching --------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [dict(mixer=m) for m in MIXERS]
    + [
        dict(mixer="sessa", block="prenorm", tie_word_embeddings=False),
        dict(mixer="mamba2", block="prenorm", mlp_hidden=40),
        dict(mixer="sessa", n_layers=3, layer_mixers=["mamba", "sessa", "attention"], use_feedback=False),
    ],
)
def test_count_params_is_exact(overrides: dict) -> None:
    config = SessaConfig.from_preset("tiny", match=False, **overrides)
    model = SessaForCausalLM(config)
    assert count_params(config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", list(PRESETS))
@pytest.mark.parametrize("model", MATCHED)
def test_matched_presets_within_two_percent(size: str, model: str) -> None:
    target = SessaConfig.from_preset(size)
    matched = SessaConfig.from_preset(f"{size}-{model}")
    spec = registry.model_spec(model)
    assert matched.mixer == spec.mixer and matched.n_layers == target.n_layers
    assert all(getattr(matched, k) == v for k, v in spec.overrides.items())
    assert matched.vocab_size == target.vocab_size and matched.block == target.block
    assert abs(count_params(matched) / count_params(target) - 1) <= 0.02


@pytest.mark.parametrize("model", MATCHED)
def test_matching_prenorm_blocks_tunes_the_mlp(model: str) -> None:
    target = SessaConfig.from_preset("small", block="prenorm")
    matched = match_params(target, model)
    assert matched.d_model == target.d_model and matched.mlp_hidden % 8 == 0
    assert abs(count_params(matched) / count_params(target) - 1) <= 0.02


def test_matching_holds_explicit_knobs_fixed_and_reports_failure() -> None:
    matched = SessaConfig.from_preset("small", mixer="mamba2", d_state=32)
    assert matched.d_state == 32
    assert abs(count_params(matched) / count_params(SessaConfig.from_preset("small", d_state=32)) - 1) <= 0.02
    target = SessaConfig.from_preset("tiny")
    with pytest.raises(ValueError, match="could not match a 'attention' model .* closest"):
        match_params(target, "attention", fixed=("d_model",))
    with pytest.raises(ValueError, match="model must be one of .*'sessa_nofb'.*, got 'rwkv'"):
        match_params(target, "rwkv")


def test_sessa_without_feedback_is_matched_by_the_same_algorithm() -> None:
    """"sessa_nofb" is a model variant: match_params widens it back to the Sessa count."""
    target = SessaConfig.from_preset("small", vocab_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    nofb = match_params(target, "sessa_nofb")
    assert (nofb.mixer, nofb.use_feedback, nofb.n_heads) == ("sessa", False, target.n_heads)
    assert nofb.d_model > target.d_model
    assert abs(count_params(nofb) / count_params(target) - 1) <= 0.02
    assert model_config(target, "sessa_nofb", match=False).to_dict() == {
        **target.to_dict(), "use_feedback": False
    }
    assert model_config(target, "mamba", match=False).mixer == "mamba"


def test_param_table_lists_every_preset_and_model() -> None:
    table = param_table(presets=("tiny", "small"))
    lines = table.splitlines()
    assert len(lines) == 2 + 2 * len(registry.model_names())
    tiny_sessa = next(line for line in lines if line.startswith("| tiny | sessa |"))
    assert f"| {count_params(SessaConfig.from_preset('tiny')):,} |" in tiny_sessa
    for line in lines[2:]:
        assert abs(float(line.rsplit("|", 2)[1].strip().rstrip("%"))) <= 2.0
