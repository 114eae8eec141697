"""SessaConfig: validation messages, presets, hybrid patterns, mixer options, Auto round trip."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from sessa.models import PRESETS, SessaConfig, SessaForCausalLM
from sessa.models.presets import parse_preset_name
from sessa.tokens import ByteTokenizer


def test_defaults_follow_the_byte_tokenizer() -> None:
    config = SessaConfig()
    tok = ByteTokenizer()
    assert (config.vocab_size, config.pad_token_id, config.bos_token_id, config.eos_token_id) == (
        tok.vocab_size,
        tok.pad_id,
        tok.bos_id,
        tok.eos_id,
    )
    assert config.mixer_names == ["sessa"] * config.n_layers and config.block == "gated"
    assert config.hidden_size == config.d_model and config.num_hidden_layers == config.n_layers


@pytest.mark.parametrize(
    ("field", "value", "error", "pattern"),
    [
        (
            "mixer",
            "transformer",
            ValueError,
            r"mixer must be one of \['sessa', 'attention', 'mamba2', 'mamba'\], got 'transformer'",
        ),
        (
            "mixer",
            "mamba3",
            ValueError,
            r"mixer must be one of .*, got 'mamba3'; did you mean 'mamba'\?",
        ),
        ("block", "postnorm", ValueError, r"block must be one of \['gated', 'prenorm'\], got 'postnorm'"),
        ("d_model", 0, ValueError, "d_model must be an int >= 1, got 0"),
        ("n_layers", 2.0, TypeError, r"n_layers must be an int, got float \(2.0\)"),
        ("n_heads", 3, ValueError, "d_model must be divisible by n_heads, got d_model=256, n_heads=3"),
        ("n_kv_heads", 3, ValueError, "n_kv_heads must divide n_heads=4 and be <= it, got n_kv_heads=3"),
        ("gamma_max", 1.0, ValueError, r"gamma_max must be in \(0.0, 1.0\), got 1.0"),
        ("ln_eps", 0.0, ValueError, r"ln_eps must be in \(0.0, inf\), got 0.0"),
        ("use_feedback", "yes", TypeError, r"use_feedback must be a bool, got str \('yes'\)"),
        (
            "feedback_backend",
            "cuda",
            ValueError,
            r"feedback_backend must be one of \['auto', 'reference', 'chunked', 'triton'\]",
        ),
        ("ssm_backend", "cuda", ValueError, "ssm_backend must be one of"),
        ("dt_rank", 0, ValueError, "dt_rank must be an int >= 1, got 0"),
        ("expand", True, TypeError, r"expand must be an int, got bool \(True\)"),
        (
            "pad_token_id",
            300,
            ValueError,
            r"pad_token_id must be None or an int in \[0, vocab_size=259\), got 300",
        ),
        ("layer_mixers", ["sessa"], ValueError, "layer_mixers must have n_layers=4 entries, got 1"),
        (
            "layer_mixers",
            ["sessa", "mamba2", "lstm", "sessa"],
            ValueError,
            r"layer_mixers\[2\] must be one of",
        ),
    ],
)
def test_bad_values_name_field_value_and_rule(field: str, value: object, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        SessaConfig(**{field: value})


def test_cross_field_rules_only_apply_to_mixers_in_use() -> None:
    with pytest.raises(ValueError, match="RoPE needs an even head width d_model / n_heads, got 12 / 4 = 3"):
        SessaConfig(d_model=12, n_heads=4)
    SessaConfig(d_model=12, n_heads=4, use_forward_rope=False)
    SessaConfig(d_model=12, n_heads=4, mixer="mamba", expand=2)  # heads are not used by Mamba
    with pytest.raises(
        ValueError,
        match=r"expand \* d_model must be divisible by headdim for mamba2, got expand=2, d_model=40, "
        "headdim=32",
    ):
        SessaConfig(d_model=40, n_heads=4, mixer="mamba2")
    with pytest.raises(ValueError, match="headdim for mamba2"):
        SessaConfig(d_model=40, n_heads=4, layer_mixers=["sessa", "mamba2", "sessa", "sessa"])


@pytest.mark.parametrize("size", list(PRESETS))
def test_presets_build_and_suffix_names_agree(size: str) -> None:
    sessa = SessaConfig.from_preset(size)
    assert sessa.mixer == "sessa" and sessa.d_model == PRESETS[size]["d_model"]
    assert SessaConfig.from_preset(f"{size}-sessa").to_dict() == sessa.to_dict()
    unmatched = SessaConfig.from_preset(f"{size}-mamba", match=False)
    assert unmatched.mixer == "mamba" and unmatched.d_model == sessa.d_model


def test_preset_names_and_overrides() -> None:
    assert parse_preset_name("125m-mamba2") == ("125m", "mamba2")
    assert parse_preset_name("tiny") == ("tiny", None)
    with pytest.raises(
        ValueError, match="unknown preset 'huge'; valid presets: tiny, small, 125m, 350m, tiny-sessa"
    ):
        SessaConfig.from_preset("huge")
    with pytest.raises(ValueError, match="unknown preset 'tiny-lstm'"):
        SessaConfig.from_preset("tiny-lstm")
    with pytest.raises(ValueError, match="names model 'mamba' but mixer='attention' was also given"):
        SessaConfig.from_preset("tiny-mamba", mixer="attention")
    config = SessaConfig.from_preset("small", n_layers=6, use_feedback=False)
    assert (config.n_layers, config.use_feedback, config.d_model) == (6, False, 256)


def test_hybrid_pattern() -> None:
    assert SessaConfig.hybrid_pattern(4, every=2) == ["mamba2", "sessa", "mamba2", "sessa"]
    assert SessaConfig.hybrid_pattern(6, every=3, other="attention", offset=0) == [
        "sessa",
        "attention",
        "attention",
        "sessa",
        "attention",
        "attention",
    ]
    with pytest.raises(ValueError, match=r"offset must be an int in \[0, every=2\), got 2"):
        SessaConfig.hybrid_pattern(4, every=2, offset=2)
    with pytest.raises(ValueError, match="other must be one of"):
        SessaConfig.hybrid_pattern(4, every=2, other="gru")
    hybrid = SessaConfig.from_preset("tiny", n_layers=4, layer_mixers=SessaConfig.hybrid_pattern(4, 2))
    assert hybrid.mixer_names == ["mamba2", "sessa", "mamba2", "sessa"]


def test_mixer_options_map_config_fields() -> None:
    config = SessaConfig(
        n_heads=8, n_kv_heads=2, gamma_max=0.9, d_state=24, expand=3, headdim=16, chunk_size=32
    )
    assert config.mixer_options("sessa") == dict(
        n_heads=8,
        n_kv_heads=2,
        max_len=2048,
        use_forward_rope=True,
        gamma_max=0.9,
        feedback_backend="auto",
        attention_backend="sdpa",
        chunk_size=32,
        use_feedback=True,
    )
    assert config.mixer_options("attention") == dict(
        n_heads=8, n_kv_heads=2, rope=True, backend="sdpa", bias=False
    )
    assert config.mixer_options("mamba2") == dict(
        d_state=24, d_conv=4, expand=3, headdim=16, backend="chunked"
    )
    assert config.mixer_options("mamba")["d_state"] == 24
    assert SessaConfig().mixer_options("mamba")["d_state"] == 16  # the mixer's own default
    assert SessaConfig().mixer_options("mamba2")["d_state"] == 64
    assert SessaConfig(block="prenorm", d_model=96).block_options() == {"mlp_hidden": None, "norm_eps": 1e-5}


def test_mlp_hidden_is_the_mlp_width() -> None:
    """An integer end to end: no ratio, so no rounding to a multiple of 8 (100 stays 100)."""
    config = SessaConfig(block="prenorm", mlp_hidden=100, d_model=64, n_layers=1)
    block = SessaForCausalLM(config).model.layers[0]
    assert block.w_up.out_features == block.w_gate.out_features == block.w_down.in_features == 100
    default = SessaForCausalLM(SessaConfig(block="prenorm", d_model=96, n_layers=1)).model.layers[0]
    assert default.w_up.out_features == 256  # 8/3 * 96, a multiple of 8


@pytest.mark.parametrize("backend", ["fla", "auto"])
def test_ssm_backend_reaches_the_mamba2_mixer(backend: str) -> None:
    config = SessaConfig.from_preset("tiny-mamba2", ssm_backend=backend)
    assert config.mixer_options("mamba2")["backend"] == backend


def test_save_and_load_through_auto_config(tmp_path) -> None:
    config = SessaConfig.from_preset(
        "tiny", n_layers=4, layer_mixers=SessaConfig.hybrid_pattern(4, 2, "mamba")
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is SessaConfig
    assert loaded.mixer_names == ["mamba", "sessa", "mamba", "sessa"] and loaded.headdim == config.headdim
    with pytest.raises(ValueError, match="gamma_max"):
        SessaConfig.from_dict({**config.to_dict(), "gamma_max": 2.0})


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("d_modle", "d_model"),
        ("num_layers", "n_layers"),
        ("gama_max", "gamma_max"),
        ("mlp_ratio", "mlp_hidden"),
    ],
)
def test_unknown_keys_are_rejected_with_the_closest_name(key: str, suggestion: str) -> None:
    with pytest.raises(ValueError, match=f"unknown SessaConfig key '{key}'; did you mean '{suggestion}'"):
        SessaConfig(**{key: 1})
    with pytest.raises(ValueError, match=f"unknown SessaConfig key '{key}'"):
        SessaConfig.from_dict({**SessaConfig().to_dict(), key: 1})


def test_keys_owned_by_pretrained_config_are_accepted(tmp_path) -> None:
    import torch

    config = SessaConfig(
        d_model=64,
        n_heads=2,
        return_dict=False,
        output_hidden_states=True,
        dtype="bfloat16",
        architectures=["SessaForCausalLM"],
        hidden_size=64,  # an attribute_map alias of d_model
        name_or_path="somewhere",
        use_cache=True,  # a legacy generation setting PretrainedConfig drops
    )
    assert (config.return_dict, config.output_hidden_states, config.d_model) == (False, True, 64)
    assert SessaConfig(torch_dtype=torch.float16).dtype == torch.float16
    config.save_pretrained(tmp_path)
    for loaded in (
        SessaConfig.from_pretrained(tmp_path),
        AutoConfig.from_pretrained(tmp_path),
        SessaConfig.from_pretrained(tmp_path, output_hidden_states=False),
        SessaConfig.from_dict(config.to_dict()),
    ):
        assert type(loaded) is SessaConfig
        assert (loaded.d_model, loaded.return_dict, loaded.architectures) == (64, False, ["SessaForCausalLM"])
    assert SessaConfig.from_pretrained(tmp_path, output_hidden_states=False).output_hidden_states is False


def test_a_model_round_trips_through_save_and_from_pretrained(tmp_path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = SessaForCausalLM(SessaConfig.from_preset("tiny-attention", match=False)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    drop = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert drop(loaded.config.to_dict()) == drop(model.config.to_dict())
