"""The `sessa` command line: compare, train, sweep, eval, generate, bench, tail, operators.

Each subcommand's options come from a typed config dataclass (TrainConfig, CompareConfig, SweepConfig,
EvalConfig, GenerateConfig, BenchConfig, TailConfig, OperatorsConfig) through :mod:`sessa.cli.options`;
unknown options and keys are rejected with the valid names; every error ends in one line.
"""

from sessa.cli.app import COMMANDS, build_parser, main
from sessa.cli.options import parse_kv

__all__ = ["COMMANDS", "build_parser", "main", "parse_kv"]
