"""Host time of the eager decode step (benchmarks/RESULTS.md "Generation"): a 24-layer ``tiny`` model, whose
compute is negligible, greedy ``generate`` of 64 tokens after a 256-token prompt, one thread; prints ms per
token of 3 runs (generate of 65 tokens minus generate of 1, over 64). ``llama``: a Hugging Face
``LlamaForCausalLM`` of the same width, heads and depth (MLP 4x) for comparison.

    python scripts/host_decode_cpu.py [sessa|attention|mamba2|...|llama]
"""

from __future__ import annotations

import sys
import time

import torch

from sessa.models import SessaConfig, SessaForCausalLM, model_config


def build(name: str) -> torch.nn.Module:
    target = SessaConfig.from_preset("tiny", mixer="sessa", n_layers=24)
    if name != "llama":
        return SessaForCausalLM(target if name == "sessa" else model_config(target, name)).eval()
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = dict(num_attention_heads=target.n_heads, num_key_value_heads=target.n_heads)
    ids = dict(vocab_size=259, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=1024)
    cfg = LlamaConfig(hidden_size=target.d_model, intermediate_size=4 * target.d_model, num_hidden_layers=24,
                      **heads, **ids)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    name = sys.argv[1] if len(sys.argv) > 1 else "sessa"
    model = build(name)
    ids = torch.randint(3, 200, (1, 256))

    def run(n: int) -> None:
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    with torch.inference_mode():
        run(4)
        res = []
        for _ in range(3):
            t0 = time.perf_counter()
            run(1)
            t1 = time.perf_counter()
            run(65)
            t2 = time.perf_counter()
            res.append(((t2 - t1) - (t1 - t0)) / 64 * 1e3)
    print(name, " ".join(f"{r:.2f}" for r in res), "ms/token")


if __name__ == "__main__":
    main()
