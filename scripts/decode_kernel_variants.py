"""Experiment (GPU): the one-query decode kernel compiled with and without specialisation on the cache
strides, timed as CUDA graphs (no host time) next to SDPA and the feedback reference; prints JSON. This is
the measurement behind ``sessa.ops.triton_decode``'s choice of ``_partial_narrow`` / ``_partial_wide``.

    python scripts/decode_kernel_variants.py [OUT.json]

Variants (both followed by the production ``_combine``):
  narrow   strides specialised (their divisibility by 16 lets the loads be vectorised)
  wide     strides passed as plain ints
An earlier version of this script (git history, 2026-12-01) also timed all heads of a row in one program
with 3-D tiles and the heads as the fastest-varying program index; both were slower or no faster.
"""

from __future__ import annotations

import json
import sys

import torch
from triton.testing import do_bench_cudagraph

from sessa.ops import triton_decode as td
from sessa.ops.attention import decode_attention_ref, sdpa_without_cudnn
from sessa.ops.feedback.decode import feedback_decode_ref


def run(kernel, q, k, v, mask, length, out, f=None, gamma=None) -> None:  # noqa: ANN001
    """The production launches with ``kernel`` as the first stage."""
    (_, grid, args, consts), (comb, cgrid, cargs, cconsts) = td.launches(q, k, v, mask, length, out, f, gamma)
    kernel[grid](*args, **consts)
    comb[cgrid](*cargs, **cconsts)


def main() -> None:
    rows = []
    dt = torch.bfloat16
    for op, H, hd in (("attention", 12, 64), ("feedback", 1, 768)):
        for B, L in ((1, 8192), (1, 32768), (8, 8192)):
            q = torch.randn(B, H, hd, device="cuda", dtype=dt)
            k, v = (torch.randn(B, L, H, hd, device="cuda", dtype=dt) for _ in range(2))
            mask = torch.ones(B, L, device="cuda", dtype=torch.bool)
            length = torch.full((B,), L, device="cuda", dtype=torch.int32)
            out = torch.empty(B, H, hd, device="cuda", dtype=dt)
            f, g = (torch.randn(B, hd, device="cuda", dtype=dt), torch.rand(B, device="cuda", dtype=dt)) \
                if op == "feedback" else (None, None)  # fmt: skip
            if f is None:
                want = decode_attention_ref(q[:, None], k, v, length, mask)[:, 0]
                qt, kt, vt = q[:, :, None], k.transpose(1, 2), v.transpose(1, 2)
                baseline = ("sdpa", lambda: sdpa_without_cudnn(qt, kt, vt, attn_mask=mask[:, None, None, :]))  # noqa: B023
            else:
                kb, sb, gb, fb = k[:, :, 0], v[:, :, 0], g[:, None, None], f[:, None]
                want = feedback_decode_ref(q, kb, gb, fb, sb, length, mask)
                baseline = ("reference", lambda: feedback_decode_ref(q, kb, gb, fb, sb, length, mask))  # noqa: B023
            cases = {
                "narrow": lambda: run(td._partial_narrow, q, k, v, mask, length, out, f, g),  # noqa: B023
                "wide": lambda: run(td._partial_wide, q, k, v, mask, length, out, f, g),  # noqa: B023
                baseline[0]: baseline[1],
            }
            row = {"op": op, "B": B, "L": L, "H": H, "hd": hd, "GB": 2 * B * L * H * hd * 2 / 1e9}
            for name, fn in cases.items():
                try:
                    fn()
                    torch.cuda.synchronize()
                    if name in ("narrow", "wide"):
                        row[f"{name}_err"] = (out.float() - want.float()).abs().max().item()
                    row[f"{name}_us"] = do_bench_cudagraph(fn, rep=100) * 1e3
                except Exception as e:  # noqa: BLE001
                    row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
            print(json.dumps(row), flush=True)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
