"""Micro-benchmark of the one-query decode kernels on a GPU (benchmarks/RESULTS.md "Generation").

    python scripts/bench_decode_kernels.py [OUT.json]

Times, per call (host time included: the small ones are launch-bound), at batch 1 and 8, contexts 1K / 8K /
32K, bf16, with a padding mask: the forward branch's
attention of the 125m preset (12 heads of 64) through ``decode_attention`` (Triton) and through SDPA (the
memory-efficient kernel, cuDNN off, the path before the Triton decode kernels), and the feedback row (one
head of width 768) through ``feedback_decode`` (Triton) and its reference; every ratio is against SDPA / the
reference in the same process. Also the bytes each kernel must read (K and V or k_b and s) and the
bandwidth that implies. Then the continuation of an 8K cache by 1K and 8K tokens (bf16, D = 768): the Triton
block solve against the chunked PyTorch rows and a full solve from scratch. scripts/decode_kernel_variants.py
times the kernels alone as CUDA graphs.
"""

from __future__ import annotations

import json
import sys

import torch
from triton.testing import do_bench

from sessa.ops.attention import decode_attention, sdpa_without_cudnn
from sessa.ops.feedback import feedback_solve
from sessa.ops.feedback.decode import feedback_continue, feedback_decode, feedback_decode_ref


def continue_rows() -> list[dict]:
    """A cache of t tokens continued by n (chunked prefill): the Triton block solve ("auto") against the
    PyTorch chunked rows ("chunked", the path before it), and a solve of all t + n rows from scratch."""
    rows = []
    D, dt = 768, torch.bfloat16
    for t, n in ((8192, 1024), (8192, 8192)):
        q, k, f = (torch.randn(1, t + n, D, device="cuda", dtype=dt) for _ in range(3))
        g = 0.9 * torch.rand(1, t + n, 1, device="cuda", dtype=dt)
        s_past = feedback_solve(q[:, :t], k[:, :t], g[:, :t], f[:, :t])
        args = (q[:, t:], k, g[:, t:], f[:, t:], s_past)
        ms = {name: do_bench(lambda: feedback_continue(*args, backend=name), warmup=3, rep=50)  # noqa: B023
              for name in ("auto", "chunked")}  # fmt: skip
        ms["full solve"] = do_bench(lambda: feedback_solve(q, k, g, f), warmup=3, rep=50)  # noqa: B023
        rows.append({"op": "continue (forward)", "t": t, "n": n, "D": D, "triton_ms": ms["auto"],
                     "chunked_ms": ms["chunked"], "full_solve_ms": ms["full solve"],
                     "chunked_vs_triton": ms["chunked"] / ms["auto"]})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    rows = []
    dev, dt = "cuda", torch.bfloat16
    for B in (1, 8):
        for L in (1024, 8192, 32768):
            H, hd, D = 12, 64, 768
            q = torch.randn(B, 1, H, hd, device=dev, dtype=dt)
            k, v = (torch.randn(B, L, H, hd, device=dev, dtype=dt) for _ in range(2))
            mask = torch.ones(B, L, device=dev, dtype=torch.bool)
            length = torch.full((B,), L, device=dev, dtype=torch.int32)
            tri = do_bench(lambda: decode_attention(q, k, v, length, mask), warmup=20, rep=200)  # noqa: B023
            qt, kt, vt, am = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask[:, None, None, :]
            sdpa = do_bench(lambda: sdpa_without_cudnn(qt, kt, vt, attn_mask=am), warmup=20, rep=200)  # noqa: B023
            nbytes = 2 * B * L * H * hd * 2
            rows.append({"op": "attention 12x64", "B": B, "L": L, "triton_us": tri * 1e3,
                         "sdpa_us": sdpa * 1e3, "triton_vs_sdpa": tri / sdpa,
                         "triton_tb_s": nbytes / tri / 1e9})  # fmt: skip
            qb, f = torch.randn(B, 1, D, device=dev, dtype=dt), torch.randn(B, 1, D, device=dev, dtype=dt)
            kb, s = (torch.randn(B, L, D, device=dev, dtype=dt) for _ in range(2))
            g = torch.rand(B, 1, 1, device=dev, dtype=dt)
            tri = do_bench(lambda: feedback_decode(qb, kb, g, f, s, length, mask), warmup=20, rep=200)  # noqa: B023
            ref = do_bench(lambda: feedback_decode_ref(qb, kb, g, f, s, length, mask), warmup=20, rep=200)  # noqa: B023
            nbytes = 2 * B * L * D * 2
            rows.append({"op": "feedback row 768", "B": B, "L": L, "triton_us": tri * 1e3,
                         "ref_us": ref * 1e3, "triton_vs_ref": tri / ref,
                         "triton_tb_s": nbytes / tri / 1e9})  # fmt: skip
            print(json.dumps(rows[-2]), json.dumps(rows[-1]), flush=True)
    rows += continue_rows()
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            record = {"device": torch.cuda.get_device_name(), "dtype": "bfloat16", "rows": rows}
            json.dump(record, fh, indent=1)


if __name__ == "__main__":
    main()
