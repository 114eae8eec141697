"""Mamba-2's one-token step as two Triton launches (``sessa.ops.mamba2_step``): against its PyTorch reference
and float64, in a model decoding token by token, and compiled for sm_90.

The interpreter checks run in a child process with TRITON_INTERPRET=1 and the CUDA gate (``usable``) opened
for CPU tensors (this file, run as a script, prints JSON); on a GPU ``scripts/check_decode_gpu.py`` checks
the same at the 125m shapes.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from sessa.ops.mamba2_step import Mamba2Dims, Mamba2Params, mamba2_step_ref
from tests.helpers import run_interpreted

HAS_TRITON = importlib.util.find_spec("triton") is not None
# (B, n_heads, headdim, d_state, ngroups, d_conv, conv bias, mask of the rows, dtype)
CASES = [
    (2, 4, 8, 16, 1, 4, True, [True, False], "float32"),
    (3, 6, 6, 10, 2, 3, False, None, "float32"),
    (2, 3, 32, 64, 1, 4, True, [False, True], "bfloat16"),
    (2, 4, 16, 8, 2, 4, True, None, "float16"),
]


def _inputs(B, H, P, N, G, K, bias, rows, dtype, seed=0):  # noqa: ANN001, ANN202
    """A step's inputs: zxbcdt, mask, conv history, state (float32; float64 for float64), parameters."""
    gen = torch.Generator().manual_seed(seed)
    di = H * P
    C = di + 2 * G * N

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=gen)).to(dtype)

    zx = rnd(B, di + C + H, scale=2.0)
    hist = rnd(B, C, K - 1)
    state = torch.randn(B, H, P, N, generator=gen, dtype=torch.float64).to(
        torch.float64 if dtype == torch.float64 else torch.float32)
    mask = None if rows is None else torch.tensor(rows)
    a_log = (torch.rand(H, generator=gen) * 2.7).to(dtype)
    conv_bias = rnd(C, scale=0.5) if bias else None
    norm_weight = rnd(di, scale=0.5) + 1
    params = Mamba2Params(rnd(C, 1, K, scale=0.5), conv_bias, rnd(H), a_log, rnd(H), norm_weight, 1e-5)
    return zx, mask, hist, state, params, Mamba2Dims(di, H, P, N, G, K)


def _float64(zx, mask, hist, state, params):  # noqa: ANN001, ANN202
    """The inputs in float64 (the state too)."""
    p = Mamba2Params(*(x.double() if isinstance(x, torch.Tensor) else x for x in params))
    return zx.double(), mask, hist.double(), state.double(), p


def _ratio(got: torch.Tensor, low: torch.Tensor, exact: torch.Tensor, eps: float) -> float:
    """Error of got against float64 over the reference's own error in its precision (at least eps x scale)."""
    err = (got.double() - exact).abs().max().item()
    return err / max((low.double() - exact).abs().max().item(), eps * exact.abs().max().item())


def _op_cases() -> dict[str, list[float]]:
    """Per case: out's error against float64 over the PyTorch reference's own error in that dtype, the same
    for the new state, and 1.0 if the new conv history equals the reference's bit for bit."""
    from sessa.ops.triton_mamba2_step import mamba2_step_triton

    out = {}
    for B, H, P, N, G, K, bias, rows, dtype in CASES:
        dt = getattr(torch, dtype)
        zx, mask, hist, state, params, dims = _inputs(B, H, P, N, G, K, bias, rows, dt)
        got = mamba2_step_triton(zx, mask, hist, state, params, dims)
        low = mamba2_step_ref(zx, mask, hist, state, params, dims)
        exact = mamba2_step_ref(*_float64(zx, mask, hist, state, params), dims)
        eps = torch.finfo(dt).eps
        out[f"{B}x{H}x{P}x{N}-g{G}-k{K}-{dtype}"] = [
            _ratio(got[0], low[0], exact[0], eps), _ratio(got[2], low[2], exact[2], eps),
            float(torch.equal(got[1], low[1])),
        ]
    return out


def _model_cases() -> dict[str, list[float]]:
    """Tiny Mamba-2 models decoding a left-padded batch token by token through the kernels, and a two-group
    mixer stepping alone: relative error of the steps against the full forward, and the kernel steps run per
    layer."""
    import sessa.ops.mamba2_step as ms
    from sessa.baselines.mamba2 import Mamba2Mixer
    from tests.helpers import rel_err
    from tests.models.common import left_pad, prompts, step_logits, tiny_model

    calls = {"n": 0}
    fits, launch = ms._fits, ms.mamba2_step

    def counted(*args):  # noqa: ANN002, ANN202
        result = launch(*args)
        calls["n"] += result is not None
        return result

    ms.usable = lambda zx, hist, state, dims: fits(zx, hist, state, dims)  # CPU tensors too
    ms.mamba2_step = counted
    out = {}
    for extra in ({}, {"headdim": 8}):
        model = tiny_model("mamba2", **extra)
        ids, mask = left_pad(prompts((11, 7), seed=2), 0)
        calls["n"] = 0
        errs = []
        with torch.no_grad():
            full = model(ids, attention_mask=mask).logits
            cache = model(ids[:, :5], attention_mask=mask[:, :5], use_cache=True).cache
            steps = step_logits(model, ids, mask, 5, 11, cache)
            errs += [rel_err(steps[:, i], full[:, t]) for i, t in enumerate(range(5, 11))]
        out[f"model-{extra}"] = [max(errs), calls["n"] / len(model.model.layers)]
    torch.manual_seed(1)
    mixer = Mamba2Mixer(24, d_state=8, headdim=6, ngroups=2).eval()
    x = torch.randn(2, 10, 24)
    calls["n"] = 0
    with torch.no_grad():
        state = mixer.init_state(2, 10)
        steps = [mixer.step(x[:, :4], state)] + [mixer.step(x[:, t : t + 1], state) for t in range(4, 10)]
        err = rel_err(torch.cat(steps, 1)[:, 4:], mixer(x)[:, 4:])
    out["mixer-ngroups2"] = [err, float(calls["n"])]
    return out


def _bf16_case() -> list[float]:
    """A tiny Mamba-2 decoding in bf16 with the kernels and with the PyTorch step: each one's largest logit
    error against the same model in float32 (PyTorch step), over the logits' scale. Call after
    ``_model_cases`` (which opens the gate)."""
    import sessa.ops.mamba2_step as ms
    from tests.models.common import left_pad, prompts, step_logits, tiny_model

    model = tiny_model("mamba2")
    ids, mask = left_pad(prompts((12, 8), seed=4), 0)
    opened = ms.usable

    def decode(kernels: bool) -> torch.Tensor:
        ms.usable = opened if kernels else (lambda *args: False)
        with torch.no_grad():
            cache = model(ids[:, :4], attention_mask=mask[:, :4], use_cache=True).cache
            steps = step_logits(model, ids, mask, 4, 12, cache)
        ms.usable = opened
        return steps.double()

    exact = decode(False)
    model = model.to(torch.bfloat16)
    scale = exact.abs().max().item()
    return [(decode(k) - exact).abs().max().item() / scale for k in (True, False)]


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_mamba2_step_kernels_match_the_reference_in_the_interpreter():
    result = run_interpreted(__file__)
    assert len(result["ops"]) == len(CASES)
    for name, (out_ratio, state_ratio, history_same) in result["ops"].items():
        # error vs float64 within a few times the PyTorch reference's own error in the same precision
        assert out_ratio <= 4.0 and state_ratio <= 4.0 and history_same == 1.0, (name, result["ops"][name])
    for name, (err, kernel_steps) in result["models"].items():
        assert err < 1e-5 and kernel_steps == 6.0, (name, err, kernel_steps)
    err_kernels, err_pytorch = result["bf16"]  # a bf16 model: as close to float32 as PyTorch's step
    assert 0 < err_kernels <= 2 * err_pytorch, result["bf16"]


def test_the_reference_is_the_mixers_generic_step():
    """mamba2_step_ref equals what Mamba2Mixer's step computes after in_proj (float64, masked rows)."""
    from sessa.baselines.mamba2 import Mamba2Mixer

    torch.manual_seed(0)
    mixer = Mamba2Mixer(16, d_state=8, headdim=4, ngroups=2).double()
    state = mixer.init_state(2, 8)
    state["conv"].normal_()
    state["ssm"].normal_()
    x = torch.randn(2, 1, 16, dtype=torch.float64)
    mask = torch.tensor([[True], [False]])
    with torch.no_grad():
        y, hist, ssm = mixer._mix(x, mask, state["conv"], state["ssm"])
        params = Mamba2Params(mixer.conv1d.weight, mixer.conv1d.bias, mixer.dt_bias, mixer.A_log, mixer.D,
                              mixer.norm.weight, mixer.norm.eps)
        zx = mixer.in_proj(x)[:, 0]
        ref = mamba2_step_ref(zx, mask[:, 0], state["conv"], state["ssm"], params, mixer._dims)
        out, hist_ref, ssm_ref = ref
        torch.testing.assert_close(y, mixer.out_proj(out[:, None]), rtol=0, atol=1e-14)
    assert torch.equal(hist, hist_ref) and torch.equal(ssm, ssm_ref)


@pytest.mark.skipif(not HAS_TRITON or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="needs triton, compiled (not interpreted) kernels")
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")  # triton 3.9's notice about a default
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_mamba2_step_kernels_compile_for_sm90(dtype):
    """Both kernels at the 125m Mamba-2's shape (47 heads of 32, d_state 64, one group) and small ones, with
    and without a mask and conv bias, compile for sm_90 (see test_triton_compile.py)."""
    from sessa.ops.triton_mamba2_step import mamba2_step_launches
    from tests.ops.test_triton_compile import _check_one, _launch

    dt = getattr(torch, dtype)
    found = []
    # (B, heads, headdim, d_state, groups, d_conv, conv bias, mask): the 125m model, a wider one, a small one
    shapes = ((1, 47, 32, 64, 1, 4, True, True), (8, 24, 64, 128, 1, 4, True, False),
              (2, 6, 6, 10, 2, 3, False, True))
    for B, H, P, N, G, K, bias, masked in shapes:
        di, C = H * P, H * P + 2 * G * N

        def meta(*shape: int, dtype: torch.dtype = dt) -> torch.Tensor:
            return torch.empty(*shape, device="meta", dtype=dtype)

        conv_bias = meta(C) if bias else None
        params = Mamba2Params(meta(C, 1, K), conv_bias, meta(H), meta(H), meta(H), meta(di), 1e-5)
        state, new_state = (meta(B, H, P, N, dtype=torch.float32) for _ in range(2))
        hist, new_hist = meta(B, C, K - 1), meta(B, C, K - 1)
        mask = meta(B, dtype=torch.bool) if masked else None
        work, out = meta(B * (di + H), dtype=torch.float32), meta(B, di)
        launches = mamba2_step_launches(meta(B, di + C + H), mask, hist, state, params,
                                        Mamba2Dims(di, H, P, N, G, K), new_hist, new_state, work, out)
        for kernel, _grid, args, consts in launches:
            found.append(_check_one(_launch(kernel, consts, args)))
    assert found and all(problem is None for problem in found), [p for p in found if p]


if __name__ == "__main__":
    print(json.dumps({"ops": _op_cases(), "models": _model_cases(), "bf16": _bf16_case()}))
