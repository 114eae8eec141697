"""Named model sizes, and the config of any trainable model matched to a Sessa size.

Presets are sizes of the Sessa model: ``tiny`` (CPU, seconds), ``small``, ``125m``, ``350m``. A preset
name may carry a model suffix, any name of :func:`sessa.registry.model_names` ("tiny-mamba2",
"small-sessa_nofb"); a baseline or variant preset is parameter-matched to the Sessa preset of the same
size (:func:`sessa.models.matching.match_params`).

    >>> from sessa.models.presets import from_preset, model_config
    >>> config = from_preset("tiny-mamba2")                       # Mamba-2 matched to Sessa "tiny"
    >>> target = from_preset("small", n_layers=2)
    >>> nofb = model_config(target, "sessa_nofb")                 # Sessa without feedback, matched
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sessa import registry
from sessa.models.configuration import SessaConfig
from sessa.models.matching import match_params, replace_fields

# Sizes of the Sessa presets; every other model is matched to these. Parameter counts for every model:
# ``sessa.models.matching.param_table()``.
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


def parse_preset_name(name: str) -> tuple[str, str | None]:
    """Split "size" or "size-model" into (size, model name or None); unknown names list the valid ones."""
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a str, got {type(name).__name__} ({name!r})")
    size, _, model = name.partition("-")
    if size not in PRESETS or (model and model not in registry.model_names()):
        valid = [*PRESETS, *(f"{s}-{m}" for s in PRESETS for m in registry.model_names())]
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(valid)}")
    return size, (model or None)


def model_config(
    target: SessaConfig,
    model: str,
    *,
    match: bool = True,
    fixed: Iterable[str] = (),
    tolerance: float = 0.02,
) -> SessaConfig:
    """The config of trainable model ``model`` (:func:`sessa.registry.model_names`) for a Sessa ``target``.

    ``match=True``: :func:`~sessa.models.matching.match_params` (within ``tolerance`` of the target's
    parameter count, holding the knobs in ``fixed``); ``match=False``: the target with the mixer (and the
    variant's fields) swapped in. The training harness builds every model through this.
    """
    if match:
        return match_params(target, model, tolerance=tolerance, fixed=fixed)
    spec = registry.model_spec(model)
    return replace_fields(target, mixer=spec.mixer, layer_mixers=None, **spec.overrides)


def from_preset(
    name: str, *, match: bool = True, config_class: type[SessaConfig] = SessaConfig, **overrides: Any
) -> SessaConfig:
    """A preset config: ``name`` is a size (``tiny``, ``small``, ``125m``, ``350m``), optionally with a model
    suffix (``tiny-mamba2``, ``tiny-sessa_nofb``), or pass ``mixer=...`` among the overrides.

    Overrides are applied to the Sessa preset of that size. For any other model with ``match=True`` the
    result is :func:`~sessa.models.matching.match_params` of that Sessa config: the model's
    width/expand/d_state/headdim/kv-heads/MLP are tuned to within 2% of its parameter count, holding fixed
    any of those knobs given explicitly in ``overrides``. ``match=False`` (and any hybrid stack,
    ``layer_mixers=...``) returns the plain config with the mixer swapped in. The preset sizes refer to the
    default gated block; ``block="prenorm"`` adds an MLP to every layer.
    """
    size, model = parse_preset_name(name)
    if "mixer" in overrides:
        if model is not None and overrides["mixer"] != model:
            raise ValueError(
                f"preset name {name!r} names model {model!r} but mixer={overrides['mixer']!r} was also given"
            )
        registry.mixer_spec(overrides["mixer"])  # `mixer=` takes mixer names only (no variants)
        model = overrides.pop("mixer")
    spec = registry.model_spec("sessa" if model is None else model)
    fields = {**PRESETS[size], **overrides}
    if spec.mixer == "sessa" and not spec.overrides:
        return config_class(**fields)
    if overrides.get("layer_mixers") is not None:  # a hybrid stack: the named model only sets `mixer`
        return config_class(**{**fields, "mixer": spec.mixer, **spec.overrides})
    return model_config(config_class(**fields), model, match=match, fixed=tuple(overrides))
