"""Forward-branch attention and rotary position embeddings (DESIGN §2.1).

Shapes: B batch, T new queries, S keys (S >= T; query i sits at absolute position S - T + i), H query heads,
Hkv key/value heads (GQA: head h reads kv head h // (H / Hkv)), hd head width.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import sessa.ops.decode_ops  # noqa: F401  (registers torch.ops.sessa.*, called while compiling)
from sessa.ops.cuda_stream import current_raw_stream
from sessa.ops.packing import check_seq_idx, same_sequence, stream_offsets
from sessa.ops.precision import work_dtype

BACKENDS = ("sdpa", "reference")  # the valid ``backend`` values of causal_attention (and of the mixers)
TRITON_DECODE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TRITON_DECODE_MAX_WIDTH = 2048  # a decode program keeps one value row of this width in registers
_HAS_TRITON = importlib.util.find_spec("triton") is not None  # looked up once: decoding asks per layer


def triton_decode_usable(*tensors: torch.Tensor) -> bool:
    """Whether the split-context Triton decode kernels (:mod:`sessa.ops.triton_decode`) take a one-query
    step on these tensors (the first one is the cache): CUDA, float32 / bfloat16 / float16, a row width of
    at most 2048, unit stride along that width (the kernels index rows as contiguous), no gradient wanted
    (the kernels are forward only), and ``SESSA_TRITON_DECODE`` not "0"."""
    x = tensors[0]
    if not (x.is_cuda and _HAS_TRITON) or x.dtype not in TRITON_DECODE_DTYPES:
        return False
    if x.shape[-1] > TRITON_DECODE_MAX_WIDTH or os.environ.get("SESSA_TRITON_DECODE", "1") == "0":
        return False
    if any(t.stride(-1) != 1 for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def decode_lengths(length: int | torch.Tensor, B: int, device: torch.device) -> torch.Tensor:
    """The readable length of each row as the decode kernels take it: an int becomes a (B,) int32 tensor on
    ``device``; a tensor (0-d or (B,), e.g. a graph-captured step's position) is used as it is."""
    if isinstance(length, torch.Tensor):
        return length

    def make() -> torch.Tensor:
        return torch.full((B,), int(length), dtype=torch.int32, device=device)

    if device.type != "cuda" or torch.compiler.is_compiling():
        return make()
    # every layer of a decoding step asks for the same one or two lengths: the last few are kept (host time),
    # per stream (a kept tensor is only ever read, on the stream it was made on) and inference mode
    stream = current_raw_stream(device)
    return _kept(_LENGTHS, (int(length), B, device, stream, torch.is_inference_mode_enabled()), make)


_KEPT = 8  # entries of each per-step host cache below (RoPE tables, decode lengths)
_LENGTHS: dict[tuple, torch.Tensor] = {}
_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _kept(store: dict, key: tuple, make: Callable[[], Any]) -> Any:
    """``store[key]``, made by ``make()`` on a miss; the oldest entry goes when ``_KEPT`` are held."""
    value = store.get(key)
    if value is None:
        if len(store) >= _KEPT:
            store.pop(next(iter(store)))
        value = store[key] = make()
    return value


def sdpa_without_cudnn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with cuDNN's kernel switched off for this call (CUDA only).

    For queries that continue a cache the key length changes every call, and cuDNN's attention builds a new
    plan per length (~3.6 ms of host time per call on an H200). Toggling the one flag costs about a
    microsecond, where the ``torch.nn.attention.sdpa_kernel`` context took ~35 us of host time per call
    (two calls per layer and token when decoding)."""
    if not q.is_cuda or not torch.backends.cuda.cudnn_sdp_enabled():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)


def rope_inv_freq(head_dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """inv_freq_i = base^(-2i/hd), i = 0..hd/2-1: (hd/2,) in float32 (or float64 for float64 models)."""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"RoPE needs an even, positive head_dim, got {head_dim}")
    return base ** (-2 * torch.arange(head_dim // 2, dtype=torch.float64) / head_dim).to(dtype)


_INV_FREQ: dict[tuple, torch.Tensor] = {}


def cached_inv_freq(head_dim: int, base: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """:func:`rope_inv_freq` kept on ``device`` (made once per head width, base, dtype and device): a decode
    step then copies nothing from the host, which a graph-captured step could not do. Code being compiled
    makes it in its graph instead: a tensor kept from there could be the output of a CUDA graph
    (``mode="reduce-overhead"``), which its next replay overwrites."""
    if torch.compiler.is_compiling():
        return rope_inv_freq(head_dim, base, dtype).to(device)
    key = (head_dim, float(base), dtype, str(device))
    if key not in _INV_FREQ:
        _INV_FREQ[key] = rope_inv_freq(head_dim, base, dtype).to(device)
    return _INV_FREQ[key]


def positions_from(start: int | torch.Tensor, T: int, device: torch.device) -> torch.Tensor:
    """Positions start .. start + T - 1 (T,); ``start`` may be a 0-d device tensor (a static-cache step)."""
    if isinstance(start, torch.Tensor):
        return start.reshape(()) + torch.arange(T, device=device)
    return torch.arange(start, start + T, device=device)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of angle(p, i) = p * inv_freq_i for positions (T,) or (B, T) -> (..., T, hd/2).

    Angles are formed in float32 (float64 when ``dtype`` is float64) and never in a lower precision: in bf16
    the angle itself loses the position at long lengths. The result is cast to ``dtype`` for the product.
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    angles = positions.to(work)[..., None] * inv_freq.to(device=positions.device, dtype=work)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rope_tables(
    start: int | torch.Tensor, T: int, head_dim: int, base: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair tables (1, T, 1, hd) in ``dtype`` for positions start .. start + T - 1 (or (B, T, 1, hd) for a
    (B, T) tensor ``start`` of every token's position: packed rows), as :func:`apply_rope` takes them: cos
    repeated over each pair (c_i, c_i) and sin with the pair's signs (-s_i, s_i), from :func:`rope_cos_sin`
    with :func:`cached_inv_freq`. For an int start the last few tables are kept: every layer of a step asks
    for the same positions, so a decoding step computes them once instead of once per layer (host time). A
    device-tensor start (a graph-captured step) and code being compiled always compute them."""

    def make() -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = cached_inv_freq(head_dim, base, work_dtype(dtype), device)
        per_row = isinstance(start, torch.Tensor) and start.dim() == 2
        pos = start if per_row else positions_from(start, T, device)
        cos, sin = rope_cos_sin(pos, inv_freq, dtype)
        pairs = torch.stack((cos, cos, -sin, sin), dim=-1).view(*pos.shape, head_dim // 2, 2, 2)
        rows = pos.shape[0] if per_row else 1
        cos2, sin2 = pairs.movedim(-2, 0).reshape(2, rows, T, 1, head_dim).unbind(0)
        return cos2, sin2

    if isinstance(start, torch.Tensor) or torch.compiler.is_compiling():
        return make()
    # tables made under inference_mode cannot be saved for a backward: kept apart from the others
    key = (start, T, head_dim, float(base), dtype, str(device), torch.is_inference_mode_enabled())
    return _kept(_TABLES, key, make)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x: (B, T, H, hd) with :func:`rope_tables`' pair tables:
    x * cos + swap(x) * sin, where swap exchanges the two elements of every pair. The same roundings as
    :func:`apply_rope_ref` (a - b = a + (-b) exactly), bit for bit, in four kernels instead of seven."""
    if cos.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"apply_rope takes rope_tables' pair tables of width hd = {x.shape[-1]}, got width "
            f"{cos.shape[-1]} (half-width cos/sin from rope_cos_sin go to apply_rope_ref)"
        )
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return x * cos + swapped * sin


def split_heads(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    start: int | torch.Tensor,
    rope_base: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projected q (B, T, H * hd), k, v (B, T, Hkv * hd) -> q (B, T, H, hd), k, v (B, T, Hkv, hd), with RoPE
    of base ``rope_base`` (None: none) applied to q and k at positions start.. (an int or a 0-d device
    tensor), or at the positions of a (B, T) tensor ``start`` (packed rows, ``sessa.ops.packing``)."""
    B, T, D = q.shape
    hd = D // n_heads
    q, k, v = q.view(B, T, n_heads, hd), k.view(B, T, n_kv_heads, hd), v.view(B, T, n_kv_heads, hd)
    if rope_base is not None:
        cos, sin = rope_tables(start, T, hd, rope_base, q.dtype, q.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return q, k, v


def apply_rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Readable :func:`apply_rope`: x (B, T, H, hd), cos/sin (T, hd/2) or (B, T, hd/2) from
    :func:`rope_cos_sin`; (x_even, x_odd) -> (x_even cos - x_odd sin, x_even sin + x_odd cos)."""
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return out.flatten(-2)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(
            f"expected q (B,T,H,hd) and k, v (B,S,Hkv,hd); got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    B, T, H, hd = q.shape
    if k.shape[0] != B or k.shape[3] != hd or H % k.shape[2] or k.shape[1] < T:
        raise ValueError(
            f"incompatible q {tuple(q.shape)} and k {tuple(k.shape)}: need same B and hd, "
            f"H % Hkv == 0 and S >= T"
        )


def _allowed(T: int, S: int, key_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Boolean (B or 1, 1, T, S) mask of the keys each query may read (causal, offset S - T)."""
    rows = torch.arange(S - T, S, device=device)[:, None]
    allowed = (torch.arange(S, device=device)[None, :] <= rows)[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    return allowed


def _readable(
    T: int, S: int, key_mask: torch.Tensor | None, every_key: bool, device: torch.device,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    if seq_idx is not None:  # packed rows (T == S): causal inside each sequence
        return _allowed(T, S, key_mask, device) & same_sequence(seq_idx.to(device))[:, None]
    if not every_key:
        return _allowed(T, S, key_mask, device)
    if key_mask is None:
        return torch.ones(1, 1, T, S, dtype=torch.bool, device=device)
    return key_mask.to(device=device, dtype=torch.bool)[:, None, None, :].expand(-1, 1, T, S)


def causal_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    every_key: bool = False,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Readable einsum reference of :func:`causal_attention` (materialises the (B, H, T, S) weights)."""
    _check_qkv(q, k, v)
    _check_packed(q, k, seq_idx, every_key)
    B, T, H, hd = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    g = H // Hkv
    qg = q.view(B, T, Hkv, g, hd)
    logits = torch.einsum("bthgd,bshd->bhgts", qg, k) / math.sqrt(hd)
    allowed = _readable(T, S, key_mask, every_key, q.device, seq_idx)[:, :, None]  # (B|1, 1, 1, T, S)
    logits = logits.masked_fill(~allowed, float("-inf"))
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    weights = torch.softmax(logits.to(work), dim=-1).nan_to_num(0.0).to(v.dtype)  # rows with no key -> 0
    out = torch.einsum("bhgts,bshd->bthgd", weights, v)
    return out.reshape(B, T, H, hd)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    backend: str = "sdpa",
    every_key: bool = False,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal softmax attention with GQA: q (B,T,H,hd), k/v (B,S,Hkv,hd) -> (B,T,H,hd).

    Query i is at position S - T + i and reads keys j <= S - T + i (diagonal included) whose
    ``key_mask[b, j]`` is True (all keys when None). A query with no readable key outputs zeros.
    ``every_key=True``: every query reads exactly the keys ``key_mask`` allows (a fixed-size cache whose mask
    already leaves out the later positions).
    ``seq_idx``: optional (B, T) packed rows (``sessa.ops.packing``; T == S): a query reads only keys of its
    own sequence (SDPA with a (B, 1, T, T) boolean mask).
    backend: "sdpa" (``F.scaled_dot_product_attention``) or "reference" (:func:`causal_attention_ref`).
    """
    if backend == "reference":
        return causal_attention_ref(q, k, v, key_mask, every_key, seq_idx)
    if backend != "sdpa":
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    _check_qkv(q, k, v)
    _check_packed(q, k, seq_idx, every_key)
    T, H, S, Hkv = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    if T == 1 and S > 1 and triton_decode_usable(k, q, v):  # one query reads every key (S - 1 + 1 of them)
        return _decode_attention_triton(q, k, v, decode_lengths(S, q.shape[0], q.device), key_mask)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if Hkv != H:
        kt = kt.repeat_interleave(H // Hkv, dim=1)
        vt = vt.repeat_interleave(H // Hkv, dim=1)
    if seq_idx is not None:
        if key_mask is None and packed_flash_usable(q):
            return packed_flash_attention(q, k, v, seq_idx)
        allowed = _readable(T, S, key_mask, False, q.device, seq_idx)
        out = sdpa_without_cudnn(qt, kt, vt, attn_mask=allowed)  # cuDNN: a new plan for every packed shape
        if key_mask is not None:
            out = out.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
        return out.transpose(1, 2)
    if key_mask is None and T == S and not every_key:
        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True).transpose(1, 2)
    # Queries continuing a cache (T < S: decoding, chunked prefill): the key length changes every call, and
    # cuDNN's attention builds a new plan per length (~3.6 ms of host time per call on an H200), so it is
    # left out. One query with no padding reads every key: no mask, which lets the flash kernel run.
    allowed = None if key_mask is None and T == 1 else _readable(T, S, key_mask, every_key, q.device)
    if T < S or every_key:
        out = sdpa_without_cudnn(qt, kt, vt, attn_mask=allowed)
    else:  # a padded batch in training: every backend
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=allowed)
    if key_mask is not None:
        out = out.masked_fill(~allowed.any(-1, keepdim=True), 0.0)  # fully masked rows -> 0, not NaN
    return out.transpose(1, 2)


@functools.cache
def _varlen_attn() -> tuple[Callable, frozenset[str]] | None:
    """PyTorch's flash-attention kernel for packed sequences (``torch.nn.attention.varlen``) and the names of
    its parameters (they differ between torch versions), looked up once; None without it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch without it: packed rows take SDPA with a block-diagonal mask
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def packed_flash_usable(q: torch.Tensor) -> bool:
    """Whether :func:`packed_flash_attention` runs q: CUDA, fp16/bf16, head width <= 256, the kernel present
    (``SESSA_PACKED_FLASH=0`` switches it off: SDPA with a block-diagonal mask then)."""
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256
            and os.environ.get("SESSA_PACKED_FLASH", "1") != "0" and _varlen_attn() is not None)


def packed_flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_idx: torch.Tensor
) -> torch.Tensor:
    """Causal attention of packed rows (q (B, T, H, hd), k, v (B, T, Hkv, hd), seq_idx (B, T)) by the flash
    kernel for variable-length sequences: the batch becomes one stream of B * T tokens cut at every sequence
    start (and row start, :func:`~sessa.ops.packing.stream_offsets`, which waits for the device once per
    seq_idx, not once per layer); no T x T mask. Returns (B, T, H, hd)."""
    varlen_attn, params = _varlen_attn()
    B, T, H, hd = q.shape
    Hkv = k.shape[2]
    cu, longest = stream_offsets(seq_idx.to(q.device))
    kw: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if Hkv != H:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            k, v = k.repeat_interleave(H // Hkv, dim=2), v.repeat_interleave(H // Hkv, dim=2)
    flat = [x.reshape(B * T, x.shape[2], hd).contiguous() for x in (q, k, v)]
    return varlen_attn(*flat, cu, cu, longest, longest, **kw).reshape(B, T, H, hd)


def _check_packed(q: torch.Tensor, k: torch.Tensor, seq_idx: torch.Tensor | None, every_key: bool) -> None:
    if seq_idx is None:
        return
    if k.shape[1] != q.shape[1] or every_key:
        raise ValueError("seq_idx (packed rows) is for a parallel pass without a cache: queries and keys "
                         f"must be the same tokens, got {q.shape[1]} queries and {k.shape[1]} keys")
    check_seq_idx(seq_idx, q.shape[0], q.shape[1])


def attend_static(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: torch.Tensor,
    mask: torch.Tensor,
    backend: str = "sdpa",
) -> torch.Tensor:
    """One token of a fixed-size cache: write its k, v (B, 1, Hkv, hd) at position ``pos`` (0-d device tensor)
    of k_cache, v_cache (B, L, Hkv, hd), then attend q (B, 1, H, hd) over positions <= pos that ``mask``
    (B, L) allows. No shape depends on ``pos`` (a graph-captured step); returns (B, 1, H, hd)."""
    index = pos.reshape(1)
    k_cache.index_copy_(1, index, k.to(k_cache.dtype))
    v_cache.index_copy_(1, index, v.to(v_cache.dtype))
    keys, values = k_cache.to(q.dtype), v_cache.to(q.dtype)
    if backend == "sdpa" and triton_decode_usable(keys, q, values):
        return _decode_attention_triton(q, keys, values, pos + 1, mask)
    readable = (torch.arange(mask.shape[1], device=mask.device) <= pos) & mask
    return causal_attention(q, keys, values, key_mask=readable, backend=backend, every_key=True)


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    length: int | torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query per row, q (B, 1, H, hd), over caches k_cache, v_cache (B, L, Hkv, hd): row b reads the
    positions j < length (an int, or a 0-d / (B,) integer tensor on the device: no launch depends on it)
    that key_mask (B, L) allows; a row with none reads zeros. The split-context Triton kernels on CUDA
    (:func:`triton_decode_usable`), else :func:`decode_attention_ref`. Returns (B, 1, H, hd)."""
    _check_qkv(q, k_cache, v_cache)
    if q.shape[1] != 1:
        raise ValueError(f"decode_attention takes one query per row, got q {tuple(q.shape)}")
    B, L = k_cache.shape[:2]
    if key_mask is not None and (key_mask.shape != (B, L) or key_mask.dtype != torch.bool):
        raise ValueError(f"key_mask must be a bool tensor of shape {(B, L)}, got {key_mask.dtype} "
                         f"{tuple(key_mask.shape)}")  # fmt: skip
    length = decode_lengths(length, B, q.device)
    if triton_decode_usable(k_cache, q, v_cache):
        return _decode_attention_triton(q, k_cache, v_cache, length, key_mask)
    return decode_attention_ref(q, k_cache, v_cache, length, key_mask)


def _decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    length: torch.Tensor,
    key_mask: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`decode_attention` on the Triton kernels, for callers that :func:`triton_decode_usable`
    accepted; while torch.compile traces, the opaque custom op (see sessa.ops.decode_ops)."""
    if torch.compiler.is_compiling():
        return torch.ops.sessa.decode_attention(q, k_cache, v_cache, length, key_mask)
    from sessa.ops.triton_decode import decode_attention_triton

    return decode_attention_triton(q, k_cache, v_cache, length, key_mask)


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    length: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`decode_attention` from the equations: :func:`causal_attention_ref` over the whole cache with the
    positions j >= length masked."""
    B, L = k_cache.shape[:2]
    readable = torch.arange(L, device=q.device)[None, :] < length.reshape(-1, 1)
    if key_mask is not None:
        readable = readable & key_mask
    return causal_attention_ref(q, k_cache, v_cache, readable.expand(B, L), every_key=True)
