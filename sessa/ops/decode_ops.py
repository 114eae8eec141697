"""The Triton decode kernels as PyTorch custom ops (``torch.ops.sessa.*``), so that ``torch.compile`` treats
them as opaque calls with a known output shape instead of tracing Triton's launcher.

Eager code calls :func:`sessa.ops.triton_decode.decode_attention_triton` and
:func:`~sessa.ops.triton_decode.feedback_decode_triton` directly (a custom op's dispatch costs host time per
call); :func:`sessa.ops.attention.decode_attention` and :func:`sessa.ops.feedback.decode.feedback_decode`
switch to these ops while ``torch.compiler.is_compiling()``. Importing this module registers them
(``sessa.ops.attention`` imports it).
"""

from __future__ import annotations

import torch


@torch.library.custom_op("sessa::decode_attention", mutates_args=())
def decode_attention_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    length: torch.Tensor,
    key_mask: torch.Tensor | None,
) -> torch.Tensor:
    from sessa.ops.triton_decode import decode_attention_triton

    return decode_attention_triton(q, k_cache, v_cache, length, key_mask)


@decode_attention_op.register_fake
def _(q, k_cache, v_cache, length, key_mask):  # noqa: ANN001, ANN202
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("sessa::feedback_decode", mutates_args=())
def feedback_decode_op(
    q_new: torch.Tensor,
    k_cache: torch.Tensor,
    gamma_new: torch.Tensor,
    f_new: torch.Tensor,
    s_cache: torch.Tensor,
    length: torch.Tensor,
    key_mask: torch.Tensor | None,
) -> torch.Tensor:
    from sessa.ops.triton_decode import feedback_decode_triton

    return feedback_decode_triton(q_new, k_cache, gamma_new, f_new, s_cache, length, key_mask)


@feedback_decode_op.register_fake
def _(q_new, k_cache, gamma_new, f_new, s_cache, length, key_mask):  # noqa: ANN001, ANN202
    return torch.empty_like(f_new, memory_format=torch.contiguous_format)
