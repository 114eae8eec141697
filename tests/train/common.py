"""Tiny training settings shared by the harness tests (CPU, seconds per run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sessa.train.config import TrainConfig

TASK = {"vocab_size": 64, "seq_len": 24, "n_pairs": 4, "n_train": 256, "n_valid": 32, "n_test": 32}


def tiny_config(out_dir: Path, **kw: Any) -> TrainConfig:
    """An 8-step MQAR run of a 2-layer tiny Sessa into ``out_dir``; ``kw`` overrides any field."""
    base = dict(
        task="mqar",
        task_options=TASK,
        model="sessa",
        preset="tiny",
        steps=8,
        batch_size=8,
        lr=3e-3,
        warmup_steps=2,
        eval_every=4,
        eval_examples=16,
        log_every=1,
        out_dir=str(out_dir),
        model_options={"n_layers": 2},
    )
    return TrainConfig(**{**base, **kw})


def losses(summary: dict[str, Any]) -> list[float]:
    """The training losses of a run's history (eval rows have none)."""
    return [h["loss"] for h in summary["history"] if h.get("loss") is not None]
