"""GPU check of the decoding paths (benchmarks/RESULTS.md "Generation"): run on a CUDA machine.

    python scripts/check_decode_gpu.py OUT.json

1. The split-context Triton decode kernels on CUDA (``feedback_decode``: the feedback row;
   ``decode_attention``: the forward branch's heads, GQA) against the float64 reference at real shapes,
   every dtype: error / (the reference's own error in that dtype) must stay <= 4.
2. The continuation of a cache by n > 1 tokens (``feedback_continue``: the Triton solve of the new block)
   against the float64 reference at real shapes, every dtype, same rule; and a chunked prefill (two prompt
   chunks through the cache) of a tiny float32 Sessa model against its one-shot forward (logits to 1e-4).
3. The static cache's CUDA-graph decode, eager and compiled (``compile=True``), against the ordinary cache
   (float32 tiny models, left padding, 8 decode steps, every model): logits must agree to 1e-4.
4. The decode kernels' fast launches (``BoundKernel``: no JIT entry once a specialisation is known) give the
   same bits as Triton's own launch, and tiny float32 Sessa and attention (GQA) models decoding token by
   token through the ordinary cache equal their one-shot forward (logits to 1e-4).
5. The one-token step prologue (``step_prologue``: RoPE of q and k, the cache writes, the gain) against its
   PyTorch reference at the presets' shapes, every dtype: q, the caches and the gain within 2 ulps of each
   tensor's scale (max|x - ref| / max|ref|). Not bit for bit: the GPU compiler contracts RoPE's two products
   and their sum (one rounding where PyTorch rounds each product), and the gain's tanh comes from exp.
Prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from check_triton_gpu import max_rel  # this folder is on the path of a script run from it

from sessa import registry
from sessa.models import SessaConfig, SessaForCausalLM, model_config
from sessa.ops.attention import decode_attention, decode_attention_ref
from sessa.ops.feedback import feedback_solve_ref
from sessa.ops.feedback.decode import (
    feedback_continue,
    feedback_continue_ref,
    feedback_decode,
    feedback_decode_ref,
)


def _ratio(got: torch.Tensor, low: torch.Tensor, exact: torch.Tensor, dtype: torch.dtype) -> float:
    """Largest error of ``got`` against float64 over that of the reference in the same precision (``low``),
    the latter at least dtype's epsilon."""
    return (got - exact).abs().max().item() / max((low - exact).abs().max().item(), torch.finfo(dtype).eps)


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
            ratio = _ratio(got, low, exact, dtype)
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
    return rows + attention_kernel_checks()


def attention_kernel_checks() -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for B, L, H, Hkv, hd, lens in (
            (1, 33000, 12, 12, 64, [33000]),
            (8, 8192, 16, 4, 64, [8192, 1, 0, 5000, 8000, 64, 65, 4097]),
            (64, 1100, 12, 12, 64, [1024 + i for i in range(64)]),
            (2, 3000, 8, 8, 128, [2999, 17]),
        ):
            gen = torch.Generator(device="cuda").manual_seed(L + H)
            q = torch.randn(B, 1, H, hd, device="cuda", generator=gen).to(dtype)
            k, v = (torch.randn(B, L, Hkv, hd, device="cuda", generator=gen).to(dtype) for _ in range(2))
            mask = torch.rand(B, L, device="cuda", generator=gen) > 0.2
            length = torch.tensor(lens, device="cuda", dtype=torch.int32)
            got = decode_attention(q, k, v, length, mask).double()
            low = decode_attention_ref(q, k, v, length, mask).double()
            exact = decode_attention_ref(q.double(), k.double(), v.double(), length, mask)
            ratio = _ratio(got, low, exact, dtype)
            rows.append({"check": "attention kernel", "dtype": str(dtype), "B": B, "L": L, "H": H, "Hkv": Hkv,
                         "hd": hd, "ratio": ratio, "ok": ratio <= 4.0})  # fmt: skip
    return rows


def continue_checks() -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for B, t, n, D in ((2, 4096, 1024, 768), (1, 300, 4100, 1024), (4, 1000, 37, 768)):
            gen = torch.Generator(device="cuda").manual_seed(t + n)
            q, k, f = (
                torch.randn(B, t + n, D, device="cuda", generator=gen, dtype=torch.float64) for _ in range(3)
            )
            g = 0.9 * torch.tanh(torch.randn(B, t + n, 1, device="cuda", generator=gen, dtype=torch.float64))
            mask = torch.rand(B, t + n, device="cuda", generator=gen) > 0.2
            s_past = feedback_solve_ref(q[:, :t], k[:, :t], g[:, :t], f[:, :t], mask[:, :t])
            exact = feedback_continue_ref(q[:, t:], k, g[:, t:], f[:, t:], s_past, key_mask=mask)
            low = [x.to(dtype) for x in (q[:, t:], k, g[:, t:], f[:, t:], s_past)]
            got = feedback_continue(*low, key_mask=mask).double()
            ratio = _ratio(got, feedback_continue_ref(*low, key_mask=mask).double(), exact, dtype)
            rows.append({"check": "continue", "dtype": str(dtype), "B": B, "t": t, "n": n, "D": D,
                         "ratio": ratio, "ok": ratio <= 4.0})  # fmt: skip
    torch.manual_seed(0)
    model = SessaForCausalLM(SessaConfig.from_preset("tiny", mixer="sessa")).cuda().eval()
    ids = torch.randint(3, 200, (2, 600), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    with torch.inference_mode():
        whole = model(ids, attention_mask=mask).logits
        cache = model.model.new_cache(640)
        model(ids[:, :256], attention_mask=mask[:, :256], cache=cache)
        tail = model(ids[:, 256:], attention_mask=mask, cache=cache).logits
    diff = (tail - whole[:, 256:]).abs().max().item()
    rows.append({"check": "chunked prefill", "model": "sessa", "max_abs_diff": diff, "ok": diff <= 1e-4})
    return rows


def graph_checks() -> list[dict]:
    return [row for compiled in (False, True) for row in _graph_checks(compiled)]


def _graph_checks(compiled: bool) -> list[dict]:
    rows = []
    for name in registry.model_names():
        torch.manual_seed(0)
        target = SessaConfig.from_preset("tiny", mixer="sessa")
        config = target if name == "sessa" else model_config(target, name)
        model = SessaForCausalLM(config).cuda().eval()
        ids = torch.randint(3, 200, (2, 40), device="cuda")
        mask = torch.ones_like(ids)
        mask[1, :5] = 0
        static = model.model.new_static_cache(2, 64, compile=compiled)
        dynamic = model.model.new_cache(64)
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
                "compiled": compiled,
                "max_abs_diff": worst,
                "captured": captured,
                "ok": worst <= 1e-4 and captured,
            }
        )
    return rows


def fast_launch_checks() -> list[dict]:
    from sessa.ops.feedback.triton_launch import LAUNCHES

    gen = torch.Generator(device="cuda").manual_seed(1)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", generator=gen, dtype=torch.bfloat16)

    q, k, v = randn(2, 1, 12, 64), randn(2, 5000, 12, 64), randn(2, 5000, 12, 64)
    qb, f, kb, sb = randn(2, 1, 768), randn(2, 1, 768), randn(2, 5000, 768), randn(2, 5000, 768)
    gamma = torch.rand(2, 1, 1, device="cuda", generator=gen, dtype=torch.bfloat16)
    length = torch.tensor([4999, 77], device="cuda", dtype=torch.int32)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        return decode_attention(q, k, v, length), feedback_decode(qb, kb, gamma, f, sb, length)

    both()
    before = dict(LAUNCHES)
    fast = both()
    direct = LAUNCHES["direct"] - before["direct"]
    os.environ["SESSA_TRITON_FAST_LAUNCH"] = "0"  # kept kernels are keyed by it: these bind anew, JIT entry
    try:
        jit = both()
    finally:
        os.environ.pop("SESSA_TRITON_FAST_LAUNCH")
    same = all(torch.equal(a, b) for a, b in zip(fast, jit, strict=True))
    ok = same and direct == 4
    rows = [{"check": "fast launch", "direct_launches": direct, "bitwise_equal": same, "ok": ok}]
    for name in ("sessa", "attention"):
        torch.manual_seed(0)
        config = SessaConfig.from_preset("tiny", mixer=name, **({} if name == "sessa" else {"n_kv_heads": 1}))
        model = SessaForCausalLM(config).cuda().eval()
        ids = torch.randint(3, 200, (2, 300), device="cuda")
        with torch.inference_mode():
            whole = model(ids).logits
            cache = model.model.new_cache(320)
            steps = [model(ids[:, :292], cache=cache).logits[:, -1]]
            steps += [model(ids[:, i : i + 1], cache=cache).logits[:, -1] for i in range(292, 299)]
        diff = (torch.stack(steps, 1) - whole[:, 291:299]).abs().max().item()
        rows.append({"check": "eager decode", "model": name, "max_abs_diff": diff, "ok": diff <= 1e-4})
    return rows


def prologue_checks() -> list[dict]:
    from sessa.ops.attention import rope_tables
    from sessa.ops.prologue import step_prologue_ref
    from sessa.ops.triton_decode import step_prologue_triton

    gen = torch.Generator(device="cuda").manual_seed(2)
    rows = []
    # (B, H, Hkv, hd, feedback, position): Sessa 125m / 350m, attention with GQA, a long cache
    for B, H, Hkv, hd, fb, t in ((1, 12, 12, 64, True, 1000), (8, 16, 16, 64, True, 7),
                                 (8, 16, 4, 64, False, 2047), (2, 12, 12, 64, True, 32767)):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            D, KV = H * hd, Hkv * hd
            width = D + 2 * KV + (2 * D + 1 if fb else 0)
            proj = (3 * torch.randn(B, 1, width, device="cuda", generator=gen)).to(dtype)
            caches = [torch.randn(B, t + 1, Hkv, hd, device="cuda", generator=gen).to(dtype)
                      for _ in range(2)]
            if fb:
                caches.append(torch.randn(B, t + 1, D, device="cuda", generator=gen).to(dtype))
            gain = (torch.tensor(0.7, device="cuda"), 0.999) if fb else None
            rope = rope_tables(t, 1, hd, 10000.0, dtype, proj.device)
            mine, ref = [c.clone() for c in caches], [c.clone() for c in caches]
            q1, g1 = step_prologue_triton(proj, mine[0], mine[1], t, H, rope, mine[2] if fb else None, gain)
            q2, g2 = step_prologue_ref(proj, ref[0], ref[1], t, H, rope, ref[2] if fb else None, gain)
            pairs = list(zip([q1, *mine], [q2, *ref], strict=True)) + ([(g1, g2)] if fb else [])
            diff = max(max_rel(a, b.double()) for a, b in pairs)
            bitwise = all(torch.equal(a, b) for a, b in pairs)
            ok = diff <= 2 * torch.finfo(dtype).eps
            rows.append({"check": "prologue", "dtype": str(dtype), "B": B, "H": H, "Hkv": Hkv, "hd": hd,
                         "feedback": fb, "t": t, "max_rel_diff": diff, "bitwise": bitwise, "ok": ok})
    return rows


def bound_step_checks() -> list[dict]:
    """The launches bound to a cache (sessa.ops.step_launches): direct launches give the bits of the same
    binding's generic launches (Sessa 125m shapes, bf16, key mask, GQA); a 125m-shaped bf16 model decoding
    through bindings against the same model with fast launches off (the generic step)."""
    from sessa.ops.attention import rope_tables
    from sessa.ops.step_launches import CACHE_KEY, StepLaunches

    gen = torch.Generator(device="cuda").manual_seed(5)
    rows = []
    for B, H, Hkv, hd, L, t, dtype in ((1, 12, 12, 64, 2048, 1500, torch.bfloat16),
                                       (4, 16, 4, 64, 3000, 2999, torch.float16),
                                       (2, 12, 12, 64, 9000, 8191, torch.float32)):
        D, KV = H * hd, Hkv * hd
        W = 3 * D + 2 * KV + 1
        caches = [torch.randn(B, L, Hkv, hd, device="cuda", generator=gen).to(dtype) for _ in range(2)]
        caches += [torch.randn(B, L, D, device="cuda", generator=gen).to(dtype) for _ in range(2)]
        mask = torch.rand(B, L, device="cuda", generator=gen) > 0.1
        proj = torch.randn(B, 1, W, device="cuda", generator=gen).to(dtype)
        f = torch.randn(B, 1, D, device="cuda", generator=gen).to(dtype)
        gain = (torch.tensor(0.4, device="cuda"), 0.999)
        rope = rope_tables(t, 1, hd, 10000.0, dtype, proj.device)
        results = []
        for generic in (False, True):
            mine = [c.clone() for c in caches]
            bound = StepLaunches(mine[0], mine[1], mask, H, W, True, mine[2], mine[3], gain)
            launches = [bound._prologue, *bound.attention_launches, *bound.feedback_launches]
            if generic:
                for launch in launches:
                    launch.no_hooks = lambda: False
            outs = []
            seen, past = (torch.full((B,), n, device="cuda", dtype=torch.int32) for n in (t + 1, t))
            for _ in range(2):  # the first call of a binding is generic; the second direct unless forced
                q = bound.prologue(proj, rope, t).clone()
                a = bound.attention(seen).clone()
                s = bound.feedback_row(proj, f, past, t).clone()
                outs = [q, bound.gamma.clone(), a, s, *mine]
            results.append((outs, sum(len(x.hits) for x in launches)))
        same = all(torch.equal(a, b) for a, b in zip(results[0][0], results[1][0], strict=True))
        rows.append({"check": "bound step, direct = generic launches", "B": B, "H": H, "Hkv": Hkv, "L": L,
                     "t": t, "dtype": str(dtype), "kept_kernels": results[0][1], "bitwise_equal": same,
                     "ok": same and results[0][1] == 5})
    for name in ("sessa", "attention"):
        torch.manual_seed(0)
        config = SessaConfig.from_preset("125m", mixer="sessa", vocab_size=259)
        model = SessaForCausalLM(config if name == "sessa" else model_config(config, name))
        model = model.to(device="cuda", dtype=torch.bfloat16).eval()
        logits = []
        for fast in ("1", "0"):
            out, cache = _padded_decode(model, "SESSA_TRITON_FAST_LAUNCH", fast)
            bound = [st.get(CACHE_KEY, (None, None))[1] is not None for st in cache.states]
            logits.append((out, all(bound) if fast == "1" else not any(bound)))
        diff = (logits[0][0] - logits[1][0]).abs().max().item() / logits[1][0].abs().max().item()
        ok = diff <= 2e-2 and logits[0][1] and logits[1][1]
        rows.append({"check": "bound vs generic decode, 125m bf16", "model": name, "max_rel_diff": diff,
                     "bound_where_expected": logits[0][1] and logits[1][1], "ok": ok})
    return rows


def _padded_decode(model: torch.nn.Module, env: str, value: str) -> tuple[torch.Tensor, object]:
    """16 decoding steps of model after a 1,024-token prompt of two rows (the second left-padded by 100; the
    same random tokens at every call), with os.environ[env] = value meanwhile: the steps' logits (2, 16,
    vocab) in float64 and the cache."""
    ids = torch.randint(3, 250, (2, 1040), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :100] = 0
    os.environ[env] = value
    try:
        with torch.inference_mode():
            cache = model(ids[:, :1024], attention_mask=mask[:, :1024], use_cache=True).cache
            out = [model(ids[:, i : i + 1], attention_mask=mask[:, : i + 1], cache=cache).logits
                   for i in range(1024, 1040)]
    finally:
        os.environ.pop(env)
    return torch.cat(out, 1).double(), cache


def mamba2_step_checks() -> list[dict]:
    """Mamba-2's one-token step in two Triton launches (sessa.ops.mamba2_step) against its PyTorch reference
    and float64 at the 125m shape (47 heads of 32, d_state 64) and a two-group one, in every dtype; then the
    125m Mamba-2 decoding in bf16 with the kernels and with the PyTorch step, each against the same model in
    float32."""
    from sessa.ops.mamba2_step import Mamba2Dims, Mamba2Params, mamba2_step_ref
    from sessa.ops.triton_mamba2_step import mamba2_step_triton

    gen = torch.Generator(device="cuda").manual_seed(6)
    rows = []
    for B, H, P, N, G, K in ((1, 47, 32, 64, 1, 4), (8, 16, 64, 128, 2, 4)):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            di, C = H * P, H * P + 2 * G * N

            def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
                return (scale * torch.randn(*shape, device="cuda", generator=gen)).to(dtype)  # noqa: B023

            zx, hist = rnd(B, di + C + H, scale=2.0), rnd(B, C, K - 1)
            state = torch.randn(B, H, P, N, device="cuda", generator=gen)
            mask = torch.rand(B, device="cuda", generator=gen) > 0.3
            a_log = (2.7 * torch.rand(H, device="cuda", generator=gen)).to(dtype)
            params = Mamba2Params(rnd(C, 1, K, scale=0.5), rnd(C, scale=0.5), rnd(H), a_log, rnd(H),
                                  rnd(di, scale=0.5) + 1, 1e-5)
            dims = Mamba2Dims(di, H, P, N, G, K)
            got = mamba2_step_triton(zx, mask, hist, state, params, dims)
            low = mamba2_step_ref(zx, mask, hist, state, params, dims)
            p64 = Mamba2Params(*(x.double() if isinstance(x, torch.Tensor) else x for x in params))
            exact = mamba2_step_ref(zx.double(), mask, hist.double(), state.double(), p64, dims)
            eps = torch.finfo(dtype).eps
            ratios = [
                (got[i].double() - exact[i]).abs().max().item()
                / max((low[i].double() - exact[i]).abs().max().item(), eps * exact[i].abs().max().item())
                for i in (0, 2)
            ]
            same = torch.equal(got[1], low[1])
            rows.append({"check": "mamba2 step", "B": B, "H": H, "P": P, "N": N, "G": G, "dtype": str(dtype),
                         "out_ratio": ratios[0], "state_ratio": ratios[1], "history_bitwise": same,
                         "ok": max(ratios) <= 4.0 and same})
    torch.manual_seed(0)
    config = model_config(SessaConfig.from_preset("125m", mixer="sessa", vocab_size=259), "mamba2")
    model = SessaForCausalLM(config).cuda().eval()

    def decode(kernels: bool) -> torch.Tensor:
        return _padded_decode(model, "SESSA_TRITON_DECODE", "1" if kernels else "0")[0]

    exact = decode(False)  # float32 weights, the PyTorch step
    model = model.to(torch.bfloat16)
    fused, plain = decode(True), decode(False)
    scale = exact.abs().max().item()
    err_fused, err_plain = ((x - exact).abs().max().item() / scale for x in (fused, plain))
    # two bf16 computations of 24 layers differ by about their own error against float32: judge each
    # against float32 (the kernels within twice the PyTorch step's error)
    rows.append({"check": "mamba2 decode 125m bf16, error against float32", "kernels": err_fused,
                 "pytorch_step": err_plain, "ok": err_fused <= 2 * err_plain})
    return rows


CHECKS = (kernel_checks, continue_checks, graph_checks, fast_launch_checks, prologue_checks,
          bound_step_checks, mamba2_step_checks)


def main() -> int:
    """All checks, or those named in the CHECKS environment variable (space-separated function names)."""
    rows = []
    only = os.environ.get("CHECKS", "").split()
    for check in (c for c in CHECKS if not only or c.__name__ in only):
        try:
            rows += check()
        except Exception as e:  # noqa: BLE001 - reported as a failed check, the others still run
            rows.append({"check": check.__name__, "error": f"{type(e).__name__}: {e}"[:2000], "ok": False})
    for r in rows:
        print(json.dumps(r))
    record = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            json.dump(record, fh, indent=1)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
