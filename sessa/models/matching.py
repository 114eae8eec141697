"""Parameter counting and parameter matching of baselines to a Sessa config.

``count_params(config)`` is exact (the unique parameters of ``SessaForCausalLM(config)``, tied weights
once) and allocates nothing: each distinct block is built once on the meta device.

``match_params(target, model)`` returns a config of the same depth, block type, vocabulary and
head count for any trainable model (:func:`sessa.registry.model_names`: a mixer, or a variant such as
"sessa_nofb" = Sessa with ``use_feedback=False``), with its parameter count within ``tolerance`` (2%) of
the target's. It searches these knobs (any named in ``fixed`` keeps the target's value):

* inside the mixer, the knobs its registry entry names (:class:`sessa.registry.Knob`): ``n_kv_heads``
  (divisors of n_heads; attention/Sessa), ``n_heads`` (attention: half, same, 2x or 4x; finer kv widths
  for small models), ``attention_bias`` (attention: q/k/v biases on or off), ``d_state`` (multiples of
  the knob's step up to 2x the default: 8 for Mamba-2, 4 for Mamba), ``headdim`` (Mamba-2: half, same or
  twice the default), ``expand`` (1-4; Mamba-2/Mamba);
* ``mlp_hidden`` (prenorm blocks): solved for, in multiples of 8, since the count is linear in it;
* ``d_model``: multiples of 8 (4 below width 256) between half and twice the target's; for mixers with
  heads, multiples of lcm(that, n_heads, 2 n_heads with RoPE).

Among candidates within tolerance it picks the one closest to the starting architecture, distance
= sum over changed knobs of |log(new / old)|, with d_model weighted 4x (width changes the residual
stream and the embeddings, so it is the last resort); ties go to the smaller count error.

Outcome for the presets (``param_table()``): attention widens d_model by 12.5% (the gated block has no
MLP to absorb Sessa's feedback projections; the ideal is √(9/7) ≈ 1.13); Mamba-2/Mamba blocks are a few
percent heavier than Sessa's at equal width, more than d_state/expand can absorb, so they narrow d_model
by 8-16; Sessa without feedback widens d_model (it loses proj_fb and the gain); with prenorm blocks every
model keeps d_model and only the MLP width moves.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from sessa import registry
from sessa.models.configuration import SessaConfig
from sessa.models.modeling import build_block, build_final_norm
from sessa.modules.blocks import default_mlp_hidden

D_MODEL_WEIGHT = 4.0  # cost of a width change relative to a change inside the mixer


def count_params(config: SessaConfig) -> int:
    """Exact number of unique parameters of ``SessaForCausalLM(config)`` (tied LM head counted once)."""
    embed = config.vocab_size * config.d_model
    head = 0 if config.tie_word_embeddings else embed
    with torch.device("meta"):
        final_norm = sum(p.numel() for p in build_final_norm(config).parameters())
    return embed + final_norm + head + sum(_block_params(config, name) for name in config.mixer_names)


_BLOCK_COUNTS: dict[tuple, int] = {}  # block signature -> parameter count


def _block_params(config: SessaConfig, mixer: str) -> int:
    """Parameters of one block; the block is built once per signature, on the meta device."""
    key = (
        registry.block_spec(config.block).cls,
        registry.mixer_spec(mixer).cls,
        config.d_model,
        tuple(sorted(config.block_options().items())),
        tuple(sorted(config.mixer_options(mixer).items())),
    )
    if key not in _BLOCK_COUNTS:
        with torch.device("meta"):
            block = build_block(config, 0, mixer=mixer)
        _BLOCK_COUNTS[key] = sum(p.numel() for p in block.parameters())
    return _BLOCK_COUNTS[key]


def replace_fields(config: SessaConfig, **changes: Any) -> SessaConfig:
    """A validated copy of ``config`` with ``changes`` (raises like the constructor)."""
    return dataclasses.replace(config, **changes)


def _with(config: SessaConfig, **changes: Any) -> SessaConfig | None:
    """A copy of ``config`` with ``changes``, or None when the combination is invalid."""
    try:
        return replace_fields(config, **changes)
    except (ValueError, TypeError):
        return None


def match_params(
    target: SessaConfig, model: str, *, tolerance: float = 0.02, fixed: Iterable[str] = ()
) -> SessaConfig:
    """A config of ``model`` (a mixer or variant name) within ``tolerance`` of ``count_params(target)``
    (see the module docstring).

    Raises ``ValueError`` when no candidate is close enough (the message gives the closest one).
    """
    spec = registry.model_spec(model)
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
    fixed = set(fixed)
    goal = count_params(target)
    base = _with(target, mixer=spec.mixer, layer_mixers=None, **spec.overrides)
    if base is None:
        raise ValueError(f"the target config cannot host model {model!r} unchanged; pass a compatible config")
    home = _home(base)
    best: tuple[float, float, SessaConfig] | None = None
    closest: tuple[float, SessaConfig] | None = None
    for d_model in _d_model_candidates(base, fixed):
        width_cost = D_MODEL_WEIGHT * abs(math.log(d_model / base.d_model))
        if best is not None and width_cost > best[0]:
            break  # candidates come in order of width cost
        for inner in _inner_candidates(base, fixed, home):
            cost = width_cost + _distance(inner, home)
            if best is not None and cost > best[0]:
                continue
            config = _with(base, d_model=d_model, **inner)
            if config is None:
                continue
            config, cost = _solve_mlp(config, goal, fixed, cost, base)
            err = abs(count_params(config) / goal - 1)
            if closest is None or err < closest[0]:
                closest = (err, config)
            if err <= tolerance and (best is None or (cost, err) < best[:2]):
                best = (cost, err, config)
    if best is None:
        detail = "" if closest is None else f"; closest: {_describe(closest[1])} at {closest[0]:.1%}"
        raise ValueError(
            f"could not match a {model!r} model to {goal:,} parameters within {tolerance:.0%} "
            f"(fixed knobs: {sorted(fixed & {'d_model', 'mlp_hidden', *home})}){detail}; fix fewer knobs, or "
            "use SessaConfig.from_preset(..., match=False) for an unmatched config"
        )
    return best[2]


def _home(config: SessaConfig) -> dict[str, int]:
    """The starting values of the knobs of the config's mixer (booleans as 0/1)."""
    knobs = registry.mixer_spec(config.mixer).knobs
    return {k.field: int(registry.resolved_field(config, config.mixer, k.field)) for k in knobs}


# knob -> (home value, knob, config, fixed knobs, home values) -> the values to try
_GRIDS: dict[str, Callable[..., list[int]]] = {
    # combinations that do not divide n_heads are rejected by _with
    "n_kv_heads": lambda v, k, c, fixed, home: list(
        range(1, c.n_heads * (4 if "n_heads" in home and "n_heads" not in fixed else 1) + 1)
    ),
    "attention_bias": lambda v, k, c, fixed, home: [bool(v), not v],
    # more heads give finer kv widths at small d_model
    "n_heads": lambda v, k, c, fixed, home: sorted({max(1, v // 2), v, 2 * v, 4 * v}),
    "d_state": lambda v, k, c, fixed, home: sorted({*range(k.step, 2 * v + 1, k.step), v}),
    "headdim": lambda v, k, c, fixed, home: sorted({max(v // 2, 1), v, 2 * v}),
    "expand": lambda v, k, c, fixed, home: sorted({1, 2, 3, 4, v}),
}


def _inner_candidates(config: SessaConfig, fixed: set[str], home: dict[str, int]) -> list[dict[str, int]]:
    grids: dict[str, list[int]] = {}
    for knob in registry.mixer_spec(config.mixer).knobs:
        value = home[knob.field]
        if knob.field in fixed:
            grids[knob.field] = [value]
        elif knob.field in _GRIDS:
            grids[knob.field] = _GRIDS[knob.field](value, knob, config, fixed, home)
        else:
            raise ValueError(f"parameter matching has no grid for knob {knob.field!r}; known: {list(_GRIDS)}")
    combos = [dict(zip(grids, values, strict=True)) for values in itertools.product(*grids.values())]
    return sorted(combos, key=lambda inner: _distance(inner, home))


def _distance(values: dict[str, int], home: dict[str, int]) -> float:
    # a flipped boolean knob (attention_bias) costs 0.1, less than any width change
    return sum(0.1 * (values[k] != home[k]) if k == "attention_bias" else abs(math.log(values[k] / home[k]))
               for k in values)


def _d_model_candidates(config: SessaConfig, fixed: set[str]) -> list[int]:
    """Valid widths in [d/2, 2d], nearest (in log) first; the target's own width always comes first."""
    d = config.d_model
    if "d_model" in fixed:
        return [d]
    step = 8 if d >= 256 else 4  # small models need the finer grid to land within 2%
    if registry.mixer_spec(config.mixer).heads:
        step = math.lcm(step, config.n_heads * (2 if config.use_forward_rope else 1))
    widths = set(range(step, 2 * d + 1, step)) - set(range(step, d // 2, step))
    return [d, *sorted(widths - {d}, key=lambda w: abs(math.log(w / d)))]


def _mlp_hidden(config: SessaConfig) -> int:
    return config.mlp_hidden if config.mlp_hidden is not None else default_mlp_hidden(config.d_model)


def _solve_mlp(
    config: SessaConfig, goal: int, fixed: set[str], cost: float, base: SessaConfig
) -> tuple[SessaConfig, float]:
    """For blocks with an MLP, the MLP width (multiple of 8) that brings the count closest to ``goal``."""
    if "mlp_hidden" not in config.block_options() or "mlp_hidden" in fixed:
        return config, cost
    h0 = _mlp_hidden(config)
    c0 = count_params(_with(config, mlp_hidden=h0))
    slope = (count_params(_with(config, mlp_hidden=h0 + 8)) - c0) / 8  # the count is linear in mlp_hidden
    hidden = max(8, h0 + 8 * round((goal - c0) / slope / 8))
    solved = _with(config, mlp_hidden=hidden)
    return solved, cost + abs(math.log(hidden / _mlp_hidden(base)))


def _describe(config: SessaConfig) -> str:
    mixer = config.mixer
    spec = registry.mixer_spec(mixer)
    parts = [f"d_model={config.d_model}"]
    if spec.heads:
        parts.append(f"heads={config.n_heads}/{registry.resolved_field(config, mixer, 'n_kv_heads')}kv")
    for knob in spec.knobs:
        if knob.field == "attention_bias" and config.attention_bias:
            parts.append("qkv bias")
        elif knob.field not in ("n_heads", "n_kv_heads", "attention_bias"):
            parts.append(f"{knob.field}={registry.resolved_field(config, mixer, knob.field)}")
    for variant in registry.VARIANTS.values():  # e.g. "use_feedback=False" for Sessa without feedback
        if variant.mixer == mixer:
            parts += [f"{k}={v}" for k, v in variant.overrides.items() if getattr(config, k) == v]
    if "mlp_hidden" in config.block_options():
        parts.append(f"mlp_hidden={_mlp_hidden(config)}")
    return ", ".join(parts)


def param_table(presets: Iterable[str] | None = None, block: str = "gated") -> str:
    """Markdown table of parameter counts per preset and trainable model (all matched to Sessa).

    Columns: preset, model, the architecture knobs, parameters, and the difference to the Sessa preset.
    """
    from sessa.models.presets import PRESETS, from_preset  # presets sit above matching

    rows = ["| preset | model | architecture | parameters | vs Sessa |", "|---|---|---|---:|---:|"]
    for size in PRESETS if presets is None else presets:
        sessa = from_preset(size, block=block)
        goal = count_params(sessa)
        for model in registry.model_names():
            config = sessa if model == "sessa" else match_params(sessa, model)
            n = count_params(config)
            arch = f"{config.n_layers} layers, {_describe(config)}"
            rows.append(f"| {size} | {model} | {arch} | {n:,} | {n / goal - 1:+.2%} |")
    return "\n".join(rows)
