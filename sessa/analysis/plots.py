"""PNG plots of the analysis results (matplotlib is optional: ``pip install 'sessa[plot]'``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def require_pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend, or an ImportError that says how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'sessa[plot]' (or pass --no-plot)") from err
    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def save_heatmaps(
    matrices: Mapping[str, torch.Tensor], path: str | Path, *, floor: float = 1e-12, title: str = ""
) -> Path:
    """One panel per (T, T) matrix W[t, tau]: log10 |W| with values below ``floor`` clipped. Returns path."""
    if not matrices:
        raise ValueError("matrices must hold at least one (T, T) matrix")
    plt = require_pyplot()
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.8), squeeze=False)
    for ax, (name, mat) in zip(axes[0], matrices.items(), strict=True):
        image = ax.imshow(mat.detach().abs().double().clamp_min(floor).log10().cpu().numpy(), cmap="magma")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("source τ")
        ax.set_ylabel("output t")
        fig.colorbar(image, ax=ax, fraction=0.046, label="log10 |W[t, τ]|")
    if title:
        fig.suptitle(title)
    path = _save(fig, path)
    plt.close(fig)
    return path


def save_loglog(
    panels: Mapping[str, Sequence[tuple[str, torch.Tensor, torch.Tensor]]], path: str | Path
) -> Path:
    """Log-log curves, one panel per key; each curve is (label, lags (L,), values (L,)). Lag 0 and
    non-positive values are left out (no logarithm). Returns path."""
    if not panels:
        raise ValueError("panels must hold at least one panel of curves")
    plt = require_pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items(), strict=True):
        for label, lags, values in curves:
            lags, values = torch.as_tensor(lags).double(), torch.as_tensor(values).double().abs()
            keep = (lags > 0) & (values > 0)
            ax.loglog(lags[keep].numpy(), values[keep].numpy(), label=label, lw=1.3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("lag ℓ")
        ax.set_ylabel("influence")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    path = _save(fig, path)
    plt.close(fig)
    return path
