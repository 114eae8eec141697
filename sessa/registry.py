"""The package's vocabulary: every sequence mixer, block type and trainable model variant, in one table.

Everything that lists or checks these names reads them from here: ``SessaConfig`` validation, model
building, parameter matching, the analysis tools' choices, the tests' parametrisation, and (through
:func:`model_names`, :func:`model_config` in :mod:`sessa.models.presets`) training and the CLI.

Adding a mixer takes its file (a class following :mod:`sessa.modules.contract`) and one
:class:`MixerSpec` in ``MIXERS`` below; nothing else changes. Its constructor options come from existing
``SessaConfig`` fields through the entry's ``options`` function (a mixer that needs a new kind of option
also needs that config field). A mixer living outside the package can call :func:`register_mixer`.

Entries name code by ``"module:attr"`` strings resolved on first use (:func:`resolve`), so this module
imports nothing from the package and every layer may read it: the mixers live in ``sessa.modules`` and
``sessa.baselines``, the analysis operators in ``sessa.analysis``.

Example:
    >>> from sessa import registry
    >>> registry.mixer_names()
    ('sessa', 'attention', 'mamba2', 'mamba')
    >>> registry.model_names()          # what the training harness can train
    ('sessa', 'sessa_nofb', 'attention', 'mamba2', 'mamba')
    >>> registry.backend_fields()["attention_backend"]
    ('sdpa', 'reference')
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sessa.validation import did_you_mean

Config = Any  # a SessaConfig (duck-typed here: this module imports nothing from sessa.models)


@dataclass(frozen=True)
class Knob:
    """A config field that parameter matching may move for a mixer (:mod:`sessa.models.matching` knows
    the grid of each field); ``step``: grid spacing where the grid is a range (``d_state``)."""

    field: str
    step: int = 1


@dataclass(frozen=True)
class MixerSpec:
    """One sequence mixer.

    cls: ``"module:attr"`` of the class, built as ``cls(d_model, layer_idx=i, **options(config))``.
    options: config -> constructor options (besides d_model and layer_idx).
    backends: config field -> its valid values for this mixer, as a tuple or the ``"module:attr"`` of one
        (the tuple the implementation itself checks against, so there is one copy).
    heads: the mixer has attention heads (n_heads, n_kv_heads, RoPE): configs must satisfy the head rules
        and matching moves d_model in multiples of the head count.
    defaults: config fields whose None means "the mixer's own default", with that default (a value, or a
        function of the config).
    check: extra cross-field rules on a config that uses the mixer; raises ValueError naming the fields.
    knobs: the config fields parameter matching may move.
    operator: ``"module:attr"`` of ``(mixer, x) -> MixerOperator`` (:mod:`sessa.analysis.operators`), or
        None when the mixer has no operator view; mixers with one are the analysis tools' choices.
    diffuse: ``"module:attr"`` of ``(mixer, **settings)`` putting the mixer in the diffuse regime
        (:func:`sessa.analysis.influence.diffuse_init_`), or None.
    tiny: constructor options of the analysis tools' tiny random blocks.
    """

    cls: str
    options: Callable[[Config], dict[str, Any]]
    backends: Mapping[str, tuple[str, ...] | str] = field(default_factory=dict)
    heads: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[Config], None] | None = None
    knobs: tuple[Knob, ...] = ()
    operator: str | None = None
    diffuse: str | None = None
    tiny: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BlockSpec:
    """One block type: ``cls(d_model, mixer_cls, layer_idx=i, **options(config), **mixer_options)``, and the
    norm after the last block, ``final_norm(d_model, eps=config.ln_eps)``."""

    cls: str
    options: Callable[[Config], dict[str, Any]]
    final_norm: str


@dataclass(frozen=True)
class ModelVariant:
    """A trainable model that is a mixer with some config fields set, e.g. Sessa without feedback.

    Built from a Sessa target config by setting ``mixer`` and ``overrides``; parameter matching then treats
    it like any mixer (:func:`sessa.models.matching.match_params` accepts its name)."""

    mixer: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""


# -- option builders: config fields -> constructor options --------------------------------------------------
def resolved_field(config: Config, mixer: str, name: str) -> Any:
    """``config.<name>``, or the mixer's default for it when the field is None."""
    value = getattr(config, name)
    if value is None and name in mixer_spec(mixer).defaults:
        default = mixer_spec(mixer).defaults[name]
        value = default(config) if callable(default) else default
    return value


def _sessa_options(c: Config) -> dict[str, Any]:
    return dict(
        n_heads=c.n_heads,
        n_kv_heads=c.n_kv_heads,
        max_len=c.max_position_embeddings,
        use_forward_rope=c.use_forward_rope,
        gamma_max=c.gamma_max,
        feedback_backend=c.feedback_backend,
        attention_backend=c.attention_backend,
        chunk_size=c.chunk_size,
        use_feedback=c.use_feedback,
    )


def _attention_options(c: Config) -> dict[str, Any]:
    return dict(
        n_heads=c.n_heads,
        n_kv_heads=c.n_kv_heads,
        rope=c.use_forward_rope,
        backend=c.attention_backend,
        bias=c.attention_bias,
    )


def _mamba2_options(c: Config) -> dict[str, Any]:
    return dict(
        d_state=resolved_field(c, "mamba2", "d_state"),
        d_conv=c.d_conv,
        expand=c.expand,
        headdim=resolved_field(c, "mamba2", "headdim"),
        backend=c.ssm_backend,  # its gated RMSNorm keeps eps 1e-5 (PreNormBlock owns the name norm_eps)
    )


def _mamba_options(c: Config) -> dict[str, Any]:
    return dict(
        d_state=resolved_field(c, "mamba", "d_state"),
        d_conv=c.d_conv,
        expand=c.expand,
        dt_rank=c.dt_rank,
        backend=c.ssm_backend,
    )


# -- cross-field rules ------------------------------------------------------------------------------------
def check_heads(c: Config) -> None:
    """d_model divisible by n_heads; n_kv_heads divides n_heads; even head width with RoPE."""
    if c.d_model % c.n_heads:
        raise ValueError(
            f"d_model must be divisible by n_heads, got d_model={c.d_model}, n_heads={c.n_heads}"
        )
    kv = c.n_heads if c.n_kv_heads is None else c.n_kv_heads
    if kv > c.n_heads or c.n_heads % kv:
        raise ValueError(f"n_kv_heads must divide n_heads={c.n_heads} and be <= it, got n_kv_heads={kv}")
    if c.use_forward_rope and (c.d_model // c.n_heads) % 2:
        raise ValueError(
            f"RoPE needs an even head width d_model / n_heads, got {c.d_model} / {c.n_heads} = "
            f"{c.d_model // c.n_heads} (set use_forward_rope=False or change n_heads)"
        )


def _check_mamba2(c: Config) -> None:
    headdim = resolved_field(c, "mamba2", "headdim")
    if (c.expand * c.d_model) % headdim:
        raise ValueError(
            f"expand * d_model must be divisible by headdim for mamba2, got expand={c.expand}, "
            f"d_model={c.d_model}, headdim={headdim}"
        )


def _n_heads(c: Config) -> int:
    return c.n_heads


# -- the tables -------------------------------------------------------------------------------------------
MIXERS: dict[str, MixerSpec] = {
    "sessa": MixerSpec(
        cls="sessa.modules.sessa_mixer:SessaMixer",
        options=_sessa_options,
        backends={
            "feedback_backend": "sessa.ops.feedback:BACKENDS",
            "attention_backend": "sessa.ops.attention:BACKENDS",
        },
        heads=True,
        defaults={"n_kv_heads": _n_heads},
        check=check_heads,
        knobs=(Knob("n_kv_heads"),),
        operator="sessa.analysis.operators:sessa_operator",
        diffuse="sessa.analysis.influence:diffuse_sessa_",
        tiny={"n_heads": 2},
    ),
    "attention": MixerSpec(
        cls="sessa.baselines.attention:AttentionMixer",
        options=_attention_options,
        backends={"attention_backend": "sessa.ops.attention:BACKENDS"},
        heads=True,
        defaults={"n_kv_heads": _n_heads},
        check=check_heads,
        knobs=(Knob("n_kv_heads"), Knob("n_heads"), Knob("attention_bias")),
        operator="sessa.analysis.operators:attention_operator",
        diffuse="sessa.analysis.influence:diffuse_attention_",
        tiny={"n_heads": 2},
    ),
    "mamba2": MixerSpec(
        cls="sessa.baselines.mamba2:Mamba2Mixer",
        options=_mamba2_options,
        backends={"ssm_backend": "sessa.ops.ssd:BACKENDS"},
        defaults={"d_state": 64, "headdim": 32},
        check=_check_mamba2,
        knobs=(Knob("d_state", step=8), Knob("expand"), Knob("headdim")),
        operator="sessa.analysis.operators:mamba2_operator",
        diffuse="sessa.analysis.influence:diffuse_mamba2_",
        tiny={"d_state": 16, "headdim": 16},
    ),
    "mamba": MixerSpec(
        cls="sessa.baselines.mamba:MambaMixer",
        options=_mamba_options,
        backends={"ssm_backend": "sessa.ops.selective_scan:BACKENDS"},
        defaults={"d_state": 16},
        knobs=(Knob("d_state", step=4), Knob("expand")),
    ),
}

VARIANTS: dict[str, ModelVariant] = {
    "sessa_nofb": ModelVariant(
        mixer="sessa",
        overrides={"use_feedback": False},
        doc="Sessa without the feedback branch (gamma = 0, the paper's ablation), matched in parameters",
    ),
}

BLOCKS: dict[str, BlockSpec] = {
    # the paper's block: x + W_out(mixer(GELU(a)) * g), [a, g] = W_in(LayerNorm(x)); no MLP
    "gated": BlockSpec(
        "sessa.modules.blocks:GatedBlock", lambda c: {"ln_eps": c.ln_eps}, final_norm="torch.nn:LayerNorm"
    ),
    # x + mixer(RMSNorm(x)), then x + SwiGLU MLP(RMSNorm(x))
    "prenorm": BlockSpec(
        "sessa.modules.blocks:PreNormBlock",
        lambda c: {"mlp_hidden": c.mlp_hidden, "norm_eps": c.ln_eps},
        final_norm="sessa.modules.blocks:RMSNorm",
    ),
}


# -- lookups ----------------------------------------------------------------------------------------------
def resolve(ref: str | Any) -> Any:
    """The object named by ``"package.module:attr"`` (anything else is returned unchanged)."""
    if not isinstance(ref, str):
        return ref
    module, sep, attr = ref.partition(":")
    if not sep:
        raise ValueError(f"a registry reference must read 'module:attr', got {ref!r}")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _lookup(table: Mapping[str, Any], kind: str, name: object) -> Any:
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"{kind} must be one of {list(table)}, got {name!r}{did_you_mean(name, table)}")
    return table[name]


def mixer_names() -> tuple[str, ...]:
    return tuple(MIXERS)


def mixer_spec(name: str) -> MixerSpec:
    return _lookup(MIXERS, "mixer", name)


def mixer_class(name: str) -> type:
    return resolve(mixer_spec(name).cls)


def mixer_options(name: str, config: Config) -> dict[str, Any]:
    """Constructor options (besides d_model and layer_idx) of mixer ``name`` under ``config``."""
    return mixer_spec(name).options(config)


def backend_choices(mixer: str, option: str) -> tuple[str, ...]:
    """Valid values of the config field ``option`` for ``mixer``."""
    return tuple(resolve(mixer_spec(mixer).backends[option]))


def backend_fields() -> dict[str, tuple[str, ...]]:
    """Every backend config field -> the values valid for at least one mixer (in first-seen order)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, spec in MIXERS.items():
        for option in spec.backends:
            seen = out.get(option, ())
            out[option] = seen + tuple(v for v in backend_choices(name, option) if v not in seen)
    return out


def block_names() -> tuple[str, ...]:
    return tuple(BLOCKS)


def block_spec(name: str) -> BlockSpec:
    return _lookup(BLOCKS, "block", name)


def variant(name: str) -> ModelVariant:
    return _lookup(VARIANTS, "model variant", name)


def model_names() -> tuple[str, ...]:
    """Every trainable model: each mixer, followed by its variants."""
    names: list[str] = []
    for mixer in MIXERS:
        names += [mixer, *(v for v, spec in VARIANTS.items() if spec.mixer == mixer)]
    return tuple(names)


def model_spec(name: str) -> ModelVariant:
    """The mixer and field overrides of a trainable model name (a plain mixer has no overrides)."""
    _lookup(dict.fromkeys(model_names()), "model", name)
    return VARIANTS[name] if name in VARIANTS else ModelVariant(mixer=name)


def analysis_mixers() -> tuple[str, ...]:
    """Mixers with an operator view: the choices of ``sessa tail`` / ``sessa operators``."""
    return tuple(name for name, spec in MIXERS.items() if spec.operator is not None)


def mixer_name_of(module: object) -> str | None:
    """The registry name of a mixer instance (its class or a subclass), or None."""
    for name in MIXERS:
        if isinstance(module, mixer_class(name)):
            return name
    return None


# -- changing the tables ----------------------------------------------------------------------------------
def register_mixer(name: str, spec: MixerSpec) -> None:
    """Add (or replace) mixer ``name``; it becomes valid everywhere the package lists mixers."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a mixer name must be an identifier, got {name!r}")
    if name in VARIANTS:
        raise ValueError(f"{name!r} already names a model variant")
    MIXERS[name] = spec


def register_variant(name: str, spec: ModelVariant) -> None:
    """Add (or replace) the trainable model ``name``: mixer ``spec.mixer`` with ``spec.overrides``."""
    if not isinstance(name, str) or not name.isidentifier() or name in MIXERS:
        raise ValueError(f"a variant name must be an identifier that names no mixer, got {name!r}")
    mixer_spec(spec.mixer)
    VARIANTS[name] = spec


@contextlib.contextmanager
def scratch() -> Iterator[None]:
    """Work on a copy of the tables: registrations inside the block are undone on exit (for tests)."""
    saved = [(table, dict(table)) for table in (MIXERS, VARIANTS, BLOCKS)]
    try:
        yield
    finally:
        for table, copy in saved:
            table.clear()
            table.update(copy)
