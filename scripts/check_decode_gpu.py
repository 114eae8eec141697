"""GPU check of the decoding paths (benchmarks/RESULTS.md "Generation"): run on a CUDA machine.

    python scripts/check_decode_gpu.py OUT.json

1. The split-context Triton decode kernels (``feedback_decode`` on CUDA) against the float64 reference at
   real shapes, every dtype: error / (the reference's own error in that dtype) must stay <= 4.
2. The static cache's CUDA-graph decode against the ordinary cache (float32 tiny models, left padding, 8
   decode steps, every model): logits must agree to 1e-4.
Prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import json
import sys

import torch

from sessa import registry
from sessa.models import SessaConfig, SessaForCausalLM, model_config
from sessa.ops.feedback.decode import feedback_decode, feedback_decode_ref


def kernel_checks() -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for B, L, D, lens in (
            (1, 1024, 768, [1024]),
            (4, 33000, 768, [33000, 5, 0, 20000]),
            (2, 8192, 1024, [8191, 4096]),
            (2, 3000, 2048, [2999, 1]),
        ):
            gen = torch.Generator(device="cuda").manual_seed(L)
            q, f = (torch.randn(B, 1, D, device="cuda", generator=gen).to(dtype) for _ in range(2))
            k = torch.randn(B, L, D, device="cuda", generator=gen).to(dtype)
            s = torch.randn(B, L, D, device="cuda", generator=gen).to(dtype)
            gamma = torch.rand(B, 1, 1, device="cuda", generator=gen).to(dtype)
            mask = torch.rand(B, L, device="cuda", generator=gen) > 0.2
            length = torch.tensor(lens, device="cuda", dtype=torch.int32)
            got = feedback_decode(q, k, gamma, f, s, length, mask).double()
            low = feedback_decode_ref(q, k, gamma, f, s, length, mask).double()
            exact = feedback_decode_ref(*(x.double() for x in (q, k, gamma, f, s)), length, mask)
            own = max((low - exact).abs().max().item(), torch.finfo(dtype).eps)
            ratio = (got - exact).abs().max().item() / own
            rows.append(
                {
                    "check": "kernel",
                    "dtype": str(dtype),
                    "B": B,
                    "L": L,
                    "D": D,
                    "ratio": ratio,
                    "ok": ratio <= 4.0,
                }
            )
    return rows


def graph_checks() -> list[dict]:
    rows = []
    for name in registry.model_names():
        torch.manual_seed(0)
        target = SessaConfig.from_preset("tiny", mixer="sessa")
        config = target if name == "sessa" else model_config(target, name)
        model = SessaForCausalLM(config).cuda().eval()
        ids = torch.randint(3, 200, (2, 40), device="cuda")
        mask = torch.ones_like(ids)
        mask[1, :5] = 0
        static, dynamic = model.model.new_static_cache(2, 64), model.model.new_cache(64)
        worst = 0.0
        with torch.inference_mode():
            for cache in (static, dynamic):
                model(ids, attention_mask=mask, cache=cache)
            steps = mask
            for _ in range(8):
                token = torch.randint(3, 200, (2, 1), device="cuda")
                steps = torch.cat([steps, torch.ones(2, 1, device="cuda", dtype=steps.dtype)], 1)
                a = model(token, attention_mask=steps, cache=static).logits
                b = model(token, attention_mask=steps, cache=dynamic).logits
                worst = max(worst, (a - b).abs().max().item())
        captured = static._graph is not None
        rows.append(
            {
                "check": "graph",
                "model": name,
                "max_abs_diff": worst,
                "captured": captured,
                "ok": worst <= 1e-4 and captured,
            }
        )
    return rows


def main() -> int:
    rows = kernel_checks() + graph_checks()
    for r in rows:
        print(json.dumps(r))
    record = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            json.dump(record, fh, indent=1)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
