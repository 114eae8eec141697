"""Input projections stacked into one GEMM for a cached step that needs no gradient.

A decoding step is bound by host time per op (hundreds of small launches per token on a GPU), so the mixers'
``step`` computes the projections that read the same input (attention's q, k, v; Sessa's also proj_fb and
gamma_ctx) as one ``F.linear`` with their weights stacked. The stack lives in the layer's cache, so it exists
while a generation runs (a copy of those weights) and goes with the cache; it is made again when a
parameter's storage or in-place version changes. The separate modules run instead whenever a gradient may
be needed, or when a projection is not a plain ``nn.Linear`` (an adapter) or has hooks: they must see their
calls. :func:`bound_step` is the one-token step of the attention mixers on top of the stack: the launches
bound to the layer's cache (``sessa.ops.step_launches``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sessa.modules.contract import MixerState
from sessa.ops import step_launches

CACHE_KEY = "stacked_projection"


class StackedProjection(NamedTuple):
    """The stacked (weight, bias) (a zero bias for a module without one), the modules' output widths in order
    (``sizes``), and the parameters' (storage, version) it was made from (``key``)."""

    weight: torch.Tensor
    bias: torch.Tensor
    sizes: tuple[int, ...]
    key: tuple


def stacked_projection(
    modules: Sequence[nn.Module], cache: MixerState
) -> StackedProjection | None:
    """The stack of ``modules`` (kept in ``cache``), or None when the separate calls must run (module
    docstring)."""
    if any(type(m) is not nn.Linear or m._forward_hooks or m._forward_pre_hooks for m in modules) or (
        nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
    ):
        return None
    # a plain Linear's parameters, by attribute (cheaper than Module.parameters() per decoding step)
    params = [p for m in modules for p in (m.weight, m.bias) if p is not None]
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return None
    # inference tensors (a model moved to its device under inference_mode) keep no version counter; the stack
    # lives in one generation's cache, so only their memory is keyed
    key = tuple((p.data_ptr(), -1 if p.is_inference() else p._version) for p in params)
    stacked = cache.get(CACHE_KEY)
    if stacked is None or stacked.key != key:
        weight = torch.cat([m.weight for m in modules])
        biases = [m.weight.new_zeros(m.out_features) if m.bias is None else m.bias for m in modules]
        bias = torch.cat(biases)
        widths = tuple(m.out_features for m in modules)
        stacked = cache[CACHE_KEY] = StackedProjection(weight, bias, widths, key)
    return stacked


def bound_step(
    x: torch.Tensor,
    state: MixerState,
    t: int,
    modules: Sequence[nn.Module],
    *,
    keys: tuple[str, str, str],
    n_heads: int,
    rope_base: float | None,
    out_proj: nn.Module,
    gain: tuple[torch.Tensor, float] | None = None,
) -> torch.Tensor | None:
    """One new token per row x: (B, 1, D) at position t through the launches bound to the state's caches
    (:func:`sessa.ops.step_launches.step_launches`, with the stack of ``modules`` as the projection): the
    forward branch's out_proj(attention), or with ``gain`` (Sessa's feedback) s. ``keys``: the state's names
    of the forward key and value caches and of its key mask (absent until a mask is given). None, with
    nothing computed, where the binding does not apply (not CUDA, a gradient wanted, another dtype than the
    caches', no stack): then the mixer's generic step runs."""
    if not step_launches.bindable(x) or (x.requires_grad and torch.is_grad_enabled()):
        return None
    if x.dtype != state[keys[0]].dtype:  # the caches' dtype
        return None
    stacked = stacked_projection(modules, state)
    if stacked is None:
        return None
    k_name, v_name, mask_name = keys
    mask, width, rope = state.get(mask_name), stacked.weight.shape[0], rope_base is not None
    bound = step_launches.step_launches(state, k_name, v_name, mask, n_heads, width, rope, gain)
    if bound is None:
        return None
    return step_launches.run_step(bound, F.linear(x, stacked.weight, stacked.bias), t, rope_base, out_proj)
