"""Check and time Mamba-2 on fla-core's Triton kernels (ssm_backend "fla") against our PyTorch SSD on a GPU.

(a) parity: a Mamba2Mixer (d_model 256, 16 heads of 32, d_state 64, 2 groups, batch 2) run with backend
    "fla" and "chunked" in the same precision, outputs, final SSM state and the gradients of the input
    and of every parameter, each against the same mixer in float64 ("chunked", cross-checked against the
    sequential "reference" for T <= 1000). Modes: full forward; left padding (row 0 padded by T // 3);
    chunked prefill (two step() calls carrying the conv and SSM state, against the float64 full forward).
    Pass: err(fla) <= K x err(chunked) + atol for every tensor. bf16 = fp32 weights under bf16 autocast;
    fp32 = no autocast, TF32 matmuls on for both runs (fla's Triton dots take fp32 operands as TF32); the
    strict-fp32 chunked error is in the JSON for information.
(b) training step of SessaForCausalLM presets 125m-mamba2 (ssm_backend fla and chunked) and 125m-attention:
    bf16 autocast, fused AdamW, clipping, B = 8, T = 2048; tokens/s and peak memory.
(c) greedy decode, batch 1, of 125m-mamba2 on fla after a 1K and an 8K prompt: ms/token (and prefill s).

The first fla calls autotune Triton kernels (once per dtype); sections run in the order given, each is
timed, and sections left when --budget-s is spent are marked skipped. Run from the repo root:

    PYTHONPATH=/tmp/site:$PWD python scripts/check_mamba2_fla.py mamba2_fla_h200.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator

import torch

from sessa.baselines.mamba2 import Mamba2Mixer

SECTIONS = ("parity-bf16", "train", "decode", "parity-fp32")
DEVICE = "cuda"  # one name, so that the logic can be dry-run elsewhere
D_MODEL, HEADS, HEADDIM, D_STATE = 256, 16, 32, 64  # the parity mixer: expand 2, 2 groups
K_RULE, ATOL = 4.0, {"bfloat16": 1e-3, "float32": 1e-5}


# -- (a) parity ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def run_mixer(mixer: Mamba2Mixer, backend: str, case: dict, amp: bool) -> dict[str, torch.Tensor]:
    """Outputs y, final SSM state and every gradient of one run (float64 when the mixer is)."""
    mixer.backend = backend
    mixer.zero_grad(set_to_none=True)
    dtype = next(mixer.parameters()).dtype
    x = case["x"].to(dtype).clone().requires_grad_()  # a fresh leaf: no grad shared between runs
    mask, T, split = case["mask"], x.shape[1], case["split"]
    state = mixer.init_state(x.shape[0], T)
    ys = []
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
        for a, b in ((0, split), (split, T)) if split else ((0, T),):
            ys.append(mixer.step(x[:, a:b], state, attention_mask=None if mask is None else mask[:, :b]))
    y = torch.cat(ys, dim=1)
    loss = (y.to(dtype) * case["dy"].to(dtype)).sum() + (state["ssm"].to(dtype) * case["ds"].to(dtype)).sum()
    loss.backward()
    out = {"y": y.detach(), "state": state["ssm"].detach(), "dx": x.grad}
    out.update({f"d{name}": p.grad for name, p in mixer.named_parameters()})
    return out


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a = a.double()
    if not torch.isfinite(a).all():
        return math.nan
    return ((a - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def make_case(T: int, mode: str, seed: int) -> dict:
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    B = 2
    x = torch.randn(B, T, D_MODEL, device=DEVICE, generator=g)
    mask = None
    if mode == "padded":
        mask = torch.ones(B, T, dtype=torch.long, device=DEVICE)
        mask[0, : T // 3] = 0
    dy = torch.randn(B, T, D_MODEL, device=DEVICE, generator=g)
    dy = dy if mask is None else dy * mask[..., None]  # padded positions' outputs are not meaningful
    ds = torch.randn(B, HEADS, HEADDIM, D_STATE, device=DEVICE, generator=g)
    return {"x": x, "mask": mask, "dy": dy, "ds": ds, "split": T // 2 if mode == "prefill" else 0}


def parity(dtype_name: str, lengths: list[int], log: Callable[[str], None]) -> dict:
    torch.manual_seed(0)
    mixer = Mamba2Mixer(D_MODEL, d_state=D_STATE, headdim=HEADDIM, ngroups=2, dt_min=0.01, dt_max=0.2)
    mixer = mixer.to(DEVICE)
    assert mixer.n_heads == HEADS
    mixer64 = copy.deepcopy(mixer).double()
    amp, strict = dtype_name == "bfloat16", {}
    rows, ok = [], True
    for T in lengths:
        for mode in ("full", "padded", "prefill") if T > 1 else ("full",):
            case = make_case(T, mode, seed=T)
            ref = run_mixer(mixer64, "chunked", {**case, "split": 0}, amp=False)  # prefill vs full forward
            if T <= 1000 and mode == "full":
                seq = run_mixer(mixer64, "reference", case, amp=False)
                assert rel(seq["y"], ref["y"]) < 1e-10, "float64 chunked and sequential references disagree"
            with tf32(not amp):
                fla, chk = run_mixer(mixer, "fla", case, amp), run_mixer(mixer, "chunked", case, amp)
            if not amp:
                with tf32(False):
                    strict = run_mixer(mixer, "chunked", case, amp)
            row = {"dtype": dtype_name, "T": T, "mode": mode, "errors": {}}
            for name, r in ref.items():
                e_fla, e_chk = rel(fla[name], r), rel(chk[name], r)
                good = math.isfinite(e_fla) and e_fla <= K_RULE * e_chk + ATOL[dtype_name]
                row["errors"][name] = {"fla": e_fla, "chunked": e_chk, "ok": good}
                if strict:
                    row["errors"][name]["chunked_strict_fp32"] = rel(strict[name], r)
            row["ok"] = all(e["ok"] for e in row["errors"].values())
            ok &= row["ok"]
            rows.append(row)
            log(format_parity_row(row))
    return {"rows": rows, "ok": ok}


def format_parity_row(row: dict) -> str:
    errs = row["errors"]
    grads = {k: v for k, v in errs.items() if k.startswith("d")}
    worst = max(grads, key=lambda k: grads[k]["fla"] / max(grads[k]["chunked"], 1e-30))
    cell = lambda k: f"{errs[k]['fla']:.1e}/{errs[k]['chunked']:.1e}"  # noqa: E731
    return (
        f"  {row['dtype'][:4]} T={row['T']:5d} {row['mode']:8s} y {cell('y')}  state {cell('state')}  "
        f"dx {cell('dx')}  worst grad {worst} {cell(worst)}  {'OK' if row['ok'] else 'FAIL'}"
    )


# -- (b) training and (c) decoding -------------------------------------------------------------------------
def train_speed(preset: str, backend: str | None, batch: int, length: int, steps: int) -> dict:
    from sessa.models import SessaConfig, SessaForCausalLM

    config = SessaConfig.from_preset(preset, **({"ssm_backend": backend} if backend else {}))
    model = SessaForCausalLM(config).to(DEVICE).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, config.vocab_size, (batch, length), device=DEVICE)

    def step() -> None:
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(2):  # warm-up: allocator, cuDNN and Triton autotuning
        step()
    torch.cuda.synchronize()
    warm_s, _ = time.perf_counter() - t0, torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    result = {
        "preset": preset, "ssm_backend": backend, "params": params, "batch": batch, "length": length,
        "tokens_per_s": batch * length * steps / dt, "step_ms": 1e3 * dt / steps,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "warmup_s": warm_s,
    }  # fmt: skip
    return result  # the model and optimizer are freed on return; the caller empties the CUDA cache


@torch.no_grad()
def decode_speed(contexts: list[int], new_tokens: int) -> list[dict]:
    from sessa.models import SessaConfig, SessaForCausalLM

    model = SessaForCausalLM(SessaConfig.from_preset("125m-mamba2", ssm_backend="fla")).to(DEVICE).eval()
    results = []
    for ctx in contexts:
        prompt = torch.randint(0, model.config.vocab_size, (1, ctx), device=DEVICE)
        cache = model.model.new_cache(ctx + new_tokens + 4)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            logits = model(input_ids=prompt, cache=cache, logits_to_keep=1).logits
            tok = logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            prefill_s = time.perf_counter() - t0
            for i in range(4 + new_tokens):
                if i == 4:  # after 4 warm-up tokens
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                tok = model(input_ids=tok, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
        ms = 1e3 * (time.perf_counter() - t0) / new_tokens
        results.append({"context": ctx, "ms_per_token": ms, "prefill_s": prefill_s, "tokens": new_tokens})
    return results


# -- driver --------------------------------------------------------------------------------------------
def environment() -> dict:
    import triton

    try:
        from importlib.metadata import version

        fla_version = version("fla-core")
    except Exception as e:  # noqa: BLE001 - report, do not fail
        fla_version = f"unknown ({e})"
    return {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "fla_core": fla_version, "date": time.strftime("%Y-%m-%d %H:%M"),
    }  # fmt: skip


def section_parity(dtype_name: str, args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    note = "  (TF32 matmuls on in both runs)" if dtype_name == "float32" else ""
    log(f"(a) parity {dtype_name}: rel. RMS error vs float64, fla/chunked; "
        f"pass fla <= {K_RULE} x chunked + {ATOL[dtype_name]}{note}")  # fmt: skip
    return parity(dtype_name, args.T, log)


def section_train(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    log(f"(b) training step, B={args.batch} T={args.length}, bf16 autocast, fused AdamW")
    rows = []
    for preset, backend in (("125m-mamba2", "fla"), ("125m-mamba2", "chunked"), ("125m-attention", None)):
        r = train_speed(preset, backend, args.batch, args.length, args.steps)
        torch.cuda.empty_cache()
        rows.append(r)
        log(f"  {preset:15s} {backend or '-':8s} {r['params'] / 1e6:6.1f}M  {r['tokens_per_s']:9,.0f} tok/s"
            f"  {r['step_ms']:7.1f} ms/step  peak {r['peak_gib']:5.1f} GiB  (warm-up {r['warmup_s']:.1f} s)")
    return {"rows": rows}


def section_decode(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    log(f"(c) greedy decode, batch 1, 125m-mamba2 ssm_backend fla, bf16 autocast, {args.new_tokens} tokens")
    rows = decode_speed(args.contexts, args.new_tokens)
    torch.cuda.empty_cache()
    for r in rows:
        log(f"  context {r['context']:5d}: {r['ms_per_token']:6.2f} ms/token"
            f"  (prefill {r['prefill_s']:.2f} s)")  # fmt: skip
    return {"rows": rows}


def run_section(name: str, args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    if name == "parity-bf16":
        return section_parity("bfloat16", args, log)
    if name == "parity-fp32":
        return section_parity("float32", args, log)
    return section_train(args, log) if name == "train" else section_decode(args, log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json_out", help="write the results here (JSON, rewritten after every section)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--T", type=int, nargs="+", default=[1, 63, 65, 1000, 4097])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--budget-s", type=float, default=110.0, help="skip sections starting after this")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    from sessa.ops.ssd_fla import require_chunk_simple_gla

    require_chunk_simple_gla()  # fail now, with the install hint, rather than mid-run
    results: dict = {
        "environment": environment(),
        "parity_rule": {"k": K_RULE, "atol": ATOL, "error": "relative RMS vs float64 (chunked) mixer"},
        "sections": {},
    }
    print(json.dumps(results["environment"]), flush=True)
    start, ok = time.perf_counter(), True
    for name in args.sections:
        if time.perf_counter() - start > args.budget_s:
            results["sections"][name] = {"skipped": f"time budget {args.budget_s:.0f} s spent"}
            print(f"{name}: skipped (time budget)", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            res = run_section(name, args, lambda msg: print(msg, flush=True))
        except Exception as e:  # noqa: BLE001 - one run on a lent GPU: record it and go on to the next section
            res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(), "ok": False}
            print(res["traceback"], flush=True)
        res["seconds"] = time.perf_counter() - t0
        ok &= res.get("ok", True)
        results["sections"][name] = res
        with open(args.json_out, "w") as fh:
            json.dump(results, fh, indent=1)
        print(f"  [{name}: {res['seconds']:.1f} s]", flush=True)
    print("ALL PARITY CHECKS OK" if ok else "SOME PARITY CHECKS FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
