"""Time the Triton feedback solve (forward + backward) under several tile configurations.

Each configuration overrides entries of ``sessa.ops.feedback.triton_common.TUNING`` (and the super-chunk L);
prints the median fwd+bwd time per configuration, and its ratio to causal SDPA attention (D / 64 heads of 64,
the same B, T) timed in the same process, so the defaults can be chosen with numbers.

    python scripts/tune_feedback.py --T 16384 --D 1024
    python scripts/tune_feedback.py --B 8 --T 2048 --D 768 --L 256 512 1024 --out tune.jsonl

``--L`` times only the default tiles at those super-chunk lengths (0 = the default L for T); ``--out``
appends one JSON line per configuration.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import triton.testing

from sessa.ops.feedback import feedback_solve, triton_common

CONFIGS = [
    {},
    {"bn_lse": 128, "stages_lse": 4},
    {"bm": 64, "stages": 4},
    {"bm_w": 64, "warps_w": 4},
    {"stages_push": 3},
    {"bd_dk": 128},
    {"L": 512},
    {"L": 2048},
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--D", type=int, default=1024)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--configs", default=None, help="JSON list of overrides (default: built-in list)")
    ap.add_argument("--L", type=int, nargs="*", default=None, help="super-chunk lengths (0 = default)")
    ap.add_argument("--out", default=None, help="append one JSON line per configuration here")
    args = ap.parse_args()
    B = args.B
    dt = getattr(torch, args.dtype)
    q, k, f = (torch.randn(B, args.T, args.D, device="cuda", dtype=dt, requires_grad=True) for _ in range(3))
    g = (0.999 * torch.tanh(2 + torch.rand(B, args.T, 1, device="cuda"))).to(dt).requires_grad_()
    ds = torch.randn_like(f)
    heads = args.D // 64
    qa, ka, va = (torch.randn(B, heads, args.T, 64, device="cuda", dtype=dt, requires_grad=True)
                  for _ in range(3))
    da = torch.randn_like(qa)

    def sdpa():
        torch.nn.functional.scaled_dot_product_attention(qa, ka, va, is_causal=True).backward(da)
        for x in (qa, ka, va):
            x.grad = None

    sdpa_ms = triton.testing.do_bench(sdpa, warmup=50, rep=300, return_mode="median")
    device = torch.cuda.get_device_name()
    print(f"{device} {args.dtype} B={B} T={args.T} D={args.D}; "
          f"SDPA ({heads} heads of 64) fwd+bwd {sdpa_ms:.3f} ms", flush=True)
    if args.L is not None:
        configs = [{"L": L or None} for L in args.L]
    else:
        configs = json.loads(args.configs) if args.configs else CONFIGS
    for cfg in configs:
        cfg = dict(cfg)
        L = cfg.pop("L", None)

        def step(L=L):
            s = feedback_solve(q, k, g, f, backend="triton", chunk_size=L)
            s.backward(ds)
            for x in (q, k, g, f):
                x.grad = None

        try:
            with triton_common.tiles_overridden(triton_common.TUNING, cfg):
                ms = triton.testing.do_bench(step, warmup=50, rep=300, return_mode="median")
            print(f"L={L} {cfg}: fwd+bwd {ms:.3f} ms = {ms / sdpa_ms:.2f}x SDPA", flush=True)
            row = {"ms": ms, "x_sdpa": ms / sdpa_ms}
        except Exception as exc:  # a configuration that does not compile or fit is reported, not fatal
            print(f"L={L} {cfg}: failed {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            row = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps({"device": device, "date": time.strftime("%Y-%m-%d"), "dtype": args.dtype,
                                     "B": B, "T": args.T, "D": args.D, "L": L, "tiles": cfg,
                                     "sdpa_ms": sdpa_ms, **row}) + "\n")


if __name__ == "__main__":
    main()
