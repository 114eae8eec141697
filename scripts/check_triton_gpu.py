"""Check the Triton feedback solve on a GPU at real shapes, fp32 / bf16 / fp16, against float64.

Every case runs the Triton op and the PyTorch chunked op in the case's dtype, forward and backward, and
measures the max relative error max|x - x64| / max|x64| of s, dq_b, dk_b, dgamma and df against a float64
reference (the dense reference up to T = 4097, the chunked op in float64 above). The rule (the tests',
mamba's): pass iff every Triton error is finite and <= k x the chunked op's error + atol, per dtype (TOL).
Triton's outputs and scratch buffers are filled with NaN before its kernels run (``triton.POISON``), so an
unwritten element fails.
One more case compares the direct launch path with Triton's JIT entry (SESSA_TRITON_FAST_LAUNCH=0), one
the op under ``torch.compile`` (the custom ops of ``triton_ops``) with the eager op, and one the op's streams
(the caller's stream instead of the lead stream, a non-default calling stream, CUDA-graph replay) with the
eager op: bit-identical.

Cases run in worker processes sharing the GPU, so Triton's compilation (most of the time on a fresh machine)
runs in parallel. Prints one table and writes it to OUT:

    python scripts/check_triton_gpu.py benchmarks/triton_check_h200.txt [--workers 10] [--quick]

``--cases 2x65x128m 1x1000x1024`` picks other (B x T x D, m = key mask) cases; ``--device cpu`` with
TRITON_INTERPRET=1 runs small cases through Triton's interpreter (a smoke test of this script, no GPU).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

NAMES = ("s", "dq_b", "dk_b", "dgamma", "df")
DTYPES = ("float32", "bfloat16", "float16")
# (B, T, D, key mask): T = 1 (no past), around the 64-row tiles, one ragged super-chunk, a tail of one row
# after four super-chunks (L = 1024), the long case; D from 64 to 2048.
CASES = [(1, 1, 1024, False), (2, 63, 64, False), (2, 65, 128, True), (1, 1000, 1024, False),
         (2, 1000, 2048, True), (1, 4097, 1024, True), (1, 16384, 1024, False)]
QUICK = [(2, 65, 128, True), (1, 1000, 1024, False)]
LAUNCH_CASE = ("bfloat16", (1, 4097, 1024, True))
COMPILE_CASE = ("bfloat16", (2, 3000, 768, True))
STREAMS_CASE = ("bfloat16", (1, 16384, 1024, True))  # 16 super-chunks: the forward's side build runs
# dtype: (k for s and df, k for dq_b / dk_b / dgamma, atol). fp32: the W products run in tf32x3 (measured up
# to ~4x the chunked op's error). bf16: the gradient products take bf16 operands where the chunked op computes
# in fp32. fp16 inputs use bf16 operands too (fp16 cannot hold s), so their floor is bf16's (unit roundoff
# 2^-8), while the chunked op's fp16 error is 8x smaller: hence the atol of ~8 bf16 roundoffs.
TOL = {"float32": (4.0, 4.0, 1e-5), "bfloat16": (4.0, 10.0, 5e-3), "float16": (10.0, 10.0, 3e-2)}


def make_inputs(B: int, T: int, D: int, mask: bool, dtype: torch.dtype, seed: int, device: str):
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, f, ds = (torch.randn(B, T, D, device=device, generator=g) for _ in range(4))
    gamma = 0.999 * torch.tanh(3.0 * torch.randn(B, T, 1, device=device, generator=g))  # often near gamma_max
    key_mask = None
    if mask:  # random padding keys, rows whose whole past is padding, a left-padded sequence
        key_mask = torch.rand(B, T, device=device, generator=g) > 0.3
        key_mask[:, :2] = False
        key_mask[-1, : T // 3] = False
    return [x.to(dtype) for x in (2.0 * q, k, gamma, f)], ds.to(dtype), key_mask


def run(fn, inputs, ds, key_mask) -> list[torch.Tensor]:
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    s = fn(*leaves, key_mask=key_mask)
    s.backward(ds)
    return [s.detach()] + [x.grad for x in leaves]


def max_rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max|x - ref| / max|ref| (NaN if x is not finite; an all-zero ref: the max error itself)."""
    x = x.double().reshape(ref.shape)
    if not bool(torch.isfinite(x).all()):
        return float("nan")
    scale = ref.abs().max().item()
    return (x - ref).abs().max().item() / (scale if scale > 0 else 1.0)


def check_case(dtype_name: str, case: tuple, device: str) -> dict:
    import sessa.ops.feedback.triton as ft
    from sessa.ops.feedback.chunked import feedback_solve_chunked
    from sessa.ops.feedback.reference import feedback_solve_ref

    ft.POISON = True
    B, T, D, mask = case
    start = time.time()
    inputs, ds, key_mask = make_inputs(B, T, D, mask, getattr(torch, dtype_name), T + D + B, device)
    exact = [x.double() for x in inputs]
    if T <= 4097:
        ref = run(lambda *a, key_mask: feedback_solve_ref(*a, key_mask), exact, ds.double(), key_mask)
    else:
        ref = run(lambda *a, key_mask: feedback_solve_chunked(*a, key_mask, 256), exact, ds.double(),
                  key_mask)
    tri = run(ft.feedback_solve_triton, inputs, ds, key_mask)
    chk = run(lambda *a, key_mask: feedback_solve_chunked(*a, key_mask, 128), inputs, ds, key_mask)
    e_tri = [max_rel(a, r) for a, r in zip(tri, ref, strict=True)]
    e_chk = [max_rel(a, r) for a, r in zip(chk, ref, strict=True)]
    k_out, k_grad, atol = TOL[dtype_name]
    ok = [math.isfinite(et) and et <= (k_out if n in ("s", "df") else k_grad) * ec + atol
          for n, et, ec in zip(NAMES, e_tri, e_chk, strict=True)]
    return {"dtype": dtype_name, "case": case, "tri": e_tri, "chk": e_chk, "ok": ok,
            "sec": time.time() - start}


def _atomics_bound(dtype_name: str) -> float:
    """How far two runs' dgamma may differ (relative to its largest entry): its row sums are accumulated with
    atomics in any order, in fp32, and then rounded to the output dtype, so one run may round an entry to
    the neighbouring value: one unit of that dtype's rounding (bf16: 2^-8 of an entry the size of the
    largest). The bound of 1e-5 used before failed once on an H200 (1.2e-5 in bf16, 2026-12-02) while s, dq_b,
    dk_b and df were bit-identical."""
    return torch.finfo(getattr(torch, dtype_name)).eps / 2


def _same_bits(diffs: list[float], dtype_name: str) -> list[bool]:
    """Per output (NAMES order), whether two runs that should agree bit for bit did: difference 0, or for
    dgamma at most :func:`_atomics_bound`."""
    bound = _atomics_bound(dtype_name)
    return [d == 0 or (n == "dgamma" and d <= bound) for n, d in zip(NAMES, diffs, strict=True)]


def check_launch_paths(dtype_name: str, case: tuple, device: str) -> dict:
    """Direct launches (sessa's fast path) against Triton's JIT entry: bit-identical s, dq_b, dk_b, df (dgamma
    sums with atomics, so its last bits may differ)."""
    import sessa.ops.feedback.triton as ft
    from sessa.ops.feedback.triton_launch import LAUNCHES

    ft.POISON = True
    start = time.time()
    inputs, ds, key_mask = make_inputs(*case, getattr(torch, dtype_name), 7, device)
    out, direct = {}, {}
    for path in ("fast", "fast", "jit"):  # the first fast run fills the cache of compiled kernels
        os.environ["SESSA_TRITON_FAST_LAUNCH"] = "0" if path == "jit" else "1"
        before = LAUNCHES["direct"]
        out[path] = run(ft.feedback_solve_triton, inputs, ds, key_mask)
        direct[path] = LAUNCHES["direct"] - before
    os.environ.pop("SESSA_TRITON_FAST_LAUNCH")
    diffs = [max_rel(a, b.double()) for a, b in zip(out["fast"], out["jit"], strict=True)]
    ok = [x and direct["fast"] > 0 and direct["jit"] == 0 for x in _same_bits(diffs, dtype_name)]
    note = f"fast vs JIT launch ({direct['fast']} direct launches, {direct['jit']} in the JIT run)"
    return {"dtype": dtype_name, "case": case, "tri": diffs, "chk": None, "ok": ok,
            "sec": time.time() - start, "note": note}


def check_compiled(dtype_name: str, case: tuple, device: str) -> dict:
    """``torch.compile(fullgraph=True)`` of the op (the custom ops) against the eager op: bit-identical s,
    dq_b, dk_b, df; dgamma up to its atomics' last bits."""
    import sessa.ops.feedback.triton as ft

    start = time.time()
    inputs, ds, key_mask = make_inputs(*case, getattr(torch, dtype_name), 11, device)
    eager = run(ft.feedback_solve_triton, inputs, ds, key_mask)
    compiled = run(torch.compile(ft.feedback_solve_triton, fullgraph=True), inputs, ds, key_mask)
    diffs = [max_rel(a, b.double()) for a, b in zip(compiled, eager, strict=True)]
    ok = _same_bits(diffs, dtype_name)
    return {"dtype": dtype_name, "case": case, "tri": diffs, "chk": None, "ok": ok,
            "sec": time.time() - start, "note": "torch.compile(fullgraph=True) vs eager"}


def check_streams(dtype_name: str, case: tuple, device: str) -> dict:
    """The op's streams: launched on the caller's stream (``SESSA_TRITON_LEAD_STREAM=0``), called from a
    stream other than the default one, and captured in a CUDA graph and replayed, each against the eager op
    on its lead stream: bit-identical s, dq_b, dk_b, df; dgamma up to its atomics' last bits (the worst of
    the three per output)."""
    import sessa.ops.feedback.triton as ft
    from sessa.bench.kernels import capture_graph

    start = time.time()
    inputs, ds, key_mask = make_inputs(*case, getattr(torch, dtype_name), 13, device)
    eager = run(ft.feedback_solve_triton, inputs, ds, key_mask)
    os.environ["SESSA_TRITON_LEAD_STREAM"] = "0"
    try:
        caller = run(ft.feedback_solve_triton, inputs, ds, key_mask)
    finally:
        os.environ.pop("SESSA_TRITON_LEAD_STREAM")
    other, current = torch.cuda.Stream(), torch.cuda.current_stream()
    other.wait_stream(current)
    with torch.cuda.stream(other):
        on_other = run(ft.feedback_solve_triton, inputs, ds, key_mask)
    current.wait_stream(other)
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    replayed = [torch.empty_like(x) for x in (inputs[3], *inputs)]  # s (f's dtype), then the gradients

    def step() -> None:
        s = ft.feedback_solve_triton(*leaves, key_mask=key_mask)
        for out, x in zip(replayed, (s, *torch.autograd.grad(s, leaves, ds)), strict=True):
            out.copy_(x)

    graph = capture_graph(step)
    for x in replayed:
        x.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    diffs = [max(max_rel(v[i], eager[i].double()) for v in (caller, on_other, replayed)) for i in range(5)]
    return {"dtype": dtype_name, "case": case, "tri": diffs, "chk": None, "ok": _same_bits(diffs, dtype_name),
            "sec": time.time() - start,
            "note": "caller's stream, another stream, CUDA-graph replay vs eager on the lead stream"}


def _job(kind: str, dtype_name: str, case: tuple, device: str) -> dict:
    checks = {"launch": check_launch_paths, "compiled": check_compiled, "streams": check_streams,
              "case": check_case}
    try:
        return checks[kind](dtype_name, case, device)
    except Exception as e:  # a crash is a failed row, not a lost table
        return {"dtype": dtype_name, "case": case, "tri": [math.nan] * 5, "chk": None, "ok": [False] * 5,
                "sec": 0.0, "note": f"{kind}: {type(e).__name__}: {str(e)[:300]}"}


def parse_case(text: str) -> tuple:
    """'2x65x128m' -> (2, 65, 128, True)."""
    mask = text.endswith("m")
    B, T, D = (int(x) for x in text.rstrip("m").split("x"))
    return (B, T, D, mask)


def format_row(r: dict) -> str:
    B, T, D, mask = r["case"]
    shape = f"B={B} T={T:<5d} D={D:<4d}{' mask' if mask else '     '}"
    if r["chk"] is None:
        cells = [f"{e:8.1e}{' ' if ok else '!'}       " for e, ok in zip(r["tri"], r["ok"], strict=True)]
    else:
        cells = [f"{et:8.1e}/{ec:7.1e}{' ' if ok else '!'}"
                 for et, ec, ok in zip(r["tri"], r["chk"], r["ok"], strict=True)]
    line = f"{shape}  {r['dtype']:8s}  " + " ".join(cells) + f"  {'OK' if all(r['ok']) else 'FAIL'}"
    return line + f"  {r['sec']:5.1f}s" + (f"  {r['note']}" if r.get("note") else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", help="write the table to this file")
    ap.add_argument("--out", dest="out_option", help="the same, as an option (the older form)")
    ap.add_argument("--workers", type=int, default=min(10, os.cpu_count() or 1))
    ap.add_argument("--quick", action="store_true", help="two small cases per dtype, no launch-path check")
    ap.add_argument("--cases", nargs="+", type=parse_case, help="BxTxD[m] (m: with a key mask)")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu under TRITON_INTERPRET=1 (smoke test)")
    args = ap.parse_args(argv)
    out = args.out or args.out_option
    if not out:
        ap.error("give the file to write the table to")
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        print("--device cpu needs TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    import triton

    start = time.time()
    cases = args.cases or (QUICK if args.quick else CASES)
    jobs = [("case", dt, c, args.device) for c in cases for dt in DTYPES]
    jobs.sort(key=lambda j: -j[2][1] * j[2][2])  # longest first: they bound the wall time
    if cuda and not (args.quick or args.cases):
        jobs[:0] = [("launch", *LAUNCH_CASE, args.device), ("compiled", *COMPILE_CASE, args.device),
                    ("streams", *STREAMS_CASE, args.device)]
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_job, *zip(*jobs, strict=True)))
    order = {(dt, c): i for i, (c, dt) in enumerate((c, dt) for c in cases for dt in DTYPES)}
    rows = sorted((r for j, r in zip(jobs, results, strict=True) if j[0] == "case"),
                  key=lambda r: order[(r["dtype"], r["case"])])
    rows += [r for j, r in zip(jobs, results, strict=True) if j[0] != "case"]
    name = torch.cuda.get_device_name(args.device) if cuda else "CPU (Triton interpreter)"
    head = [
        f"device: {name}  torch {torch.__version__}  triton {triton.__version__}  "
        f"date {time.strftime('%Y-%m-%d')}",
        "max relative error max|x - x64| / max|x64| vs float64 (dense reference for T <= 4097, chunked "
        "above), cells: Triton / PyTorch chunked op in the same dtype",
        "pass: Triton finite and <= k x chunked + atol; (k s,df / k grads / atol): "
        + ", ".join(f"{dt} {k1:g}/{k2:g}/{a:g}" for dt, (k1, k2, a) in TOL.items()) + "; '!' marks a failure",
        f"{'case':23s}  {'dtype':8s}  " + " ".join(f"{n:17s}" for n in NAMES),
    ]
    failed = sum(not all(r["ok"]) for r in rows)
    lines = head + [format_row(r) for r in rows]
    lines.append(f"{'ALL OK' if not failed else f'{failed} OF {len(rows)} ROWS FAILED'}  "
                 f"({time.time() - start:.0f} s wall, {args.workers} workers)")
    print("\n".join(lines))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines) + "\n")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
