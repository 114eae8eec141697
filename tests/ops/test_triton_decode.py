"""The split-context Triton decode kernels (one new query per row: the feedback row and the forward branch's
multi-head attention) and the Triton continuation of a cache by several tokens against their references, and
the decode kernels' sm_90 compile check (the continuation runs the solve's kernels, checked in
test_triton_compile.py).

The interpreter checks run in a child process with TRITON_INTERPRET=1 (Triton reads it when first imported;
see test_feedback_triton.py): this file, run as a script, prints the largest error per case as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from tests.helpers import run_interpreted

HAS_TRITON = importlib.util.find_spec("triton") is not None
# (B, capacity L, D, lengths per row, key mask, dtype): a row with no key, one key, a full cache; widths
# that are not powers of two; a cache long enough for many splits (ragged last split)
CASES = [
    (2, 1, 16, [0, 1], False, "float32"),
    (2, 70, 24, [0, 70], True, "float32"),
    (3, 200, 40, [1, 137, 200], True, "float32"),
    (2, 9000, 16, [8999, 4097], True, "float32"),
    (2, 130, 32, [129, 64], True, "bfloat16"),
    (2, 130, 32, [129, 64], False, "float16"),
]


def _ratio(got: torch.Tensor, low: torch.Tensor, exact: torch.Tensor, dt: torch.dtype) -> float:
    """Largest error of ``got`` against float64 over that of the reference in the same precision (``low``),
    the latter at least dt's epsilon."""
    return (got - exact).abs().max().item() / max((low - exact).abs().max().item(), torch.finfo(dt).eps)


# attention: (B, capacity L, H, Hkv, hd, lengths per row, key mask, dtype): GQA, a row with no key, widths
# that are not powers of two, many splits
ATTENTION_CASES = [
    (2, 1, 2, 2, 16, [0, 1], False, "float32"),
    (2, 70, 4, 2, 24, [0, 70], True, "float32"),
    (3, 300, 6, 2, 40, [1, 137, 300], True, "float32"),
    (1, 9000, 2, 1, 64, [8999], False, "float32"),
    (2, 130, 4, 1, 64, [129, 64], True, "bfloat16"),
    (2, 130, 4, 4, 32, [129, 64], False, "float16"),
    (1, 50, 3, 1, 300, [50], True, "float32"),  # too wide for all heads in one program: one per head
]


def _attention_cases() -> dict[str, float]:
    from sessa.ops.attention import decode_attention_ref
    from sessa.ops.triton_decode import decode_attention_triton

    out = {}
    for B, L, H, Hkv, hd, lens, masked, dtype in ATTENTION_CASES:
        gen = torch.Generator().manual_seed(L + hd)
        dt = getattr(torch, dtype)
        q = torch.randn(B, 1, H, hd, generator=gen).to(dt)
        k, v = (torch.randn(B, L, Hkv, hd, generator=gen).mul(2).to(dt) for _ in range(2))
        mask = torch.rand(B, L, generator=gen) > 0.3 if masked else None
        length = torch.tensor(lens, dtype=torch.int32)
        got = decode_attention_triton(q, k, v, length, mask).double()
        want = decode_attention_ref(q, k, v, length, mask).double()
        exact = decode_attention_ref(q.double(), k.double(), v.double(), length, mask)
        out[f"attention-{B}x{L}x{H}/{Hkv}x{hd}-{dtype}-{masked}"] = _ratio(got, want, exact, dt)
    return out


# the continuation of a cache by n > 1 tokens through the Triton solve of the new block:
# (B, cached t, new n, D, key mask, dtype)
CONTINUE_CASES = [
    (2, 37, 50, 16, True, "float32"),
    (1, 5, 70, 24, False, "float32"),
    (2, 20, 33, 32, True, "bfloat16"),
]


def _continue_cases() -> dict[str, float]:
    from sessa.ops.feedback import feedback_solve_ref
    from sessa.ops.feedback.decode import feedback_continue_ref, feedback_continue_split

    out = {}
    for B, t, n, D, masked, dtype in CONTINUE_CASES:
        gen = torch.Generator().manual_seed(t + n)
        dt = getattr(torch, dtype)
        q, k, f = (torch.randn(B, t + n, D, generator=gen, dtype=torch.float64) for _ in range(3))
        g = 0.9 * torch.tanh(torch.randn(B, t + n, 1, generator=gen, dtype=torch.float64))
        mask = torch.rand(B, t + n, generator=gen) > 0.3 if masked else None
        past_mask = None if mask is None else mask[:, :t]
        s_past = feedback_solve_ref(q[:, :t], k[:, :t], g[:, :t], f[:, :t], past_mask)
        exact = feedback_continue_ref(q[:, t:], k, g[:, t:], f[:, t:], s_past, key_mask=mask)
        low = [x.to(dt) for x in (q[:, t:], k, g[:, t:], f[:, t:], s_past)]
        got = feedback_continue_split(*low, key_mask=mask, backend="triton").double()
        want = feedback_continue_ref(*low, key_mask=mask).double()
        out[f"continue-{B}x{t}+{n}x{D}-{dtype}-{masked}"] = _ratio(got, want, exact, dt)
    return out


# the one-token prologue: (B, H, Hkv, hd, RoPE, feedback, dtype, position t, cache length)
PROLOGUE_CASES = [
    (2, 4, 2, 8, True, True, "float32", 5, 9),
    (3, 2, 2, 6, True, True, "bfloat16", 0, 4),
    (2, 4, 1, 8, True, False, "float16", 7, 8),
    (1, 3, 3, 10, False, True, "bfloat16", 2, 3),
]


def _prologue_cases() -> dict[str, float]:
    """Triton prologue against :func:`step_prologue_ref` on copies of one cache: q and the three caches
    bit for bit (0.0, else the largest difference + 1); the gain (tanh from exp) to 2 ulps of the dtype."""
    from sessa.ops.attention import rope_tables
    from sessa.ops.prologue import step_prologue_ref
    from sessa.ops.triton_decode import step_prologue_triton

    out = {}
    for B, H, Hkv, hd, use_rope, fb, dtype, t, L in PROLOGUE_CASES:
        gen = torch.Generator().manual_seed(H * hd + t)
        dt = getattr(torch, dtype)
        D, KV = H * hd, Hkv * hd
        proj = torch.randn(B, 1, D + 2 * KV + (2 * D + 1 if fb else 0), generator=gen).mul(3).to(dt)
        caches = [torch.randn(B, L, Hkv, hd, generator=gen).to(dt) for _ in range(2)]
        if fb:
            caches.append(torch.randn(B, L, D, generator=gen).to(dt))
        gain = (torch.tensor(0.7), 0.999) if fb else None
        rope = rope_tables(t, 1, hd, 10000.0, dt, proj.device) if use_rope else None
        mine, ref = [c.clone() for c in caches], [c.clone() for c in caches]
        q1, g1 = step_prologue_triton(proj, mine[0], mine[1], t, H, rope, mine[2] if fb else None, gain)
        q2, g2 = step_prologue_ref(proj, ref[0], ref[1], t, H, rope, ref[2] if fb else None, gain)
        pairs = zip([q1, *mine], [q2, *ref], strict=True)
        diff = max((a.double() - b.double()).abs().max().item() for a, b in pairs)
        gain_ok = (g1 is None and g2 is None) or bool(
            ((g1.double() - g2.double()).abs() <= 2 * torch.finfo(dt).eps).all())
        out[f"prologue-{B}x{H}/{Hkv}x{hd}-rope{use_rope}-fb{fb}-{dtype}"] = (
            0.0 if diff == 0 and gain_ok else diff + 1.0)
    return out


def _model_steps_with_prologue() -> dict[str, float]:
    """Tiny Sessa / attention (GQA) / Sessa-without-feedback models decoding token by token with the Triton
    prologue forced on (the interpreter runs it on CPU tensors; the rest of the step takes the CPU path):
    relative error of the step logits against the full forward, over 1e-5 (<= 1 passes)."""
    import sessa.ops.prologue as prologue
    from tests.helpers import rel_err
    from tests.models.common import step_logits, tiny_model

    calls = []

    def forced(proj, width, *caches):
        calls.append(proj.shape)
        return proj.shape[1] == 1

    prologue.prologue_usable = forced
    out = {}
    for mixer, extra in (("sessa", {}), ("attention", {"n_kv_heads": 1}), ("sessa", {"use_feedback": False})):
        model = tiny_model(mixer, **extra)
        ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            full = model(ids).logits
            steps = step_logits(model, ids, None, 5, 9, model(ids[:, :5], use_cache=True).cache)
            errs = [rel_err(steps[:, i], full[:, t]) for i, t in enumerate(range(5, 9))]
        out[f"model-{mixer}-{extra}"] = max(errs) / 1e-5 if calls else 99.0
        calls.clear()
    return out


def _run_cases() -> dict[str, float]:
    from sessa.ops.feedback.decode import feedback_decode_ref
    from sessa.ops.triton_decode import feedback_decode_triton

    out = {}
    for B, L, D, lens, masked, dtype in CASES:
        gen = torch.Generator().manual_seed(L + D)
        dt = getattr(torch, dtype)
        q, f = (torch.randn(B, 1, D, generator=gen).to(dt) for _ in range(2))
        k, s = torch.randn(B, L, D, generator=gen).mul(2).to(dt), torch.randn(B, L, D, generator=gen).to(dt)
        gamma = torch.rand(B, 1, 1, generator=gen).to(dt)
        mask = torch.rand(B, L, generator=gen) > 0.3 if masked else None
        length = torch.tensor(lens, dtype=torch.int32)
        got = feedback_decode_triton(q, k, gamma, f, s, length, mask).double()
        want = feedback_decode_ref(q, k, gamma, f, s, length, mask).double()
        exact = feedback_decode_ref(*(x.double() for x in (q, k, gamma, f, s)), length, mask)
        out[f"{B}x{L}x{D}-{dtype}-{masked}"] = _ratio(got, want, exact, dt)
    more = {**_attention_cases(), **_continue_cases(), **_prologue_cases(), **_model_steps_with_prologue()}
    return {**out, **more}


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_decode_kernels_match_the_reference_in_the_interpreter():
    ratios = run_interpreted(__file__)
    assert len(ratios) == len(CASES) + len(ATTENTION_CASES) + len(CONTINUE_CASES) + len(PROLOGUE_CASES) + 3
    # error vs float64 within a few times the reference's own error in the same precision
    assert all(r <= 4.0 for r in ratios.values()), ratios


def test_feedback_decode_on_cpu_is_the_reference_and_checks_shapes():
    from sessa.ops.feedback.decode import feedback_continue_ref, feedback_decode, feedback_decode_ref

    gen = torch.Generator().manual_seed(0)
    B, L, D, t = 2, 12, 8, 7
    q, f = torch.randn(B, 1, D, generator=gen, dtype=torch.float64), torch.randn(B, 1, D, dtype=torch.float64)
    k, s = torch.randn(B, L, D, dtype=torch.float64), torch.randn(B, L, D, dtype=torch.float64)
    gamma = torch.rand(B, 1, 1, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, :3] = False
    got = feedback_decode(q, k, gamma, f, s, torch.tensor(t), key_mask=mask)
    assert torch.equal(got, feedback_decode_ref(q, k, gamma, f, s, torch.tensor(t), mask))
    # the same row as the continuation of t cached tokens (k_all includes the new token's key)
    want = feedback_continue_ref(q, k[:, : t + 1], gamma, f, s[:, :t], key_mask=mask[:, : t + 1])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="feedback_decode needs"):
        feedback_decode(q, k, gamma, f, s[:, :5], t)


def test_decode_attention_on_cpu_is_the_last_row_of_causal_attention():
    from sessa.ops.attention import causal_attention, decode_attention

    gen = torch.Generator().manual_seed(1)
    B, L, H, Hkv, hd, t = 2, 10, 4, 2, 8, 7
    q_all = torch.randn(B, t, H, hd, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(B, L, Hkv, hd, generator=gen, dtype=torch.float64) for _ in range(2))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, :3] = False
    want = causal_attention(q_all, k[:, :t], v[:, :t], key_mask=mask[:, :t])[:, -1:]
    got = decode_attention(q_all[:, -1:], k, v, torch.tensor(t), mask)  # positions >= t are not read
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    per_row = decode_attention(q_all[:, -1:], k, v, torch.tensor([t, 3]), mask)
    assert torch.equal(per_row[0], got[0]) and not per_row[1].isnan().any()
    with pytest.raises(ValueError, match="one query per row"):
        decode_attention(q_all[:, -2:], k, v, t)
    with pytest.raises(ValueError, match="key_mask must be a bool tensor"):
        decode_attention(q_all[:, -1:], k, v, t, mask[:, :5])


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreted kernels do not compile")
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_decode_kernels_compile_for_sm90(dtype):
    from sessa.ops.triton_decode import launches, prologue_launch
    from tests.ops.test_triton_compile import _check_one, _launch

    dt = getattr(torch, dtype)
    found = []
    # (B, L, H, Hkv, hd, masked, feedback epilogue): the feedback row (H = 1, the model width) and the
    # forward branch's heads (125m and 350m presets, GQA)
    for B, L, H, Hkv, hd, masked, feedback in (
        (1, 1024, 1, 1, 768, False, True),
        (8, 33000, 1, 1, 768, True, True),
        (2, 100, 1, 1, 2048, True, True),
        (1, 5, 1, 1, 64, False, True),
        (1, 33000, 12, 12, 64, False, False),
        (64, 2048, 16, 4, 64, True, False),
        (2, 100, 8, 8, 128, True, False),
        (1, 4096, 16, 16, 128, False, False),
    ):
        q, out = (torch.empty(B, H, hd, device="meta", dtype=dt) for _ in range(2))
        k, v = (torch.empty(B, L, Hkv, hd, device="meta", dtype=dt) for _ in range(2))
        mask = torch.empty(B, L, device="meta", dtype=torch.bool) if masked else None
        length = torch.empty(B, device="meta", dtype=torch.int32)
        f, gamma = (torch.empty(B, hd, device="meta", dtype=dt), torch.empty(B, device="meta", dtype=dt)) \
            if feedback else (None, None)  # fmt: skip
        for kernel, _grid, args, consts in launches(q, k, v, mask, length, out, f, gamma):
            found.append(_check_one(_launch(kernel, consts, args)))
    # the one-token prologue: Sessa 125m / 350m (RoPE, feedback), attention with GQA, no RoPE
    for B, H, Hkv, hd, rope, feedback in ((1, 12, 12, 64, True, True), (8, 16, 16, 64, True, True),
                                          (2, 16, 4, 64, True, False), (1, 8, 8, 96, False, True)):
        D, KV = H * hd, Hkv * hd
        proj = torch.empty(B, 1, D + 2 * KV + (2 * D + 1 if feedback else 0), device="meta", dtype=dt)
        kc, vc = (torch.empty(B, 4096, Hkv, hd, device="meta", dtype=dt) for _ in range(2))
        kb = torch.empty(B, 4096, D, device="meta", dtype=dt) if feedback else None
        tables = tuple(torch.empty(1, 1, 1, hd, device="meta", dtype=dt) for _ in range(2)) if rope else None
        gain = (torch.empty((), device="meta"), 0.999) if feedback else None
        q = torch.empty(B, 1, H, hd, device="meta", dtype=dt)
        gamma = torch.empty(B, 1, 1, device="meta", dtype=dt)
        for t in (1, 17, 4000):  # int specialisations: 1, not divisible by 16, divisible
            kernel, _grid, args, consts = prologue_launch(proj, kc, vc, t, H, tables, kb, gain, q, gamma)
            found.append(_check_one(_launch(kernel, consts, args)))
    assert found and all(problem is None for problem in found), [p for p in found if p]


def test_prologue_takes_the_kernel_for_one_token_of_a_model_width_up_to_2048(monkeypatch):
    """The launch is gated on the model width D (the kernel's register row), not on the stacked projection's
    width (5 D + 1 for Sessa): a 125m Sessa layer (D = 768, proj 3841 wide) takes it."""
    import sessa.ops.prologue as prologue

    monkeypatch.setattr(prologue, "triton_decode_usable", lambda *caches: True)  # as on CUDA
    proj = torch.zeros(2, 1, 5 * 768 + 1)
    k, v, kb = torch.zeros(2, 64, 12, 64), torch.zeros(2, 64, 12, 64), torch.zeros(2, 64, 768)
    assert prologue.prologue_usable(proj, 768, k, v, kb)
    assert not prologue.prologue_usable(torch.zeros(2, 2, 5 * 768 + 1), 768, k, v, kb)  # two tokens
    assert not prologue.prologue_usable(torch.zeros(2, 1, 5 * 4096 + 1), 4096, k, v, kb)  # too wide
    assert not prologue.prologue_usable(proj, 768, k, v, kb.to(torch.float64))  # a cache of another dtype
    assert not prologue.prologue_usable(proj, 768, k.transpose(2, 3), v, kb)  # heads not packed per token
    monkeypatch.setattr(prologue, "triton_decode_usable", lambda *caches: False)  # CPU, or switched off
    assert not prologue.prologue_usable(proj, 768, k, v, kb)


def test_prologue_reference_is_the_separate_step_ops():
    """step_prologue on CPU (the reference) writes the caches and returns q, gamma as the mixer's own
    projections, RoPE and gain do, for several new tokens."""
    from sessa.modules.sessa_mixer import SessaMixer

    torch.manual_seed(0)
    mixer = SessaMixer(32, n_heads=4, n_kv_heads=2).eval()
    a = torch.randn(2, 3, 32)
    cache = mixer.init_cache(2, max_len=8)
    with torch.no_grad():
        q, (q_b, k_b, gamma) = mixer._step_inputs(a, 2, cache)  # stacked projection + step_prologue
        q_ref, k_ref, v_ref = mixer.qkv(a, 2)
        qb_ref, kb_ref, g_ref = mixer.feedback_inputs(a)
    for got, want in ((q, q_ref), (cache["k_f"][:, 2:5], k_ref), (cache["v_f"][:, 2:5], v_ref), (q_b, qb_ref),
                      (k_b, kb_ref), (cache["k_b"][:, 2:5], kb_ref), (gamma, g_ref)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert cache["k_f"][:, :2].abs().max() == 0 and cache["k_f"][:, 5:].abs().max() == 0


def _check_custom_ops() -> None:
    """torch.ops.sessa.decode_attention / feedback_decode (what a compiled step calls): torch.library's
    opcheck (schema, fake tensor shapes, dispatch) and the same result as the direct call."""
    import sessa.ops.decode_ops  # noqa: F401
    from sessa.ops.triton_decode import decode_attention_triton, feedback_decode_triton

    gen = torch.Generator().manual_seed(3)
    B, L, D = 2, 40, 16
    q, k, v = torch.randn(B, 1, 4, D, generator=gen), torch.randn(B, L, 2, D), torch.randn(B, L, 2, D)
    length, mask = torch.tensor([40, 7], dtype=torch.int32), torch.rand(B, L, generator=gen) > 0.2
    args = (q, k, v, length, mask)
    torch.library.opcheck(torch.ops.sessa.decode_attention.default, args)
    assert torch.equal(torch.ops.sessa.decode_attention(*args), decode_attention_triton(*args))
    qf, f, gamma = torch.randn(B, 1, D), torch.randn(B, 1, D), torch.rand(B, 1, 1)
    kb, s = torch.randn(B, L, D), torch.randn(B, L, D)
    args = (qf, kb, gamma, f, s, length, None)
    torch.library.opcheck(torch.ops.sessa.feedback_decode.default, args)
    assert torch.equal(torch.ops.sessa.feedback_decode(*args), feedback_decode_triton(*args))


if __name__ == "__main__":
    _check_custom_ops()
    print(json.dumps(_run_cases()))
