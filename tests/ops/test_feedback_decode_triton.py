"""The split-context Triton decode kernels (one new token per row) against the reference, and their sm_90
compile check.

The interpreter checks run in a child process with TRITON_INTERPRET=1 (Triton reads it when first imported;
see test_feedback_triton.py): this file, run as a script, prints the largest error per case as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

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


def _run_cases() -> dict[str, float]:
    from sessa.ops.feedback.decode import feedback_decode_ref
    from sessa.ops.feedback.triton_decode import feedback_decode_triton

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
        scale = max((want - exact).abs().max().item(), torch.finfo(dt).eps)
        out[f"{B}x{L}x{D}-{dtype}-{masked}"] = (got - exact).abs().max().item() / scale
    return out


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_decode_kernels_match_the_reference_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ratios = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(ratios) == len(CASES)
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


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreted kernels do not compile")
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_decode_kernels_compile_for_sm90(dtype):
    from sessa.ops.feedback.triton_decode import launches
    from tests.ops.test_triton_compile import _check_one, _launch

    dt = getattr(torch, dtype)
    found = []
    for B, L, D, masked in (
        (1, 1024, 768, False),
        (8, 33000, 768, True),
        (2, 100, 2048, True),
        (1, 5, 64, False),
    ):
        q, f, out = (torch.empty(B, D, device="meta", dtype=dt) for _ in range(3))
        k, s = (torch.empty(B, L, D, device="meta", dtype=dt) for _ in range(2))
        mask = torch.empty(B, L, device="meta", dtype=torch.bool) if masked else None
        length, gamma = (
            torch.empty(B, device="meta", dtype=torch.int32),
            torch.empty(B, device="meta", dtype=dt),
        )
        for kernel, _grid, args, consts in launches(q, k, s, mask, length, gamma, f, out):
            found.append(_check_one(_launch(kernel, consts, args)))
    assert found and all(problem is None for problem in found), [p for p in found if p]


if __name__ == "__main__":
    print(json.dumps(_run_cases()))
