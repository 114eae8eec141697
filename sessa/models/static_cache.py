"""``StaticSessaCache``: fixed-size states and a graph-captured one-token decode step.

Every layer's state is allocated once for ``batch_size`` rows and ``max_len`` tokens and never changes shape;
the number of tokens so far also lives on the device (``pos``), next to one (B, max_len) padding mask shared
by all layers. A prompt (several tokens) runs through the blocks' ordinary ``step`` on these buffers. One
new token runs through every block's ``step_static`` (positions read from ``pos``, cache writes by index,
attention over the whole buffer under the mask), then the final norm, then ``pos += 1``: nothing depends
on the position, so on CUDA the whole step is captured once as a CUDA graph (the first token runs eagerly to
compile and warm up, the second is captured) and replayed for every further token. The host only copies the
new token's embedding and mask column in and the hidden state out.

``generate(..., cache_implementation="static")`` creates one and keeps it on the model for the next call
of the same batch size (reset, so its graph is captured once; see ``SessaForCausalLM``); or pass
``cache=model.model.new_static_cache(batch_size, max_len)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sessa.models.cache import SessaCache
from sessa.validation import check_int


class StaticSessaCache(SessaCache):
    """States of ``layers`` for exactly ``batch_size`` rows and up to ``max_len`` tokens (no growth).

    ``graphs``: capture the one-token step as a CUDA graph (CUDA only, not under autocast); with False, or
    on CPU, the same fixed-shape step runs eagerly. ``compile``: compile the one-token step with
    ``torch.compile`` first (inductor fuses its elementwise work; the Triton decode kernels stay opaque
    custom ops), then capture that; the first token pays the compilation.
    """

    is_compileable = False  # the step is graph-captured here, not by torch.compile

    def __init__(
        self,
        layers: Sequence[nn.Module],
        max_len: int,
        batch_size: int,
        device: torch.device | str,
        dtype: torch.dtype,
        graphs: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__(layers, max_len)
        check_int("batch_size", batch_size)
        for layer in self.layers:
            mixer = getattr(layer, "mixer", layer)
            if not hasattr(mixer, "step_static"):
                raise TypeError(
                    f"{type(mixer).__name__} has no step_static(x, state, pos, mask), which a static "
                    "cache needs (sessa.modules.contract); use the ordinary cache"
                )
        self.batch_size, self.device = batch_size, torch.device(device)
        self.states = [
            layer.init_state(batch_size, max_len, device=device, dtype=dtype) for layer in self.layers
        ]
        self.buffers = [{k: v for k, v in s.items() if isinstance(v, torch.Tensor)} for s in self.states]
        self._initial = [{k: v for k, v in s.items() if not isinstance(v, torch.Tensor)} for s in self.states]
        self.dtype = dtype
        self.parameter_memory: tuple | None = None  # set by generate: the parameters its graph reads
        self.mask = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.graphs = bool(graphs) and self.device.type == "cuda"
        self.compiled = bool(compile)
        self._graph: Any = None
        self._warm = False
        self._io: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        """Empty the cache for a new generation, keeping its buffers (and so a captured step graph, which
        reads them): every buffer zeroed, the mask all True, the position 0. ``generate`` reuses a model's
        static cache this way, as transformers does with its own static caches."""
        for state, buffers, initial in zip(self.states, self.buffers, self._initial, strict=True):
            state.clear()
            state.update(initial)
            for key, buffer in buffers.items():
                state[key] = buffer.zero_()
        self.mask.fill_(True)
        self.pos.zero_()

    def fits(
        self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype, compile: bool
    ) -> bool:
        """Whether this cache can serve a generation of ``batch_size`` rows and up to ``max_len`` tokens
        (after :meth:`reset`): same rows, device, dtype and step form, at least that many positions."""
        return (
            self.batch_size == batch_size
            and self.max_len >= max_len
            and self.device == torch.device(device)
            and self.dtype == dtype
            and self.compiled == bool(compile)
        )

    # -- prompts: the blocks' ordinary step on the fixed buffers --------------------------------------
    def step(
        self, layer_idx: int, x: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        t, n = self.get_seq_length(layer_idx), x.shape[1]
        self._check(x, t + n)
        if layer_idx == 0:
            if attention_mask is not None:
                self.mask[:, : t + n] = attention_mask.to(self.device) != 0
            else:
                self.mask[:, t : t + n] = True
        out = self.layers[layer_idx].step(x, self.states[layer_idx], attention_mask=attention_mask)
        self._pin(layer_idx)
        if layer_idx == len(self.layers) - 1:
            self.pos.fill_(t + n)
        return out

    def _pin(self, layer_idx: int) -> None:
        """Put tensors a step replaced (recurrent states) back into the original buffers."""
        state = self.states[layer_idx]
        for key, buffer in self.buffers[layer_idx].items():
            if state[key] is not buffer:
                buffer.copy_(state[key])
                state[key] = buffer

    def _check(self, x: torch.Tensor, needed: int) -> None:
        if x.shape[0] != self.batch_size:
            raise ValueError(f"the static cache holds {self.batch_size} rows, got a batch of {x.shape[0]}")
        if needed > self.max_len:
            raise ValueError(
                f"static cache is full: {needed} tokens > max_len {self.max_len} "
                "(create it with a larger max_len)"
            )

    # -- one token: the fixed-shape step, graph-captured on CUDA -------------------------------------
    def decode(self, model: nn.Module, h: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """One new token's embedding h: (B, 1, D) through every block and ``model.norm``; returns (B, 1, D).

        attention_mask: (B, t + 1) over every token so far, or None (the new token is real)."""
        t = self.get_seq_length()
        self._check(h, t + 1)
        col = (
            torch.ones(self.batch_size, 1, dtype=torch.bool, device=self.device)
            if attention_mask is None
            else (attention_mask[:, -1:] != 0).to(self.device)
        )
        step = _compiled_step() if self.compiled else _step
        if not self.graphs or torch.is_autocast_enabled():
            out = step(self, model, h, col)
        elif not self._warm:  # the first token: eagerly on a side stream (kernel compilation, library setup)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = step(self, model, h, col)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._warm = True
        else:
            if self._graph is None:
                self._io = {"h": h.clone(), "col": col.clone()}
                self._graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self._graph):
                    self._io["out"] = step(self, model, self._io["h"], self._io["col"])
            self._io["h"].copy_(h)
            self._io["col"].copy_(col)
            self._graph.replay()
            out = self._io["out"].clone()
        for state in self.states:
            state["t"] += 1
        return out

    # -- batch operations keep the buffers (a captured graph reads them) -------------------------------
    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        index = beam_idx.to(self.device)
        for buffers in self.buffers:
            for buffer in buffers.values():
                buffer.copy_(buffer.index_select(0, index))
        self.mask.copy_(self.mask.index_select(0, index))

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise ValueError(
            "a static cache has a fixed batch size; create it for the expanded batch (beams x sequences)"
        )

    def __repr__(self) -> str:
        return (
            f"StaticSessaCache(layers={len(self.layers)}, batch_size={self.batch_size}, "
            f"max_len={self.max_len}, seen={self.get_seq_length()}, graphs={self.graphs}, "
            f"compiled={self.compiled})"
        )


def _step(cache: StaticSessaCache, model: nn.Module, h: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """The fixed-shape one-token step: the new mask column, every block's ``step_static``, ``pos += 1``,
    the final norm. A module-level function (not a method kept on the cache: that would be a reference
    cycle holding a finished cache's buffers until the garbage collector runs)."""
    cache.mask.index_copy_(1, cache.pos.reshape(1), col)
    for layer, state in zip(model.layers, cache.states, strict=True):
        h = layer.step_static(h, state, cache.pos, cache.mask)
    cache.pos.add_(1)
    return model.norm(h)


@functools.cache
def _compiled_step() -> Any:
    """:func:`_step` through ``torch.compile`` (made once; it compiles once per batch size, cache size and
    dtype, and every cache of the same shapes reuses that)."""
    return torch.compile(_step, dynamic=False)
