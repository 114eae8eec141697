"""Time each Triton feedback-solve kernel alone under several tile configurations (GPU only).

One mid-sequence super-chunk (A = T/2, L = 1024 rows) of a T = 16K, D = 1024 bf16 solve: the log-sum-exp
pass, the W products (forward and backward form), the step kernel (right-hand side + next P), dlogit, the
push GEMM and the dq + dk launch. Scratch contents are random (the kernels have no data-dependent control
flow), so only the times mean anything. Used to pick ``triton_common.TUNING``; the whole-op check of a
choice is ``scripts/tune_feedback.py``.

    python scripts/sweep_kernel_tiles.py [lse wapply step dlogit push dqdk]
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable

import torch
import triton.testing

from sessa.ops.feedback.triton_bwd import _dlogit_kernel, _dq_dk_kernel, _tgemm_acc_kernel
from sessa.ops.feedback.triton_common import LOG2E, cdiv, choose_blocks
from sessa.ops.feedback.triton_fwd import _lse, _step_kernel, forward_fixed
from sessa.ops.feedback.triton_launch import BoundKernel, Streams
from sessa.ops.feedback.triton_tril import w_applier

T, D, B, L = 16384, 1024, 1, 1024
A = T // 2


def bench(name: str, cfg: dict, fn: Callable[[], object]) -> None:
    try:
        fn()
        torch.cuda.synchronize()
        us = 1e3 * triton.testing.do_bench(fn, warmup=20, rep=120, return_mode="median")
        print(f"{name:8s} {str(cfg):70s} {us:8.1f} us", flush=True)
    except Exception as exc:  # a configuration that does not fit is reported, not fatal
        print(f"{name:8s} {str(cfg):70s} failed: {type(exc).__name__} {str(exc)[:80]}", flush=True)


def main() -> None:
    only = set(sys.argv[1:]) or {"lse", "wapply", "step", "dlogit", "push", "dqdk"}
    dt = torch.bfloat16
    torch.manual_seed(0)
    q, k, f = (torch.randn(B, T, D, device="cuda", dtype=dt) for _ in range(3))
    g = (0.999 * torch.tanh(2 + torch.rand(B, T, 1, device="cuda"))).to(dt)
    bl0 = choose_blocks(T, D, dt, L, False)
    streams = Streams(q.device, side=True)
    st = forward_fixed(q, k, g, f, None, bl0)
    scale = 1 / math.sqrt(D)
    new = {"device": "cuda"}
    p = torch.rand(B, bl0.rows, bl0.T_pad, **new, dtype=dt) * 1e-3  # a probability-like scratch
    dl = torch.randn_like(p) * 1e-3
    df_op = torch.randn(B, T, D, **new, dtype=dt)
    print(f"{torch.cuda.get_device_name()} bf16 T={T} D={D}, super-chunk at A={A} of L={L} rows")

    if "lse" in only:
        for v in [{}, {"bn_lse": 128, "stages_lse": 4}, {"bm_lse": 128}, {"bn_lse": 256, "stages_lse": 2},
                  {"warps": 4}, {"bk": 32}]:
            bl = dataclasses.replace(bl0, **v)
            bench("lse", v, lambda bl=bl: _lse(q, k, None, bl, streams))
    if "wapply" in only:
        rhs = torch.randn(B, bl0.rows, D, **new)
        s, df = torch.empty(B, T, D, **new), torch.empty(B, T, D, **new)
        s_op, df_o = torch.empty_like(df_op), torch.empty_like(df_op)
        push = torch.randn(B, T, D, **new)
        for v in [{}, {"bm_w": 64, "warps_w": 4}, {"bd_w": 128}, {"bk_w": 32}, {"stages_w": 2},
                  {"stages_w": 4}, {"bd_w": 32}, {"warps_w": 4}, {"bm_w": 64, "bd_w": 128}]:
            bl = dataclasses.replace(bl0, **v)
            fw = w_applier(st.w, rhs, s, s_op, bl, streams)
            bench("wapplyF", v, lambda fw=fw: fw(A, L))
            dpart = torch.empty(B, T, cdiv(D, bl.bd_w), **new)
            bw = w_applier(st.w, df_op, df, df_o, bl, streams, x2=push, trans=True, delta=dpart, s=st.s, f=f)
            bench("wapplyB", v, lambda bw=bw: bw(A, L))
    if "step" in only:
        pn, rhs = torch.empty_like(p), torch.empty(B, bl0.rows, D, **new)
        for v in [dict(BM=128, BN=128, BK=64, BD=128, w=8, s=3), dict(BM=64, BN=128, BK=64, BD=128, w=8, s=4),
                  dict(BM=128, BN=64, BK=64, BD=128, w=8, s=4), dict(BM=64, BN=128, BK=64, BD=64, w=8, s=4)]:
            kern = BoundKernel(_step_kernel, streams, MASK=0, EVEN_D=True, BM=v["BM"], BN=v["BN"], BK=v["BK"],
                               BN_P=v["BN"], BD=v["BD"], PREC="tf32", num_warps=v["w"], num_stages=v["s"])
            n_inter, n_pm = cdiv(L, v["BM"]) * cdiv(D, v["BD"]), cdiv(L, v["BM"])
            args = (q, k, q, st.lse, pn, p, st.s_op, f, g, rhs, A, A + L, T, D, n_inter, n_pm, q.stride(0),
                    q.stride(1), k.stride(0), k.stride(1), 0, st.lse.stride(0), p.stride(0), p.stride(1),
                    st.s_op.stride(0), st.s_op.stride(1), f.stride(0), f.stride(1), g.stride(0), g.stride(1),
                    rhs.stride(0), rhs.stride(1), LOG2E * scale)
            grid = (n_inter + n_pm * ((A + L) // v["BN"]), B)
            bench("step", v, lambda kern=kern, grid=grid, args=args: kern(grid, *args))
    if "dlogit" in only:
        dpart = torch.zeros(B, T, cdiv(D, bl0.bd_w), **new)
        dgamma = torch.zeros(B, T, **new)
        for v in [dict(BM=128, BN=128, BK=64, w=8, s=3), dict(BM=64, BN=128, BK=64, w=8, s=4),
                  dict(BM=128, BN=64, BK=64, w=8, s=4), dict(BM=64, BN=128, BK=64, w=4, s=4)]:
            span = max(v["BM"], bl0.bt_dk)
            kern = BoundKernel(_dlogit_kernel, streams, MASK=0, EVEN_D=True, BM=v["BM"], BN=v["BN"],
                               BK=v["BK"], SPAN=span, PREC="tf32", num_warps=v["w"], num_stages=v["s"])
            args = (q, k, q, st.lse, g, df_op, st.s_op, dpart, dgamma, dl, p, A, T, D, dpart.shape[-1],
                    q.stride(0), q.stride(1), 0, st.lse.stride(0), g.stride(0), g.stride(1), df_op.stride(0),
                    df_op.stride(1), dpart.stride(0), p.stride(0), p.stride(1), LOG2E * scale)
            grid = (cdiv(L, span) * span // v["BM"], cdiv(A + L, v["BN"]), B)
            bench("dlogit", v, lambda kern=kern, grid=grid, args=args: kern(grid, *args))
    if "push" in only:
        push = torch.zeros(B, T, D, **new)
        for v in [dict(BKEY=128, BT=64, BN=256, w=8, s=4), dict(BKEY=128, BT=64, BN=128, w=8, s=4),
                  dict(BKEY=128, BT=64, BN=256, w=8, s=3), dict(BKEY=64, BT=64, BN=128, w=4, s=4),
                  dict(BKEY=128, BT=32, BN=256, w=8, s=5), dict(BKEY=128, BT=128, BN=256, w=8, s=2),
                  dict(BKEY=256, BT=64, BN=128, w=8, s=3), dict(BKEY=128, BT=64, BN=128, w=4, s=4)]:
            kern = BoundKernel(_tgemm_acc_kernel, streams, MASK=0, EVEN_D=True, BKEY=v["BKEY"], BT=v["BT"],
                               BN=v["BN"], SPAN=max(bl0.bm, v["BT"]), PREC="tf32", num_warps=v["w"],
                               num_stages=v["s"])
            args = (q, p, df_op, push, A, T, D, L, 0, 0, p.stride(0), p.stride(1), df_op.stride(0),
                    df_op.stride(1), push.stride(0), push.stride(1), 1.0)
            grid = (cdiv(A, v["BKEY"]), cdiv(D, v["BN"]), B)
            bench("push", v, lambda kern=kern, grid=grid, args=args: kern(grid, *args))
    if "dqdk" in only:
        dq, dk, dk_out = torch.empty_like(q), torch.zeros(B, T, D, **new), torch.empty_like(q)
        for v in [dict(BM=128, BD=128, BD_DK=256, s=3), dict(BM=64, BD=128, BD_DK=256, s=4),
                  dict(BM=64, BD=128, BD_DK=128, s=4), dict(BM=128, BD=128, BD_DK=128, s=3)]:
            kern = BoundKernel(_dq_dk_kernel, streams, MASK=0, EVEN_D=True, BM=v["BM"], BN=bl0.bn, BD=v["BD"],
                               BT=bl0.bt_dk, BD_DK=v["BD_DK"], SPAN=max(v["BM"], bl0.bt_dk), PREC="tf32",
                               num_warps=8, num_stages=v["s"])
            nq = cdiv(L, v["BM"]) * cdiv(D, v["BD"])
            args = (q, dl, q, k, dq, dk, dk_out, A, T, D, L, nq, 0, 0, dl.stride(0), dl.stride(1),
                    q.stride(0), q.stride(1), dk.stride(0), dk.stride(1), scale)
            grid = (nq + cdiv(A + L, bl0.bn) * cdiv(D, v["BD_DK"]), B)
            bench("dqdk", v, lambda kern=kern, grid=grid, args=args: kern(grid, *args))


if __name__ == "__main__":
    main()
