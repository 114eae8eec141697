"""Model construction for the harness: a preset, the task's vocabulary and length, and matched baselines."""

from __future__ import annotations

from typing import Any

import torch

from sessa.train.config import TrainConfig


def model_config(cfg: TrainConfig, vocab_size: int, max_len: int) -> Any:
    """The SessaConfig of ``cfg.model``: Sessa from the preset; baselines resized to its parameter count."""
    from sessa.models import SessaConfig, match_params

    options = dict(cfg.model_options)
    base = SessaConfig.from_preset(cfg.preset, mixer="sessa", vocab_size=vocab_size,
                                   max_position_embeddings=max(max_len, 16), **options)
    if cfg.model == "sessa":
        return base
    mixer = "sessa" if cfg.model == "sessa_nofb" else cfg.model
    extra = {"use_feedback": False} if cfg.model == "sessa_nofb" else {}
    if cfg.match_params:
        return match_params(base, mixer, **extra)
    return SessaConfig.from_preset(cfg.preset, mixer=mixer, vocab_size=vocab_size,
                                   max_position_embeddings=max(max_len, 16), **{**options, **extra})


def build_model(cfg: TrainConfig, vocab_size: int, max_len: int) -> torch.nn.Module:
    from sessa.models import SessaForCausalLM

    return SessaForCausalLM(model_config(cfg, vocab_size, max_len))
