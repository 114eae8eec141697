"""Per-kernel time breakdown of the Triton feedback solve (forward + backward) with torch.profiler.

    python scripts/profile_feedback.py --T 16384 --D 1024 --dtype bfloat16 [--chunk-size 1024]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from sessa.ops.feedback import feedback_solve


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--D", type=int, default=1024)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--chunk-size", type=int, default=None)
    args = ap.parse_args()
    dt = getattr(torch, args.dtype)
    shape = (args.B, args.T, args.D)
    q, k, f = (torch.randn(*shape, device="cuda", dtype=dt, requires_grad=True) for _ in range(3))
    g = (0.999 * torch.tanh(2 + torch.rand(args.B, args.T, 1, device="cuda"))).to(dt).requires_grad_()
    ds = torch.randn_like(f)

    def step():
        s = feedback_solve(q, k, g, f, backend="triton", chunk_size=args.chunk_size)
        s.backward(ds)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=40))


if __name__ == "__main__":
    main()
