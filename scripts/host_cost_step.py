"""Host time of the pieces of one eager decoding step (the fast-inference issue's eager target), unprofiled.

    python scripts/host_cost_step.py [--context 1024] [--iters 1000] [--rounds 3] [--out OUT.json]

Each piece of a 125m model's cached one-token step (bf16, batch 1, CUDA) runs ``iters`` times in a loop; the
wall time per call is its host time as long as its GPU work is shorter (a few us for these pieces). Pieces:
the layer step (GatedBlock.step) and the mixer step of Sessa and of our attention model (with the launches
bound to the cache, ``sessa.ops.step_launches``, and through the generic step), some of their ops alone, and
one decoder layer of the size-matched Hugging Face Llama with its dynamic cache. All pieces are timed in
turn, ``rounds`` times; the least time of each is reported (a lent machine's host speed drifts).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from sessa.bench.generate import build
from sessa.ops import step_launches


def per_call(fn, iters: int) -> float:
    """Microseconds per call of fn() in a loop of iters calls (after a device synchronisation)."""
    for _ in range(20):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - t0) / iters


def generic(fn):  # noqa: ANN001, ANN201
    """fn with the bound launches switched off (the generic step)."""

    def run() -> None:
        step_launches.bindable, keep = (lambda x: False), step_launches.bindable
        try:
            fn()
        finally:
            step_launches.bindable = keep

    return run


def ours(name: str, model: torch.nn.Module, t0: int) -> dict:
    """The pieces of our model's first layer at a cache of t0 tokens."""
    layer = model.model.layers[0]
    mixer, device = layer.mixer, next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    D = model.config.d_model
    state = layer.init_state(1, t0 + 64, device=device)
    x = torch.randn(1, 1, D, device=device, dtype=dtype)
    am = torch.ones(1, t0 + 1, device=device, dtype=torch.bool)
    state["t"] = t0

    def block_step() -> None:
        state["t"] = t0
        layer.step(x, state, attention_mask=am)

    def mixer_step() -> None:
        state["t"] = t0
        mixer.step(x, state, attention_mask=am)

    mixer_step()
    stacked = state.get("stacked_projection")
    buf = next(v for v in state.values() if isinstance(v, torch.Tensor) and v.dim() >= 3)
    kv = buf.narrow(1, t0, 1).clone()
    pieces = {
        "GatedBlock.step": block_step,
        "GatedBlock.step, generic": generic(block_step),
        "mixer.step": mixer_step,
        "mixer.step, generic": generic(mixer_step),
        "LayerNorm": lambda: layer.ln(x),
        "W_in linear": lambda: layer.W_in(x),
        "gelu": lambda: F.gelu(x),
        "x + y": lambda: x + x,
        "torch.empty": lambda: torch.empty(1, 1, D, device=device, dtype=dtype),
        "narrow + copy_": lambda: buf.narrow(1, t0, 1).copy_(kv),
    }
    if stacked is not None:
        pieces["stacked linear"] = lambda: F.linear(x, stacked.weight, stacked.bias)
    return {f"{name}: {k}": v for k, v in pieces.items()}


def llama_pieces(llama: torch.nn.Module, t0: int) -> dict:
    """One decoder layer of the Hugging Face Llama with a dynamic cache of t0 tokens (the token it adds is
    cropped again after each call), and two of its ops."""
    from transformers import DynamicCache

    cfg, dec = llama.config, llama.model.layers[0]
    device, dtype = next(llama.parameters()).device, next(llama.parameters()).dtype
    h = torch.randn(1, 1, cfg.hidden_size, device=device, dtype=dtype)
    cache = DynamicCache(config=cfg)
    llama(torch.randint(3, 200, (1, t0), device=device), past_key_values=cache, use_cache=True)
    pos = torch.tensor([[t0]], device=device)
    emb = llama.model.rotary_emb(h, pos)

    def layer() -> None:
        dec(h, attention_mask=None, position_ids=pos, past_key_values=cache, use_cache=True,
            cache_position=pos[0], position_embeddings=emb)
        cache.layers[0].crop(-1)  # back to t0 cached tokens

    return {
        "llama: decoder layer (+ cache crop)": layer,
        "llama: RMSNorm": lambda: dec.input_layernorm(h),
        "llama: q_proj linear": lambda: dec.self_attn.q_proj(h),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["sessa", "attention"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t0 = args.context
    models = {name: build(name, "125m", t0 + 64, device, dtype) for name in [*args.models, "llama"]}
    pieces = {}
    with torch.inference_mode():
        for name, model in models.items():
            pieces.update(llama_pieces(model, t0) if name == "llama" else ours(name, model, t0))
        times: dict[str, list[float]] = {name: [] for name in pieces}
        for _ in range(args.rounds):
            for name, fn in pieces.items():
                times[name].append(per_call(fn, args.iters))
    rows = {name: min(ts) for name, ts in times.items()}
    for name, us in rows.items():
        print(f"{name:45s} {us:8.1f} us  (rounds: {', '.join(f'{t:.1f}' for t in times[name])})")
    if args.out:
        with open(args.out, "w") as fh:
            device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
            json.dump({"device": device_name, "torch": torch.__version__, "context": t0, "iters": args.iters,
                       "rounds": times, "least_us": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
