"""``sessa tail`` and ``sessa operators``: memory-tail fits and interaction operators (tables, JSON, PNGs),
from the typed configs TailConfig and OperatorsConfig.

    sessa tail                         # uniform construction + Sessa / attention / Mamba-2, diffuse regime
    sessa tail --checkpoint runs/x     # the same measurements on a trained causal LM (Hugging Face dir)
    sessa operators --out ops_out      # heatmaps and off-diagonal ranks of tiny random blocks of each mixer
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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


def _check_positive(cfg: object, names: Sequence[str]) -> None:
    for name in names:
        values = getattr(cfg, name)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_mixers(mixers: list[str]) -> None:
    valid = registry.analysis_mixers()
    bad = [m for m in mixers if m not in valid]
    if bad or not mixers:
        raise ValueError(f"mixers must name at least one of {list(valid)}, got {mixers}")


# -- sessa tail --------------------------------------------------------------------------------------------
@dataclass
class TailConfig:
    """Memory tail: power-law vs exponential fits of influence vs lag."""

    gammas: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 0.75, 0.9]
    )  # construction gains (beta = 1 - gamma)
    uniform_T: int = 8192  # length of the uniform construction
    uniform_min_lag: int = 64  # fit the construction on [this, T)
    T: int = 512  # sequence length of the model measurements
    d_model: int = 32  # width of the random diffuse blocks
    depths: list[int] = field(default_factory=lambda: [1, 4])  # stack depths (end-to-end influence)
    mixers: list[str] = field(default_factory=lambda: list(registry.analysis_mixers()))  # mixers to measure
    samples: int = 2  # random inputs averaged over
    probes: int = 8  # Gaussian probes per Jacobian (0: exact Jacobians)
    view: str = "column"  # column: fixed source tau; row: fixed output t
    anchor: int | None = None  # the fixed tau / t (default 0 / T-1)
    min_lag: int = 8  # fit model influences over [this, T)
    diffuse_gamma: float = 0.5  # Sessa feedback gain in the diffuse regime
    routing_scale: float = 0.0  # query/key weight factor (0 = uniform routing)
    ssm_decay: float = 0.02  # Mamba-2 per-step log-decay (diffuse regime)
    ssm_dt: float = 0.1  # Mamba-2 constant step size (diffuse regime)
    checkpoint: str | None = None  # measure a trained causal LM (Hugging Face directory) instead
    out: str = "tail_out"  # output directory
    seed: int = 0  # random inputs and blocks
    plot: bool = True  # write the PNG

    def __post_init__(self) -> None:
        _check_positive(
            self, ["uniform_T", "uniform_min_lag", "T", "d_model", "depths", "samples", "min_lag"]
        )
        _check_mixers(self.mixers)
        if not self.gammas or not all(0.0 < g < 1.0 for g in self.gammas):
            raise ValueError(f"gammas must be in (0, 1), got {self.gammas}")
        if self.view not in VIEWS:
            raise ValueError(f"view must be one of {list(VIEWS)}, got {self.view!r}")
        if self.probes < 0:
            raise ValueError(f"probes must be >= 0 (0: exact), got {self.probes}")
        if self.uniform_min_lag >= self.uniform_T or self.min_lag >= self.T:
            raise ValueError("the fit ranges [min_lag, T) must not be empty")


def _model_results(args: TailConfig) -> list[TailResults]:
    common = dict(view=args.view, anchor=args.anchor, probes=args.probes or None, min_lag=args.min_lag)
    if args.checkpoint is not None:
        loaded = load_pretrained(Path(args.checkpoint))
        blocks = list(loaded.stack.blocks)
        x = random_inputs(args.samples, args.T, loaded.d_model, embedding=loaded.embedding, seed=args.seed)
        depths = sorted({min(d, len(blocks)) for d in args.depths} | {len(blocks)})
        return [stack_tail("checkpoint", blocks, x, depths=depths, routing_layers=len(blocks), **common)]
    results = []
    x = random_inputs(args.samples, args.T, args.d_model, seed=args.seed)
    for kind in args.mixers:
        stack = tiny_stack(kind, args.d_model, max(args.depths), seed=args.seed)
        diffuse_init_(
            stack,
            gamma=args.diffuse_gamma,
            routing_scale=args.routing_scale,
            ssm_decay=args.ssm_decay,
            ssm_dt=args.ssm_dt,
        )
        blocks = list(stack.blocks)
        results.append(stack_tail(kind, blocks, x, depths=args.depths, routing_layers=1, **common))
    return results


def run_tail(args: TailConfig) -> int:
    """Run ``sessa tail``; returns the exit status."""
    config = dataclasses.asdict(args)
    print("config:", json.dumps(config))
    out = Path(args.out)
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
    _write_json(
        out / "tail.json",
        {
            "config": config,
            "uniform": uniform.rows,
            "models": models.rows,
            "curves": curves,
            "seconds": elapsed,
        },
    )
    written = [out / "tail.json"]
    if args.plot:
        from sessa.analysis.plots import save_loglog

        panels = {
            name: [(c["label"], torch.tensor(c["lags"]), torch.tensor(c["values"])) for c in cs]
            for name, cs in curves.items()
        }
        written.append(save_loglog(panels, out / "tail.png"))
    print(f"\nwrote {', '.join(map(str, written))} ({elapsed:.1f} s)")
    return 0


# -- sessa operators ---------------------------------------------------------------------------------------
@dataclass
class OperatorsConfig:
    """Interaction operators W[t, tau] of each mixer: heatmaps and off-diagonal ranks."""

    T: int = 128  # sequence length
    d_model: int = 32  # width of the random blocks
    mixers: list[str] = field(default_factory=lambda: list(registry.analysis_mixers()))  # mixers to measure
    samples: int = 2  # random inputs (ranks are over all of them)
    split: int | None = None  # rank of W[split:, :split] (default T // 2)
    rtol: float = 1e-8  # singular values > rtol * largest count
    diffuse: bool = False  # diffuse-regime blocks instead of the random initialisation
    checkpoint: str | None = None  # measure a trained causal LM (Hugging Face directory) instead
    out: str = "operators_out"  # output directory
    seed: int = 0  # random inputs and blocks
    plot: bool = True  # write the heatmap PNGs

    def __post_init__(self) -> None:
        _check_positive(self, ["T", "d_model", "samples"])
        _check_mixers(self.mixers)
        if self.split is not None and not 0 < self.split < self.T:
            raise ValueError(f"split must be in (0, T={self.T}), got {self.split}")
        if not self.rtol > 0:
            raise ValueError(f"rtol must be > 0, got {self.rtol}")


def _operator_models(args: OperatorsConfig) -> list[tuple[str, torch.nn.Module, torch.Tensor]]:
    if args.checkpoint is not None:
        loaded = load_pretrained(Path(args.checkpoint))
        x = random_inputs(args.samples, args.T, loaded.d_model, embedding=loaded.embedding, seed=args.seed)
        return [("checkpoint", loaded.stack, x)]
    x = random_inputs(args.samples, args.T, args.d_model, seed=args.seed)
    stacks = [(kind, tiny_stack(kind, args.d_model, 1, seed=args.seed)) for kind in args.mixers]
    if args.diffuse:
        for _, stack in stacks:
            diffuse_init_(stack)
    return [(kind, stack, x) for kind, stack in stacks]


def run_operators(args: OperatorsConfig) -> int:
    """Run ``sessa operators``; returns the exit status."""
    config = dataclasses.asdict(args)
    print("config:", json.dumps(config))
    out = Path(args.out)
    rows, written = [], []
    for label, stack, x in _operator_models(args):
        model_rows, heatmaps = operator_rows(label, stack, x, split=args.split, rtol=args.rtol)
        rows.extend(model_rows)
        if args.plot:
            from sessa.analysis.plots import save_heatmaps

            for key, panels in heatmaps.items():
                written.append(save_heatmaps(panels, out / f"{key.replace('/', '_')}.png", title=key))
    print(
        format_table(
            rows,
            [
                "model",
                "mixer",
                "matrix",
                "rank_min",
                "rank_median",
                "rank_max",
                "block_size",
                "state_bound",
                "reconstruction_rel_err",
            ],
        )
    )
    _write_json(out / "operators.json", {"config": config, "rows": rows})
    written.insert(0, out / "operators.json")
    print(f"\nwrote {', '.join(map(str, written))}")
    return 0
