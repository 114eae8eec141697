"""GPU time of each launch that builds the intra-chunk inverses W (triton_tril.build_w), in launch order.

    python scripts/profile_w_build.py --T 4096 --L 0 --tuning '[{}, {"bm_lv": 128, "warps_lv": 8}]'

For B = 1, D = 1024 inputs (``--dtype``, bf16 by default) and each set of ``triton_common.TUNING`` overrides:
build_w's median time (``triton.testing.do_bench``) and, from one profiled call, every kernel's GPU time
(the doubling levels come in order S = C, 2C, ..., first half then second).
"""

from __future__ import annotations

import argparse
import json

import torch
import triton.testing
from torch.profiler import ProfilerActivity, profile

from sessa.ops.feedback import triton_common
from sessa.ops.feedback.triton import solve_blocks
from sessa.ops.feedback.triton_common import op_dtype
from sessa.ops.feedback.triton_fwd import _lse
from sessa.ops.feedback.triton_launch import Streams
from sessa.ops.feedback.triton_tril import build_w


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--D", type=int, default=1024)
    ap.add_argument("--L", type=int, default=0, help="super-chunk length (0 = default)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tuning", default="[{}]", help="JSON list of TUNING overrides")
    args = ap.parse_args()
    dt = getattr(torch, args.dtype)
    q, k, f = (torch.randn(1, args.T, args.D, device="cuda", dtype=dt) for _ in range(3))
    g = (0.999 * torch.tanh(2 + torch.rand(1, args.T, 1, device="cuda"))).to(dt)
    table = triton_common.TUNING_FP32 if dt == torch.float32 else triton_common.TUNING
    for tuning in json.loads(args.tuning):
        with triton_common.tiles_overridden(table, tuning):
            bl = solve_blocks(f, args.L or None, None)
            streams = Streams.shared(f.device, side=True)
            lse = _lse(q, k, None, bl, streams)

            def run(lse=lse, bl=bl, streams=streams) -> None:
                build_w(q, k, g, None, lse, bl, op_dtype(dt) != torch.float32, streams)

            run()
            torch.cuda.synchronize()
            us = triton.testing.do_bench(run, warmup=20, rep=200, return_mode="median") * 1e3
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                run()
                torch.cuda.synchronize()
        launches = [(e.name, e.device_time) for e in prof.events() if e.device_time > 0]
        names = ", ".join(f"{n.replace('_kernel', '').replace('void at::native::', '')[:18]} {t:.1f}"
                          for n, t in launches)
        print(f"T={args.T} L={bl.L} {tuning}: build_w {us:.1f} us (do_bench); launches: {names}", flush=True)


if __name__ == "__main__":
    main()
