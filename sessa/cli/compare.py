"""``sessa compare`` and ``sessa sweep``: many training runs, one table (CompareConfig / SweepConfig)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from sessa import registry
from sessa.cli.options import add_config_options, given, parse_kv
from sessa.train.config import AMP_CHOICES, TrainConfig

COMPARE_HELP = "train matched Sessa / Transformer / Mamba-2 / no-feedback models and compare"
SWEEP_HELP = "pick each model's learning rate on validation data; test mean ± std over seeds"


def _common(p: argparse.ArgumentParser, cls: type, skip: set[str]) -> None:
    from sessa.models.presets import PRESETS
    from sessa.train.compare import SUITES

    add_config_options(
        p,
        cls,
        skip={"train_overrides", *skip},
        choices={
            "models": registry.model_names(),
            "amp": AMP_CHOICES,
            "suite": sorted(SUITES),
            "preset": [*PRESETS, "paper"] if cls.__name__ == "CompareConfig" else list(PRESETS),
        },
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any other TrainConfig field for every run, repeatable (e.g. --set eval_every=50)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue in a non-empty --out-dir: reuse finished runs, resume interrupted ones",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the runs and results in --out-dir")


def add_compare(sub: Any) -> argparse.ArgumentParser:
    from sessa.train.compare import CompareConfig

    p = sub.add_parser(
        "compare",
        help=COMPARE_HELP,
        description=COMPARE_HELP + ". With no options: the CPU "
        "quick suite (MQAR and diffuse MQAR, tiny models, ~10 min). `--preset paper` = --suite paper.",
    )
    _common(p, CompareConfig, set())
    return p


def add_sweep(sub: Any) -> argparse.ArgumentParser:
    from sessa.train.sweep import SweepConfig

    p = sub.add_parser("sweep", help=SWEEP_HELP, description=SWEEP_HELP + ". Results in OUT_DIR/TASK/.")
    _common(p, SweepConfig, set())
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return parse_kv(args.set, "--set", valid=[f.name for f in dataclasses.fields(TrainConfig)])


def run_compare(args: argparse.Namespace) -> int:
    from sessa.train.compare import CompareConfig, compare, default_tasks

    fields = given(args, CompareConfig)
    if fields.get("preset") == "paper":  # `--preset paper` is the documented spelling of the paper suite
        fields["suite"], fields["preset"] = "paper", None
    fields.setdefault("tasks", default_tasks(fields.get("suite", "quick")))
    cfg = CompareConfig(**fields, train_overrides=_overrides(args))
    _check_runs(cfg.plan())
    print("resolved configuration:\n" + json.dumps(dataclasses.asdict(cfg), indent=2), flush=True)
    compare(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"results: {Path(cfg.out_dir) / 'results.md'}, {Path(cfg.out_dir) / 'results.json'}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from sessa.train.sweep import SweepConfig, sweep

    cfg = SweepConfig(**given(args, SweepConfig), train_overrides=_overrides(args))
    _check_runs(cfg.plan())
    print("resolved configuration:\n" + json.dumps(dataclasses.asdict(cfg), indent=2), flush=True)
    sweep(cfg, resume=args.resume, overwrite=args.overwrite)
    out = Path(cfg.out_dir) / cfg.task
    print(f"results: {out / 'results.md'}, {out / 'results.json'}")
    return 0


def _check_runs(plan: list[TrainConfig]) -> None:
    """Validate every distinct task and model option set before the first (long) run starts."""
    from sessa.cli.train import check_options

    seen = set()
    for run in plan:
        key = (run.task, repr(run.task_options), run.preset, repr(run.model_options))
        if key not in seen:
            seen.add(key)
            check_options(run)
