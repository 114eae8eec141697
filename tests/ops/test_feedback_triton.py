"""The Triton feedback-solve kernels, run by Triton's CPU interpreter, against the float64 reference.

The interpreter is switched on with TRITON_INTERPRET=1, which Triton reads when it is first imported. So the
checks run in a child process (this file run as a script) with the variable set, and the tests here only
read the errors it reports: other test files in the same pytest process keep the compiled mode. Every
output and scratch buffer is filled with NaN before the kernels run (``triton.POISON``).

Criterion (mamba's rule): error of the Triton op vs float64 <= k x error of the PyTorch chunked op in the
same precision + atol. For bf16 the Triton products use bf16 operands (P, s, df, dlogit) where the chunked
op computes in fp32, so gradients get a looser k; on the GPU at D = 1024 the measured ratio is about 2
(benchmarks/triton_check_*.txt).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

NAMES = ("s", "dq_b", "dk_b", "dgamma", "df")
# (B, T, D, chunk_size, sub_block, dtype, key_mask[, tile overrides of the interpreter's Blocks])
FAST_CASES = [
    (2, 1, 16, 16, 16, "float32", False),
    (2, 17, 16, 16, 16, "float32", False),
    (2, 70, 32, 32, 16, "float32", False),
    (2, 70, 32, 64, 16, "float32", True),
    # five super-chunks: the forward builds the first one's log-sum-exp and W before its loop, the other
    # four on the side stream (one stream under the interpreter: the row and super-chunk offsets are tested)
    (2, 70, 32, 16, 16, "bfloat16", False, {"head_frac": 0.2}),
    (2, 70, 32, 32, 16, "bfloat16", True),
    (2, 70, 32, 32, 16, "float16", True),  # fp16 inputs: bf16 operands, fp16 q_b/k_b cast in dq/dk
    # scratch row tile above the dk / push row step (the GPU's bf16 tiles: 128 vs 64), wide W row tile, a
    # doubling level whose K step is below its tile (32 vs 16)
    (2, 100, 32, 64, 16, "float32", True, {"bm": 64, "bt_dk": 16, "bm_w": 64, "bk_w": 32, "bk_lv": 16}),
    # probability tiles wider than the scratch readers' key tile; pushes in pairs (3 super-chunks)
    (2, 150, 32, 64, 16, "bfloat16", True, {"bn_p": 64}),
]
SLOW_CASES = [
    (1, 130, 64, 64, 32, "float32", True),
    (2, 129, 48, 128, 64, "bfloat16", False),
    (1, 100, 32, 48, 16, "float16", False),
]
TOL = {  # dtype -> (k for s/df, k for dq/dk/dgamma, atol)
    "float32": (2.0, 2.0, 1e-6),
    "bfloat16": (2.0, 10.0, 2e-3),
    # fp16 inputs use bf16 operands too (s may exceed fp16's range), so they get bf16-level accuracy while
    # the chunked op's fp16 rounding is 8x finer: judge them by an absolute bound.
    "float16": (10.0, 10.0, 2e-2),
}


# ------------------------------------------------------------------------------------------- child side
def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _inputs(B, T, D, dtype, mask, seed):
    import torch

    gen = torch.Generator().manual_seed(seed)
    q, k, f, ds = (torch.randn(B, T, D, generator=gen) for _ in range(4))
    gamma = 0.999 * torch.tanh(2 * torch.randn(B, T, 1, generator=gen))
    key_mask = None
    if mask:  # padding keys, including a row whose whole past is masked
        key_mask = torch.rand(B, T, generator=gen) > 0.3
        key_mask[:, :2] = False
    return [x.to(getattr(torch, dtype)) for x in (2 * q, k, gamma, f)], ds.to(getattr(torch, dtype)), key_mask


def _solve(fn, inputs, ds, key_mask, **kw):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    s = fn(*leaves, key_mask=key_mask, **kw)
    s.backward(ds)
    return [s.detach()] + [x.grad for x in leaves]


def _check_case(B, T, D, chunk, sub, dtype, mask, tiles=None) -> dict:
    from sessa.ops.feedback import triton_common
    from sessa.ops.feedback.chunked import feedback_solve_chunked
    from sessa.ops.feedback.reference import feedback_solve_ref
    from sessa.ops.feedback.triton import feedback_solve_triton

    inputs, ds, key_mask = _inputs(B, T, D, dtype, mask, seed=T + D)
    with triton_common.tiles_overridden(triton_common._INTERPRET_TILES, tiles or {}):
        tri = _solve(feedback_solve_triton, inputs, ds, key_mask, chunk_size=chunk, sub_block=sub)
    chk = _solve(lambda *a, key_mask: feedback_solve_chunked(*a, key_mask, 16), inputs, ds, key_mask)
    ref = _solve(lambda *a, key_mask: feedback_solve_ref(*a, key_mask), [x.double() for x in inputs],
                 ds.double(), key_mask)
    finite = all(bool(x.isfinite().all()) for x in tri)
    return {"finite": finite, "triton": [_rel(a, r) for a, r in zip(tri, ref, strict=True)],
            "chunked": [_rel(a, r) for a, r in zip(chk, ref, strict=True)]}


# Packed sequences: (dtype, T, cu_seqlens of one packed row | None for two rows of seq_idx, chunk, tiles).
# Segments of length 0 and 1, segments crossing super-chunks and key tiles (the kernels skip the key tiles
# before a row tile's segments, on the readers' and the writers' side alike: a mismatch reads NaN poison).
VARLEN_CASES = [
    ("float32", 50, [0, 7, 23, 50], 16, None),
    ("float32", 200, [0, 1, 1, 40, 41, 150, 200], 64, None),
    ("float32", 130, None, 32, None),
    ("bfloat16", 200, [0, 70, 71, 200, 200], 64, {"bm": 64, "bt_dk": 16, "bm_w": 64, "bk_w": 32, "bn_p": 64}),
]
PACKED_SEQ_IDX = [[0] * 40 + [1] * 1 + [2] * 89, [5] * 100 + [6] * 30]  # rows of the seq_idx case, T = 130


def _varlen_solve(solver, segments, *inputs, key_mask, **kw):
    """solver(q_b, k_b, gamma, f, segments, **kw) in _solve's calling convention (no key mask)."""
    return solver(*inputs, segments, **kw)


def _check_varlen() -> list[dict]:
    """Packed sequences in one launch sequence: output and all four gradients against the float64 reference
    (a solve per segment)."""
    import torch

    from sessa.ops.feedback import triton_common
    from sessa.ops.feedback.reference import feedback_solve_ref
    from sessa.ops.feedback.triton import feedback_solve_packed, feedback_solve_varlen
    from sessa.ops.feedback.varlen import feedback_solve_varlen_ref, solve_per_sequence

    out = []
    for dtype, T, cu, chunk, tiles in VARLEN_CASES:
        B = 1 if cu is not None else 2
        (q, k, g, f), ds, _ = _inputs(B, T, 16, dtype, False, seed=T)
        if cu is not None:
            cu_seqlens = torch.tensor(cu)
            tri_fn = functools.partial(_varlen_solve, feedback_solve_varlen, cu_seqlens, chunk_size=chunk)
            ref_fn = functools.partial(_varlen_solve, feedback_solve_varlen_ref, cu_seqlens)
        else:
            seq_idx = torch.tensor(PACKED_SEQ_IDX)
            tri_fn = functools.partial(_varlen_solve, feedback_solve_packed, seq_idx, chunk_size=chunk)
            per_sequence = functools.partial(solve_per_sequence, feedback_solve_ref)
            ref_fn = functools.partial(_varlen_solve, per_sequence, seq_idx)
        with triton_common.tiles_overridden(triton_common._INTERPRET_TILES, tiles or {}):
            tri = _solve(tri_fn, [q, k, g, f], ds, None)
        ref = _solve(ref_fn, [x.double() for x in (q, k, g, f)], ds.double(), None)
        errs = [_rel(a, r) for a, r in zip(tri, ref, strict=True)]
        out.append({"err": max(errs), "finite": all(bool(x.isfinite().all()) for x in tri)})
    return out


def _check_w() -> dict:
    """The intra-chunk inverses W (recursive doubling) against torch.linalg.inv in float64: 3 sub-blocks per
    super-chunk (not a power of two), T not a multiple of L, padding keys."""
    import torch

    from sessa.ops.feedback.triton_common import choose_blocks
    from sessa.ops.feedback.triton_fwd import _lse
    from sessa.ops.feedback.triton_launch import Streams
    from sessa.ops.feedback.triton_tril import build_w

    B, T, D, L = 2, 100, 16, 48
    (q, k, g, _), _, mask = _inputs(B, T, D, "float32", True, seed=5)
    bl = choose_blocks(T, D, torch.float32, L, interpret=True, sub_block=16)
    streams = Streams(q.device)
    w = build_w(q, k, g, mask, _lse(q, k, mask, bl, streams), bl, split=False, streams=streams)
    allowed = torch.ones(T, T, dtype=torch.bool).tril(-1)[None] & mask[:, None, :]
    logits = (q.double() @ k.double().transpose(1, 2) / D**0.5).masked_fill(~allowed, float("-inf"))
    n = g.double() * torch.softmax(logits, -1).nan_to_num(0.0)  # rows with no readable key: 0
    err = 0.0
    for c, a in enumerate(range(0, T, L)):
        e = min(a + L, T)
        inv = torch.linalg.inv(torch.eye(e - a, dtype=torch.float64) - n[:, a:e, a:e])
        err = max(err, (w[:, c, : e - a, : e - a].double() - inv).abs().max().item())
    return {"err": err, "finite": bool(w.isfinite().all())}


def _check_w_split() -> dict:
    """bf16 operands: W is stored rounded to bf16 and each product splits its fp32 right-hand side into bf16
    high and low parts. Returns the relative error of W's rounding against the fp32 W, and of the product
    s = W x (forward) and W^T x (backward) against float64 products with the stored bf16 W (the split should
    keep x to ~16 bits, far below the ~2^-9 of one bf16 product)."""
    import torch

    from sessa.ops.feedback.triton_common import choose_blocks
    from sessa.ops.feedback.triton_fwd import _lse
    from sessa.ops.feedback.triton_launch import Streams
    from sessa.ops.feedback.triton_tril import build_w, w_applier

    B, T, D, L = 2, 80, 32, 48
    (q, k, g, _), _, mask = _inputs(B, T, D, "float32", True, seed=6)
    bl = choose_blocks(T, D, torch.bfloat16, L, interpret=True, sub_block=16)
    streams = Streams(q.device)
    lse = _lse(q, k, mask, bl, streams)
    w32 = build_w(q, k, g, mask, lse, bl, split=False, streams=streams)
    w16 = build_w(q, k, g, mask, lse, bl, split=True, streams=streams)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(B, T, D, generator=gen) * 100.0  # far from bf16-representable values
    out = {"dtype": str(w16.dtype), "w_round": _rel(w16.float(), w32)}
    for trans in (False, True):
        res = torch.full((B, T, D), float("nan"))
        res_op = res.to(torch.bfloat16)
        ref = torch.empty(B, T, D, dtype=torch.float64)
        for c, a in enumerate(range(0, T, L)):
            e = min(a + L, T)
            w = w16[:, c, : e - a, : e - a].double()
            ref[:, a:e] = (w.transpose(1, 2) if trans else w) @ x[:, a:e].double()
            if trans:  # W^T (x + x2) on full (B, T, D) tensors
                w_applier(w16, x, res, res_op, bl, streams, x2=torch.zeros_like(x), trans=True)(a, e - a)
            else:  # W rhs with rhs the super-chunk's rows
                rhs = torch.zeros(B, bl.rows, D)
                rhs[:, : e - a] = x[:, a:e]
                w_applier(w16, rhs, res, res_op, bl, streams)(a, e - a)
        out["trans" if trans else "fwd"] = _rel(res, ref)
        out["op_round"] = max(out.get("op_round", 0.0), _rel(res_op.float(), res))
    return out


def _check_lse_split() -> dict:
    """The log-sum-exp pass with its keys split over several programs per row tile (as on a GPU with few
    rows): against the one-split pass and float64, with no mask, a key mask and packed segments, T not a
    multiple of the tiles; and one whole solve with the splits its device would pick."""
    import torch

    from sessa.ops.feedback import triton_fwd
    from sessa.ops.feedback.triton import packed_table
    from sessa.ops.feedback.triton_common import choose_blocks
    from sessa.ops.feedback.triton_launch import Streams

    B, T, D = 2, 100, 16
    (q, k, _, _), _, key_mask = _inputs(B, T, D, "float32", True, seed=9)
    bl = choose_blocks(T, D, torch.float32, 32, interpret=True)
    streams = Streams(q.device)
    cu = torch.tensor([0, 1, 40, 41, 100])
    table = packed_table(cu, T, q.device).expand(B, 2, T).contiguous()
    seg = torch.zeros(T, dtype=torch.long).index_add_(0, cu[1:-1], torch.ones(3, dtype=torch.long)).cumsum(0)
    out = {"splits": [], "diff": 0.0, "err": 0.0}
    for name, mask in (("none", None), ("keys", key_mask), ("segments", table)):
        allowed = torch.ones(T, T, dtype=torch.bool).tril(-1)[None].expand(B, T, T)
        if name == "keys":
            allowed = allowed & key_mask[:, None, :]
        if name == "segments":
            allowed = allowed & (seg[:, None] == seg[None, :])
        logits = (q.double() @ k.double().transpose(1, 2) / D**0.5).masked_fill(~allowed, float("-inf"))
        ref = torch.logsumexp(logits, -1) / torch.log(torch.tensor(2.0, dtype=torch.float64))
        one = triton_fwd._lse(q, k, mask, bl, streams)
        for ks in (32, 64):
            split = triton_fwd._lse(q, k, mask, bl, streams, keys_per_split=ks)
            same_inf = bool(((split == float("-inf")) == (ref == float("-inf"))).all())
            fin = ref.isfinite()
            diff = (split[fin] - one[fin]).abs().max().item()
            out["diff"] = max(out["diff"], diff, 0.0 if same_inf else 1.0)
            out["err"] = max(out["err"], (split[fin].double() - ref[fin]).abs().max().item())
    original = triton_fwd.sm_count
    try:  # a device with 16 SMs: this case's 8 row tiles get 4 splits of 32 keys
        triton_fwd.sm_count = lambda device: 16
        out["splits"] = [triton_fwd.lse_split(2, 100, bl, 16), triton_fwd.lse_split(64, 100, bl, 16)]
        out["case"] = _check_case(2, 100, 32, 32, 16, "float32", True)
    finally:
        triton_fwd.sm_count = original
    return out


def _check_compiled() -> dict:
    """The op under ``torch.compile(fullgraph=True)`` (the custom ops of ``triton_ops``; a graph break would
    raise) against the eager op, fp32 and bf16 with a key mask: the largest difference over s and the four
    gradients (fp32: absolute; bf16: in units of one bf16 rounding of the larger value); and
    ``torch.library.opcheck`` of the forward op (schema, fake tensors, autograd).

    Why bf16 is judged in roundings: the eager op returns the kernels' bf16 copies of s and df (rounded in
    the kernel), the compiled op rounds its fp32 s and df with ``Tensor.to``. On a GPU both round to nearest
    and agree bit for bit (scripts/check_triton_gpu.py checks it); Triton's interpreter truncates instead."""
    import torch

    from sessa.ops.feedback import triton_ops
    from sessa.ops.feedback.triton import feedback_solve_triton

    out: dict = {"opcheck": []}
    for dtype in ("float32", "bfloat16"):
        inputs, ds, key_mask = _inputs(2, 40, 16, dtype, True, seed=3)

        def fn(*a, key_mask):
            return feedback_solve_triton(*a, key_mask=key_mask, chunk_size=16, sub_block=16)

        eager = _solve(fn, inputs, ds, key_mask)
        compiled = _solve(torch.compile(fn, backend="aot_eager", fullgraph=True), inputs, ds, key_mask)
        diffs = []
        for a, b in zip(eager, compiled, strict=True):
            a, b = a.double(), b.double()
            unit = 1.0 if dtype == "float32" else 2.0**-7 * torch.maximum(a.abs(), b.abs()).clamp_min(1e-30)
            diffs.append(((a - b).abs() / unit).max().item())
        out[dtype] = max(diffs)
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        torch.library.opcheck(triton_ops.solve_fwd_op, (*leaves, key_mask, 16, 16),
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
        out["opcheck"].append(dtype)
    return out


def _child(cases: list) -> None:
    import sessa.ops.feedback.triton as ft

    ft.POISON = True
    out = {"cases": [_check_case(*c) for c in cases], "varlen": _check_varlen(), "w": _check_w(),
           "w_split": _check_w_split(), "compiled": _check_compiled(), "lse_split": _check_lse_split()}
    print("RESULT " + json.dumps(out))


# ------------------------------------------------------------------------------------------ parent side
def _run_child(cases: list) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, __file__, json.dumps(cases)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    detail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0 and lines, f"interpreter run failed:\n{detail}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def fast_results():
    return _run_child(FAST_CASES)


def _assert_case(case, res) -> None:
    assert res["finite"], f"{case}: non-finite output (an unwritten, NaN-poisoned element was read)"
    k_out, k_grad, atol = TOL[case[5]]
    for i, name in enumerate(NAMES):
        k = k_out if name in ("s", "df") else k_grad
        e_t, e_c = res["triton"][i], res["chunked"][i]
        msg = f"{case} {name}: triton err {e_t:.2e} > {k} x chunked err {e_c:.2e} + {atol}"
        assert e_t <= k * e_c + atol, msg


@pytest.mark.parametrize("idx", range(len(FAST_CASES)), ids=[str(c) for c in FAST_CASES])
def test_forward_backward_vs_float64(fast_results, idx):
    _assert_case(FAST_CASES[idx], fast_results["cases"][idx])


@pytest.mark.parametrize("idx", range(len(VARLEN_CASES)), ids=[str(c[:4]) for c in VARLEN_CASES])
def test_varlen_forward_and_backward_equal_per_sequence_solves(fast_results, idx):
    res = fast_results["varlen"][idx]
    assert res["finite"], "non-finite output: an unwritten (NaN-poisoned) scratch tile was read"
    assert res["err"] < (1e-5 if VARLEN_CASES[idx][0] == "float32" else 2e-2), res


def test_intra_chunk_inverse_equals_dense_inverse(fast_results):
    assert fast_results["w"]["finite"]
    assert fast_results["w"]["err"] < 1e-5, fast_results["w"]


def test_bf16_inverse_times_split_right_hand_side(fast_results):
    """bf16 operands: W is stored in bf16 (rounding ~2^-9) and its products keep the fp32 right-hand side to
    ~16 bits (high + low bf16 parts): forward and transposed products within 1e-4 of float64 products with
    the stored W, against ~2e-3 for W's own rounding and for the bf16 operand copy."""
    res = fast_results["w_split"]
    assert res["dtype"] == "torch.bfloat16"
    assert 1e-4 < res["w_round"] < 4e-3, res
    assert res["fwd"] < 1e-4 and res["trans"] < 1e-4, res
    assert 1e-4 < res["op_round"] < 4e-3, res


def test_split_log_sum_exp_equals_the_one_pass(fast_results):
    """Few rows: the log-sum-exp's keys split over programs and merged give the one-pass values (to fp32
    rounding), -inf exactly where a row reads no key, and a whole solve with those splits passes."""
    res = fast_results["lse_split"]
    assert res["splits"] == [32, 128], res["splits"]  # 4 splits of 32 keys; 64 rows of tiles: no split
    assert res["diff"] < 1e-5 and res["err"] < 1e-5, res
    _assert_case((2, 100, 32, 32, 16, "float32", True), res["case"])


def test_compiled_op_equals_eager_op(fast_results):
    """torch.compile keeps the solve as two custom ops without a graph break, with the eager op's numbers:
    fp32 bit for bit, bf16 within one rounding (the interpreter truncates where the GPU rounds; the GPU
    check script holds bf16 to bit equality)."""
    assert fast_results["compiled"]["float32"] == 0.0, fast_results["compiled"]
    assert fast_results["compiled"]["bfloat16"] <= 1.0, fast_results["compiled"]
    assert fast_results["compiled"]["opcheck"] == ["float32", "bfloat16"]


@pytest.mark.slow
def test_larger_cases_vs_float64():
    res = _run_child(SLOW_CASES)
    for case, r in zip(SLOW_CASES, res["cases"], strict=True):
        _assert_case(case, r)


def test_varlen_rejects_bad_cu_seqlens():
    import torch

    from sessa.ops.feedback.triton import feedback_solve_varlen

    x, g = torch.zeros(1, 10, 16), torch.zeros(1, 10, 1)
    with pytest.raises(TypeError, match="cu_seqlens"):
        feedback_solve_varlen(x, x, g, x, torch.tensor([0.0, 10.0]))
    for bad in ([0, 6, 4, 10], [1, 10], [0, 9], [0]):
        with pytest.raises(ValueError, match="cu_seqlens"):
            feedback_solve_varlen(x, x, g, x, torch.tensor(bad))
    with pytest.raises(ValueError, match=r"\(1, N, D\)"):
        feedback_solve_varlen(x.expand(2, 10, 16), x, g, x.expand(2, 10, 16), torch.tensor([0, 10]))


def test_module_imports_without_gpu_and_validates_inputs():
    import torch

    from sessa.ops.feedback import triton as ft
    from sessa.ops.feedback.triton_common import choose_blocks

    x = torch.zeros(1, 4, 16)
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="CUDA"):
            ft.feedback_solve_triton(x, x, torch.zeros(1, 4, 1), x)
    with pytest.raises(ValueError, match="chunk_size"):
        choose_blocks(64, 16, torch.float32, 24, interpret=True)
    with pytest.raises(ValueError, match="sub_block"):
        choose_blocks(64, 16, torch.float32, 32, interpret=True, sub_block=64)
    blocks = choose_blocks(1000, 1024, torch.bfloat16, None, interpret=False)
    assert blocks.L % blocks.C == 0 and blocks.L % blocks.bm == 0 and blocks.L % blocks.bn == 0


def test_default_super_chunk_follows_the_rows_in_the_batch():
    """L = 2048 while B * T <= 8192 rows (measured faster there), else 1024; at most T rounded up to 128."""
    import torch

    from sessa.ops.feedback.triton_common import choose_blocks, default_chunk

    small = [default_chunk(4096), default_chunk(4096, 2), default_chunk(8192), default_chunk(2048)]
    assert small == [2048] * 4
    assert [default_chunk(2048, 8), default_chunk(4096, 8), default_chunk(16384)] == [1024] * 3
    assert [default_chunk(100), default_chunk(1000, 64), default_chunk(1500)] == [128, 1024, 1536]
    assert choose_blocks(4097, 1024, torch.bfloat16, None, interpret=False, batch=1).L == 2048
    assert choose_blocks(4097, 1024, torch.bfloat16, None, interpret=False, batch=4).L == 1024


def test_side_build_starts_at_the_head_super_chunks():
    """The forward builds the log-sum-exp and W of ``head`` super-chunks before its loop and the rest on the
    side stream: with at least side_min super-chunks, head is head_frac of them (rounded, at least one); with
    fewer, all of them (nothing aside)."""
    import torch

    from sessa.ops.feedback.triton_common import TUNING, choose_blocks

    def head(T, L=None, B=1):
        bl = choose_blocks(T, 1024, torch.bfloat16, L, interpret=False, batch=B)
        return bl.head, -(-T // bl.L)

    assert TUNING["side_min"] == 16 and TUNING["head_frac"] == 0.625
    assert head(16384) == (10, 16) and head(32768) == (20, 32)  # L = 1024
    assert head(8192) == (4, 4) and head(8192, 1024) == (8, 8)  # fewer than side_min: all first
    assert head(2048, B=8) == (2, 2) and head(15000, 1024) == (15, 15)
    assert head(16384, 512) == (20, 32)


def test_unpredicated_loads_and_probability_tiles_follow_the_shapes():
    """even_d (loads without a D mask) only when D is a multiple of every D tile; the probability tile bn_p
    is a power of two dividing L, at most the tuned 256 keys (a user's chunk_size of 48 gets 16)."""
    import torch

    from sessa.ops.feedback.triton_common import TUNING, choose_blocks

    def blocks(D, L=None, dtype=torch.bfloat16, T=4096):
        return choose_blocks(T, D, dtype, L, interpret=False)

    widest = max(TUNING[k] for k in ("bk", "bd", "bd_dk", "bd_w"))
    assert [blocks(D).even_d for D in (1024, 768, 2048, widest)] == [True] * 4
    assert [blocks(D).even_d for D in (96, 1000, widest // 2)] == [False] * 3
    assert blocks(1024).bn_p == TUNING["bn_p"] == 256
    assert [blocks(1024, L).bn_p for L in (1024, 2048, 384, 48)] == [256, 256, 128, 16]
    for L in (48, 384, 1024):
        bl = blocks(1024, L)
        assert bl.L % bl.bn_p == 0 and bl.L % bl.bn == 0


if __name__ == "__main__":
    _child([tuple(c) for c in json.loads(sys.argv[1])])


def test_tile_overrides_apply_inside_the_block_and_are_restored():
    """The sweeps' and tests' overrides of a tile table last for their block only, also when it raises."""
    from sessa.ops.feedback.triton_common import TUNING, tiles_overridden

    before = dict(TUNING)
    with pytest.raises(RuntimeError), tiles_overridden(TUNING, {"bm_w": 64, "head_frac": 0.5}):
        assert TUNING["bm_w"] == 64 and TUNING["head_frac"] == 0.5
        raise RuntimeError("a configuration that does not compile")
    assert TUNING == before
