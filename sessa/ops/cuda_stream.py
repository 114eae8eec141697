"""The current CUDA stream's raw handle, cheaply (a leaf module: the attention ops and the Triton launchers
both ask for it once per launch while decoding)."""

from __future__ import annotations

import torch

_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # absent from CPU-only builds


def current_raw_stream(device: torch.device) -> int:
    """The handle of ``device``'s current CUDA stream (what Triton launches on), without building a
    ``torch.cuda.Stream``: ``torch.cuda.current_stream(device).cuda_stream`` took ~14 us of host time per call
    on an H200 host (cProfile of a decoding step, benchmarks/RESULTS.md "Sixth run"), this ~1 us."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if _RAW_STREAM is not None:
        return _RAW_STREAM(index)
    return torch.cuda.current_stream(index).cuda_stream  # pragma: no cover - builds without the binding
