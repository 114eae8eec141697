"""Finding and loading a saved model: a ``save_pretrained`` directory, a training checkpoint
(``runs/x/checkpoints/step_N``), a checkpoints folder with its ``latest`` pointer, or a run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

LATEST = "latest"  # the file in a checkpoints folder that names the newest complete checkpoint


def latest_in(root: Path) -> Path | None:
    """The checkpoint ``root/latest`` names, None without a pointer; ValueError when it names nothing."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not path.is_dir():
        raise ValueError(f"checkpoint pointer {pointer} names {path.name}, which does not exist")
    return path


def resolve_model_dir(path: str | Path) -> Path:
    """The model directory (the one holding config.json) that ``path`` stands for."""
    path = Path(path)
    for candidate in (path, latest_in(path), latest_in(path / "checkpoints")):
        if candidate is not None and (candidate / "config.json").is_file():
            return candidate
    raise ValueError(f"{path} is not a model directory (no config.json, and no checkpoints/latest pointer): "
                     "pass a checkpoint, a run folder or a save_pretrained directory")


def load_model(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(SessaForCausalLM in eval mode on ``device``, the run's train_config.json or {}) for ``path``."""
    from transformers.utils import logging as hf_logging

    from sessa.models.modeling import SessaForCausalLM

    folder = resolve_model_dir(path)
    hf_logging.disable_progress_bar()
    try:
        model = SessaForCausalLM.from_pretrained(str(folder))
    except Exception as exc:  # safetensors and transformers raise their own types for damaged files
        raise ValueError(f"cannot load the model in {folder}: {exc}") from exc
    meta_file = folder / "train_config.json"
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    except ValueError as exc:
        raise ValueError(f"corrupt {meta_file}: {exc}") from exc
    return model.to(device).eval(), meta
