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
from gpu_report import kernel_summary, write_record
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
    return {"model": name, "compiled": compiled, "context": context, **kernel_summary(prof, 10)}


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
        write_record(sys.argv[2], rows)


if __name__ == "__main__":
    main()
