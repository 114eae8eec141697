"""Where the host time of an eager decode step goes (the fast-inference issue's eager target): Python
functions ranked by their own time per generated token, from ``cProfile`` around a greedy ``generate``.

    python scripts/profile_host_decode.py OUT.txt [--models sessa llama] [--context 1024] [--tokens 64]

Each model (``sessa.bench.generate.build``: the 125m presets and the size-matched Hugging Face Llama, bf16,
CUDA) first decodes unprofiled in alternating order (ms per token, as ``sessa bench --generate`` measures it),
then once under cProfile; the report lists the top functions by own time per token.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats

import torch

from sessa.bench.generate import build, measure


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--models", nargs="+", default=["sessa", "llama"])
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2, help="alternating unprofiled rounds")
    ap.add_argument("--no-profile", action="store_true", help="only the unprofiled rounds")
    args = ap.parse_args()
    device = torch.device("cuda")
    max_len = args.context + args.tokens + 8
    models = {m: build(m, "125m", max_len, device, torch.bfloat16) for m in args.models}
    lines = [f"{torch.cuda.get_device_name()} torch {torch.__version__}, context {args.context}, "
             f"{args.tokens} new tokens, batch 1, bf16"]
    for rnd in range(args.rounds):  # alternating order: neither model is always the first timed
        for name, model in models.items():
            row = measure(model, name, args.context, 1, args.tokens, repeats=3)
            lines.append(f"round {rnd} {name}: decode {row['decode_ms']:.2f} ms/token")
            print(lines[-1], flush=True)
    for name, model in models.items() if not args.no_profile else ():
        prompt = torch.randint(3, 250, (1, args.context), device=device)
        options = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))
        n = args.tokens
        with torch.inference_mode():
            model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **options)
            prof = cProfile.Profile()
            prof.enable()
            model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **options)
            torch.cuda.synchronize()
            prof.disable()
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        total = stats.total_tt
        lines.append(f"\n== {name}: {1e3 * total / n:.2f} ms of profiled host time per token; top by own "
                     "time (us per token, calls per token)")
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[: args.top]
        for (file, line, func), (_, ncalls, tottime, cumtime, _) in rows:
            where = f"{file.split('site-packages/')[-1].split('/work/')[-1]}:{line}({func})"
            own, cum = 1e6 * tottime / n, 1e6 * cumtime / n
            lines.append(f"{own:9.1f} own {cum:9.1f} cum {ncalls / n:7.1f}x  {where}")
        print("\n".join(lines[-args.top - 1:]), flush=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
