"""Where one decode step's GPU time goes: kernels of one static-cache step of 125m models at a given context.

    python scripts/profile_decode_step.py [CONTEXT] [OUT.json]

For each model (sessa, attention, mamba2) and step form (eager fixed-shape step, compiled step), prefill a
random CONTEXT-token prompt (default 8192) into a static cache without graphs, run three steps, then profile
one: number of GPU kernels, their summed time, and the ten largest by total time. bf16 weights, batch 1.
"""

from __future__ import annotations

import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from sessa.models import SessaConfig, SessaForCausalLM, model_config


def one(name: str, compiled: bool, context: int) -> dict:
    torch.manual_seed(0)
    ids = dict(vocab_size=259, max_position_embeddings=context + 64)
    target = SessaConfig.from_preset("125m", mixer="sessa", **ids)
    config = target if name == "sessa" else model_config(target, name)
    model = SessaForCausalLM(config).cuda().bfloat16().eval()
    cache = model.model.new_static_cache(1, context + 16, graphs=False, compile=compiled)
    with torch.inference_mode():
        model(torch.randint(3, 259, (1, context), device="cuda"), cache=cache)
        token = torch.randint(3, 259, (1, 1), device="cuda")
        for _ in range(3):
            model(token, cache=cache)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(token, cache=cache)
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    totals: dict[str, list] = {}
    for e in kernels:
        row = totals.setdefault(e.name[:90], [0, 0.0])
        row[0] += 1
        row[1] += e.device_time
    top = sorted(totals.items(), key=lambda kv: -kv[1][1])[:10]
    return {
        "model": name, "compiled": compiled, "context": context, "kernels": len(kernels),
        "gpu_ms": sum(e.device_time for e in kernels) / 1e3,
        "top": [{"name": k, "calls": c, "us": round(t, 1)} for k, (c, t) in top],
    }  # fmt: skip


def main() -> None:
    context = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
    rows = []
    for name in ("sessa", "attention", "mamba2"):
        for compiled in (False, True):
            try:
                rows.append(one(name, compiled, context))
            except Exception as e:  # noqa: BLE001 - one failing case is reported, the others still run
                rows.append({"model": name, "compiled": compiled, "error": f"{type(e).__name__}: {e}"[:1500]})
            print(json.dumps(rows[-1]), flush=True)
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, fh,
                      indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
