"""sessa.registry: the one list of mixers, blocks and model variants, and what derives from it.

The main test registers a fifth mixer (defined below) in a scratch copy of the registry and finds it in
config validation, model building and generation, parameter matching and the analysis tools, with
nothing else edited.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sessa import registry
from sessa.analysis import TINY_MIXERS, mixer_operator, tiny_stack
from sessa.analysis.operators import MixerOperator
from sessa.cli import build_parser
from sessa.models import SessaConfig, SessaForCausalLM, count_params, from_preset, match_params
from sessa.modules.contract import MixerState, check_input, key_mask, reorder_state_tensors, step_position


class CumulativeMeanMixer(nn.Module):
    """y_t = W_out(mean_{j<=t} W_in x_j): a toy mixer following the contract (padding is ignored)."""

    def __init__(self, d_model: int, layer_idx: int = 0, expand: int = 2, backend: str = "chunked") -> None:
        super().__init__()
        self.d_model, self.layer_idx, self.backend = d_model, layer_idx, backend
        self.w_in = nn.Linear(d_model, expand * d_model)
        self.w_out = nn.Linear(expand * d_model, d_model)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_input(x, self.d_model)
        key_mask(attention_mask, *x.shape[:2])
        h = self.w_in(x).cumsum(1) / torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[:, None]
        return self.w_out(h)

    def init_state(self, batch_size: int, max_len: int, device=None, dtype=None) -> MixerState:  # noqa: ANN001
        sum_ = torch.zeros(batch_size, self.w_in.out_features, device=device, dtype=dtype)
        return {"sum": sum_, "t": 0}

    def step(
        self, x: torch.Tensor, state: MixerState, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_input(x, self.d_model)
        t = step_position(state, x, "sum")
        h = state["sum"].to(x.dtype)[:, None] + self.w_in(x).cumsum(1)
        state["sum"], state["t"] = h[:, -1], t + x.shape[1]
        return self.w_out(h / torch.arange(t + 1, state["t"] + 1, dtype=x.dtype)[:, None])

    def reorder_state(self, state: MixerState, index: torch.Tensor) -> MixerState:
        return reorder_state_tensors(state, index)


def cumulative_mean_operator(mixer: CumulativeMeanMixer, x: torch.Tensor) -> MixerOperator:
    """One head: W[t, tau] = 1 / (t + 1) for tau <= t, values = W_in x."""
    B, T, _ = x.shape
    W = torch.ones(T, T, dtype=x.dtype).tril() / torch.arange(1, T + 1, dtype=x.dtype)[:, None]
    W = W.expand(B, 1, T, T)
    return MixerOperator("cummean", W, mixer.w_in(x)[:, :, None], lambda m: mixer.w_out(m[:, :, 0]), W)


DUMMY = registry.MixerSpec(
    cls=f"{__name__}:CumulativeMeanMixer",
    options=lambda c: {"expand": c.expand, "backend": c.ssm_backend},
    backends={"ssm_backend": ("chunked", "cummean_fast")},
    knobs=(registry.Knob("expand"),),
    operator=f"{__name__}:cumulative_mean_operator",
)


@pytest.fixture
def with_dummy():
    with registry.scratch():
        registry.register_mixer("cummean", DUMMY)
        registry.register_variant("cummean_wide", registry.ModelVariant("cummean", {"expand": 4}))
        yield


def test_a_fifth_mixer_is_one_registry_entry(with_dummy) -> None:
    # names
    assert registry.mixer_names()[-1] == "cummean"
    assert registry.model_names()[-2:] == ("cummean", "cummean_wide")
    # config validation: the name, its backend values, per-layer names
    config = SessaConfig.from_preset("tiny", mixer="cummean", match=False, ssm_backend="cummean_fast")
    assert config.mixer_options("cummean") == {"expand": 2, "backend": "cummean_fast"}
    with pytest.raises(ValueError, match=r"ssm_backend \(for mixer 'mamba'\) must be one of"):
        SessaConfig(mixer="mamba", ssm_backend="cummean_fast")
    with pytest.raises(ValueError, match="did you mean 'cummean'"):
        SessaConfig(mixer="cummeen")
    SessaConfig(n_layers=2, layer_mixers=["sessa", "cummean"])
    # model building, the cached forward and generate()
    model = SessaForCausalLM(config).eval()
    assert type(model.model.layers[0].mixer) is CumulativeMeanMixer
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :3], use_cache=True)
        nxt = model(ids[:, 3:], cache=out.cache).logits
        torch.testing.assert_close(torch.cat([out.logits, nxt], 1), full, rtol=1e-5, atol=1e-5)
        assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 8)
    # parameter matching and presets, for the mixer and its variant
    target = from_preset("tiny")
    for name in ("cummean", "cummean_wide"):
        matched = match_params(target, name)
        assert matched.mixer == "cummean" and abs(count_params(matched) / count_params(target) - 1) <= 0.02
    assert from_preset("tiny-cummean_wide", match=False).expand == 4
    # the analysis tools' choices, tiny stacks and operators
    assert "cummean" in registry.analysis_mixers() and "cummean" in TINY_MIXERS
    assert build_parser("tail").parse_args(["tail", "--mixers", "cummean"]).mixers == ["cummean"]
    from sessa.analysis.commands import OperatorsConfig
    from sessa.train.config import TrainConfig
    from sessa.train.sweep import SweepConfig

    assert "cummean" in OperatorsConfig().mixers
    # the training CLI and configs: every trainable model name comes from the registry
    for command in ("train", "compare", "sweep"):
        flag = "--model" if command == "train" else "--models"
        assert "cummean_wide" in build_parser(command).parse_args([command, flag, "cummean_wide"]).__dict__[
            "model" if command == "train" else "models"]
    assert TrainConfig(model="cummean").model == "cummean"
    assert SweepConfig(models=["cummean", "cummean_wide"]).models == ["cummean", "cummean_wide"]
    mixer = tiny_stack("cummean", 16).blocks[0].mixer
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mixer_operator(mixer, x).reconstruct(), mixer(x))


def test_scratch_restores_the_tables() -> None:
    before = (registry.model_names(), dict(registry.MIXERS))
    with registry.scratch():
        registry.register_mixer("cummean", DUMMY)
        assert "cummean" in registry.model_names()
    assert (registry.model_names(), dict(registry.MIXERS)) == before
    with pytest.raises(ValueError, match="mixer must be one of"):
        SessaConfig(mixer="cummean")


def test_the_trainable_models() -> None:
    assert registry.model_names() == ("sessa", "sessa_nofb", "attention", "mamba2", "mamba")
    assert registry.model_spec("sessa_nofb") == registry.VARIANTS["sessa_nofb"]
    assert registry.model_spec("mamba").mixer == "mamba" and not registry.model_spec("mamba").overrides
    with pytest.raises(ValueError, match="model must be one of .*'sessa_fb'; did you mean 'sessa_nofb'"):
        registry.model_spec("sessa_fb")


def test_backends_come_from_the_implementations() -> None:
    from sessa.ops import attention, feedback, selective_scan, ssd

    fields = registry.backend_fields()
    assert fields["feedback_backend"] == feedback.BACKENDS
    assert fields["attention_backend"] == attention.BACKENDS
    assert set(fields) == {"feedback_backend", "attention_backend", "ssm_backend"}
    assert registry.backend_choices("mamba2", "ssm_backend") == ssd.BACKENDS
    assert registry.backend_choices("mamba", "ssm_backend") == selective_scan.BACKENDS
    assert "fla" in ssd.BACKENDS and "fla" not in selective_scan.BACKENDS


def test_bad_registrations_and_references() -> None:
    with registry.scratch():
        with pytest.raises(ValueError, match="identifier"):
            registry.register_mixer("my-mixer", DUMMY)
        with pytest.raises(ValueError, match="names no mixer"):
            registry.register_variant("mamba", registry.ModelVariant("sessa"))
        with pytest.raises(ValueError, match="mixer must be one of"):
            registry.register_variant("x", registry.ModelVariant("lstm"))
    with pytest.raises(ValueError, match="module:attr"):
        registry.resolve("sessa.modules.SessaMixer")
    assert registry.resolve("sessa.modules:SessaMixer").__name__ == "SessaMixer"


def test_every_mixer_class_resolves_and_names_itself() -> None:
    for name in registry.mixer_names():
        cls = registry.mixer_class(name)
        config = SessaConfig.from_preset("tiny", mixer=name, match=False)
        assert registry.mixer_name_of(cls(64, **config.mixer_options(name))) == name
    assert registry.mixer_name_of(nn.Linear(2, 2)) is None
