"""Whole-model training throughput (issue "feedback kernels", item 6): tokens/s of a full training step.

    python scripts/train_throughput.py OUT.json [--models sessa attention] [--B 8] [--T 2048] [--steps 10]
        [--profile sessa] [--compile] [--chunk-size L]

Each model at the 125m preset (byte vocabulary), float32 weights under bf16 autocast, fused AdamW, causal
LM loss on random tokens: forward, backward, optimizer step, as the trainer runs them. Models run one after
the other in this process (same GPU); tokens/s is the median over ``steps`` timed steps after 3 warm-ups.
``--profile NAME``: one more step of that model under ``torch.profiler``: GPU time against wall time, and the
25 kernels with the most GPU time (where the step's time goes beside the feedback solve). ``--compile``: each
model under ``torch.compile`` (the trainer's ``--compile``; the warm-up steps include compilation; mode from
``--compile-mode``), measured after the same models in eager mode when ``--eager-too`` is given.
``--chunk-size``: Sessa's super-chunk L.
Each row also keeps the first step's loss, so eager and compiled runs of one model can be compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from gpu_report import kernel_summary, write_record
from torch.profiler import ProfilerActivity, profile

from sessa.models import SessaConfig, SessaForCausalLM, model_config

VOCAB = 259


def build(name: str, T: int, chunk_size: int | None) -> torch.nn.Module:
    sessa = dict(mixer="sessa", vocab_size=VOCAB, max_position_embeddings=T)
    if name == "sessa":
        config = SessaConfig.from_preset("125m", **sessa, chunk_size=chunk_size)
    else:  # matched to the Sessa preset
        config = model_config(SessaConfig.from_preset("125m", **sessa), name)
    return SessaForCausalLM(config).cuda().train()


def step_fn(model: torch.nn.Module, B: int, T: int, compiled: bool, mode: str | None):  # noqa: ANN201
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(3, VOCAB, (B, T), device="cuda")
    run = torch.compile(model, mode=mode) if compiled else model

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = run(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def measure(name: str, B: int, T: int, steps: int, profiled: bool, compiled: bool, args) -> dict:  # noqa: ANN001
    torch.manual_seed(0)
    model = build(name, T, args.chunk_size)
    step = step_fn(model, B, T, compiled, args.compile_mode)
    t0 = time.perf_counter()
    first_loss = step().item()
    warm_s = time.perf_counter() - t0
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    row = {
        "model": name, "B": B, "T": T, "compiled": compiled,
        "compile_mode": args.compile_mode if compiled else None, "chunk_size": args.chunk_size,
        "params": sum(p.numel() for p in model.parameters()), "first_loss": first_loss,
        "first_step_s": warm_s,
        "step_ms": statistics.median(times) * 1e3, "tokens_per_s": B * T / statistics.median(times),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }  # fmt: skip
    if profiled:
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        row["profile"] = {"wall_ms": wall * 1e3, **kernel_summary(prof, 25, unit="ms", width=100)}
    del model, step
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--models", nargs="+", default=["sessa", "attention"])
    parser.add_argument("--B", type=int, default=8)
    parser.add_argument("--T", type=int, nargs="+", default=[2048])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--profile", nargs="*", default=[])
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--eager-too", action="store_true", help="with --compile: eager rows first")
    parser.add_argument("--compile-mode", default=None, help="torch.compile's mode (e.g. reduce-overhead)")
    parser.add_argument("--chunk-size", type=int, default=None, help="Sessa's super-chunk L (default: auto)")
    args = parser.parse_args()
    modes = [False, True] if args.compile and args.eager_too else [args.compile]
    rows = []
    for T in args.T:
        for compiled in modes:
            for name in args.models:
                profiled = name in args.profile and T == args.T[0]
                try:
                    rows.append(measure(name, args.B, T, args.steps, profiled, compiled, args))
                except Exception as e:  # noqa: BLE001 - one failing model is reported, the others still run
                    rows.append({"model": name, "T": T, "compiled": compiled,
                                 "error": f"{type(e).__name__}: {e}"[:1500]})
                print(json.dumps(rows[-1]), flush=True)
    anchor = {(r["T"], r["compiled"]): r for r in rows if r.get("model") == "attention" and "error" not in r}
    for r in rows:
        if "error" not in r and (r["T"], r["compiled"]) in anchor:
            r["vs_attention"] = r["tokens_per_s"] / anchor[r["T"], r["compiled"]]["tokens_per_s"]
            tps, ratio = r["tokens_per_s"], r["vs_attention"]
            mode = "compiled" if r["compiled"] else "eager"
            print(f"{r['model']:10s} T={r['T']:6d} {mode:8s} {tps:10.0f} tokens/s  {ratio:.2f}x attention")
    write_record(args.out, rows)


if __name__ == "__main__":
    main()
