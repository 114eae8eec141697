"""Parameter counting and parameter matching of baselines to a Sessa config.

``count_params(config)`` is exact (the unique parameters of ``SessaForCausalLM(config)``, tied weights
once) and allocates nothing: each distinct block is built once on the meta device.

``match_params(target, mixer)`` returns a config of the same depth, block type, vocabulary and
head count whose ``mixer`` is the baseline, with its parameter count within ``tolerance`` (2%) of the
target's. It searches these knobs (any named in ``fixed`` keeps the target's value):

* inside the mixer: ``n_kv_heads`` (divisors of n_heads; attention/Sessa), ``n_heads`` (attention: half,
  same, 2x or 4x; finer kv widths for small models), ``attention_bias`` (attention: q/k/v biases on or
  off), ``d_state`` (Mamba-2:
  multiples of 8 up to 2x its default; Mamba: multiples of 4), ``headdim`` (Mamba-2: half, same or twice
  the default), ``expand`` (1-4; Mamba-2/Mamba);
* ``mlp_hidden`` (prenorm blocks): solved for, in multiples of 8, since the count is linear in it;
* ``d_model``: multiples of lcm(8 (4 below width 256), n_heads, 2 n_heads with RoPE) between half and twice
  the target's.

Among candidates within tolerance it picks the one closest to the starting architecture, distance
= sum over changed knobs of |log(new / old)|, with d_model weighted 4x (width changes the residual
stream and the embeddings, so it is the last resort); ties go to the smaller count error.

Outcome for the presets (``param_table()``): attention widens d_model by 12.5% (the gated block has no
MLP to absorb Sessa's feedback projections; the ideal is √(9/7) ≈ 1.13); Mamba-2/Mamba blocks are a few
percent heavier than Sessa's at equal width, more than d_state/expand can absorb, so they narrow d_model
by 8-16; with prenorm blocks every baseline keeps d_model and only the MLP width moves.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

import torch

from sessa.models.configuration import MIXER_NAMES, MIXERS_WITH_HEADS, PRESETS, SessaConfig

KNOBS = ("d_model", "attention_bias", "n_heads", "n_kv_heads", "d_state", "headdim", "expand", "mlp_hidden")
D_MODEL_WEIGHT = 4.0  # cost of a width change relative to a change inside the mixer


def count_params(config: SessaConfig) -> int:
    """Exact number of unique parameters of ``SessaForCausalLM(config)`` (tied LM head counted once)."""
    embed = config.vocab_size * config.d_model
    final_norm = 2 * config.d_model if config.block == "gated" else config.d_model
    head = 0 if config.tie_word_embeddings else embed
    return embed + final_norm + head + sum(_block_params(config, name) for name in config.mixer_names)


_BLOCK_COUNTS: dict[tuple, int] = {}  # block signature -> parameter count


def _block_params(config: SessaConfig, mixer: str) -> int:
    """Parameters of one block; the block is built once per signature, on the meta device."""
    key = (
        config.block,
        mixer,
        config.d_model,
        tuple(sorted(config.block_options().items())),
        tuple(sorted(config.mixer_options(mixer).items())),
    )
    if key not in _BLOCK_COUNTS:
        from sessa.models.modeling import build_block  # torch modules: import on use

        with torch.device("meta"):
            block = build_block(config, 0, mixer=mixer)
        _BLOCK_COUNTS[key] = sum(p.numel() for p in block.parameters())
    return _BLOCK_COUNTS[key]


def match_params(
    target: SessaConfig, mixer: str, *, tolerance: float = 0.02, fixed: Iterable[str] = ()
) -> SessaConfig:
    """A ``mixer`` config within ``tolerance`` of ``count_params(target)`` (see the module docstring).

    Raises ``ValueError`` when no candidate is close enough (the message gives the closest one).
    """
    if mixer not in MIXER_NAMES:
        raise ValueError(f"mixer must be one of {list(MIXER_NAMES)}, got {mixer!r}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
    fixed = set(fixed)
    goal = count_params(target)
    base = _with(target, mixer=mixer, layer_mixers=None)
    if base is None:
        raise ValueError(f"the target config cannot host mixer {mixer!r} unchanged; pass a compatible config")
    home = _home(base, mixer)
    best: tuple[float, float, SessaConfig] | None = None
    closest: tuple[float, SessaConfig] | None = None
    for d_model in _d_model_candidates(base, mixer, fixed):
        width_cost = D_MODEL_WEIGHT * abs(math.log(d_model / base.d_model))
        if best is not None and width_cost > best[0]:
            break  # candidates come in order of width cost
        for inner in _inner_candidates(base, mixer, fixed, home):
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
            f"could not match a {mixer!r} model to {goal:,} parameters within {tolerance:.0%} "
            f"(fixed knobs: {sorted(fixed & set(KNOBS))}){detail}; fix fewer knobs, or use "
            "SessaConfig.from_preset(..., match=False) for an unmatched config"
        )
    return best[2]


def _with(config: SessaConfig, **changes: Any) -> SessaConfig | None:
    """A copy of ``config`` with ``changes``, or None when the combination is invalid."""
    fields = {**config.to_dict(), **changes}
    for key in ("model_type", "transformers_version", "architectures"):
        fields.pop(key, None)
    try:
        return SessaConfig(**fields)
    except (ValueError, TypeError):
        return None


def _home(config: SessaConfig, mixer: str) -> dict[str, int]:
    """The starting values of the inner knobs the mixer has."""
    home: dict[str, int] = {}
    if mixer in MIXERS_WITH_HEADS:
        home["n_kv_heads"] = config.n_kv_heads or config.n_heads
    if mixer == "attention":
        home["n_heads"] = config.n_heads
        home["attention_bias"] = int(config.attention_bias)
    if mixer in ("mamba2", "mamba"):
        home["d_state"] = config.resolved_d_state(mixer)
        home["expand"] = config.expand
    if mixer == "mamba2":
        home["headdim"] = config.mixer_options("mamba2")["headdim"]
    return home


def _inner_candidates(
    config: SessaConfig, mixer: str, fixed: set[str], home: dict[str, int]
) -> list[dict[str, int]]:
    grids: dict[str, list[int]] = {}
    for knob, value in home.items():
        if knob in fixed:
            grids[knob] = [value]
        elif knob == "n_kv_heads":  # combinations that do not divide n_heads are rejected by _with
            most = config.n_heads * (1 if "n_heads" in fixed or "n_heads" not in home else 4)
            grids[knob] = list(range(1, most + 1))
        elif knob == "attention_bias":
            grids[knob] = [bool(value), not value]
        elif knob == "n_heads":  # attention only: more heads give finer kv widths at small d_model
            grids[knob] = sorted({max(1, value // 2), value, 2 * value, 4 * value})
        elif knob == "d_state":
            step = 8 if mixer == "mamba2" else 4
            grids[knob] = sorted({*range(step, 2 * value + 1, step), value})
        elif knob == "headdim":
            grids[knob] = sorted({max(value // 2, 1), value, 2 * value})
        elif knob == "expand":
            grids[knob] = sorted({1, 2, 3, 4, value})
    combos = [dict(zip(grids, values, strict=True)) for values in itertools.product(*grids.values())]
    return sorted(combos, key=lambda inner: _distance(inner, home))


def _distance(values: dict[str, int], home: dict[str, int]) -> float:
    # a flipped boolean knob (attention_bias) costs 0.1, less than any width change
    return sum(0.1 * (values[k] != home[k]) if k == "attention_bias" else abs(math.log(values[k] / home[k]))
               for k in values)


def _d_model_candidates(config: SessaConfig, mixer: str, fixed: set[str]) -> list[int]:
    """Valid widths in [d/2, 2d], nearest (in log) first; the target's own width always comes first."""
    d = config.d_model
    if "d_model" in fixed:
        return [d]
    step = 8 if d >= 256 else 4  # small models need the finer grid to land within 2%
    if mixer in MIXERS_WITH_HEADS:
        step = math.lcm(step, config.n_heads * (2 if config.use_forward_rope else 1))
    widths = set(range(step, 2 * d + 1, step)) - set(range(step, d // 2, step))
    return [d, *sorted(widths - {d}, key=lambda w: abs(math.log(w / d)))]


def _solve_mlp(
    config: SessaConfig, goal: int, fixed: set[str], cost: float, base: SessaConfig
) -> tuple[SessaConfig, float]:
    """For prenorm blocks, the MLP width (multiple of 8) that brings the count closest to ``goal``."""
    if config.block != "prenorm" or "mlp_hidden" in fixed:
        return config, cost
    h0 = config.resolved_mlp_hidden
    c0 = count_params(_with(config, mlp_hidden=h0))
    slope = (count_params(_with(config, mlp_hidden=h0 + 8)) - c0) / 8  # the count is linear in mlp_hidden
    hidden = max(8, h0 + 8 * round((goal - c0) / slope / 8))
    solved = _with(config, mlp_hidden=hidden)
    return solved, cost + abs(math.log(hidden / base.resolved_mlp_hidden))


def _describe(config: SessaConfig) -> str:
    parts = [f"d_model={config.d_model}"]
    mixer = config.mixer
    if mixer in MIXERS_WITH_HEADS:
        parts.append(f"heads={config.n_heads}/{config.n_kv_heads or config.n_heads}kv")
    if mixer == "attention" and config.attention_bias:
        parts.append("qkv bias")
    if mixer in ("mamba2", "mamba"):
        parts += [f"d_state={config.resolved_d_state(mixer)}", f"expand={config.expand}"]
    if mixer == "mamba2":
        parts.append(f"headdim={config.mixer_options('mamba2')['headdim']}")
    if config.block == "prenorm":
        parts.append(f"mlp_hidden={config.resolved_mlp_hidden}")
    return ", ".join(parts)


def param_table(presets: Iterable[str] = tuple(PRESETS), block: str = "gated") -> str:
    """Markdown table of parameter counts per preset and mixer (baselines matched to Sessa).

    Columns: preset, mixer, the architecture knobs, parameters, and the difference to the Sessa preset.
    """
    rows = ["| preset | mixer | architecture | parameters | vs Sessa |", "|---|---|---|---:|---:|"]
    for size in presets:
        sessa = SessaConfig.from_preset(size, block=block)
        goal = count_params(sessa)
        for mixer in MIXER_NAMES:
            config = sessa if mixer == "sessa" else match_params(sessa, mixer)
            n = count_params(config)
            arch = f"{config.n_layers} layers, {_describe(config)}"
            rows.append(f"| {size} | {mixer} | {arch} | {n:,} | {n / goal - 1:+.2%} |")
    return "\n".join(rows)
