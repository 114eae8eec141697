"""Atomic, resumable checkpoints: safetensors weights (a Hugging Face directory) + a weights-only state file.

Layout of ``<out>/checkpoints``::

    step_000200/            model.safetensors + config.json (loadable by from_pretrained / `sessa eval`)
                            training_state.pt (optimizer, scheduler, RNG, data position; weights_only)
                            train_config.json
    latest                  name of the newest complete checkpoint

A checkpoint is written into a temporary folder and renamed into place, then ``latest`` is replaced
atomically, so a crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from sessa.models.loading import LATEST, latest_in

STATE_FILE = "training_state.pt"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    training_state: dict[str, Any],
    train_config: dict[str, Any],
    keep: int = 2,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep`` checkpoints.

    ``weights``: a full (gathered) state dict to write instead of ``model.state_dict()`` (FSDP)."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
    torch.save(training_state, tmp / STATE_FILE)
    (tmp / "train_config.json").write_text(json.dumps(train_config, indent=2, default=str))
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(root / LATEST, name)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (its ``latest`` pointer), or None."""
    return latest_in(root)


def check_model_config(path: Path, config: Any) -> None:
    """Raise ValueError naming the first differing field when a checkpoint was made for another model.

    ``config`` is the current model's config; the saved one is read back through the same class so both
    sides are normalised alike."""
    try:
        json.loads((path / "config.json").read_text())
        saved = type(config).from_pretrained(str(path)).to_dict()
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot read the model config of checkpoint {path}: {exc}") from exc
    expected = config.to_dict()
    ignore = {"transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype"}
    for key in sorted(set(saved) | set(expected)):
        if key in ignore:
            continue
        if saved.get(key) != expected.get(key):
            raise ValueError(
                f"checkpoint {path} was made for a different model: {key} = {saved.get(key)!r} there, "
                f"{expected.get(key)!r} here"
            )


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load model.safetensors from a checkpoint folder into ``model`` (strict), with clear errors."""
    from safetensors.torch import load_model

    file = path / "model.safetensors"
    if not file.exists():
        raise ValueError(f"checkpoint {path} has no model.safetensors")
    try:
        load_model(model, str(file), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights in {file} do not match the model: {exc}") from exc
    except Exception as exc:  # safetensors raises its own error type for damaged files
        raise ValueError(f"corrupt checkpoint file {file}: {exc}") from exc


def load_training_state(path: Path) -> dict[str, Any]:
    file = path / STATE_FILE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"corrupt or unreadable training state {file}: {exc}") from exc
