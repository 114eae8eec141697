"""The `sessa` command: compare, train, eval, generate, bench, tail, operators.

Each subcommand's options mirror a typed config (TrainConfig, CompareConfig); unknown options, tasks and
models are rejected with the valid names; the resolved configuration is printed and saved with the results.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from sessa.train.config import AMP_CHOICES, DISTRIBUTED, MODELS, TrainConfig

DELEGATED = {  # subcommands implemented by their own argparse
    "bench": ("sessa.bench.kernels", "bench_main", "time and memory of the feedback solve and layer vs SDPA"),
    "tail": (
        "sessa.analysis.cli",
        "tail_main",
        "measure memory tails (influence vs lag, power law vs exponential)",
    ),
    "operators": (
        "sessa.analysis.cli",
        "operators_main",
        "interaction operators of a model: heatmaps and ranks",
    ),
}
CHOICES = {"model": MODELS, "amp": AMP_CHOICES, "distributed": DISTRIBUTED}


def parse_kv(items: list[str] | None, what: str) -> dict[str, Any]:
    """["a=1", "b=x"] -> {"a": 1, "b": "x"} (values parsed as Python literals when possible)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{what} must look like key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw
    return out


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, skip: set[str]) -> None:
    """One --option per dataclass field, typed from the annotation; the help shows the dataclass default.

    Options the user does not give are absent from the parsed namespace (``argparse.SUPPRESS``), so a
    command can tell explicit options from defaults (``sessa train --config run.json --lr 1e-4``)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = _unwrap_optional(hints[f.name])
        common = {"default": argparse.SUPPRESS, "help": f"(default: {default})"}
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, type=float, nargs=2, **common)
        else:
            kind = kind if kind in (int, float, str) else str
            parser.add_argument(flag, type=kind, choices=CHOICES.get(f.name), **common)


def _unwrap_optional(kind: Any) -> Any:
    """``float | None`` -> float; anything else unchanged."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if len(args) == 1 and type(None) in typing.get_args(kind) else kind


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sessa", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "compare", help="train matched Sessa / Transformer / Mamba-2 / no-feedback models and compare"
    )
    p.add_argument("--tasks", nargs="+", default=None, help="task names (default: the suite's tasks)")
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=MODELS,
        metavar="MODEL",
        help=f"models to train (default: sessa attention mamba2 sessa_nofb; valid: {', '.join(MODELS)})",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument(
        "--preset",
        default=None,
        help="model preset (default: tiny for quick, small for paper); 'paper' = --suite paper",
    )
    p.add_argument(
        "--suite",
        default="quick",
        choices=["quick", "paper"],
        help="quick: CPU in minutes; paper: the paper's Table 1 setting on one GPU",
    )
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=AMP_CHOICES)
    p.add_argument("--out-dir", default="runs/compare")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any other training option, repeatable"
    )

    p = sub.add_parser("train", help="train one model on one task (torchrun-ready)")
    add_dataclass_options(p, TrainConfig, skip={"task_options", "model_options"})
    p.add_argument(
        "--task-option", action="append", metavar="KEY=VALUE", help="task config override, repeatable"
    )
    p.add_argument(
        "--model-option", action="append", metavar="KEY=VALUE", help="SessaConfig override, repeatable"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue exactly from the latest checkpoint in --out-dir"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run files in a non-empty --out-dir"
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="read every training option from a JSON file (a run's config.json); options given here win",
    )

    p = sub.add_parser(
        "sweep", help="pick each model's learning rate on validation data; test mean ± std over seeds"
    )
    p.add_argument("--task", default="mqar", help="task name (default: mqar)")
    p.add_argument("--models", nargs="+", default=None, choices=MODELS, metavar="MODEL",
                   help=f"default: sessa attention mamba2 sessa_nofb; valid: {', '.join(MODELS)}")
    p.add_argument("--lrs", nargs="+", type=float, default=None,
                   help="peak learning rates (default: 1e-4 2e-4 3e-4 5e-4 1e-3)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds the lr is selected on")
    p.add_argument("--final-seeds", nargs="+", type=int, default=[],
                   help="more seeds, run only at each model's selected lr (test mean ± std over all)")
    p.add_argument("--suite", default="quick", choices=["quick", "paper"],
                   help="where steps, batch size, warm-up and task options come from")
    p.add_argument("--preset", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--parallel", type=int, default=1,
                   help="runs at a time, as subprocesses sharing the device (default 1: in this process)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="start no new run after this many seconds; unstarted runs are reported")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=AMP_CHOICES)
    p.add_argument("--out-dir", default="runs/sweep")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any other training option, repeatable"
    )

    p = sub.add_parser("eval", help="evaluate a checkpoint or Hugging Face directory on a task")
    p.add_argument(
        "path", help="a checkpoint folder (runs/.../checkpoints/step_N) or a save_pretrained directory"
    )
    p.add_argument("--task", default=None, help="task name (default: the one the checkpoint was trained on)")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE")
    p.add_argument("--data-seed", type=int, default=None)
    p.add_argument("--splits", nargs="+", default=None, help="splits to evaluate (default: all but train)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows of each split")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write the metrics as JSON here")

    p = sub.add_parser("generate", help="generate text from a model directory (streams tokens)")
    p.add_argument("path", help="a save_pretrained directory or checkpoint folder")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")

    for name, (_, _, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def cmd_compare(args: argparse.Namespace) -> int:
    from sessa.train.compare import QUICK_TASKS, CompareConfig, compare

    if args.preset == "paper":  # `--preset paper` is the documented spelling of the paper's GPU setting
        args.suite, args.preset = "paper", None

    cfg = CompareConfig(
        tasks=args.tasks or (list(QUICK_TASKS) if args.suite == "quick" else ["symbolsoup", "diffuse_mqar"]),
        models=args.models or ["sessa", "attention", "mamba2", "sessa_nofb"],
        seeds=args.seeds,
        suite=args.suite,
        preset=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        amp=args.amp,
        out_dir=args.out_dir,
        train_overrides=parse_kv(args.set, "--set"),
    )
    for task in cfg.tasks:  # validate every task and option before the first long run
        from sessa.tasks import get_task

        get_task(task, **cfg.run_config(task, cfg.models[0], cfg.seeds[0]).task_options)
    print("resolved configuration:\n" + json.dumps(dataclasses.asdict(cfg), indent=2))
    compare(cfg)
    print(f"results: {Path(cfg.out_dir) / 'results.md'}, {Path(cfg.out_dir) / 'results.json'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from sessa.train.sweep import DEFAULT_LRS, DEFAULT_MODELS, SweepConfig, sweep

    cfg = SweepConfig(
        task=args.task,
        models=args.models or list(DEFAULT_MODELS),
        lrs=args.lrs or list(DEFAULT_LRS),
        seeds=args.seeds,
        final_seeds=args.final_seeds,
        suite=args.suite,
        preset=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        parallel=args.parallel,
        time_limit_s=args.time_limit,
        out_dir=args.out_dir,
        train_overrides=parse_kv(args.set, "--set"),
    )
    from sessa.tasks import get_task

    get_task(cfg.task, **cfg.plan()[0].task_options)  # validate before the first long run
    print("resolved configuration:\n" + json.dumps(dataclasses.asdict(cfg), indent=2))
    sweep(cfg)
    out = Path(cfg.out_dir) / cfg.task
    print(f"results: {out / 'results.md'}, {out / 'results.json'}")
    return 0


def train_fields(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields: those of --config FILE, then every option given on the command line."""
    fields: dict[str, Any] = {}
    if args.config:
        try:
            fields = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read --config {args.config}: {exc}") from exc
        if not isinstance(fields, dict):
            raise ValueError(f"--config {args.config} must hold a JSON object of training options")
    given = [f.name for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)]
    fields.update({name: getattr(args, name) for name in given})
    for name, items, flag in (
        ("task_options", args.task_option, "--task-option"),
        ("model_options", args.model_option, "--model-option"),
    ):
        if items:
            fields[name] = {**fields.get(name, {}), **parse_kv(items, flag)}
    if "betas" in fields:
        fields["betas"] = tuple(fields["betas"])
    return fields


def cmd_train(args: argparse.Namespace) -> int:
    from sessa.train.trainer import train

    cfg = TrainConfig.from_dict(train_fields(args))
    print("resolved configuration:\n" + json.dumps(cfg.to_dict(), indent=2, default=str))
    summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module, func, _ = DELEGATED[argv[0]]
        import importlib

        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    handlers = {
        "compare": cmd_compare,
        "train": cmd_train,
        "sweep": cmd_sweep,
        "eval": _lazy("cmd_eval"),
        "generate": _lazy("cmd_generate"),
    }
    try:
        return handlers[args.command](args)
    except ValueError as exc:
        print(f"sessa {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _lazy(name: str):
    def run(args: argparse.Namespace) -> int:
        from sessa import cli_model

        return getattr(cli_model, name)(args)

    return run


if __name__ == "__main__":
    raise SystemExit(main())
