"""Kernel launches with less host time than ``kernel[grid](...)``, and the streams of one solve.

The solve makes ~100 launches per forward + backward at T = 16K (L = 1024). Through Triton's JIT entry
each took ~27 us of host time on an H100 host (it re-derives the specialisation of ~30 arguments and a cache
key every time); with our own Python around them the host needed ~10 ms per forward + backward against
~8.3 ms of GPU work, so the GPU waited for launches.

:class:`BoundKernel` keeps the compiled kernels it has launched, keyed by the device, the constexprs and
launch options, and the specialisation Triton derives from each argument (tensor: dtype and 16-byte
alignment; int: == 1, divisible by 16, 32- or 64-bit; float: none). A launch whose key it knows goes
straight to the compiled kernel's C launcher (~7 us); an unknown key goes through the JIT entry once (which
compiles if needed) and is remembered. The JIT entry is always used under ``TRITON_INTERPRET=1``, while a
Triton launch hook is set (profilers), for argument types other than tensor / int / float, and when
``SESSA_TRITON_FAST_LAUNCH=0``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from sessa.ops.cuda_stream import current_raw_stream

try:  # Triton >= 3.4 keeps its launch hooks here; older versions take the JIT entry only
    from triton import knobs as _knobs
except ImportError:  # pragma: no cover - depends on the installed Triton
    _knobs = None

_COMPILED: dict[tuple, dict[tuple, tuple]] = {}  # (kernel, consts, device) -> {arg key: launch data}
LAUNCHES = {"direct": 0, "jit": 0}  # counts of launches by path (for diagnostics)


def _fast_enabled(device: torch.device) -> bool:
    return (
        device.type == "cuda"
        and _knobs is not None
        and os.environ.get("TRITON_INTERPRET", "0") != "1"
        and os.environ.get("SESSA_TRITON_FAST_LAUNCH", "1") != "0"
    )


def _no_launch_hooks() -> bool:
    """No launch hook is set (Triton >= 3.5 keeps an always-present, possibly empty, chain of hooks)."""
    hook = _knobs.runtime.launch_enter_hook
    return hook is None or getattr(hook, "calls", None) == []


def _unknown(arg: Any):
    raise TypeError(type(arg).__name__)


def int_key(v: int) -> Any:
    """The specialisation part of an int argument: its divisibility by 16 when it is a 32-bit value other
    than 1 (the common case), else (== 1, unsigned 64-bit, divisibility). :func:`_arg_key` spells the same
    rule inline (a call per argument costs host time on every launch); a test holds the two equal."""
    if v != 1 and -2147483648 <= v <= 2147483647:
        return v % 16 == 0
    return (v == 1, v >= 2**63, v % 16 == 0)


def _arg_key(args: tuple) -> tuple | None:
    """The specialisation-relevant part of the arguments (None: an argument type this module does not
    model, so the JIT entry decides): an int by :func:`int_key`, a tensor by (dtype, 16-byte aligned)."""
    try:
        return tuple([
            (a % 16 == 0 if a != 1 and -2147483648 <= a <= 2147483647 else (a == 1, a >= 2**63, a % 16 == 0))
            if type(a) is int
            else None if type(a) is float
            else (a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor)
            else _unknown(a)
            for a in args
        ])
    except TypeError:
        return None


# Priority of the solve's own main stream (``Streams(lead=True)``): one step above the default streams'
# (CUDA: lower numbers run first when both have blocks waiting for an SM).
LEAD_PRIORITY = -1


class Streams:
    """The streams of one solve and their raw handles for the fast path; on CPU (interpreter) all None.

    ``main``: where the launches go; the caller's current stream, or (``lead=True``, CUDA) a stream of
    higher priority than the default ones that the solve enters from the caller's stream and leaves back to
    (:meth:`enter`, :meth:`leave`). ``side`` (``side=True``): a default-priority stream for launches off the
    sequential path (the backward's dq and dk, the forward's side build). With a lead stream the sequential
    path's blocks are scheduled before the side stream's whenever both wait for an SM, so the side work fills
    the SMs the sequential launches leave idle instead of delaying them (RESULTS, "A lead stream").
    ``SESSA_TRITON_LEAD_STREAM=0`` keeps the launches on the caller's stream (e.g. to leave a higher priority
    to nothing but the caller's own streams). A solve takes the one kept for its device's current stream
    (:meth:`shared`)."""

    _shared: dict[tuple, Streams] = {}

    @classmethod
    def shared(cls, device: torch.device, side: bool = False, lead: bool = False) -> Streams:
        """The Streams of ``device``'s current stream, made once and kept: a side stream and its events
        cost host time to create, once per solve before. Every event a solve waits on it records first in
        the same solve (also inside a CUDA-graph capture); one thread per device, as the autograd engine
        runs backward passes."""
        lead = lead and os.environ.get("SESSA_TRITON_LEAD_STREAM", "1") != "0"
        key = (device, current_raw_stream(device) if device.type == "cuda" else 0, side, lead)
        streams = cls._shared.get(key)
        if streams is None:
            if len(cls._shared) >= 64:  # CUDA-graph captures may each bring their own stream
                cls._shared.clear()
            streams = cls._shared[key] = cls(device, side, lead)
        return streams

    def __init__(self, device: torch.device, side: bool = False, lead: bool = False):
        self.cuda = device.type == "cuda"
        self.caller = torch.cuda.current_stream(device) if self.cuda else None
        self.main = torch.cuda.Stream(device, priority=LEAD_PRIORITY) if self.cuda and lead else self.caller
        self.side = torch.cuda.Stream(device) if self.cuda and side else None
        self.device_index = self.main.device_index if self.cuda else -1
        # raw handles, indexed by `side`
        self.handle = [s.cuda_stream if s is not None else 0 for s in (self.main, self.side)]
        # recycled events: a wait takes an event's state when it is queued, so re-recording later is safe
        self._fork_event = torch.cuda.Event() if self.side is not None else None
        self._ring = [torch.cuda.Event() for _ in range(4)] if self.side is not None else []
        self._n_recorded = 0
        self._lead_events = [torch.cuda.Event(), torch.cuda.Event()] if self.main is not self.caller else []

    def enter(self) -> None:
        """The lead stream waits for everything queued on the caller's stream so far (no-op without one).
        Buffers the solve allocates come from the caller's stream; allocate them, and queue every op on the
        caller's stream they need, before entering."""
        if self._lead_events:
            self._lead_events[0].record(self.caller)
            self.main.wait_event(self._lead_events[0])

    def leave(self) -> None:
        """The caller's stream waits for everything queued on the lead stream (no-op without one). Call it
        before any buffer the solve's launches use is freed: the caller's stream may reuse it at once."""
        if self._lead_events:
            self._lead_events[1].record(self.main)
            self.caller.wait_event(self._lead_events[1])

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """:meth:`enter` now and :meth:`leave` when the block ends, also on an error: a solve launches inside
        the block and frees its buffers after it."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def on(self, side: bool):
        """A context making the side stream (``side``) or the main stream current for PyTorch ops; a no-op
        context on CPU."""
        stream = self.side if side else self.main
        return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    def fork(self) -> None:
        """The side stream waits for everything queued on the main stream so far."""
        if self.side is not None:
            self._fork_event.record(self.main)
            self.side.wait_event(self._fork_event)

    def side_event(self) -> torch.cuda.Event | None:
        """An event marking the work queued on the side stream so far; it stays valid until three more
        calls (the events are recycled from a ring of four)."""
        if self.side is None:
            return None
        ev = self._ring[self._n_recorded % len(self._ring)]
        self._n_recorded += 1
        ev.record(self.side)
        return ev

    def join(self, ev: torch.cuda.Event | None = None) -> None:
        """The main stream waits for ``ev`` (or for all the side stream's work)."""
        if self.side is not None:
            self.main.wait_event(ev if ev is not None else self.side_event())


class BoundKernel:
    """A ``@triton.jit`` kernel with its constexprs and launch options fixed (``num_warps``,
    ``num_stages``): ``bound(grid, *args, side=False)`` launches it on the main stream of ``streams``
    (or its side stream). ``args``: the kernel's non-constexpr parameters, in order. :meth:`get` returns
    the one kept for the same kernel, streams and constants."""

    _kept: dict[tuple, BoundKernel] = {}

    @classmethod
    def get(cls, kernel: Any, streams: Streams, **consts: Any) -> BoundKernel:
        """``BoundKernel(kernel, streams, **consts)``, made once per (kernel, streams, consts) and kept (a
        solve binds ~10 kernels; making them anew took ~0.5 ms of host time per forward + backward)."""
        # ids: hashing a JITFunction is slow; the switch: read when a kernel is bound (fast or JIT entry)
        key = (id(kernel), id(streams), os.environ.get("SESSA_TRITON_FAST_LAUNCH"), *consts.items())
        bound = cls._kept.get(key)
        if bound is None or bound.streams is not streams or bound.kernel is not kernel:
            if len(cls._kept) >= 1024:
                cls._kept.clear()
            bound = cls._kept[key] = cls(kernel, streams, **consts)
        return bound

    def __init__(self, kernel: Any, streams: Streams, **consts: Any):
        self.kernel, self.streams = kernel, streams
        self.consts = consts
        self.fast = streams.cuda and _fast_enabled(streams.main.device)
        if self.fast:
            ck = (kernel, tuple(sorted(consts.items())), streams.device_index)
            self._cache = _COMPILED.setdefault(ck, {})
            names = kernel.arg_names
            self._tail_names = [n for n in names if n in consts]  # constexprs, in signature order
            self._n_args = len(names) - len(self._tail_names)

    def __call__(self, grid: tuple[int, ...], *args: Any, side: bool = False) -> None:
        key = _arg_key(args) if self.fast and _no_launch_hooks() else None
        hit = self._cache.get(key) if key is not None else None
        if hit is None:
            LAUNCHES["jit"] += 1
            stream = self.streams.side if side else self.streams.main
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                compiled = self.kernel[grid](*args, **self.consts)
            if key is not None and len(args) == self._n_args and hasattr(compiled, "packed_metadata"):
                run = compiled.run  # loads the binary on first use
                tail = tuple(self.consts[n] for n in self._tail_names)
                self._cache[key] = (run, compiled.function, compiled.packed_metadata, tail)
            return
        LAUNCHES["direct"] += 1
        run, function, metadata, tail = hit
        g = (*grid, 1, 1)
        run(g[0], g[1], g[2], self.streams.handle[side], function, metadata, None, None, None, *args, *tail)


def on_device(x: torch.Tensor):
    """A context making x's CUDA device the current one (Triton launches on the current device); a no-op
    context on CPU."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
