"""Mamba-2's SSD scan on fla-core's Triton simple-GLA kernels (CUDA only; ``pip install -e ".[fast]"``).

fla-core 0.6 defines simple GLA (``fla.ops.simple_gla``, ``naive_recurrent_simple_gla``) per head as

    S_t = exp(g_t) S_{t-1} + k_t v_tᵀ        S: (K, V), or (V, K) with ``state_v_first=True``
    o_t = scale · S_tᵀ q_t                   (token t is included)

with q, k: (b, T, H, K), v: (b, T, H, V), g: (b, T, H) a natural-log decay, scale default K^-1/2, states
(N, H, K, V) (final state always float32). The SSD recurrence of :mod:`sessa.ops.ssd` is exactly this with

    q = C,  k = B  (group i // (h/g) of head i, repeated to every head: simple GLA's kernels need one
                    q/k head per v head),
    v = dt · x,  g = dt · A,  scale = 1,  K = d_state, V = headdim,

and our state (b, h, headdim, d_state) is fla's state in the V-first layout, so no transpose is needed.
The D skip is added outside. Left padding (dt = 0) gives g = 0 and v = 0: the state passes unchanged.

Decoding (one token with a state) stays on :func:`sessa.ops.ssd.ssd_step`, a few small PyTorch ops on the
float32 state: the same step for every backend, so a cache filled by one backend continues on another.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch

from sessa.ops.precision import work_dtype
from sessa.ops.ssd import check_ssd_args, ssd_chunked

INSTALL_HINT = 'pip install fla-core (or pip install -e ".[fast]")'

ChunkFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # fla's chunk_simple_gla signature


@functools.cache
def _import_chunk_simple_gla() -> tuple[ChunkFn | None, str]:
    """fla's ``chunk_simple_gla`` and "", or None and why it could not be imported (cached)."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError as e:
        return None, f"{type(e).__name__}: {e}"
    return chunk_simple_gla, ""


def require_chunk_simple_gla() -> ChunkFn:
    """fla's ``chunk_simple_gla``; ImportError saying how to install fla-core when it is missing."""
    chunk_fn, why = _import_chunk_simple_gla()
    if chunk_fn is None:
        raise ImportError(f"ssm backend 'fla' needs fla-core ({why}); install it: {INSTALL_HINT}")
    return chunk_fn


def fla_available() -> bool:
    """True when fla-core's simple-GLA kernels import here (imports fla on first call)."""
    return _import_chunk_simple_gla()[0] is not None


# fla-core 0.6 refuses its simple-GLA backward on Hopper (sm_90) with Triton >= 3.4 and < 3.7.1 ("produces
# incorrect results", its issue #640): seen on an H200 with Triton 3.6.0, 2026-12-01 (benchmarks/RESULTS.md).
# The forward runs; training fails at the first backward. Its other way out, a tilelang kernel, is taken only
# when the chunk states have q's dtype: simple GLA keeps them in float32, so only float32 inputs (no bf16 or
# fp16 autocast) can use it (fla/ops/common/backends/tilelang, fla-core 0.6.0).
BAD_TRITON_ON_HOPPER = ((3, 4, 0), (3, 7, 1))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in text.split(".")[:3])


def fla_blocker(
    device: torch.device,
    triton_version: str | None = None,
    tilelang: bool | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> str:
    """Why fla's kernels cannot train ``dtype`` inputs on ``device`` here ("" when they can): the Triton
    range fla-core refuses on Hopper, unless tilelang is installed and the inputs are float32."""
    import importlib.util

    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:
        return ""
    if triton_version is None:
        import triton

        triton_version = triton.__version__
    low, high = BAD_TRITON_ON_HOPPER
    if not low <= _version(triton_version) < high:
        return ""
    if dtype == torch.float32:
        if tilelang is None:
            tilelang = importlib.util.find_spec("tilelang") is not None
        if tilelang:
            return ""
        return (f"fla-core's simple-GLA backward refuses Triton {triton_version} on Hopper GPUs (it needs "
                "Triton >= 3.7.1, or for float32 inputs tilelang: pip install tilelang)")  # fmt: skip
    return (f"fla-core's simple-GLA backward refuses Triton {triton_version} on Hopper GPUs for {dtype} "
            "inputs (it needs Triton >= 3.7.1; its tilelang fallback takes float32 inputs only)")  # fmt: skip


def fla_usable(x: torch.Tensor) -> bool:
    """Whether "auto" runs x on fla: a CUDA tensor that is not float64, with fla-core importable and able
    to train on this GPU (:func:`fla_blocker`).

    CPU tensors never import fla. On CUDA without a usable fla-core, warns once and returns False.
    """
    if not x.is_cuda or x.dtype == torch.float64:
        return False
    if not fla_available():
        _warn_no_fla(f"fla-core is not importable ({_import_chunk_simple_gla()[1]})")
        return False
    blocker = fla_blocker(x.device, dtype=x.dtype)
    if blocker:
        _warn_no_fla(blocker)
        return False
    return True


@functools.cache
def _warn_no_fla(why: str) -> None:
    warnings.warn(
        f"Mamba-2 ssm_backend 'auto': {why}; using the PyTorch chunked scan (fast path: {INSTALL_HINT})",
        stacklevel=3,
    )


def simple_gla_inputs(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SSD inputs -> simple-GLA (q, k, v, g), to be run with scale = 1 and V-first states.

    x: (b, T, h, p); dt: (b, T, h); A: (h,); B, C: (b, T, g, n). Returns q, k: (b, T, h, n) and
    v = dt·x: (b, T, h, p) in x.dtype (the kernels' compute dtype), g = dt·A: (b, T, h) in float32
    (float64 for float64).
    """
    h, (b, T, g, n) = x.shape[2], B.shape
    work = work_dtype(x.dtype)

    def per_head(m: torch.Tensor) -> torch.Tensor:  # (b, T, g, n) -> (b, T, h, n), head i reads group i // r
        return m.to(x.dtype)[:, :, :, None].expand(b, T, g, h // g, n).reshape(b, T, h, n)

    dt_w = dt.to(work)
    v = (x.to(work) * dt_w[..., None]).to(x.dtype)
    return per_head(C), per_head(B), v, dt_w * A.to(work)


def ssd_via_simple_gla(
    chunk_fn: ChunkFn,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD scan through ``chunk_fn`` (a function with fla's ``chunk_simple_gla`` signature).

    Same arguments and results as :func:`sessa.ops.ssd.ssd_chunked` (no chunk_size): y (b, T, h, p) in
    x.dtype and the final state (b, h, p, n) in float32 (float64 for float64). Device and dtype checks are
    :func:`ssd_fla`'s; this glue is shared with the CPU tests, which pass a reference ``chunk_fn``.
    """
    check_ssd_args(x, dt, A, B, C)
    if x.shape[1] == 0:
        return ssd_chunked(x, dt, A, B, C, D=D, initial_state=initial_state)
    work = work_dtype(x.dtype)
    q, k, v, g = simple_gla_inputs(x, dt, A, B, C)
    s0 = None if initial_state is None else initial_state.to(work)
    o, final_state = chunk_fn(
        q, k, v, g=g, scale=1.0, initial_state=s0, output_final_state=True, state_v_first=True
    )
    y = o if D is None else o.to(work) + D.to(work)[:, None] * x.to(work)
    return y.to(x.dtype), final_state.to(work)


def ssd_fla(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD scan with fla-core's ``chunk_simple_gla`` (Triton, CUDA): training and (chunked) prefill.

    x: (b, T, h, p); dt: (b, T, h) >= 0; A: (h,) < 0; B, C: (b, T, g, n); D: (h,) or None;
    initial_state: (b, h, p, n) or None. Returns y: (b, T, h, p) in x.dtype and the final state
    (b, h, p, n) in float32. Differentiable in every input, the initial state included.
    Raises ImportError without fla-core, ValueError for CPU or float64 tensors.
    """
    tensors = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "initial_state": initial_state}
    off_cuda = [name for name, t in tensors.items() if t is not None and not t.is_cuda]
    if off_cuda:
        raise ValueError(
            f"ssm backend 'fla' runs Triton kernels on CUDA tensors only; {', '.join(off_cuda)} "
            f"{'is' if len(off_cuda) == 1 else 'are'} on {tensors[off_cuda[0]].device}. "
            "Use ssm_backend 'auto' or 'chunked' on CPU."
        )
    if x.dtype == torch.float64:
        raise ValueError("ssm backend 'fla' has no float64 kernels; use 'chunked' or 'auto' for float64")
    chunk_fn = require_chunk_simple_gla()
    blocker = fla_blocker(x.device, dtype=x.dtype)
    if blocker:
        raise ValueError(f"ssm backend 'fla': {blocker}; use 'auto' or 'chunked' meanwhile")
    return ssd_via_simple_gla(chunk_fn, x, dt, A, B, C, D, initial_state)
