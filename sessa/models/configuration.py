"""``SessaConfig``: one Hugging Face config for Sessa language models and their matched baselines.

A model is ``n_layers`` blocks over a ``d_model``-wide residual stream. Each block wraps one sequence
mixer (:mod:`sessa.modules.contract`) named by ``mixer`` (or per layer by ``layer_mixers`` for hybrid
stacks), any name of :func:`sessa.registry.mixer_names`: "sessa", "attention", "mamba2", "mamba". ``block``
picks the wrapper: "gated" (the paper's block, DESIGN §1, no MLP) or "prenorm" (mixer + SwiGLU MLP, the
usual Transformer layout).

The config is data only: its fields, their validation, and the constructor options each mixer reads from
it (through :mod:`sessa.registry`). Unknown keys are rejected (with the closest valid name), except the
keys ``PretrainedConfig`` itself owns. Presets and parameter matching live above it, in
:mod:`sessa.models.presets` and :mod:`sessa.models.matching`; ``SessaConfig.from_preset`` forwards there.

Example:
    >>> config = SessaConfig.from_preset("tiny")                      # Sessa, 2 layers of width 64
    >>> hybrid = SessaConfig.from_preset("tiny", n_layers=4,
    ...     layer_mixers=SessaConfig.hybrid_pattern(4, every=2))     # mamba2, sessa, mamba2, sessa
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PretrainedConfig

from sessa import registry
from sessa.tokens import ByteTokenizer
from sessa.validation import check_bool, check_choice, check_float, check_int, did_you_mean

_BYTES = ByteTokenizer()


def _pretrained_config_keys() -> frozenset[str]:
    """Constructor keys that are not dataclass fields but that ``PretrainedConfig`` consumes itself
    (written by save_pretrained / from_pretrained, or legacy generation settings it drops)."""
    keys = {
        "model_type", "name_or_path", "_name_or_path", "_commit_hash", "torch_dtype", "output_attentions",
        "attn_implementation", "experts_implementation", "num_labels",
        "_attn_implementation_internal", "_experts_implementation_internal",
    }
    from transformers import GenerationConfig

    defaults = getattr(GenerationConfig, "_get_default_generation_params", None)
    keys |= set(defaults()) if callable(defaults) else {"use_cache", "max_length", "do_sample"}
    return frozenset(keys)


_PRETRAINED_KEYS = _pretrained_config_keys()


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
    mixer: str = "sessa"  # a name of sessa.registry.mixer_names(), used by every layer unless layer_mixers
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
    feedback_backend: str = "auto"  # "auto" | "reference" | "chunked" | "triton" (sessa.ops.feedback)
    chunk_size: int | None = None  # feedback solve chunk; None = the backend's default
    # Mamba-2 / Mamba
    d_state: int | None = None  # SSM state size N; None = the mixer's default (64 Mamba-2, 16 Mamba)
    d_conv: int = 4  # causal depthwise convolution width
    expand: int = 2  # inner width = expand * d_model
    headdim: int | None = None  # Mamba-2 head width; None = 32
    dt_rank: int | str = "auto"  # Mamba dt projection rank; "auto" = ceil(d_model / 16)
    ssm_backend: str = "chunked"  # "chunked", "reference"; Mamba-2 also "fla" (fla-core, CUDA) and "auto"
    # shared
    ln_eps: float = 1e-5  # epsilon of every LayerNorm / RMSNorm
    tie_word_embeddings: bool = True  # LM head shares the token embedding matrix
    max_position_embeddings: int = 2048  # first allocation of a cache (it grows); no learned positions
    initializer_range: float = 0.02  # std of the embedding (and untied LM head) initialisation
    pad_token_id: int | None = _BYTES.pad_id
    bos_token_id: int | None = _BYTES.bos_id
    eos_token_id: int | None = _BYTES.eos_id

    def __post_init__(self, **kwargs: Any) -> None:
        _reject_unknown_keys(type(self), kwargs)
        super().__post_init__(**kwargs)
        if isinstance(self.layer_mixers, tuple):
            self.layer_mixers = list(self.layer_mixers)
        _validate(self)

    # -- derived values ------------------------------------------------------------------------------
    @property
    def mixer_names(self) -> list[str]:
        """The mixer name of every layer (length n_layers)."""
        return list(self.layer_mixers) if self.layer_mixers is not None else [self.mixer] * self.n_layers

    def resolved_d_state(self, mixer: str) -> int:
        """``d_state``, or the mixer's default when it is None."""
        return registry.resolved_field(self, mixer, "d_state")

    def mixer_options(self, mixer: str) -> dict[str, Any]:
        """Constructor options (besides d_model and layer_idx) of the named mixer under this config."""
        return registry.mixer_options(mixer, self)

    def block_options(self) -> dict[str, Any]:
        """Options of the block wrapper (besides d_model, mixer class, layer_idx)."""
        return registry.block_spec(self.block).options(self)

    # -- constructors -------------------------------------------------------------------------------
    @staticmethod
    def hybrid_pattern(
        n_layers: int, every: int, other: str = "mamba2", offset: int | None = None
    ) -> list[str]:
        """Per-layer mixer names with Sessa in every ``every``-th layer and ``other`` elsewhere.

        Layer i is "sessa" when i % every == offset (default every - 1, so each group of ``every``
        layers ends with Sessa). Example: hybrid_pattern(4, 2) == ["mamba2", "sessa", "mamba2", "sessa"].
        """
        check_int("n_layers", n_layers)
        check_int("every", every)
        check_choice("other", other, registry.mixer_names())
        offset = every - 1 if offset is None else offset
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < every:
            raise ValueError(f"offset must be an int in [0, every={every}), got {offset!r}")
        return ["sessa" if i % every == offset else other for i in range(n_layers)]

    @classmethod
    def from_preset(cls, name: str, *, match: bool = True, **overrides: Any) -> SessaConfig:
        """A preset config; see :func:`sessa.models.presets.from_preset` (this forwards there)."""
        from sessa.models.presets import from_preset  # presets sit above the config (they build models)

        return from_preset(name, match=match, config_class=cls, **overrides)


# -- validation -----------------------------------------------------------------------------------------
def _reject_unknown_keys(cls: type[SessaConfig], kwargs: dict[str, Any]) -> None:
    """Raise for a constructor key that is neither a field, an alias, nor a key PretrainedConfig owns."""
    unknown = [key for key in kwargs if key not in _PRETRAINED_KEYS and key not in cls.attribute_map]
    if unknown:
        valid = [f.name for f in dataclasses.fields(cls)] + list(cls.attribute_map)
        key = unknown[0]
        more = f" (also unknown: {unknown[1:]})" if len(unknown) > 1 else ""
        raise ValueError(f"unknown SessaConfig key {key!r}{did_you_mean(key, valid, cutoff=0.0)}{more}")


def _validate(c: SessaConfig) -> None:
    ints = ("vocab_size", "d_model", "n_layers", "n_heads", "d_conv", "expand", "max_position_embeddings")
    for name in ints:
        check_int(name, getattr(c, name))
    for name in ("n_kv_heads", "d_state", "headdim", "chunk_size", "mlp_hidden"):
        check_int(name, getattr(c, name), optional=True)
    for name in ("use_forward_rope", "use_feedback", "tie_word_embeddings", "attention_bias"):
        check_bool(name, getattr(c, name))
    check_choice("mixer", c.mixer, registry.mixer_names())
    check_choice("block", c.block, registry.block_names())
    for name, values in registry.backend_fields().items():
        check_choice(name, getattr(c, name), values)
    check_float("gamma_max", c.gamma_max, 0.0, 1.0)
    check_float("ln_eps", c.ln_eps, 0.0)
    check_float("initializer_range", c.initializer_range, 0.0)
    if c.dt_rank != "auto":
        check_int("dt_rank", c.dt_rank)
    _validate_layer_mixers(c)
    for mixer in dict.fromkeys(c.mixer_names):  # the rules of each mixer the stack uses
        spec = registry.mixer_spec(mixer)
        for name in spec.backends:
            valid = registry.backend_choices(mixer, name)
            check_choice(f"{name} (for mixer {mixer!r})", getattr(c, name), valid)
        if spec.check is not None:
            spec.check(c)
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
        check_choice(f"layer_mixers[{i}]", name, registry.mixer_names())
