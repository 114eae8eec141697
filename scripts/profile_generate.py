"""Where a decode token's time goes inside ``generate``: GPU time against wall time, and the host ops.

    python scripts/profile_generate.py CONTEXT OUT.json MODEL [MODEL ...]

MODEL: a ``sessa bench --generate`` name (``sessa``, ``attention-compiled``, ``llama``, ``llama-static``,
...), 125m preset, bf16, batch 1. For each, after an untimed warm-up, ``generate`` of 1 and of 17 new
tokens after a random CONTEXT-token prompt runs under ``torch.profiler`` (CPU and CUDA); the difference
over 16 tokens gives per token: wall time (also without the profiler), GPU kernel time and count, and the
12 host ops with the most self CPU time. Wall time well above GPU time means the token waits for the host
(Python, launches, generate's own loop).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import torch
from gpu_report import write_record
from torch.profiler import ProfilerActivity, profile

from sessa.bench.generate import COMPILED, LLAMA_MODELS, STATIC, VOCAB, build


def run(model: torch.nn.Module, name: str, prompt: torch.Tensor, n: int, profiled: bool = True) -> tuple:
    options: dict = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))
    if name.endswith((STATIC, COMPILED)):
        options["cache_implementation"] = "static"
        if name not in LLAMA_MODELS:
            options["disable_compile"] = not name.endswith(COMPILED)
    torch.cuda.synchronize()
    if not profiled:
        t0 = time.perf_counter()
        model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **options)
        torch.cuda.synchronize()
        return time.perf_counter() - t0, None
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **options)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    gpu = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    host = Counter()
    for e in prof.key_averages():
        if e.self_cpu_time_total > 0:
            host[e.key[:70]] += e.self_cpu_time_total
    return wall, {"kernels": len(gpu), "gpu_us": sum(e.device_time for e in gpu), "host": host}


def one(name: str, context: int) -> dict:
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = build(name, "125m", context + 64, torch.device("cuda"), torch.bfloat16)
    prompt = torch.randint(3, VOCAB, (1, context), device="cuda")
    with torch.inference_mode():
        for n in (17, 17):  # warm-up: compilation, graph capture, kernel specialisations
            run(model, name, prompt, n)
        w1, p1 = run(model, name, prompt, 1)
        w17, p17 = run(model, name, prompt, 17)
        clean = [run(model, name, prompt, n, profiled=False)[0] for n in (1, 17, 1, 17)]
    host = p17["host"] - p1["host"]
    return {
        "model": name,
        "context": context,
        "wall_ms": (w17 - w1) / 16 * 1e3,
        "wall_unprofiled_ms": min(clean[1] - clean[0], clean[3] - clean[2]) / 16 * 1e3,
        "gpu_ms": (p17["gpu_us"] - p1["gpu_us"]) / 16 / 1e3,
        "kernels": (p17["kernels"] - p1["kernels"]) / 16,
        "host_top_us": {k: round(v / 16, 1) for k, v in host.most_common(12)},
    }


def main() -> None:
    context, out, names = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    rows = []
    for name in names:
        try:
            rows.append(one(name, context))
        except Exception as e:  # noqa: BLE001 - one failing model is reported, the others still run
            rows.append({"model": name, "error": f"{type(e).__name__}: {e}"[:1500]})
        print(json.dumps(rows[-1]), flush=True)
    write_record(out, rows)


if __name__ == "__main__":
    main()
