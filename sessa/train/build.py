"""Model construction for the harness: a preset, the task's vocabulary and length, and matched baselines."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from sessa.train.config import TrainConfig

MATCH_TOLERANCE = 0.02


def _nofb_matched(target: Any) -> Any:
    """Sessa without feedback (gamma = 0) widened so its parameter count is within 2% of ``target``."""
    from sessa.models import count_params

    goal = count_params(target)
    step = math.lcm(8, 2 * target.n_heads)
    best = None
    for d_model in range(target.d_model, 2 * target.d_model + 1, step):
        config = dataclasses.replace(target, use_feedback=False, d_model=d_model)
        err = abs(count_params(config) / goal - 1)
        if best is None or err < best[0]:
            best = (err, config)
    if best is None or best[0] > MATCH_TOLERANCE:
        raise ValueError(
            f"could not match sessa_nofb to {goal:,} parameters within 2% (closest {best[0]:.1%})"
        )
    return best[1]


def _special_ids(vocab_size: int, pad_id: int | None) -> dict[str, int | None]:
    """Special token ids for a task vocabulary: the byte tokenizer's ids only when they fit."""
    from sessa.models import SessaConfig

    defaults = SessaConfig()
    ids = {name: getattr(defaults, name) for name in ("pad_token_id", "bos_token_id", "eos_token_id")}
    ids = {k: (v if v is not None and v < vocab_size else None) for k, v in ids.items()}
    if pad_id is not None and 0 <= pad_id < vocab_size:
        ids["pad_token_id"] = pad_id
    return ids


def model_config(cfg: TrainConfig, vocab_size: int, max_len: int, pad_id: int | None = None) -> Any:
    """The SessaConfig of ``cfg.model``: Sessa from the preset; baselines resized to its parameter count."""
    from sessa.models import SessaConfig

    options = {
        "vocab_size": vocab_size,
        "max_position_embeddings": max(max_len, 16),
        **_special_ids(vocab_size, pad_id),
        **cfg.model_options,
    }
    if cfg.model == "sessa":
        return SessaConfig.from_preset(cfg.preset, mixer="sessa", **options)
    if cfg.model == "sessa_nofb":
        target = SessaConfig.from_preset(cfg.preset, mixer="sessa", **options)
        if cfg.match_params:
            return _nofb_matched(target)
        return dataclasses.replace(target, use_feedback=False)
    if (
        cfg.match_params
    ):  # model_options describe the Sessa target; the baseline is resized freely to match it
        from sessa.models import match_params

        return match_params(SessaConfig.from_preset(cfg.preset, mixer="sessa", **options), cfg.model)
    return SessaConfig.from_preset(cfg.preset, mixer=cfg.model, match=False, **options)


def build_model(
    cfg: TrainConfig, vocab_size: int, max_len: int, pad_id: int | None = None
) -> torch.nn.Module:
    from sessa.models import SessaForCausalLM

    return SessaForCausalLM(model_config(cfg, vocab_size, max_len, pad_id))
