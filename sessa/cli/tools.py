"""``sessa bench``, ``sessa tail`` and ``sessa operators`` (BenchConfig, TailConfig, OperatorsConfig)."""

from __future__ import annotations

import argparse
from typing import Any

from sessa.cli.options import add_config_options, given

BENCH_HELP = (
    "time and memory of the feedback solve and layer vs SDPA; --generate: prefill and decode of the models "
    "vs a Hugging Face Llama (GPU; tiny sizes on CPU)"
)
TAIL_HELP = "measure memory tails (influence vs lag, power law vs exponential)"
OPERATORS_HELP = "interaction operators of a model: heatmaps and ranks"


def add_bench(sub: Any) -> argparse.ArgumentParser:
    from sessa.bench.kernels import DTYPES, BenchConfig

    p = sub.add_parser("bench", help=BENCH_HELP, description=BENCH_HELP)
    add_config_options(
        p, BenchConfig, choices={"dtype": DTYPES, "backends": ["triton", "chunked", "reference"]}
    )
    return p


def run_bench(args: argparse.Namespace) -> int:
    from sessa.bench.kernels import BenchConfig, run_bench

    run_bench(BenchConfig(**given(args, BenchConfig)))
    return 0


def add_tail(sub: Any) -> argparse.ArgumentParser:
    from sessa import registry
    from sessa.analysis.commands import TailConfig
    from sessa.analysis.influence import VIEWS

    p = sub.add_parser("tail", help=TAIL_HELP, description=TAIL_HELP)
    add_config_options(p, TailConfig, choices={"view": VIEWS, "mixers": registry.analysis_mixers()})
    return p


def run_tail(args: argparse.Namespace) -> int:
    from sessa.analysis.commands import TailConfig, run_tail

    return run_tail(TailConfig(**given(args, TailConfig)))


def add_operators(sub: Any) -> argparse.ArgumentParser:
    from sessa import registry
    from sessa.analysis.commands import OperatorsConfig

    p = sub.add_parser("operators", help=OPERATORS_HELP, description=OPERATORS_HELP)
    add_config_options(p, OperatorsConfig, choices={"mixers": registry.analysis_mixers()})
    return p


def run_operators(args: argparse.Namespace) -> int:
    from sessa.analysis.commands import OperatorsConfig, run_operators

    return run_operators(OperatorsConfig(**given(args, OperatorsConfig)))
