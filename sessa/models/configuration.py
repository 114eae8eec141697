"""``SessaConfig``: one Hugging Face config for Sessa language models and their matched baselines.

A model is ``n_layers`` blocks over a ``d_model``-wide residual stream. Each block wraps one sequence
mixer (:mod:`sessa.modules.contract`) named by ``mixer`` (or per layer by ``layer_mixers`` for hybrid
stacks): "sessa", "attention", "mamba2" or "mamba". ``block`` picks the wrapper: "gated" (the paper's
block, SPEC §1, no MLP) or "prenorm" (mixer + SwiGLU MLP, the usual Transformer layout).

Presets (``SessaConfig.from_preset``): ``tiny`` (CPU, seconds), ``small``, ``125m``, ``350m``. A preset
name may carry a mixer suffix ("tiny-mamba2"); a baseline preset is parameter-matched to the Sessa
preset of the same size (:func:`sessa.models.matching.match_params`).

Example:
    >>> config = SessaConfig.from_preset("tiny")                      # Sessa, 2 layers of width 64
    >>> hybrid = SessaConfig.from_preset("tiny", n_layers=4,
    ...     layer_mixers=SessaConfig.hybrid_pattern(4, every=2))     # mamba2, sessa, mamba2, sessa
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

from sessa.tasks.corpus import ByteTokenizer

MIXER_NAMES: tuple[str, ...] = ("sessa", "attention", "mamba2", "mamba")
BLOCK_NAMES: tuple[str, ...] = ("gated", "prenorm")
FEEDBACK_BACKENDS: tuple[str, ...] = ("auto", "reference", "chunked", "triton")
ATTENTION_BACKENDS: tuple[str, ...] = ("sdpa", "reference")
SSM_BACKENDS: tuple[str, ...] = ("chunked", "reference", "fla", "auto")
MIXERS_WITH_HEADS: tuple[str, ...] = ("sessa", "attention")
DEFAULT_D_STATE: dict[str, int] = {"mamba2": 64, "mamba": 16}  # the mixers' own defaults
DEFAULT_HEADDIM = 32  # Mamba-2 head width when ``headdim`` is None (the mixer's default)

_BYTES = ByteTokenizer()

# Sizes of the Sessa presets; a baseline preset is matched to these (see ``from_preset``). Parameter
# counts for every mixer: ``sessa.models.matching.param_table()``.
PRESETS: dict[str, dict[str, Any]] = {
    # runs a forward/generate on one CPU core in well under a second
    "tiny": dict(d_model=64, n_layers=2, n_heads=2, max_position_embeddings=512, d_state=16, headdim=16),
    # a quick CPU/GPU experiment (~2.4M parameters)
    "small": dict(d_model=256, n_layers=4, n_heads=4, max_position_embeddings=2048),
    # GPT-2-small-sized width and heads; the gated block has no MLP, so depth 24 for ~125M parameters
    "125m": dict(d_model=768, n_layers=24, n_heads=12, max_position_embeddings=2048),
    # GPT-2-medium width and heads, depth 36 for ~350M parameters
    "350m": dict(d_model=1024, n_layers=36, n_heads=16, max_position_embeddings=2048),
}


class SessaConfig(PretrainedConfig):
    """Configuration of :class:`~sessa.models.SessaForCausalLM` (model_type ``"sessa"``).

    Every field is validated in ``__post_init__``; a bad value raises ``ValueError``/``TypeError`` naming
    the field, the value and the rule. Options of a mixer the stack does not use are ignored.
    """

    model_type = "sessa"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
    }

    vocab_size: int = _BYTES.vocab_size  # token ids 0..vocab_size-1; default: the byte-level vocabulary
    d_model: int = 256  # residual stream width D
    n_layers: int = 4  # number of blocks
    mixer: str = "sessa"  # one of MIXER_NAMES, used by every layer unless layer_mixers is given
    layer_mixers: list[str] | None = None  # optional per-layer mixer names (hybrid stacks), len n_layers
    block: str = "gated"  # "gated" (paper: x + W_out(mixer(GELU(a)) * g)) or "prenorm" (mixer + SwiGLU MLP)
    mlp_hidden: int | None = None  # prenorm MLP width; None = 8/3 * d_model rounded to a multiple of 8
    # Sessa and attention
    n_heads: int = 4  # forward attention heads H (head width d_model / H)
    n_kv_heads: int | None = None  # key/value heads (GQA); None = n_heads
    use_forward_rope: bool = True  # RoPE on queries/keys of the Sessa forward branch and of attention
    attention_backend: str = "sdpa"  # "sdpa" or "reference"
    attention_bias: bool = False  # q/k/v biases of the attention baseline (Sessa's always have them)
    # Sessa feedback branch
    gamma_max: float = 0.999  # |gamma_t| < gamma_max < 1 bounds the feedback gain
    use_feedback: bool = True  # False = the paper's ablation gamma = 0 (no feedback parameters)
    feedback_backend: str = "auto"  # "auto" | "reference" | "chunked" | "triton"
    chunk_size: int | None = None  # feedback solve chunk; None = the backend's default
    # Mamba-2 / Mamba
    d_state: int | None = None  # SSM state size N; None = the mixer's default (64 Mamba-2, 16 Mamba)
    d_conv: int = 4  # causal depthwise convolution width
    expand: int = 2  # inner width = expand * d_model
    headdim: int | None = None  # Mamba-2 head width; None = 32
    dt_rank: int | str = "auto"  # Mamba dt projection rank; "auto" = ceil(d_model / 16)
    ssm_backend: str = "chunked"  # "chunked" | "reference" | "fla" (Mamba-2, fla-core, CUDA) | "auto"
    # shared
    ln_eps: float = 1e-5  # epsilon of every LayerNorm / RMSNorm
    tie_word_embeddings: bool = True  # LM head shares the token embedding matrix
    max_position_embeddings: int = 2048  # first allocation of a cache (it grows); no learned positions
    initializer_range: float = 0.02  # std of the embedding (and untied LM head) initialisation
    pad_token_id: int | None = _BYTES.pad_id
    bos_token_id: int | None = _BYTES.bos_id
    eos_token_id: int | None = _BYTES.eos_id

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if isinstance(self.layer_mixers, tuple):
            self.layer_mixers = list(self.layer_mixers)
        _validate(self)

    # -- derived values ------------------------------------------------------------------------------
    @property
    def mixer_names(self) -> list[str]:
        """The mixer name of every layer (length n_layers)."""
        return list(self.layer_mixers) if self.layer_mixers is not None else [self.mixer] * self.n_layers

    @property
    def resolved_mlp_hidden(self) -> int:
        """Width of the prenorm block's MLP."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return max(8, int(round(8 / 3 * self.d_model / 8)) * 8)

    def resolved_d_state(self, mixer: str) -> int:
        return self.d_state if self.d_state is not None else DEFAULT_D_STATE[mixer]

    def mixer_options(self, mixer: str) -> dict[str, Any]:
        """Constructor options (besides d_model and layer_idx) of the named mixer under this config."""
        if mixer not in _OPTION_BUILDERS:
            raise ValueError(f"mixer must be one of {list(MIXER_NAMES)}, got {mixer!r}")
        return _OPTION_BUILDERS[mixer](self)

    def block_options(self) -> dict[str, Any]:
        """Options of the block wrapper (besides d_model, mixer class, layer_idx)."""
        if self.block == "gated":
            return {"ln_eps": self.ln_eps}
        return {"mlp_ratio": self.resolved_mlp_hidden / self.d_model, "norm_eps": self.ln_eps}

    # -- constructors -------------------------------------------------------------------------------
    @staticmethod
    def hybrid_pattern(
        n_layers: int, every: int, other: str = "mamba2", offset: int | None = None
    ) -> list[str]:
        """Per-layer mixer names with Sessa in every ``every``-th layer and ``other`` elsewhere.

        Layer i is "sessa" when i % every == offset (default every - 1, so each group of ``every``
        layers ends with Sessa). Example: hybrid_pattern(4, 2) == ["mamba2", "sessa", "mamba2", "sessa"].
        """
        _check_int("n_layers", n_layers)
        _check_int("every", every)
        _check_choice("other", other, MIXER_NAMES)
        offset = every - 1 if offset is None else offset
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < every:
            raise ValueError(f"offset must be an int in [0, every={every}), got {offset!r}")
        return ["sessa" if i % every == offset else other for i in range(n_layers)]

    @classmethod
    def from_preset(cls, name: str, *, match: bool = True, **overrides: Any) -> SessaConfig:
        """A preset config: ``name`` is a size (``tiny``, ``small``, ``125m``, ``350m``), optionally with a
        mixer suffix (``tiny-mamba2``), or pass ``mixer=...`` among the overrides.

        Overrides are applied to the Sessa preset of that size. For a baseline mixer with ``match=True``
        the result is :func:`~sessa.models.matching.match_params` of that Sessa config: the baseline's
        width/expand/d_state/headdim/kv-heads/MLP are tuned to within 2% of its parameter count, holding
        fixed any of those knobs given explicitly in ``overrides``. ``match=False`` (and any hybrid
        stack, ``layer_mixers=...``) returns the plain config with the mixer swapped in. The preset sizes
        refer to the default gated block; ``block="prenorm"`` adds an MLP to every layer.
        """
        size, mixer = parse_preset_name(name)
        if "mixer" in overrides:
            if mixer is not None and overrides["mixer"] != mixer:
                raise ValueError(
                    f"preset name {name!r} names mixer {mixer!r} but mixer={overrides['mixer']!r} "
                    "was also given"
                )
            mixer = overrides.pop("mixer")
        mixer = "sessa" if mixer is None else mixer
        _check_choice("mixer", mixer, MIXER_NAMES)
        fields = {**PRESETS[size], **overrides}
        if mixer == "sessa" or not match or overrides.get("layer_mixers") is not None:
            return cls(**{**fields, "mixer": mixer})
        from sessa.models.matching import match_params  # matching builds modules: import on use

        return match_params(cls(**fields), mixer, fixed=tuple(overrides))


def parse_preset_name(name: str) -> tuple[str, str | None]:
    """Split "size" or "size-mixer" into (size, mixer or None); unknown names list the valid ones."""
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a str, got {type(name).__name__} ({name!r})")
    size, _, mixer = name.partition("-")
    if size not in PRESETS or (mixer and mixer not in MIXER_NAMES):
        valid = [*PRESETS, *(f"{s}-{m}" for s in PRESETS for m in MIXER_NAMES)]
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(valid)}")
    return size, (mixer or None)


# -- mixer options --------------------------------------------------------------------------------------
def _sessa_options(c: SessaConfig) -> dict[str, Any]:
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


def _attention_options(c: SessaConfig) -> dict[str, Any]:
    return dict(
        n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, rope=c.use_forward_rope, backend=c.attention_backend,
        bias=c.attention_bias,
    )


def _mamba2_options(c: SessaConfig) -> dict[str, Any]:
    return dict(
        d_state=c.resolved_d_state("mamba2"),
        d_conv=c.d_conv,
        expand=c.expand,
        headdim=c.headdim if c.headdim is not None else DEFAULT_HEADDIM,
        backend=c.ssm_backend,  # its gated RMSNorm keeps eps 1e-5 (PreNormBlock owns the name norm_eps)
    )


def _mamba_options(c: SessaConfig) -> dict[str, Any]:
    return dict(
        d_state=c.resolved_d_state("mamba"),
        d_conv=c.d_conv,
        expand=c.expand,
        dt_rank=c.dt_rank,
        backend=c.ssm_backend,
    )


_OPTION_BUILDERS = {
    "sessa": _sessa_options,
    "attention": _attention_options,
    "mamba2": _mamba2_options,
    "mamba": _mamba_options,
}


# -- validation -----------------------------------------------------------------------------------------
def _check_int(name: str, value: object, minimum: int = 1, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int{' or None' if optional else ''}, got {type(value).__name__} ({value!r})"
        )
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_float(name: str, value: object, low: float, high: float = math.inf) -> None:
    """low < value < high (open interval)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    if not low < value < high:
        raise ValueError(f"{name} must be in ({low}, {high}), got {value}")


def _validate(c: SessaConfig) -> None:
    for name in (
        "vocab_size",
        "d_model",
        "n_layers",
        "n_heads",
        "d_conv",
        "expand",
        "max_position_embeddings",
    ):
        _check_int(name, getattr(c, name))
    for name in ("n_kv_heads", "d_state", "headdim", "chunk_size", "mlp_hidden"):
        _check_int(name, getattr(c, name), optional=True)
    for name in ("use_forward_rope", "use_feedback", "tie_word_embeddings", "attention_bias"):
        _check_bool(name, getattr(c, name))
    _check_choice("mixer", c.mixer, MIXER_NAMES)
    _check_choice("block", c.block, BLOCK_NAMES)
    _check_choice("feedback_backend", c.feedback_backend, FEEDBACK_BACKENDS)
    _check_choice("attention_backend", c.attention_backend, ATTENTION_BACKENDS)
    _check_choice("ssm_backend", c.ssm_backend, SSM_BACKENDS)
    _check_float("gamma_max", c.gamma_max, 0.0, 1.0)
    _check_float("ln_eps", c.ln_eps, 0.0)
    _check_float("initializer_range", c.initializer_range, 0.0)
    if c.dt_rank != "auto":
        _check_int("dt_rank", c.dt_rank)
    _validate_layer_mixers(c)
    _validate_shapes(c)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(c, name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < c.vocab_size
        ):
            raise ValueError(
                f"{name} must be None or an int in [0, vocab_size={c.vocab_size}), got {value!r}"
            )


def _validate_layer_mixers(c: SessaConfig) -> None:
    if c.layer_mixers is None:
        return
    if not isinstance(c.layer_mixers, list):
        raise TypeError(
            f"layer_mixers must be a list of mixer names or None, got {type(c.layer_mixers).__name__}"
        )
    if len(c.layer_mixers) != c.n_layers:
        raise ValueError(
            f"layer_mixers must have n_layers={c.n_layers} entries, "
            f"got {len(c.layer_mixers)} ({c.layer_mixers})"
        )
    for i, name in enumerate(c.layer_mixers):
        _check_choice(f"layer_mixers[{i}]", name, MIXER_NAMES)


def _validate_shapes(c: SessaConfig) -> None:
    """Cross-field rules of the mixers the stack uses."""
    used = set(c.mixer_names)
    if used & set(MIXERS_WITH_HEADS):
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
    if "mamba2" in used:
        headdim = c.headdim if c.headdim is not None else DEFAULT_HEADDIM
        if (c.expand * c.d_model) % headdim:
            raise ValueError(
                f"expand * d_model must be divisible by headdim for mamba2, got expand={c.expand}, "
                f"d_model={c.d_model}, headdim={headdim}"
            )
