"""``sessa train``: one model on one task, from a typed TrainConfig (torchrun-ready)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sessa import registry
from sessa.cli.options import add_config_options, given, parse_kv
from sessa.train.config import AMP_CHOICES, DISTRIBUTED, RESUME_CHANGEABLE, TrainConfig

HELP = "train one model on one task (torchrun-ready)"


def add(sub: Any) -> argparse.ArgumentParser:
    from sessa.models.presets import PRESETS
    from sessa.tasks import TASKS

    p = sub.add_parser(
        "train", help=HELP, description=HELP + ". Every option defaults to TrainConfig's value."
    )
    add_config_options(
        p,
        TrainConfig,
        skip={"task_options", "model_options"},
        choices={
            "task": sorted(TASKS),
            "model": registry.model_names(),
            "amp": AMP_CHOICES,
            "distributed": DISTRIBUTED,
            "preset": list(PRESETS),
        },
    )
    add_option_flags(p)
    p.add_argument(
        "--resume", action="store_true", help="continue exactly from the latest checkpoint in --out-dir"
    )
    p.add_argument("--overwrite", action="store_true", help="replace the run files in a non-empty --out-dir")
    p.add_argument(
        "--allow-change",
        nargs="+",
        default=[],
        metavar="FIELD",
        choices=sorted(RESUME_CHANGEABLE),
        help="with --resume: accept these changed settings and apply them from the checkpoint on "
        f"(valid: {', '.join(sorted(RESUME_CHANGEABLE))})",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="read every training option from a JSON file (a run's config.json); flags given win",
    )
    return p


def add_option_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task-option",
        action="append",
        metavar="KEY=VALUE",
        help="override a field of the task's config, repeatable",
    )
    p.add_argument(
        "--model-option",
        action="append",
        metavar="KEY=VALUE",
        help="override a SessaConfig field (applied before parameter matching), repeatable",
    )


def train_fields(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields: those of --config FILE, then every option given on the command line."""
    fields: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            fields = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read --config {args.config}: {exc}") from exc
        if not isinstance(fields, dict):
            raise ValueError(f"--config {args.config} must hold a JSON object of training options")
    fields.update(given(args, TrainConfig))
    for name, items, flag in (
        ("task_options", args.task_option, "--task-option"),
        ("model_options", args.model_option, "--model-option"),
    ):
        if items:
            fields[name] = {**fields.get(name, {}), **parse_kv(items, flag)}
    if "betas" in fields:
        fields["betas"] = tuple(fields["betas"])
    return fields


def check_options(cfg: TrainConfig) -> None:
    """Validate the task and model options before any data is built (clear errors, nothing lost)."""
    from sessa.models import SessaConfig
    from sessa.tasks import get_task

    get_task(cfg.task, **cfg.task_options)
    SessaConfig.from_preset(cfg.preset, mixer="sessa", **cfg.model_options)


def run(args: argparse.Namespace) -> int:
    from sessa.train.trainer import train

    cfg = TrainConfig.from_dict(train_fields(args))
    check_options(cfg)
    print("resolved configuration:\n" + json.dumps(cfg.to_dict(), indent=2, default=str), flush=True)
    summary = train(cfg, resume=args.resume, overwrite=args.overwrite, allow_change=args.allow_change)
    print(
        json.dumps(
            {
                split: {k: v for k, v in res.items() if not k.startswith("by_")}
                for split, res in summary["final"].items()
            },
            indent=2,
        )
    )
    return 0


__all__ = ["add", "run", "train_fields", "check_options"]
