"""What ``--resume`` may change: the requested settings are compared with the checkpoint's, field by field.

A change to anything that alters the math or the data (the optimiser and schedule, seeds, batch size, task,
model and their options, precision) is an error that lists every difference, except the fields in
``RESUME_CHANGEABLE`` named with ``--allow-change``: those are applied from the checkpoint on, and the run's
config.json records the new values. Bookkeeping fields (evaluation, logging, checkpointing, device,
distributed strategy, output folder, compilation and activation checkpointing) may change freely.

``steps`` follows its own rule. More steps extend the run: the learning rate continues from its value at
the checkpoint and decays by a cosine to ``lr * min_lr_ratio`` over the added steps (no jump back up, no
second warm-up); the rule's starting point is saved, so later resumes reproduce it. Fewer steps than the
checkpoint has done is an error, and so is resuming a run that is already complete at its step count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sessa.train.config import RESUME_CHANGEABLE, TrainConfig

FREE_FIELDS = frozenset(
    {
        "steps",
        "eval_every",
        "eval_examples",
        "eval_batch_size",
        "ckpt_every",
        "ckpt_minutes",
        "keep_ckpts",
        "log_every",
        "health",
        "device",
        "distributed",
        "tensorboard",
        "out_dir",
        "compile",
        "gradient_checkpointing",
        "pack",
    }
)


def saved_config(checkpoint: Path) -> TrainConfig:
    """The TrainConfig a checkpoint was made with (its train_config.json)."""
    path = checkpoint / "train_config.json"
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot read the training settings of checkpoint {checkpoint}: {exc}") from exc


def _normal(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.to_dict(), default=str))


def check_resume(
    requested: TrainConfig,
    saved: TrainConfig,
    done_steps: int,
    allow: set[str] | frozenset[str] = frozenset(),
    world_sizes: tuple[int, int] = (1, 1),
) -> list[str]:
    """Raise ValueError listing each forbidden difference; return notes on the accepted ones.

    done_steps: optimizer steps the checkpoint has done; world_sizes: (requested, saved) process counts
    (the batch per step is batch_size x processes, so a resume across strategies may change both)."""
    bad_allow = sorted(set(allow) - RESUME_CHANGEABLE)
    if bad_allow:
        raise ValueError(f"--allow-change accepts {sorted(RESUME_CHANGEABLE)}, got {bad_allow}")
    new, old = _normal(requested), _normal(saved)
    errors, notes = [], []
    for key in sorted(new):
        if key in FREE_FIELDS or new[key] == old.get(key):
            continue
        if key == "batch_size" and new[key] * world_sizes[0] == old[key] * world_sizes[1]:
            continue  # the same global batch, split over another number of processes
        if key in allow:
            notes.append(f"{key}: {old.get(key)!r} -> {new[key]!r} (applied from step {done_steps} on)")
        else:
            errors.append(f"{key}: {old.get(key)!r} in the checkpoint, {new[key]!r} requested")
    unused = sorted(set(allow) - {n.split(":")[0] for n in notes})
    if unused:
        notes.append(f"--allow-change {' '.join(unused)}: unchanged")
    if requested.steps < done_steps:
        errors.append(f"steps: {requested.steps} requested, but the checkpoint has already done {done_steps}")
    elif requested.steps == done_steps:
        errors.append(
            f"steps: the run is already complete at step {done_steps}; pass a larger --steps to extend it"
        )
    if errors:
        hint = (
            f" (--allow-change accepts {', '.join(sorted(RESUME_CHANGEABLE))})"
            if any(e.split(":")[0] in RESUME_CHANGEABLE for e in errors)
            else ""
        )
        raise ValueError(
            "--resume with settings that differ from the checkpoint's: "
            + "; ".join(errors)
            + hint
            + "; start a new run in another --out-dir (or --overwrite) to change them"
        )
    return notes
