"""The launches of a one-token cached step, bound once per layer cache (the host time of eager decoding).

An eager decoding step of a small model on a GPU is bound by host time: each layer of Sessa's one-token
step makes five Triton launches (the prologue, the forward attention's split-context pair, the feedback
row's pair; ``sessa.ops.triton_decode``), and through the generic wrappers every launch re-derives its
plan and grid, allocates its outputs and workspace, reads ~20 strides, keys its specialisation over every
argument and hands Triton tensors whose pointers Triton's launcher checks with the driver one by one.

:class:`StepLaunches` does all of that once per layer cache. Per step it substitutes the few arguments that
change (the new token's projection, the RoPE tables of its position, the readable lengths, the position,
the output of the forward branch) into a kept argument list whose pointers are plain ints, and calls the
compiled kernel's launcher directly. The prologue's and the forward attention's outputs live in buffers of
the binding (each step consumes them before the next overwrites them), and the feedback row's combine
writes s straight into the cache at the new position: the generic step copied it there. Measured on an H200
host (benchmarks/RESULTS.md, "Seventh run"): Sessa's mixer step 477 -> 150 us of host time, its layer step
634 -> 324 us, against 805 us for a decoder layer of the size-matched Hugging Face Llama.

The binding reads the whole cache under the keys' readable lengths (the plan depends on the cache's size,
not on the position), so its splits of the context differ from the generic path's and the sums come out in
another order: equal to rounding. The generic path (``sessa.ops.prologue.step_prologue``,
``sessa.ops.attention.causal_attention``, ``sessa.ops.feedback.feedback_continue``) is the reference the
tests compare with; it runs instead whenever the binding does not apply (:func:`step_launches`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from sessa.ops.attention import (
    _HAS_TRITON,
    TRITON_DECODE_DTYPES,
    TRITON_DECODE_MAX_WIDTH,
    decode_lengths,
    rope_tables,
)
from sessa.ops.cuda_stream import current_raw_stream

CACHE_KEY = "step_launches"  # where a layer's cache keeps its binding


class _Launch:
    """One kernel launch of a bound step: the kernel's argument list kept with every pointer as an int, the
    positions ``var`` filled per call (a tensor there passes its pointer). A call whose variable arguments
    have a specialisation not seen yet launches through the generic path once (compiling if needed) and
    keeps the compiled kernel it used."""

    def __init__(self, kernel: Any, grid: tuple, args: tuple, consts: dict, device: torch.device,
                 var: tuple[int, ...]) -> None:
        from sessa.ops.feedback.triton_launch import _no_launch_hooks, int_key
        from sessa.ops.triton_decode import _bound

        self.bound, self.no_hooks, self.int_key = _bound(kernel, consts, device), _no_launch_hooks, int_key
        self.grid, self.grid3 = grid, (*grid, 1, 1)[:3]
        self.args = list(args)  # tensors, for the generic launch
        self.ints = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
        self.var = var
        self.hits: dict[tuple, tuple] = {}

    def __call__(self, *values: Any) -> None:
        ints, parts, int_key = self.ints, [], self.int_key
        for i, v in zip(self.var, values, strict=True):
            if isinstance(v, torch.Tensor):
                p = v.data_ptr()
                ints[i] = p
                parts.append((v.dtype, p % 16 == 0))
            else:
                ints[i] = v
                parts.append(int_key(v) if type(v) is int else None)
        key = tuple(parts)
        hit = self.hits.get(key)
        if hit is None or not self.no_hooks():  # a launch hook (a profiler) sees the generic launches
            self._generic(values, key)
            return
        run, function, metadata, tail = hit
        g, stream = self.grid3, self.bound.streams.handle[0]
        run(g[0], g[1], g[2], stream, function, metadata, None, None, None, *ints, *tail)

    def _generic(self, values: tuple, parts: tuple) -> None:
        from sessa.ops.feedback.triton_launch import _arg_key

        args = self.args
        for i, v in zip(self.var, values, strict=True):
            args[i] = v
        self.bound(self.grid, *args)
        if self.bound.fast:
            key = _arg_key(tuple(args))
            hit = self.bound._cache.get(key) if key is not None else None
            if hit is not None:
                self.hits[parts] = hit
        for i in self.var:  # hold no per-step tensor between steps
            args[i] = None


class StepLaunches:
    """The launches of one layer's one-token step over its cache (module docstring).

    k_cache, v_cache: (B, L, Hkv, hd) forward keys (after RoPE) and values; mask: the cache's (B, L) bool key
    mask or None; n_heads query heads; width W of the stacked projection [q | k | v (| q_b | k_b | logit)]
    (``sessa.modules.stacking``); rope: whether the forward branch rotates q and k. Sessa's feedback adds
    kb_cache, s_cache (B, L, D) and gain = (gamma_bias, gamma_max)."""

    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor | None, n_heads: int,
                 width: int, rope: bool, kb_cache: torch.Tensor | None = None,
                 s_cache: torch.Tensor | None = None, gain: tuple[torch.Tensor, float] | None = None) -> None:
        from sessa.ops.triton_decode import launches, prologue_launch

        B, L, Hkv, hd = k_cache.shape
        device, dtype = k_cache.device, k_cache.dtype
        D = n_heads * hd
        self.D, self.feedback = D, kb_cache is not None
        self.q = torch.empty(B, 1, n_heads, hd, device=device, dtype=dtype)
        self.out = torch.empty(B, 1, n_heads, hd, device=device, dtype=dtype)
        self.gamma = torch.empty(B, 1, 1, device=device, dtype=dtype) if self.feedback else self.q
        # stand-ins for the tensors that change every step: their shapes, strides and dtype are the steps'
        proj = torch.empty(B, 1, width, device=device, dtype=dtype)
        self.proj_stride = proj.stride()
        tables = (torch.empty(hd, device=device, dtype=dtype),) * 2 if rope else None
        length = torch.empty(B, device=device, dtype=torch.int32)
        pro = prologue_launch(proj, k_cache, v_cache, 0, n_heads, tables, kb_cache, gain, self.q, self.gamma)
        # variable: proj, the RoPE tables (when rotating), the position t
        self._prologue = _Launch(*pro, device, (0, 1, 2, 10) if rope else (0, 10))
        attn = launches(self.q[:, 0], k_cache, v_cache, mask, length, self.out[:, 0])
        self.attention_launches = [_Launch(*attn[0], device, (4,)), _Launch(*attn[1], device, ())]  # lengths
        if self.feedback:
            self.q_b_offset = D + 2 * Hkv * hd  # [q | k | v | q_b | ...]
            q_b = proj.narrow(2, self.q_b_offset, D)
            f = torch.empty(B, D, device=device, dtype=dtype)
            out = s_cache.narrow(1, 0, 1)
            gamma = self.gamma[:, 0, 0]
            fb = launches(q_b, kb_cache[:, :, None], s_cache[:, :, None], mask, length, out, f, gamma)
            # variable: q_b and the lengths; f and the output (the s cache at t)
            self.feedback_launches = [_Launch(*fb[0], device, (0, 4)), _Launch(*fb[1], device, (3, 5))]
            self.s_cache = s_cache

    def prologue(
        self, proj: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, t: int
    ) -> torch.Tensor:
        """From the stacked projection proj (B, 1, W) of the new token at position t: q (B, 1, H, hd; a buffer
        of the binding) after RoPE with ``rope``'s tables, the caches' writes at t and Sessa's gain."""
        if rope is None:
            self._prologue(proj, t)
        else:
            self._prologue(proj, rope[0], rope[1], t)
        return self.q

    def attention(self, length: torch.Tensor) -> torch.Tensor:
        """The forward attention of the prologue's q over the first ``length`` (B,) int32 positions; returns
        (B, 1, H, hd), a buffer of the binding."""
        self.attention_launches[0](length)
        self.attention_launches[1]()
        return self.out

    def feedback_row(self, proj: torch.Tensor, f: torch.Tensor, length: torch.Tensor, t: int) -> torch.Tensor:
        """s of the new token at position t: f (B, 1, D) + gamma * the feedback row over the first ``length``
        cached outputs, written into the s cache at t; returns that (B, 1, D) view of the cache."""
        out = self.s_cache.narrow(1, t, 1)
        self.feedback_launches[0](proj.narrow(2, self.q_b_offset, self.D), length)
        self.feedback_launches[1](f, out)
        return out


def _cache_key(k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor | None,
               kb_cache: torch.Tensor | None, s_cache: torch.Tensor | None, width: int,
               gain: tuple[torch.Tensor, float] | None) -> tuple:
    """What a binding depends on: the memory, shapes and dtype of the caches (and of the gain's bias), the
    gain's maximum, the stream, the device and inference mode."""
    cuda = k_cache.is_cuda
    return (
        k_cache.data_ptr(), v_cache.data_ptr(), 0 if mask is None else mask.data_ptr(),
        0 if kb_cache is None else kb_cache.data_ptr(), 0 if s_cache is None else s_cache.data_ptr(),
        None if gain is None else (gain[0].data_ptr(), gain[0].dtype, float(gain[1])),
        k_cache.shape, k_cache.dtype, width, current_raw_stream(k_cache.device) if cuda else 0,
        torch.cuda.current_device() if cuda else -1, torch.is_inference_mode_enabled(),
    )


def bindable(x: torch.Tensor) -> bool:
    """Whether a step on the new tokens x may look for a binding at all: CUDA tensors, outside code that
    torch.compile traces (the interpreter tests set this to accept CPU tensors too)."""
    return x.is_cuda and not torch.compiler.is_compiling()


def usable(k_cache: torch.Tensor, v_cache: torch.Tensor, kb_cache: torch.Tensor | None,
           s_cache: torch.Tensor | None, n_heads: int) -> bool:
    """Whether a cache can be bound: CUDA with Triton, on the current device, one dtype among the decode
    kernels', widths the kernels hold (<= TRITON_DECODE_MAX_WIDTH), contiguous caches, the decode kernels
    switched on (``SESSA_TRITON_DECODE``), fast launches available (not the interpreter,
    ``SESSA_TRITON_FAST_LAUNCH``), and not while torch.compile traces."""
    if not (k_cache.is_cuda and _HAS_TRITON) or torch.compiler.is_compiling():
        return False
    from sessa.ops.feedback.triton_launch import _fast_enabled

    if os.environ.get("SESSA_TRITON_DECODE", "1") == "0" or not _fast_enabled(k_cache.device):
        return False
    if k_cache.device.index != torch.cuda.current_device() or k_cache.dtype not in TRITON_DECODE_DTYPES:
        return False
    caches = [c for c in (k_cache, v_cache, kb_cache, s_cache) if c is not None]
    if any(c.dtype != k_cache.dtype or not c.is_contiguous() for c in caches):
        return False
    return n_heads * k_cache.shape[3] <= TRITON_DECODE_MAX_WIDTH


def step_launches(cache: dict, k_name: str, v_name: str, mask: torch.Tensor | None, n_heads: int, width: int,
                  rope: bool, gain: tuple[torch.Tensor, float] | None = None) -> StepLaunches | None:
    """The binding of a layer's cache (kept in it under ``CACHE_KEY``, made again when anything
    :func:`_cache_key` lists changes), or None where it does not apply (:func:`usable`). k_name, v_name:
    the cache's keys of the forward keys and values; mask: the cache's whole (B, L) key mask or None; with
    ``gain`` (Sessa's feedback: (gamma_bias, gamma_max)) the cache's "k_b" and "s" too."""
    k_cache, v_cache = cache[k_name], cache[v_name]
    kb_cache, s_cache = (cache["k_b"], cache["s"]) if gain is not None else (None, None)
    key = _cache_key(k_cache, v_cache, mask, kb_cache, s_cache, width, gain)
    kept = cache.get(CACHE_KEY)
    if kept is not None and kept[0] == key:
        return kept[1]
    bound = None
    if usable(k_cache, v_cache, kb_cache, s_cache, n_heads):
        bound = StepLaunches(k_cache, v_cache, mask, n_heads, width, rope, kb_cache, s_cache, gain)
    cache[CACHE_KEY] = (key, bound)
    return bound


def run_step(bound: StepLaunches, proj: torch.Tensor, t: int, rope_base: float | None,
             out_proj: torch.nn.Module) -> torch.Tensor | None:
    """A one-token step through ``bound``: proj (B, 1, W) the stacked projection of the new token at position
    t (no gradient); returns the forward branch's out_proj(attention) (B, 1, D), or with feedback s (B, 1, D),
    a view of the s cache at t. None (nothing launched) when proj's layout is not the binding's."""
    if proj.stride() != bound.proj_stride or proj.dtype != bound.q.dtype:
        return None
    B, device = proj.shape[0], proj.device
    hd = bound.q.shape[3]
    rope = rope_tables(t, 1, hd, rope_base, proj.dtype, device) if rope_base is not None else None
    bound.prologue(proj, rope, t)
    f = out_proj(bound.attention(decode_lengths(t + 1, B, device)).view(B, 1, bound.D))
    if not bound.feedback:
        return f
    return bound.feedback_row(proj, f, decode_lengths(t, B, device), t)
