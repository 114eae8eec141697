"""The `sessa` command: one parser, one typed config per subcommand, one way errors end.

Errors end in one line on stderr: exit code 2 for a user error (bad option, value, file or folder; a
ValueError or TypeError from a config), 1 for a runtime failure, 130/143 when interrupted (a training run
saves a checkpoint first and says how to resume). ``sessa --debug COMMAND ...`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from sessa.cli.options import ArgumentParser

# name -> (module, parser builder, runner, one-line help); a command's options come from its config dataclass
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "compare": (
        "sessa.cli.compare",
        "add_compare",
        "run_compare",
        "train matched Sessa / Transformer / Mamba-2 / no-feedback models and compare (the main job)",
    ),
    "train": ("sessa.cli.train", "add", "run", "train one model on one task (torchrun-ready)"),
    "sweep": (
        "sessa.cli.compare",
        "add_sweep",
        "run_sweep",
        "pick each model's learning rate on validation data; test mean ± std over seeds",
    ),
    "eval": ("sessa.cli.model_commands", "add_eval", "run_eval", "evaluate a checkpoint on a task"),
    "generate": ("sessa.cli.model_commands", "add_generate", "run_generate", "generate text from a model"),
    "bench": ("sessa.cli.tools", "add_bench", "run_bench", "feedback solve and layer vs SDPA: time, memory"),
    "tail": ("sessa.cli.tools", "add_tail", "run_tail", "memory tails: power law vs exponential fits"),
    "operators": (
        "sessa.cli.tools",
        "add_operators",
        "run_operators",
        "interaction operators: heatmaps, ranks",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s options are built (the others are listed by name and help)."""
    from sessa import __version__

    parser = ArgumentParser(
        prog="sessa",
        description="Sessa: Selective State Space Attention — train, compare, "
        "evaluate and analyse Sessa and matched baselines.",
    )
    parser.add_argument("--version", action="version", version=f"sessa {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=ArgumentParser)
    for name, (module, builder, _, help_text) in COMMANDS.items():
        if name == command:
            getattr(importlib.import_module(module), builder)(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _runner(command: str) -> Callable[[argparse.Namespace], int]:
    module, _, runner, _ = COMMANDS[command]
    return getattr(importlib.import_module(module), runner)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return int(_runner(args.command)(args) or 0)
    except Exception as exc:  # noqa: BLE001 - every failure ends in one line unless --debug
        if args.debug:
            raise
        return _report(args.command, exc)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"sessa {args.command}: interrupted", file=sys.stderr)
        return 130


def _report(command: str, exc: Exception) -> int:
    exit_code = getattr(exc, "exit_code", None)  # TrainingInterrupted: it saved and says how to resume
    if isinstance(exit_code, int):  # (no import of the trainer here: tail/operators run without it)
        print(f"sessa {command}: {exc}", file=sys.stderr)
        return exit_code
    user = isinstance(
        exc,
        (
            ValueError,
            TypeError,
            FileNotFoundError,
            PermissionError,
            NotADirectoryError,
            IsADirectoryError,
            ImportError,
        ),
    )
    kind = "error" if user else f"failed ({type(exc).__name__})"
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"sessa {command}: {kind}: {message} (--debug shows the traceback)", file=sys.stderr)
    return 2 if user else 1
