"""Peak memory and time of the feedback solve, reference vs chunked, forward + backward, on any device.

Each measurement runs in a fresh subprocess so peaks do not mix. On CPU, peak extra memory is the growth of
the process's peak resident set (``ru_maxrss``) from just before the forward to the end of the backward,
inputs excluded; on CUDA it is ``torch.cuda.max_memory_allocated`` minus the memory held before the call.
Time is the median wall time of ``--repeats`` forward+backward calls after one warm-up.

    python -m sessa.bench.solve_memory --lengths 1024 4096 8192 --dim 256 --out solve_memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from sessa.ops.feedback import feedback_solve


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def measure_one(
    backend: str, T: int, D: int, B: int, dtype: str, device: str, repeats: int, chunk: int
) -> dict:
    """Run in the current process; returns {"time_ms", "peak_extra_mib"}."""
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    q, k, f = (torch.randn(B, T, D, device=device, dtype=dt, requires_grad=True) for _ in range(3))
    g = (0.9 * torch.tanh(torch.randn(B, T, 1, device=device))).to(dt).requires_grad_()
    ds = torch.randn(B, T, D, device=device, dtype=dt)

    def run() -> None:
        s = feedback_solve(q, k, g, f, backend=backend, chunk_size=chunk)
        s.backward(ds)
        for x in (q, k, g, f):
            x.grad = None

    small = [x.detach()[:, : 2 * chunk].clone().requires_grad_() for x in (q, k, g, f)]
    feedback_solve(*small, backend=backend, chunk_size=chunk).sum().backward()  # load libraries, thread pools
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib()
    run()  # the first call also defines the peak: later calls reuse the allocator's cache
    if cuda:
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _rss_mib() - base
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return {"time_ms": statistics.median(times), "peak_extra_mib": peak}


def _child(args: argparse.Namespace) -> int:
    out = measure_one(
        args.backend, args.T, args.dim, args.batch, args.dtype, args.device, args.repeats, args.chunk
    )
    print(json.dumps(out))
    return 0


def _spawn(backend: str, T: int, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "sessa.bench.solve_memory",
        "--child",
        "--backend",
        backend,
        "--T",
        str(T),
        "--dim",
        str(args.dim),
        "--batch",
        str(args.batch),
        "--dtype",
        args.dtype,
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
        "--chunk",
        str(args.chunk),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sessa.bench.solve_memory", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--backends", nargs="+", default=["reference", "chunked"])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="chunked", help=argparse.SUPPRESS)
    parser.add_argument("--T", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    header = (
        f"feedback solve fwd+bwd | device={args.device} ({platform.processor() or platform.machine()}) "
        f"dtype={args.dtype} B={args.batch} D={args.dim} chunk={args.chunk} threads={torch.get_num_threads()}"
    )
    print(header)
    print(f"{'T':>7} " + " ".join(f"{b + ' ms':>14} {b + ' MiB':>14}" for b in args.backends))
    rows = []
    for T in args.lengths:
        row = {"T": T, **{b: _spawn(b, T, args) for b in args.backends}}
        rows.append(row)
        cells = []
        for b in args.backends:
            r = row[b]
            cells += (
                [f"{r['time_ms']:14.1f}", f"{r['peak_extra_mib']:14.1f}"]
                if "error" not in r
                else [f"{'error':>14}"] * 2
            )
        print(f"{T:>7} " + " ".join(cells), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"header": header, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
