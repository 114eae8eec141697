"""``sessa tail`` and ``sessa operators``: memory-tail fits and interaction operators (tables, JSON, PNGs).

    sessa tail                         # uniform construction + Sessa / attention / Mamba-2, diffuse regime
    sessa tail --checkpoint runs/x     # the same measurements on a trained causal LM (Hugging Face dir)
    sessa operators --out ops_out      # heatmaps and off-diagonal ranks of tiny random blocks of each mixer
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sessa import registry
from sessa.analysis.influence import VIEWS, diffuse_init_
from sessa.analysis.loading import load_pretrained, random_inputs, tiny_stack
from sessa.analysis.report import Row, TailResults, merge, operator_rows, stack_tail, uniform_construction


def format_table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """Rows as an aligned text table (floats with 4 significant digits; missing cells blank)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    grid = [list(columns)] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in grid]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text}")
    return value


def _gamma(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"gamma must be in (0, 1), got {text}")
    return value


# -- sessa tail --------------------------------------------------------------------------------------------
def tail_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sessa tail", description="Memory tail: power-law vs exponential fits.")
    mixers = registry.analysis_mixers()
    p.add_argument("--gammas", type=_gamma, nargs="+", default=[0.25, 0.5, 0.75, 0.9],
                   help="gains of the uniform-routing construction (beta should be 1 - gamma)")
    p.add_argument("--uniform-T", type=_positive, default=8192, help="length of the uniform construction")
    p.add_argument("--uniform-min-lag", type=_positive, default=64, help="fit the construction on [this, T)")
    p.add_argument("--T", type=_positive, default=512, help="sequence length of the model measurements")
    p.add_argument("--d-model", type=_positive, default=32, help="width of the random diffuse blocks")
    p.add_argument("--depths", type=_positive, nargs="+", default=[1, 4], help="stack depths (end-to-end)")
    p.add_argument("--mixers", nargs="+", choices=mixers, default=list(mixers))
    p.add_argument("--samples", type=_positive, default=2, help="random inputs averaged over")
    p.add_argument("--probes", type=int, default=8, help="Gaussian probes per Jacobian (0: exact)")
    p.add_argument("--view", choices=VIEWS, default="column", help="column: fixed source τ; row: fixed t")
    p.add_argument("--anchor", type=int, default=None, help="the fixed τ / t; default 0 / T-1")
    p.add_argument("--min-lag", type=_positive, default=8, help="fit model influences over [this, T)")
    p.add_argument("--diffuse-gamma", type=float, default=0.5, help="Sessa feedback gain (diffuse regime)")
    p.add_argument("--routing-scale", type=float, default=0.0, help="query/key weight factor (0 = uniform)")
    p.add_argument("--ssm-decay", type=float, default=0.02, help="Mamba-2 per-step log-decay (diffuse)")
    p.add_argument("--ssm-dt", type=float, default=0.1, help="Mamba-2 constant step size (diffuse)")
    p.add_argument("--checkpoint", type=Path, default=None, help="a trained causal LM (Hugging Face dir)")
    p.add_argument("--out", type=Path, default=Path("tail_out"), help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


def _model_results(args: argparse.Namespace) -> list[TailResults]:
    common = dict(view=args.view, anchor=args.anchor, probes=args.probes or None, min_lag=args.min_lag)
    if args.checkpoint is not None:
        loaded = load_pretrained(args.checkpoint)
        blocks = list(loaded.stack.blocks)
        x = random_inputs(args.samples, args.T, loaded.d_model, embedding=loaded.embedding, seed=args.seed)
        depths = sorted({min(d, len(blocks)) for d in args.depths} | {len(blocks)})
        return [stack_tail("checkpoint", blocks, x, depths=depths, routing_layers=len(blocks), **common)]
    results = []
    x = random_inputs(args.samples, args.T, args.d_model, seed=args.seed)
    for kind in args.mixers:
        stack = tiny_stack(kind, args.d_model, max(args.depths), seed=args.seed)
        diffuse_init_(stack, gamma=args.diffuse_gamma, routing_scale=args.routing_scale,
                      ssm_decay=args.ssm_decay, ssm_dt=args.ssm_dt)
        blocks = list(stack.blocks)
        results.append(stack_tail(kind, blocks, x, depths=args.depths, routing_layers=1, **common))
    return results


def tail_main(argv: list[str] | None = None) -> int:
    """Run ``sessa tail``; returns the exit status."""
    args = tail_parser().parse_args(argv)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print("config:", json.dumps(config))
    start = time.perf_counter()
    uniform = uniform_construction(args.gammas, args.uniform_T, args.uniform_min_lag)
    models = merge(_model_results(args))
    fit_cols = ["beta", "beta_r2", "exp_rate", "exp_r2", "better"]
    print(f"\nuniform routing construction, T={args.uniform_T}, fit over l in [{args.uniform_min_lag}, T):")
    print(format_table(uniform.rows, ["gamma", "theory_beta", *fit_cols]))
    print(f"\ninfluence ({args.view} view), T={args.T}, fit over l in [{args.min_lag}, T):")
    print(format_table(models.rows, ["model", "measure", "depth", *fit_cols]))
    elapsed = time.perf_counter() - start
    curves = {**uniform.curves, **models.curves}
    _write_json(args.out / "tail.json", {"config": config, "uniform": uniform.rows, "models": models.rows,
                                         "curves": curves, "seconds": elapsed})
    written = [args.out / "tail.json"]
    if not args.no_plot:
        from sessa.analysis.plots import save_loglog

        panels = {name: [(c["label"], torch.tensor(c["lags"]), torch.tensor(c["values"])) for c in cs]
                  for name, cs in curves.items()}
        written.append(save_loglog(panels, args.out / "tail.png"))
    print(f"\nwrote {', '.join(map(str, written))} ({elapsed:.1f} s)")
    return 0


# -- sessa operators ---------------------------------------------------------------------------------------
def operators_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sessa operators", description="Interaction operators W[t, τ] of each mixer: heatmaps and ranks."
    )
    mixers = registry.analysis_mixers()
    p.add_argument("--T", type=_positive, default=128, help="sequence length")
    p.add_argument("--d-model", type=_positive, default=32, help="width of the random blocks")
    p.add_argument("--mixers", nargs="+", choices=mixers, default=list(mixers))
    p.add_argument("--samples", type=_positive, default=2, help="random inputs (ranks are over all of them)")
    p.add_argument("--split", type=int, default=None, help="rank of W[split:, :split] (default T // 2)")
    p.add_argument("--rtol", type=float, default=1e-8, help="singular values > rtol * largest count")
    p.add_argument("--diffuse", action="store_true", help="diffuse-regime blocks instead of random init")
    p.add_argument("--checkpoint", type=Path, default=None, help="a trained causal LM (Hugging Face dir)")
    p.add_argument("--out", type=Path, default=Path("operators_out"), help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plot", action="store_true", help="skip the heatmap PNGs")
    return p


def _operator_models(args: argparse.Namespace) -> list[tuple[str, torch.nn.Module, torch.Tensor]]:
    if args.checkpoint is not None:
        loaded = load_pretrained(args.checkpoint)
        x = random_inputs(args.samples, args.T, loaded.d_model, embedding=loaded.embedding, seed=args.seed)
        return [("checkpoint", loaded.stack, x)]
    x = random_inputs(args.samples, args.T, args.d_model, seed=args.seed)
    stacks = [(kind, tiny_stack(kind, args.d_model, 1, seed=args.seed)) for kind in args.mixers]
    if args.diffuse:
        for _, stack in stacks:
            diffuse_init_(stack)
    return [(kind, stack, x) for kind, stack in stacks]


def operators_main(argv: list[str] | None = None) -> int:
    """Run ``sessa operators``; returns the exit status."""
    args = operators_parser().parse_args(argv)
    if args.split is not None and not 0 < args.split < args.T:
        raise SystemExit(f"sessa operators: --split must be in (0, T={args.T}), got {args.split}")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print("config:", json.dumps(config))
    rows, written = [], []
    for label, stack, x in _operator_models(args):
        model_rows, heatmaps = operator_rows(label, stack, x, split=args.split, rtol=args.rtol)
        rows.extend(model_rows)
        if not args.no_plot:
            from sessa.analysis.plots import save_heatmaps

            for key, panels in heatmaps.items():
                written.append(save_heatmaps(panels, args.out / f"{key.replace('/', '_')}.png", title=key))
    print(format_table(rows, ["model", "mixer", "matrix", "rank_min", "rank_median", "rank_max", "block_size",
                              "state_bound", "reconstruction_rel_err"]))
    _write_json(args.out / "operators.json", {"config": config, "rows": rows})
    written.insert(0, args.out / "operators.json")
    print(f"\nwrote {', '.join(map(str, written))}")
    return 0
