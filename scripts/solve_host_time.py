"""Where the Triton feedback solve's wall time goes at a shape: host enqueue time vs GPU time.

For each super-chunk length L, in one process (bf16 unless --dtype, forward + backward, causal SDPA with
D / 64 heads of 64 at the same (B, T) as the yardstick):

- eager: the median of ``triton.testing.do_bench`` (what ``tune_feedback.py`` reports);
- host: the host time to enqueue one forward + backward while the GPU is held busy (``torch.cuda._sleep``),
  so no launch waits for the GPU: the least of 20 rounds;
- graph: the same forward + backward captured once in a CUDA graph and replayed (no host work per call): the
  GPU time of the launch sequence alone.

    python scripts/solve_host_time.py --B 1 --T 4096 --D 1024 --L 0 1024 --out host.jsonl

eager ~ max(host, graph) tells which of the two bounds the op at that shape. ``--cprofile N`` also prints
where the host time goes: a cProfile of N forward + backward calls enqueued while the GPU is held busy.
``--tuning '[{}, {"head_frac": 0.75}]'`` repeats every L under each set of overrides of
``triton_common.TUNING`` (as ``tune_feedback.py --configs``), in the same process.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

import torch
import triton.testing

from sessa.bench.kernels import capture_graph
from sessa.ops.feedback import feedback_solve, triton_common


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--D", type=int, default=1024)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--L", type=int, nargs="+", default=[0], help="super-chunk lengths (0 = default)")
    ap.add_argument("--out", default=None, help="append one JSON line per L here")
    ap.add_argument("--cprofile", type=int, default=0, help="profile the host side of this many calls per L")
    ap.add_argument("--tuning", default="[{}]", help="JSON list of TUNING overrides, each timed at every L")
    args = ap.parse_args()
    B, T, D, dt = args.B, args.T, args.D, getattr(torch, args.dtype)
    q, k, f = (torch.randn(B, T, D, device="cuda", dtype=dt, requires_grad=True) for _ in range(3))
    g = (0.999 * torch.tanh(2 + torch.rand(B, T, 1, device="cuda"))).to(dt).requires_grad_()
    ds = torch.randn_like(f)
    heads = D // 64
    qa, ka, va = (torch.randn(B, heads, T, 64, device="cuda", dtype=dt, requires_grad=True) for _ in range(3))

    def sdpa() -> None:
        torch.nn.functional.scaled_dot_product_attention(qa, ka, va, is_causal=True).backward(qa)

    sdpa_ms = triton.testing.do_bench(sdpa, warmup=50, rep=300, return_mode="median")
    device = torch.cuda.get_device_name()
    print(f"{device} {args.dtype} B={B} T={T} D={D}; SDPA fwd+bwd {sdpa_ms:.3f} ms", flush=True)
    for tuning, L in [(t, L) for t in json.loads(args.tuning) for L in args.L]:
        chunk = L or None

        def step(chunk=chunk) -> None:
            feedback_solve(q, k, g, f, backend="triton", chunk_size=chunk).backward(ds)

        with triton_common.tiles_overridden(triton_common.TUNING, tuning):
            eager, host, graphed = _time(step, chunk, args.cprofile)
        row = {"device": device, "date": time.strftime("%Y-%m-%d"), "dtype": args.dtype, "B": B, "T": T,
               "D": D, "L": chunk, "tuning": tuning, "sdpa_ms": sdpa_ms, "eager_ms": eager, "host_ms": host,
               "graph_ms": graphed}
        print(f"L={chunk} {tuning}: eager {eager:.3f} ms ({eager / sdpa_ms:.2f}x SDPA), "
              f"host {host:.3f} ms, graph replay {graphed:.3f} ms ({graphed / sdpa_ms:.2f}x SDPA)",
              flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def _time(step, chunk: int | None, cprofile: int) -> tuple[float, float, float]:
    """(eager, host, graph replay) ms of step(): do_bench's median; the least of 20 host enqueue times with
    the GPU held busy (and a cProfile of ``cprofile`` such calls, printed); a CUDA graph of it replayed."""
    eager = triton.testing.do_bench(step, warmup=50, rep=300, return_mode="median")
    host = []
    for _ in range(20):
        torch.cuda.synchronize()
        torch.cuda._sleep(50_000_000)  # ~25+ ms of GPU spin: every launch below is queued, none waits
        t0 = time.perf_counter()
        step()
        host.append((time.perf_counter() - t0) * 1e3)
    if cprofile:
        torch.cuda.synchronize()
        torch.cuda._sleep(50_000_000 * max(1, cprofile // 4))
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(cprofile):
            step()
        prof.disable()
        print(f"L={chunk}: host profile of {cprofile} calls (by tottime, then cumulative)", flush=True)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    torch.cuda.synchronize()
    try:
        graph = capture_graph(step, warmup=3)
        graphed = triton.testing.do_bench(graph.replay, warmup=20, rep=300, return_mode="median")
    except RuntimeError as exc:  # reported, the other measurements stand
        print(f"L={chunk}: graph capture failed: {str(exc)[:300]}", flush=True)
        graphed = float("nan")
    return eager, min(host), graphed

if __name__ == "__main__":
    main()
