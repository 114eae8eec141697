"""A/B timing of feedback_solve backends, forward + backward, calls interleaved in one process.

Interleaving (A B B A ...) and reporting the minimum as well as the median keep the comparison fair on a
shared, noisy machine; the numbers behind ``choose_backend`` (sessa/ops/feedback/__init__.py) come from here.

    OMP_NUM_THREADS=1 python scripts/ab_feedback_backends.py --out benchmarks/feedback_backends_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from sessa.ops.feedback import feedback_solve


def time_pair(backends: list[str], B: int, T: int, D: int, dtype: torch.dtype, device: str, n: int) -> dict:
    """{backend: (min ms, median ms)} over n interleaved fwd+bwd calls each, after one warm-up call each."""
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, f, ds = (torch.randn(B, T, D, device=device, generator=gen).to(dtype) for _ in range(4))
    q, k, f = (x.requires_grad_() for x in (q, k, f))
    g = (0.9 * torch.tanh(torch.randn(B, T, 1, device=device, generator=gen))).to(dtype).requires_grad_()

    def run(backend: str) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        feedback_solve(q, k, g, f, backend=backend).backward(ds)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        for x in (q, k, g, f):
            x.grad = None
        return (time.perf_counter() - start) * 1e3

    for b in backends:
        run(b)
    times: dict[str, list[float]] = {b: [] for b in backends}
    for i in range(n):
        for b in backends if i % 2 else backends[::-1]:
            times[b].append(run(b))
    return {b: (min(v), statistics.median(v)) for b, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--backends", nargs=2, default=["reference", "chunked"])
    ap.add_argument("--shapes", nargs="+", default=["1x256", "4x1024", "8x64", "1x64"], help="BxD pairs")
    ap.add_argument("--T", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    ap.add_argument("--budget", type=float, default=2e8, help="repeats ~ budget / (B T^2 D), 3 to 40")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    a, b = args.backends
    header = (f"feedback_solve fwd+bwd, {a} vs {b} | device={args.device} ({platform.machine()}) "
              f"dtype={args.dtype} threads={torch.get_num_threads()} torch {torch.__version__} "
              f"date {time.strftime('%Y-%m-%d')}")
    print(header)
    rows = []
    for shape in args.shapes:
        B, D = (int(x) for x in shape.split("x"))
        for T in args.T:
            n = max(3, min(40, int(args.budget / (B * T * T * max(D, 64)))))
            r = time_pair([a, b], B, T, D, dtype, args.device, n)
            rows.append({"B": B, "D": D, "T": T, "repeats": n, **{k: {"min_ms": v[0], "median_ms": v[1]}
                                                                   for k, v in r.items()}})
            print(f"B={B:3d} D={D:5d} T={T:6d} n={n:3d}  {a} min/med {r[a][0]:9.2f}/{r[a][1]:9.2f} ms  "
                  f"{b} {r[b][0]:9.2f}/{r[b][1]:9.2f} ms  {a}/{b} (min) {r[a][0] / r[b][0]:.2f}", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"header": header, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
