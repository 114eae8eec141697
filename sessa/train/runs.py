"""Folders of many runs (``sessa compare``, ``sessa sweep``): reuse finished runs, resume interrupted ones,
and never replace earlier results silently."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from sessa.train import checkpoint as ckpt
from sessa.train.config import TrainConfig


def check_writable(out: Path) -> None:
    """Create ``out`` if needed; ValueError when it is a file or cannot be written."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"output directory {out} is not writable: {exc}") from exc


def finished_summary(run: TrainConfig) -> dict[str, Any] | None:
    """The summary.json of a run already made with exactly these settings, else None."""
    path = Path(run.out_dir) / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = json.loads(json.dumps(summary.get("config"), default=str)) == json.loads(
        json.dumps(run.to_dict(), default=str)
    )
    return summary if same else None


def start_mode(run: TrainConfig) -> str:
    """How to (re)start an unfinished run: "resume" from its latest checkpoint, else "fresh"."""
    try:
        return "resume" if ckpt.latest_checkpoint(Path(run.out_dir) / "checkpoints") else "fresh"
    except ValueError:  # a dangling "latest" pointer: nothing to resume from
        return "fresh"


def guard_folder(folder: Path, owned: list[Path], resume: bool, overwrite: bool, what: str) -> None:
    """A non-empty results folder needs --resume (continue it) or --overwrite (delete ``owned`` only)."""
    if resume and overwrite:
        raise ValueError("pass --resume or --overwrite, not both")
    present = [p for p in owned if p.exists()]
    if not present or resume:
        return
    if not overwrite:
        shown = ", ".join(str(p) for p in present[:3]) + (", ..." if len(present) > 3 else "")
        raise ValueError(
            f"{folder} already holds {what} ({shown}): pass --resume to continue (finished runs "
            "are reused, interrupted ones resumed), --overwrite to replace them, or another --out-dir"
        )
    remove(present)


def remove(paths: list[Path]) -> None:
    """Delete each existing path (a folder with all it holds): what --overwrite does to the paths it owns."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
