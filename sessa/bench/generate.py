"""``sessa bench --generate``: prefill time and decode ms/token of our models and a Hugging Face Llama of the
same size, all through ``generate()`` in one process.

For every model, prompt length (context) and batch size, one ``generate`` of ``new_tokens + 1`` tokens is
timed step by step (a stopping criterion that records when each token exists): ``prefill_s`` is the time to
the first new token (the prompt's forward plus one sampling step), ``decode_ms`` the mean time of each
further token at that context, generate's own per-token work (logits processing, stopping checks)
included for every model alike. Greedy,
random weights in ``dtype``, prompts of random tokens, the EOS token suppressed (``min_new_tokens``).
``peak_gib_per_seq``: the peak memory above the weights during the longer generate, per sequence (CUDA).

Models: any of :func:`sessa.registry.model_names` at ``preset`` (parameter-matched to Sessa), the same with
``-static`` (``cache_implementation="static"``: a :class:`~sessa.models.static_cache.StaticSessaCache`,
whose one-token step is a CUDA graph; ``disable_compile=True``), with ``-compiled`` (the same step compiled
by ``torch.compile`` before the capture: a static cache's default on CUDA), ``llama``
(``transformers.LlamaForCausalLM`` with Sessa's width and heads, depth and MLP chosen to match its parameter
count; dynamic cache, eager) and ``llama-static`` (the same model with ``cache_implementation="static"``,
whose decode step transformers compiles with ``torch.compile``).
Medians over ``repeats`` timed runs, after one untimed run of the same generate (it compiles every kernel
specialisation and graph the timed runs use).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from sessa.progress import Progress

LLAMA_MODELS = ("llama", "llama-static")
STATIC = "-static"  # suffix: generate with cache_implementation="static", the step graph-captured eagerly
COMPILED = "-compiled"  # suffix: the same, the step compiled with torch.compile before the capture


def valid_models() -> list[str]:
    from sessa import registry

    suffixes = ("", STATIC, COMPILED)
    return [*(n + suffix for n in registry.model_names() for suffix in suffixes), *LLAMA_MODELS]


VOCAB = 256 + 3  # byte vocabulary with pad/bos/eos, as the offline tasks use


def llama_like(target_params: int, d_model: int, n_heads: int, vocab_size: int, max_len: int) -> Any:
    """A LlamaConfig of width ``d_model`` and ``n_heads`` heads whose depth brings it closest to
    ``target_params`` (MLP width 8/3 d rounded to 64, untied embeddings like Llama's)."""
    from transformers import LlamaConfig

    inter = max(64, round(8 * d_model / 3 / 64) * 64)
    per_layer = 4 * d_model * d_model + 3 * d_model * inter + 2 * d_model
    embeddings = 2 * vocab_size * d_model + d_model
    layers = max(1, round((target_params - embeddings) / per_layer))
    return LlamaConfig(
        hidden_size=d_model,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        vocab_size=vocab_size,
        max_position_embeddings=max_len,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def build(name: str, preset: str, max_len: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Model ``name`` (ours or llama/llama-static) in eval mode on ``device`` in ``dtype``."""
    from sessa.models import SessaConfig, SessaForCausalLM, model_config

    ids = dict(
        vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=max_len
    )
    target = SessaConfig.from_preset(preset, mixer="sessa", **ids)
    if name in LLAMA_MODELS:
        from transformers import LlamaForCausalLM

        params = sum(p.numel() for p in SessaForCausalLM(target).parameters())
        model = LlamaForCausalLM(llama_like(params, target.d_model, target.n_heads, VOCAB, max_len))
    else:
        base = name.removesuffix(STATIC).removesuffix(COMPILED)
        model = SessaForCausalLM(target if base == "sessa" else model_config(target, base))
    return model.to(device=device, dtype=dtype).eval()


class _StepClock:
    """A stopping criterion that never stops: it records the time at which each new token exists (after a
    device synchronisation), so prefill and per-token decode come from one ``generate`` call."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times = device, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def measure(
    model: torch.nn.Module, name: str, context: int, batch: int, new_tokens: int, repeats: int
) -> dict[str, Any]:
    """One (model, context, batch) row: prefill_s, decode_ms, tokens_per_s, peak_gib_per_seq."""
    from transformers import StoppingCriteriaList

    device = next(model.parameters()).device
    prompt = torch.randint(3, VOCAB, (batch, context), device=device)
    options: dict[str, Any] = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))
    if name.endswith((STATIC, COMPILED)):
        options["cache_implementation"] = "static"
        if name not in LLAMA_MODELS:
            options["disable_compile"] = not name.endswith(COMPILED)
    n = new_tokens + 1

    def generate(clock: _StepClock | None = None) -> torch.Tensor:
        criteria = StoppingCriteriaList([clock] if clock else [])
        return model.generate(
            prompt, max_new_tokens=n, min_new_tokens=n, stopping_criteria=criteria, **options
        )

    prefills, decodes = [], []
    with torch.inference_mode():
        out = generate()  # warm-up: every kernel and graph of the timed runs compiles here
        if out.shape != (batch, context + n):
            raise RuntimeError(f"{name}: generate returned {tuple(out.shape)} for a {context}-token prompt")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        for _ in range(repeats):
            clock = _StepClock(device)
            t0 = time.perf_counter()
            generate(clock)
            if len(clock.times) != n:
                raise RuntimeError(f"{name}: {len(clock.times)} generation steps timed, expected {n}")
            prefills.append(clock.times[0] - t0)
            decodes.append((clock.times[-1] - clock.times[0]) / new_tokens * 1e3)
        peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    decode_ms = statistics.median(decodes)
    return {
        "model": name,
        "context": context,
        "batch": batch,
        "prefill_s": statistics.median(prefills),
        "decode_ms": decode_ms,
        "tokens_per_s": batch * 1e3 / decode_ms,
        "peak_gib_per_seq": None if peak is None else peak / batch / 2**30,
    }


def run_generate_bench(
    cfg: Any, device: torch.device, dtype: torch.dtype, log_rows: bool = False
) -> dict[str, Any]:
    """Every (model, context) at batch 1, and every batch size at the first context; a row per case, plus
    each row's ratio to ``llama`` at the same context and batch. ``log_rows``: show each row as it is
    measured (a killed run's log keeps what was measured)."""
    preset = cfg.preset or ("125m" if device.type == "cuda" else "tiny")
    contexts = cfg.contexts or ([1024, 8192, 32768] if device.type == "cuda" else [32, 64])
    cases = [(c, 1) for c in contexts] + [(contexts[0], b) for b in cfg.batch_sizes if b != 1]
    max_len = max(contexts) + cfg.new_tokens + 8
    rows: list[dict[str, Any]] = []
    progress = Progress(len(cfg.models) * len(cases), "generate bench")
    if log_rows:
        progress.write(HEADER)
    for name in cfg.models:
        # Compiled steps (ours and llama-static) compile once per batch and cache size; dynamo allows a few
        # recompilations of one function, so each model starts from an empty compile cache.
        torch._dynamo.reset()
        model = build(name, preset, max_len, device, dtype)
        params = sum(p.numel() for p in model.parameters())
        for context, batch in cases:
            try:
                row = measure(model, name, context, batch, cfg.new_tokens, cfg.repeats)
            except torch.OutOfMemoryError:
                row = {"model": name, "context": context, "batch": batch, "error": "out of memory"}
                torch.cuda.empty_cache()
            except Exception as e:  # one failing case is reported; the others still run
                row = {"model": name, "context": context, "batch": batch, "error": f"{type(e).__name__}: {e}"}
            rows.append({**row, "params": params})
            if log_rows:
                progress.write(format_row(rows[-1]))
            progress.update(1)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    progress.close()
    anchor = {(r["context"], r["batch"]): r for r in rows if r["model"] == "llama" and "error" not in r}
    for r in rows:
        ref = anchor.get((r["context"], r["batch"]))
        if ref and "error" not in r:
            r["decode_vs_llama"] = r["decode_ms"] / ref["decode_ms"] if ref["decode_ms"] else None
            r["prefill_vs_llama"] = r["prefill_s"] / ref["prefill_s"]
    return {"preset": preset, "new_tokens": cfg.new_tokens, "rows": rows}


HEADER = (
    f"{'model':16s} {'params':>11s} {'ctx':>6s} {'B':>3s} {'prefill s':>10s} {'ms/token':>9s} "
    f"{'tokens/s':>9s} {'GiB/seq':>8s} {'x llama':>8s}"
)


def format_row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['model']:16s} {r['params']:11,d} {r['context']:6d} {r['batch']:3d}  {r['error']}"
    gib = "-" if r["peak_gib_per_seq"] is None else f"{r['peak_gib_per_seq']:.3f}"
    ratio = r.get("decode_vs_llama")
    tps = "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.0f}"
    return (
        f"{r['model']:16s} {r['params']:11,d} {r['context']:6d} {r['batch']:3d} {r['prefill_s']:10.4f} "
        f"{r['decode_ms']:9.2f} {tps:>9s} {gib:>8s} {'-' if ratio is None else f'{ratio:.2f}':>8s}"
    )


def format_table(record: dict[str, Any]) -> str:
    return "\n".join([HEADER, *(format_row(r) for r in record["rows"])])
