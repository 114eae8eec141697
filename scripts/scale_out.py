"""Scale-out of training on one host: DDP and FSDP2 from 1 to N GPUs, Sessa vs the attention baseline.

For each preset (125m, 350m), model (sessa, attention), strategy (ddp, fsdp) and GPU count n in 1, 2, 4, 8
(up to the GPUs present) it runs ``torchrun --nproc_per_node=n -m sessa train`` on byte-level LM windows
(bf16 autocast, a fixed per-GPU batch, a short fixed number of steps) and reports tokens/s over the steps
after the warm-up window, scaling efficiency = tokens/s(n) / (n x tokens/s(1)) and peak memory per GPU.
A correctness pass reruns DDP and FSDP on n GPUs with the 1-GPU run's global batch (per-GPU batch / n):
the losses must match the 1-GPU run's over the same tokens.

    python scripts/scale_out.py --out scale_out.json                       # on the GPU machine
    python scripts/scale_out.py --device cpu --presets tiny --max-gpus 2 --steps 4 --batch-size 4 --seq-len 64
                                                                          # CPU smoke test (gloo)

Each torchrun command has its own time limit (--limit, default 240 s), so one machine call of 10 minutes
holds a few of them: run the presets / strategies in separate calls if needed (--presets, --strategies).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch


def run(
    n: int, args: argparse.Namespace, preset: str, model: str, strategy: str, batch: int, tag: str
) -> dict:
    out = Path(args.work) / f"{preset}-{model}-{strategy}-{n}-{tag}"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={n}",
        "-m",
        "sessa",
        "train",
        "--task",
        "bytelm",
        "--task-option",
        f"seq_len={args.seq_len}",
        "--preset",
        preset,
        "--model",
        model,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(batch),
        "--lr",
        "3e-4",
        "--warmup-steps",
        "5",
        "--eval-every",
        "0",
        "--eval-examples",
        "8",
        "--ckpt-every",
        "0",
        "--ckpt-minutes",
        "0",
        "--log-every",
        str(args.log_every),
        "--no-health",
        "--device",
        args.device,
        "--distributed",
        strategy,
        "--out-dir",
        str(out),
        "--overwrite",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "NCCL_NVLS_ENABLE": "0",
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        "NVSHMEM_DISABLE_NVLS": "1",
    }
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.limit, env=env)
        ok, tail = proc.returncode == 0, proc.stderr[-600:]
    except subprocess.TimeoutExpired:
        ok, tail = False, f"timed out after {args.limit} s"
    row = {
        "preset": preset,
        "model": model,
        "strategy": strategy,
        "gpus": n,
        "batch_per_gpu": batch,
        "ok": ok,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if not ok:
        return {**row, "error": tail.strip().splitlines()[-1] if tail.strip() else "failed"}
    with (out / "metrics.csv").open() as fh:
        train_rows = [r for r in csv.DictReader(fh) if r["loss"]]
    summary = json.loads((out / "summary.json").read_text())
    steady = [float(r["tokens_per_s"]) for r in train_rows if int(r["step"]) > args.log_every]
    return {
        **row,
        "tokens_per_s": sum(steady) / max(len(steady), 1),
        "losses": [float(r["loss"]) for r in train_rows],
        "peak_memory_gib": summary.get("peak_memory_gib"),
        "params": summary["params"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["125m", "350m"])
    ap.add_argument("--models", nargs="+", default=["sessa", "attention"])
    ap.add_argument("--strategies", nargs="+", default=["ddp", "fsdp"])
    ap.add_argument("--max-gpus", type=int, default=None, help="default: every GPU of the machine")
    ap.add_argument("--batch-size", type=int, default=8, help="rows per GPU per step")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--log-every", type=int, default=10, help="the first window (warm-up) is left out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--limit", type=float, default=240.0, help="seconds per torchrun command")
    ap.add_argument("--work", default="scale_out_runs")
    ap.add_argument("--out", default="scale_out.json")
    args = ap.parse_args()
    available = torch.cuda.device_count() if args.device == "cuda" else 2
    most = min(args.max_gpus or available, available)
    counts = [n for n in (1, 2, 4, 8) if n <= most]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (gloo)"
    rows = []
    for preset in args.presets:
        for model in args.models:
            for strategy in args.strategies:
                base = None
                for n in counts:
                    row = run(n, args, preset, model, strategy, args.batch_size, "speed")
                    base = row if n == 1 else base
                    if base and base.get("ok") and row.get("ok"):
                        row["efficiency"] = row["tokens_per_s"] / (n * base["tokens_per_s"])
                    if n > 1 and base and base.get("ok") and args.batch_size % n == 0:
                        same = run(n, args, preset, model, strategy, args.batch_size // n, "global")
                        if same.get("ok"):
                            diffs = [abs(a - b) for a, b in zip(same["losses"], base["losses"], strict=False)]
                            row["max_loss_diff_same_global_batch"] = max(diffs) if diffs else None
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
    result = {
        "device": name,
        "gpus_present": available,
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "settings": vars(args),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(
        f"\n{'preset':6s} {'model':9s} {'strategy':8s} {'GPUs':>4s} {'tokens/s':>11s} {'eff.':>6s} "
        f"{'peak GiB':>9s} {'loss diff':>10s}"
    )
    for r in rows:
        eff = f"{r['efficiency']:.2f}" if "efficiency" in r else "-"
        mem = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") else "-"
        diff = (
            f"{r['max_loss_diff_same_global_batch']:.1e}"
            if r.get("max_loss_diff_same_global_batch") is not None
            else "-"
        )
        tps = f"{r['tokens_per_s']:,.0f}" if r.get("ok") else r.get("error", "failed")[:30]
        print(
            f"{r['preset']:6s} {r['model']:9s} {r['strategy']:8s} {r['gpus']:4d} {tps:>11s} {eff:>6s} "
            f"{mem:>9s} {diff:>10s}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
