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
    """One --option per dataclass field, typed from the annotation, defaulting to the dataclass default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, type=float, nargs=2, default=default)
        else:
            parser.add_argument(
                flag,
                type=kind if kind in (int, float, str) else str,
                default=default,
                choices=CHOICES.get(f.name),
            )


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


def cmd_train(args: argparse.Namespace) -> int:
    from sessa.train.trainer import train

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    fields["task_options"] = parse_kv(args.task_option, "--task-option")
    fields["model_options"] = parse_kv(args.model_option, "--model-option")
    fields["betas"] = tuple(fields["betas"])
    cfg = TrainConfig(**fields)
    print("resolved configuration:\n" + json.dumps(cfg.to_dict(), indent=2, default=str))
    summary = train(cfg, resume=args.resume)
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
