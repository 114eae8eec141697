"""RoPE forms on a GPU: the readable half-table form against the pair-table forms, in one process.

    python scripts/bench_rope.py [OUT.json]

Forms: ``ref`` (:func:`sessa.ops.attention.apply_rope_ref`: even/odd slices, four products, stack),
``flip`` (:func:`sessa.ops.attention.apply_rope`: x * cos + flip-of-pairs(x) * sin) and ``stack`` (the same
with the swapped pairs made by stacking the odd and even slices). For each: forward + backward GPU time at a
training shape (q of a 125m layer, B = 8, T = 2048, 12 heads of 64, bf16; CUDA events, median of 20), and
host time of one decode-shaped call (1 x 1 x 12 x 64, median of 2,000 calls, no synchronisation per call).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
from gpu_report import write_record

from sessa.ops.attention import apply_rope, apply_rope_ref, cached_inv_freq, rope_cos_sin, rope_tables


def _stack(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    swapped = torch.stack((x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return x * cos + swapped * sin


def forms(T: int, hd: int, dtype: torch.dtype) -> dict:
    cuda = torch.device("cuda")
    inv_freq = cached_inv_freq(hd, 1e4, torch.float32, cuda)
    cos, sin = rope_cos_sin(torch.arange(T, device=cuda), inv_freq, dtype)
    cos2, sin2 = rope_tables(0, T, hd, 1e4, dtype, cuda)
    return {
        "ref": lambda x: apply_rope_ref(x, cos, sin),
        "flip": lambda x: apply_rope(x, cos2, sin2),
        "stack": lambda x: _stack(x, cos2, sin2),
    }


def gpu_ms(fn, x: torch.Tensor) -> float:  # noqa: ANN001
    grad = torch.randn_like(x)
    times = []
    for i in range(25):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x).backward(grad)
        end.record()
        torch.cuda.synchronize()
        if i >= 5:
            times.append(start.elapsed_time(end))
        x.grad = None
    return statistics.median(times)


def host_us(fn, x: torch.Tensor) -> float:  # noqa: ANN001
    with torch.inference_mode():
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(400):
                fn(x)
            runs.append((time.perf_counter() - t0) / 400 * 1e6)
            torch.cuda.synchronize()
    return statistics.median(runs)


def main() -> None:
    train = torch.randn(8, 2048, 12, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    one = torch.randn(1, 1, 12, 64, device="cuda", dtype=torch.bfloat16)
    big, small = forms(2048, 64, torch.bfloat16), forms(1, 64, torch.bfloat16)
    with torch.no_grad():
        same = {k: torch.equal(f(train), big["ref"](train)) for k, f in big.items()}
    rows = [{"form": k, "train_fwd_bwd_ms": gpu_ms(big[k], train), "decode_host_us": host_us(small[k], one),
             "bitwise_equal_ref": same[k]} for k in big]  # fmt: skip
    for r in rows:
        print(json.dumps(r))
    if len(sys.argv) > 1:
        write_record(sys.argv[1], rows)


if __name__ == "__main__":
    main()
