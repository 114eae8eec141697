"""The measurements behind ``sessa tail`` and ``sessa operators``, as rows of plain numbers.

Each function returns JSON-ready rows (dicts) and, for the tail, curves sampled at log-spaced lags; the CLI
(:mod:`sessa.analysis.commands`) only parses options, prints and saves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sessa.analysis.influence import BlockStack, end_to_end_influence, routing_influence
from sessa.analysis.operators import collect_mixer_inputs, mixer_operator, offdiag_rank
from sessa.analysis.tail import fit_tail, log_spaced_lags, uniform_routing_impulse

Row = dict[str, Any]
Curve = dict[str, Any]  # {"label", "lags": [...], "values": [...]}


@dataclass
class TailResults:
    rows: list[Row] = field(default_factory=list)
    curves: dict[str, list[Curve]] = field(default_factory=dict)  # panel -> curves


def _curve(label: str, profile: torch.Tensor, n: int = 200) -> Curve:
    """profile (L,) at lags 0..L-1 -> a curve sampled at about n log-spaced lags >= 1."""
    L = profile.shape[0]
    lags = log_spaced_lags(1, L - 1, n) if L > 2 else torch.arange(1, L)
    return {"label": label, "lags": lags.tolist(), "values": profile[lags].double().tolist()}


def _fit_row(profile: torch.Tensor, min_lag: int, **labels: Any) -> Row:
    """Labels plus the tail fit; a profile with no tail to fit (e.g. a Sessa layer without feedback, whose
    routing is the identity) gets empty fit fields and better = "no tail"."""
    try:
        fit = fit_tail(torch.arange(profile.shape[0]), profile, min_lag=min_lag).as_dict()
    except ValueError:
        fit = dict.fromkeys(("beta", "beta_r2", "exp_rate", "exp_r2"))
        fit.update(better="no tail", n_points=0)
    return {**labels, **fit}


def uniform_construction(gammas: Sequence[float], T: int, min_lag: int) -> TailResults:
    """The uniform-routing construction through the feedback solve, fitted over lags [min_lag, T)."""
    out = TailResults(curves={"uniform routing construction (feedback solve)": []})
    for gamma in gammas:
        h = uniform_routing_impulse(T, gamma)
        row = _fit_row(h, min_lag, model="uniform construction", measure="impulse h_0(l)", gamma=gamma)
        row["theory_beta"] = 1.0 - gamma
        out.rows.append(row)
        out.curves["uniform routing construction (feedback solve)"].append(_curve(f"γ={gamma}", h))
    return out


def stack_tail(
    label: str,
    blocks: Sequence[nn.Module],
    x: torch.Tensor,
    *,
    depths: Sequence[int],
    routing_layers: int,
    view: str,
    anchor: int | None,
    probes: int | None,
    min_lag: int,
) -> TailResults:
    """Fixed-routing influence of the first ``routing_layers`` blocks' mixers and end-to-end influence of the
    first d blocks for each d in ``depths``; x: (B, T, D) the inputs averaged over."""
    out = TailResults(curves={"fixed-routing influence": [], "end-to-end ‖∂y_t/∂x_τ‖": []})
    routed = BlockStack(list(blocks[:routing_layers]))
    for name, profile in routing_influence(routed, x, view=view, anchor=anchor):
        curve_label = f"{label}/{name}" if routing_layers > 1 else label
        out.rows.append(_fit_row(profile, min_lag, model=label, measure=f"routing {name}", depth=1))
        out.curves["fixed-routing influence"].append(_curve(curve_label, profile))
    for depth in depths:
        stack = BlockStack(list(blocks[:depth]))
        profile = end_to_end_influence(stack, x, view=view, anchor=anchor, probes=probes)
        out.rows.append(_fit_row(profile, min_lag, model=label, measure="end-to-end", depth=depth))
        out.curves["end-to-end ‖∂y_t/∂x_τ‖"].append(_curve(f"{label} ×{depth}", profile))
    return out


def merge(results: Sequence[TailResults]) -> TailResults:
    merged = TailResults()
    for res in results:
        merged.rows.extend(res.rows)
        for panel, curves in res.curves.items():
            merged.curves.setdefault(panel, []).extend(curves)
    return merged


def operator_rows(
    label: str, stack: nn.Module, x: torch.Tensor, *, split: int | None, rtol: float
) -> tuple[list[Row], dict[str, dict[str, torch.Tensor]]]:
    """For every supported mixer of ``stack`` on x: (B, T, D): the relative error of the output rebuilt from
    its operator, and the off-diagonal ranks of W (and of Sessa's routing (I - B_fb)^{-1}) over heads and
    inputs, beside the semiseparable bound (d_state) where one exists. Also returns the matrices of the
    first input for heatmaps: {mixer: {panel: (T, T)}}."""
    rows, heatmaps = [], {}
    T = x.shape[1]
    split = T // 2 if split is None else split
    for name, mixer, bar_a in collect_mixer_inputs(stack, x):
        with torch.no_grad():
            op, y = mixer_operator(mixer, bar_a), mixer(bar_a)
            err = float((op.reconstruct() - y).abs().max() / y.abs().max().clamp_min(1e-300))
        key = f"{label}/{name}"
        mixer_label = f"{name} ({type(mixer).__name__})"
        panels = {f"{op.kind} head {h}": op.matrix[0, h] for h in range(min(op.matrix.shape[1], 3))}
        targets = [("W (per head)", op.matrix)]
        if op.kind == "sessa":
            targets.append(("routing (I-B_fb)^-1", op.routing))
            panels["(I - B_fb)^-1"] = op.routing[0, 0]
        heatmaps[key] = panels
        for what, matrix in targets:
            ranks = offdiag_rank(matrix, split, rtol).flatten().double()
            rows.append({
                "model": label, "mixer": mixer_label, "kind": op.kind, "matrix": what, "T": T, "split": split,
                "rank_min": int(ranks.min()), "rank_median": float(ranks.median()),
                "rank_max": int(ranks.max()),
                "block_size": min(split, T - split), "state_bound": getattr(mixer, "d_state", None),
                "reconstruction_rel_err": err,
            })
    return rows, heatmaps
