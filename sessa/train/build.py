"""Model construction for the harness: a preset, the task's vocabulary and length, and matched baselines."""

from __future__ import annotations

from typing import Any

import torch

from sessa.train.config import TrainConfig


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
    """The SessaConfig of ``cfg.model``: the Sessa preset (with the task's vocabulary, length and
    ``model_options``) is the target; every other model is :func:`sessa.models.model_config` of it
    (parameter-matched unless ``cfg.match_params`` is off)."""
    from sessa.models import SessaConfig
    from sessa.models import model_config as variant_config

    options = {
        "vocab_size": vocab_size,
        "max_position_embeddings": max(max_len, 16),
        **_special_ids(vocab_size, pad_id),
        **cfg.model_options,
    }
    target = SessaConfig.from_preset(cfg.preset, mixer="sessa", **options)
    return target if cfg.model == "sessa" else variant_config(target, cfg.model, match=cfg.match_params)


def build_model(
    cfg: TrainConfig, vocab_size: int, max_len: int, pad_id: int | None = None
) -> torch.nn.Module:
    from sessa.models import SessaForCausalLM

    return SessaForCausalLM(model_config(cfg, vocab_size, max_len, pad_id))
