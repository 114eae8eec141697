"""Helpers shared by the GPU scripts: a kernel summary of a ``torch.profiler`` run, and the JSON record."""

from __future__ import annotations

import json
from typing import Any

import torch


def kernel_summary(
    prof: torch.profiler.profile, top: int, unit: str = "us", width: int = 90
) -> dict[str, Any]:
    """Number of GPU kernels, their summed time (ms) and the ``top`` kernel names by total time, each with
    its call count and total time in ``unit`` ("us" or "ms")."""
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    totals: dict[str, list] = {}
    for e in kernels:
        entry = totals.setdefault(e.name[:width], [0, 0.0])
        entry[0] += 1
        entry[1] += e.device_time
    scale, digits = (1.0, 1) if unit == "us" else (1e-3, 3)
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "kernels": len(kernels),
        "gpu_ms": sum(e.device_time for e in kernels) / 1e3,
        "top": [{"name": k, "calls": c, unit: round(t * scale, digits)} for k, (c, t) in ranked],
    }


def write_record(path: str, rows: list[dict], **extra: Any) -> None:
    """``{"device", "torch", **extra, "rows"}`` as indented JSON."""
    record = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, **extra, "rows": rows}
    with open(path, "w") as fh:
        json.dump(record, fh, indent=1)
