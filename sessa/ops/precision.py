"""The one precision rule of the package: scans, solves, RoPE angles and states run in float32, or in float64
for float64 inputs (never in bf16/fp16)."""

from __future__ import annotations

import torch


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for every other dtype (bf16, fp16, fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in ``dtype``: x itself when it already is (skips the dispatcher's no-op ``to``, which decoding
    would pay a dozen times per layer and token)."""
    return x if x.dtype == dtype else x.to(dtype)
