"""How fast can the log-sum-exp pass's logit GEMM (a D = 1024 contraction per (row, key) pair) run on this
GPU? (GPU only; the numbers behind ``benchmarks/lse_variants_h200.txt``.)

At B = 1, T = 16,384 and 4,096 (D = 1,024, bf16) it times, in one process:

- the solve's own pass (``triton_fwd._lse``) and, as yardsticks, cuBLAS q @ k^T (full, not causal) and causal
  SDPA's forward;
- three spellings of the same causal log-sum-exp kernel over several tile shapes: loads masked on rows and D
  ("masked", what the solve's kernels did before), unpredicated loads ("even": T and D multiples of the
  tiles), and TMA tensor descriptors ("tma", ``triton.tools.tensor_descriptor``); each result is compared with
  ``_lse`` (max abs error, log2 units); few row tiles split the keys as ``triton_fwd.lse_split`` does;
- the copies an in-op CUDA graph of the solve would add at (1, 4,096, 1,024), L = 1,024 (inputs into the
  graph's buffers, saved tensors and gradients out), as ``torch._foreach_copy_`` launches.

    python scripts/lse_variants.py
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import triton
import triton.language as tl
import triton.testing
from triton.tools.tensor_descriptor import TensorDescriptor

from sessa.ops.feedback.triton_common import LOG2E, cdiv, choose_blocks
from sessa.ops.feedback.triton_fwd import LSE_PROGRAMS_PER_SM, _lse, sm_count
from sessa.ops.feedback.triton_launch import Streams

D = 1024
TILES = [(64, 256, 64, 8, 3), (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3),
         (128, 256, 64, 8, 2), (128, 128, 128, 8, 2), (256, 128, 64, 8, 3), (128, 128, 64, 4, 3),
         (64, 128, 64, 4, 4), (64, 256, 64, 4, 3), (128, 64, 64, 4, 4)]  # (BM, BN, BK, warps, stages)


@triton.jit
def _online_lse(x, rows, cols, T, m, acc):
    """One key tile of a causal online log-sum-exp (log2 units): the running (max, sum) of each row."""
    x = tl.where((cols[None, :] < rows[:, None]) & (rows[:, None] < T), x, float("-inf"))
    m_new = tl.maximum(m, tl.max(x, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    acc = acc * tl.exp2(m - m_safe) + tl.sum(tl.exp2(x - m_safe[:, None]), 1)
    return m_new, acc


MASKED, EVEN, TMA = 0, 1, 2  # how the kernel loads its tiles


@triton.jit
def _lse_variant(q, k, out_ptr, T, D, KS, stride_q, stride_k, stride_os, scale2,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, LOADS: tl.constexpr):
    """Causal row log-sum-exp over the keys of split program_id(1); q, k: pointers (LOADS = MASKED: masked
    on rows and D; EVEN: unpredicated) or tensor descriptors of (BM, BK) / (BN, BK) blocks (TMA)."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    m = tl.full([BM], float("-inf"), tl.float32)
    acc = tl.zeros([BM], tl.float32)
    for c0 in range(pid_s * KS, tl.minimum(tl.minimum(pid_m * BM + BM, T), pid_s * KS + KS), BN):
        cols = c0 + tl.arange(0, BN)
        x = tl.zeros([BM, BN], dtype=tl.float32)
        for d0 in range(0, D, BK):
            dd = d0 + tl.arange(0, BK)
            if LOADS == 2:
                x = tl.dot(q.load([pid_m * BM, d0]), k.load([c0, d0]).T, x)
            elif LOADS == 1:
                x = tl.dot(tl.load(q + rows[:, None] * stride_q + dd[None, :]),
                           tl.load(k + cols[None, :] * stride_k + dd[:, None]), x)
            else:
                qt = tl.load(q + rows[:, None] * stride_q + dd[None, :],
                             mask=(rows < T)[:, None] & (dd < D)[None, :], other=0.0)
                kt = tl.load(k + cols[None, :] * stride_k + dd[:, None],
                             mask=(cols < T)[None, :] & (dd < D)[:, None], other=0.0)
                x = tl.dot(qt, kt, x)
        m, acc = _online_lse(x * scale2, rows, cols, T, m, acc)
    tl.store(out_ptr + pid_s * stride_os + rows, tl.where(acc > 0, m + tl.log2(acc), float("-inf")),
             mask=rows < T)


def bench_us(fn: Callable[[], object]) -> float:
    fn()
    torch.cuda.synchronize()
    return 1e3 * triton.testing.do_bench(fn, warmup=20, rep=150, return_mode="median")


def keys_per_split(T: int, bm: int, bn: int, sms: int) -> int:
    """As ``triton_fwd.lse_split`` for these tiles."""
    tiles = T // bm
    if tiles >= sms:
        return T
    splits = min(cdiv(LSE_PROGRAMS_PER_SM * sms, tiles), T // bn)
    return cdiv(cdiv(T, splits), bn) * bn


def variants(T: int) -> None:
    torch.manual_seed(0)
    q, k = (torch.randn(T, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    flops = T * T / 2 * D * 2  # causal logits
    bl = choose_blocks(T, D, torch.bfloat16, None, False)
    streams = Streams(q.device)
    ref = _lse(q[None], k[None], None, bl, streams)[0]
    print(f"{torch.cuda.get_device_name()} T={T} D={D} bf16; causal logits {flops / 1e9:.0f} GFLOP",
          flush=True)
    us = bench_us(lambda: _lse(q[None], k[None], None, bl, streams))
    print(f"  sessa _lse (BM {bl.bm_lse}, BN {bl.bn_lse}): {us:8.1f} us {flops / us / 1e6:6.0f} TFLOP/s")
    us = bench_us(lambda: torch.mm(q, k.T))
    print(f"  cuBLAS q @ k^T (full):      {us:8.1f} us {2 * flops / us / 1e6:6.0f} TFLOP/s")
    qa, ka = (x.view(1, T, D // 64, 64).transpose(1, 2) for x in (q, k))
    us = bench_us(lambda: torch.nn.functional.scaled_dot_product_attention(qa, ka, ka, is_causal=True))
    print(f"  SDPA forward, causal:       {us:8.1f} us {2 * flops / us / 1e6:6.0f} TFLOP/s", flush=True)
    for tiles in TILES:
        one_tiling(q, k, ref, flops, *tiles)


def one_tiling(q: torch.Tensor, k: torch.Tensor, ref: torch.Tensor, flops: float, BM: int, BN: int, BK: int,
               warps: int, stages: int) -> None:
    """The three spellings at one tiling: time, rate and max abs error against ``_lse``."""
    T = q.shape[0]
    scale2 = LOG2E / math.sqrt(D)
    ks = keys_per_split(T, BM, BN, sm_count(q.device))
    splits = cdiv(T, ks)
    out = torch.empty(splits, T, device="cuda", dtype=torch.float32)
    grid = (T // BM, splits)
    opts = dict(BM=BM, BN=BN, BK=BK, num_warps=warps, num_stages=stages)
    q_desc, k_desc = TensorDescriptor.from_tensor(q, [BM, BK]), TensorDescriptor.from_tensor(k, [BN, BK])
    operands = {"masked": (q, k, MASKED), "even": (q, k, EVEN), "tma": (q_desc, k_desc, TMA)}
    for name, (qo, ko, loads) in operands.items():
        def fn(qo=qo, ko=ko, loads=loads):
            return _lse_variant[grid](qo, ko, out, T, D, ks, D, D, T, scale2, LOADS=loads, **opts)

        try:
            us = bench_us(fn)
        except Exception as exc:  # a tiling that does not fit is reported, not fatal
            print(f"  {name:6s} {BM}x{BN}x{BK} w{warps} s{stages}: failed {type(exc).__name__}", flush=True)
            continue
        lse = torch.logsumexp(out * math.log(2), 0) / math.log(2)
        err = (lse[1:] - ref[1:]).abs().max().item()
        print(f"  {name:6s} BM {BM:3d} BN {BN:3d} BK {BK:3d} w{warps} s{stages} splits {splits:2d}: "
              f"{us:8.1f} us {flops / us / 1e6:6.0f} TFLOP/s  err {err:.1e}", flush=True)


def graph_copies(T: int = 4096, L: int = 1024) -> None:
    """The copies an in-op CUDA graph of one forward + backward would add (bf16 unless noted)."""
    def make(shapes, dtype=torch.bfloat16):
        return [torch.randn(*s, device="cuda", dtype=dtype) for s in shapes]

    x, w = (1, T, D), (1, T // L, L, L)
    sets = {
        "forward in (q, k, f)": ([x] * 3, []),
        "forward out (s fp32, s_op, W)": ([x, w], [x]),
        "backward in (q, k, f, s_op, W, ds; s fp32)": ([x] * 6, [x]),
        "backward out (dq, dk, df)": ([x] * 3, []),
    }
    total = 0.0
    for name, (bf16, fp32) in sets.items():
        dst = make(bf16) + make(fp32, torch.float32)
        src = make(bf16) + make(fp32, torch.float32)
        us = bench_us(lambda dst=dst, src=src: torch._foreach_copy_(dst, src))
        total += us
        print(f"copy {name}: {us:.1f} us", flush=True)
    print(f"copies in all: {total:.1f} us", flush=True)


def main() -> None:
    for T in (16384, 4096):
        variants(T)
    graph_copies()


if __name__ == "__main__":
    main()
