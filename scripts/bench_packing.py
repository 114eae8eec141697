"""Packed variable-length sequences on a GPU: accuracy, the op's speed, and a whole training step.

    python scripts/bench_packing.py OUT.json [--parts check op model] [--steps 8]

``check``: the one-launch packed solve (``feedback_solve_varlen``) in fp32 / bf16 / fp16 at D = 1024 on a
pack with segments of length 1 and 0, crossing super-chunks, against a float64 solve of each segment alone:
max relative error max|x - x64| / max|x64| of s and the four gradients (outputs and scratches NaN-poisoned).
``op``: forward + backward times (bf16, D = 1024) of one pack of N tokens with random segment lengths in
[lo, hi]: the one-launch solve, the earlier path (one launch sequence per segment, ``FeedbackSolveTriton`` on
views), the right-padded batch (S x max length, the Triton op) and causal SDPA (16 heads of 64) on that
padded batch, in this process; median of ``triton.testing.do_bench``.
``model``: a whole training step (bf16 autocast, fused AdamW) of the 125m Sessa and attention models on
ListOps batches of 16 examples (the task's own lengths, 502..2000), padded rows against the same examples
packed with ``sessa.train.data.pack_rows``; real (unpadded) tokens per second over ``--steps`` batches.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import triton.testing
from check_triton_gpu import max_rel
from gpu_report import write_record

import sessa.ops.feedback.triton as ft
from sessa.models.modeling import token_loss
from sessa.ops.attention import causal_attention, causal_attention_ref, packed_flash_usable
from sessa.ops.feedback.triton import (
    FeedbackSolveTriton,
    feedback_solve_packed,
    feedback_solve_triton,
    feedback_solve_varlen,
)
from sessa.ops.feedback.varlen import feedback_solve_varlen_ref
from sessa.tasks import get_task
from sessa.train.build import build_model
from sessa.train.config import TrainConfig
from sessa.train.data import pack_rows, trim

D = 1024


def lengths(N: int, lo: int, hi: int, seed: int) -> list[int]:
    """Random segment lengths in [lo, hi] summing to N (the last one cut)."""
    g = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while sum(out) < N:
        out.append(min(int(torch.randint(lo, hi + 1, (1,), generator=g)), N - sum(out)))
    return out


def inputs(B: int, T: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, f = (torch.randn(B, T, D, device="cuda", generator=g) for _ in range(3))
    gamma = 0.999 * torch.tanh(2 * torch.randn(B, T, 1, device="cuda", generator=g))
    return [x.to(dtype) for x in (2 * q, k, gamma, f)]


def fwd_bwd(fn, xs: list[torch.Tensor], ds: torch.Tensor) -> list[torch.Tensor]:
    leaves = [x.detach().clone().requires_grad_() for x in xs]
    s = fn(*leaves)
    s.backward(ds)
    return [s.detach()] + [x.grad for x in leaves]


def check() -> list[dict]:
    cu = torch.tensor([0, 1, 1, 700, 701, 2900, 3000, 4096])  # empty and 1-row segments, across L = 2048
    rows = []
    ft.POISON = True
    for name in ("float32", "bfloat16", "float16"):
        dt = getattr(torch, name)
        xs = inputs(1, 4096, dt, seed=1)
        ds = torch.randn(1, 4096, D, device="cuda").to(dt)
        tri = fwd_bwd(lambda *a: feedback_solve_varlen(*a, cu), xs, ds)
        ref = fwd_bwd(lambda *a: feedback_solve_varlen_ref(*a, cu), [x.double() for x in xs], ds.double())
        names = ("s", "dq_b", "dk_b", "dgamma", "df")
        errs = {n: max_rel(a, r) for n, a, r in zip(names, tri, ref, strict=True)}
        rows.append({"part": "check", "dtype": name, "N": 4096, "D": D, "cu_seqlens": cu.tolist(), **errs})
        print(rows[-1], flush=True)
    ft.POISON = False
    # attention of packed rows: the flash kernel for packed sequences against SDPA with the block mask
    seq_idx = torch.tensor([[0] * 700 + [1] + [2] * 1347, [3] * 2048], device="cuda")
    g = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(2, 2048, 12, 64, device="cuda", generator=g, dtype=torch.bfloat16)
    k, v = (torch.randn(2, 2048, 4, 64, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(2))
    do = torch.randn_like(q)
    flash = fwd_bwd(lambda *a: causal_attention(*a, seq_idx=seq_idx), [q, k, v], do)
    ref = fwd_bwd(lambda *a: causal_attention_ref(*a, seq_idx=seq_idx), [x.double() for x in (q, k, v)],
                  do.double())
    errs = {n: max_rel(a, r) for n, a, r in zip(("out", "dq", "dk", "dv"), flash, ref, strict=True)}
    rows.append({"part": "check", "op": "packed attention", "flash": packed_flash_usable(q),
                 "dtype": "bfloat16", "shape": "B=2 T=2048 H=12 Hkv=4 hd=64", **errs})
    print(rows[-1], flush=True)
    return rows


def op(N: int, lo: int, hi: int) -> dict:
    dt = torch.bfloat16
    sizes = lengths(N, lo, hi, seed=N + lo)
    cu = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])
    xs = [x.requires_grad_() for x in inputs(1, N, dt)]
    ds = torch.randn(1, N, D, device="cuda", dtype=dt)
    bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True))
    S, W = len(sizes), max(sizes)
    padded = [torch.zeros(S, W, x.shape[-1], device="cuda", dtype=dt) for x in xs]
    for i, (a, b) in enumerate(bounds):
        for p, x in zip(padded, xs, strict=True):
            p[i, : b - a] = x[0, a:b].detach()
    padded = [p.requires_grad_() for p in padded]
    dpad = torch.randn(S, W, D, device="cuda", dtype=dt)
    heads = D // 64
    qa, ka, va = (torch.randn(S, heads, W, 64, device="cuda", dtype=dt, requires_grad=True) for _ in range(3))
    da = torch.randn_like(qa)

    def clear(ts):
        for t in ts:
            t.grad = None

    def packed():
        feedback_solve_varlen(*xs, cu).backward(ds)
        clear(xs)

    # the trainer's layout: the segments packed into rows of the longest one's width (pack_rows)
    flat = torch.arange(1, N + 1).split(sizes)
    index = torch.stack([torch.cat([t, t.new_zeros(W - len(t))]) for t in flat])
    rows_idx, _, seq_idx = pack_rows(index, index, torch.tensor(sizes), pad_id=0)
    rows_idx, seq_idx = rows_idx.cuda(), seq_idx.cuda()
    rowed = []
    for x in xs:
        r = x[0].detach()[(rows_idx - 1).clamp_min(0)] * (rows_idx > 0)[..., None]
        rowed.append(r.requires_grad_())
    drow = torch.randn(*rows_idx.shape, D, device="cuda", dtype=dt)

    def rows():
        feedback_solve_packed(*rowed, seq_idx).backward(drow)
        clear(rowed)

    def per_segment():
        parts = [FeedbackSolveTriton.apply(*(x[:, a:b] for x in xs), None, None, None) for a, b in bounds]
        torch.cat(parts, 1).backward(ds)
        clear(xs)

    def pad():
        feedback_solve_triton(*padded).backward(dpad)
        clear(padded)

    def sdpa():
        torch.nn.functional.scaled_dot_product_attention(qa, ka, va, is_causal=True).backward(da)
        clear((qa, ka, va))

    ms = {name: triton.testing.do_bench(fn, warmup=20, rep=200, return_mode="median")
          for name, fn in (("packed", packed), ("packed_rows", rows), ("per_segment", per_segment),
                           ("padded", pad), ("sdpa_padded", sdpa))}
    row = {"part": "op", "dtype": "bfloat16", "N": N, "D": D, "lengths": [lo, hi], "segments": S,
           "max_len": W, "packed_rows": list(rows_idx.shape), "ms": {k: round(v, 3) for k, v in ms.items()},
           "packed_speedup_vs_per_segment": round(ms["per_segment"] / ms["packed"], 2),
           "packed_speedup_vs_padded": round(ms["padded"] / ms["packed"], 2),
           "packed_rows_speedup_vs_padded": round(ms["padded"] / ms["packed_rows"], 2),
           "packed_over_sdpa_padded": round(ms["packed"] / ms["sdpa_padded"], 2)}
    print(row, flush=True)
    return row


def model(
    name: str, batches: list[tuple], steps: int, vocab: int, pad_id: int, preset: str = "125m"
) -> list[dict]:
    cfg = TrainConfig(task="listops", model=name, preset=preset)
    rows = []
    for layout in ("padded", "packed"):  # the same initial model for both: equal first losses
        torch.manual_seed(0)  # the trainer's model for `sessa train --model NAME --preset 125m` on ListOps
        net = build_model(cfg, vocab, 2000, pad_id).cuda().train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
        times, real, positions, first_loss = [], 0, 0, None
        for i, (x, y, n) in enumerate(batches[: steps + 3]):
            seq_idx = None
            if layout == "packed":
                x, y, seq_idx = pack_rows(x, y, n, pad_id=pad_id)
                seq_idx = seq_idx.cuda()
            x, y = x.cuda(), y.cuda()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = net(input_ids=x, seq_idx=seq_idx).logits
            loss = token_loss(logits, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if i >= 3:  # three warm-up steps (compilation)
                times.append(time.perf_counter() - t0)
                real += int(n.sum())
                positions += x.numel()
            first_loss = float(loss.detach()) if first_loss is None else first_loss
        step_s = statistics.median(times)
        rows.append({"part": "model", "model": name, "layout": layout, "rows_per_step": "16 examples",
                     "median_step_ms": round(1e3 * step_s, 1), "step_ms": [round(1e3 * t, 1) for t in times],
                     "real_tokens_per_s": round(real / sum(times)),
                     "real_tokens_per_s_at_median": round(real / len(times) / step_s),
                     "positions_per_step": positions // len(times), "first_loss": first_loss})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--parts", nargs="+", default=["check", "op", "model"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--models", nargs="+", default=["sessa", "attention"])
    args = ap.parse_args()
    rows: list[dict] = []
    if "check" in args.parts:
        rows += check()
    if "op" in args.parts:
        for N, lo, hi in ((16384, 512, 2048), (16384, 64, 512), (8192, 128, 1024)):
            rows.append(op(N, lo, hi))
    if "model" in args.parts:
        data = get_task("listops").build(0)
        split = data.splits["train"]
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(len(split), generator=g)
        batches = [(*trim(split, r), split.lengths[r]) for r in order[: 16 * (args.steps + 3)].split(16)]
        for name in args.models:
            rows += model(name, batches, args.steps, data.vocab_size, data.pad_id)
    write_record(args.out, rows, date=time.strftime("%Y-%m-%d"))


if __name__ == "__main__":
    main()
