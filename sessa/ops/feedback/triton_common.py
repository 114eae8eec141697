"""Shared pieces of the Triton feedback-solve kernels: tile configuration and jit helpers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sessa.ops.packing import sequence_bounds

LOG2E = 1.4426950408889634
# Triton's CPU interpreter multiplies bf16 tiles as raw bits: upcast dot operands there (tests only).
_UPCAST_DOTS = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@dataclass(frozen=True)
class Blocks:
    """Tile sizes of one solve. L: super-chunk rows; C: sub-block rows; every scratch tile divides L."""

    L: int
    C: int
    bm: int  # row tile of the probability / gradient scratches (their producers and dq)
    bn: int  # key tile of the scratches (also the K step of the GEMMs that read them)
    bk: int  # D slice of the logit dot products
    bd: int  # D tile of the GEMMs that read the scratches (inter, dq)
    bn_p: int  # key tile of the step kernel's probability tiles (a power of two dividing L; the scratch is
    # dense, so its readers' tile bn may differ)
    bd_dk: int  # D tile of the dk / push GEMM
    bt_dk: int  # row (K) step of the dk / push GEMM: a power of two dividing L
    span: int  # max(bm, bt_dk): the dlogit scratch is written in whole blocks of this many rows
    bm_w: int  # row tile of the products with the intra-chunk inverse W
    bd_w: int  # D tile of those products
    bk_w: int  # their K step (dividing bm_w)
    bm_lv: int  # largest output tile (rows = columns) of the doubling levels that build W (triton_tril)
    bk_lv: int  # their K step (at most the level's tile)
    warps_lv: int  # their warps
    stages_lv: int  # their software-pipelining depth
    bm_lse: int  # row / key tiles of the log-sum-exp pass
    bn_lse: int
    prec: str  # tl.dot input precision for fp32 operands
    inv_prec: str  # precision of the fp32 products with the triangular inverses
    level_prec: str  # ... of the recursive-doubling levels that build them (triton_tril)
    T_pad: int  # scratch columns
    rows: int  # scratch rows
    warps: int  # warps of the scratch producers and GEMMs
    warps_w: int  # warps of the products with W
    stages: int  # software-pipelining depth of the K loops (step, dlogit, dq + dk, W build)
    stages_lse: int  # ... of the log-sum-exp pass
    stages_push: int  # ... of the push GEMM
    stages_w: int  # ... of the products with W
    even_d: bool  # D is a multiple of every D tile (bk, bd, bd_dk, bd_w): the kernels' loads need no D mask
    head: int  # super-chunks whose log-sum-exp and W the forward builds before its sequential loop; it
    # builds the rest on a side stream during the loop (triton_fwd.forward_fixed; >= n_chunks: none aside)


# Tile choices for the GPU (H100, D = 1024), per operand dtype; chosen with scripts/sweep_kernel_tiles.py
# (each kernel alone) and scripts/tune_feedback.py (the whole op). side_min: the fewest super-chunks for which
# the forward builds part of its log-sum-exp and W on a side stream; head_frac: the share it builds first.
TUNING = {"bm": 128, "bn": 128, "bn_p": 256, "bk": 64, "bd": 128, "bd_dk": 256, "bt_dk": 64,
          "bm_w": 128, "bd_w": 64, "bk_w": 64, "bm_lse": 128, "bn_lse": 256, "warps": 8, "warps_w": 8,
          "stages": 3, "stages_lse": 3, "stages_push": 4, "stages_w": 3, "side_min": 16, "head_frac": 0.625,
          "bm_lv": 64, "bk_lv": 64, "warps_lv": 4, "stages_lv": 3}
TUNING_FP32 = {"bm": 64, "bn": 64, "bn_p": 64, "bk": 32, "bd": 64, "bd_dk": 64, "bt_dk": 64,
               "bm_w": 64, "bd_w": 64, "bk_w": 64, "bm_lse": 64, "bn_lse": 64, "warps": 4, "warps_w": 4,
               "stages": 2, "stages_lse": 2, "stages_push": 2, "stages_w": 2, "side_min": 16,
               "head_frac": 0.625, "bm_lv": 64, "bk_lv": 64, "warps_lv": 4, "stages_lv": 3}
_INTERPRET_TILES = {"bm": 32, "bn": 32, "bn_p": 32, "bk": 32, "bd": 32, "bd_dk": 32, "bt_dk": 64,
                    "bm_w": 32, "bd_w": 32, "bk_w": 16, "bm_lse": 32, "bn_lse": 32, "warps": 4, "warps_w": 4,
                    "stages": 1, "stages_lse": 1, "stages_push": 1, "stages_w": 1,
                    "side_min": 3, "head_frac": 0.5, "bm_lv": 64, "bk_lv": 64, "warps_lv": 4, "stages_lv": 1}


@contextlib.contextmanager
def tiles_overridden(table: dict, overrides: dict) -> Iterator[None]:
    """``table`` (TUNING, TUNING_FP32 or the interpreter's tiles) with ``overrides`` applied inside the block
    and restored after it: the tile sweeps of scripts/tune_feedback.py and solve_host_time.py, and tests."""
    saved = dict(table)
    table.update(overrides)
    try:
        yield
    finally:
        table.clear()
        table.update(saved)


def cdiv(a: int, b: int) -> int:
    """Ceiling division in plain Python (``triton.cdiv`` is a jit function: slower to call from the host)."""
    return -(-a // b)


def dense(x: torch.Tensor) -> torch.Tensor:
    """x contiguous with row-major strides on every dim: a contiguous view may keep any stride on a size-1
    dim (e.g. a slice of a packed batch-1 tensor), and the launchers compare and share strides."""
    x = x.contiguous()
    want, acc = [], 1
    for n in reversed(x.shape):
        want.append(acc)
        acc *= n
    want.reverse()
    return x if list(x.stride()) == want else x.as_strided(x.shape, want)


def op_dtype(dtype: torch.dtype) -> torch.dtype:
    """Operand dtype of the big products: fp32 for fp32 inputs, else bf16 (s can exceed fp16's range)."""
    return torch.float32 if dtype == torch.float32 else torch.bfloat16


def in_dtype(x: torch.Tensor, x_op: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An fp32 result x of the solve (s, df) in the caller's dtype: its operand copy x_op when that has the
    dtype (bf16 inputs: the kernels round x to bf16 as ``Tensor.to`` does; fp32: x_op is x), else x
    converted (fp16)."""
    return x_op if x_op.dtype == dtype else x.to(dtype)


def _pow2_divisor(n: int, cap: int) -> int:
    b = cap
    while n % b:
        b //= 2
    return b


SMALL_BATCH_ROWS = 8192  # B * T up to which the default super-chunk is 2048 rows (default_chunk)


def default_chunk(T: int, batch: int = 1) -> int:
    """The default super-chunk L: 2048 rows while the batch holds at most SMALL_BATCH_ROWS rows (B * T),
    else 1024; at most T rounded up to 128. Each super-chunk costs 6 launches on the sequential path, while
    the intra-chunk inverses cost O(T * L) work: few rows do not fill the GPU per launch, so fewer, longer
    super-chunks win there. Measured fwd+bwd on an H200, bf16 (benchmarks/RESULTS.md, "Super-chunk length"):
    L = 2048 vs 1024 at (B, T, D) = (1, 2048, 1024) 2.07 vs 2.30 ms, (1, 4096, 1024) 1.92 vs 2.48,
    (2, 4096, 1024) 2.27 vs 2.70, (1, 8192, 1024) 3.00 vs 3.50; 1024 vs 2048 at (8, 2048, 768) 2.14 vs 2.53,
    (8, 4096, 768) 4.03 vs 5.59, and at (1, 16384, 1024) on an H100 7.26 vs 7.51."""
    L = 2048 if batch * T <= SMALL_BATCH_ROWS else 1024
    return min(L, cdiv(T, 128) * 128)


def choose_blocks(
    T: int, D: int, dtype: torch.dtype, chunk_size: int | None, interpret: bool, sub_block: int | None = None,
    batch: int = 1,
) -> Blocks:
    """Pick tile sizes; chunk_size (the super-chunk L) must be a positive multiple of 16 (None:
    :func:`default_chunk` for ``batch`` rows of length T)."""
    if chunk_size is None:
        chunk_size = 32 if interpret else default_chunk(T, batch)
    if not isinstance(chunk_size, int) or chunk_size < 16 or chunk_size % 16:
        raise ValueError(f"chunk_size (triton backend) must be a positive multiple of 16, got {chunk_size}")
    L = chunk_size
    C = _pow2_divisor(L, 64) if sub_block is None else sub_block
    if C not in (16, 32, 64) or L % C:
        raise ValueError(f"sub_block must be 16, 32 or 64 and divide chunk_size={L}, got {C}")
    tn = _INTERPRET_TILES if interpret else (TUNING_FP32 if dtype == torch.float32 else TUNING)
    bm, bn = _pow2_divisor(L, tn["bm"]), _pow2_divisor(L, tn["bn"])
    bt = _pow2_divisor(L, tn["bt_dk"])
    span = max(bm, bt)  # powers of two dividing L: each divides span
    bm_w = _pow2_divisor(L, tn["bm_w"])
    ieee = interpret or dtype == torch.float32
    n_chunks = cdiv(T, L)
    head = n_chunks if n_chunks < tn["side_min"] else min(n_chunks, max(1, round(n_chunks * tn["head_frac"])))
    return Blocks(
        L=L, C=C, bm=bm, bn=bn, bk=tn["bk"], bd=tn["bd"],
        bn_p=_pow2_divisor(L, tn["bn_p"]), bd_dk=tn["bd_dk"], bt_dk=bt, span=span,
        bm_w=bm_w, bd_w=tn["bd_w"], bk_w=min(bm_w, tn["bk_w"]), bm_lv=tn["bm_lv"], bk_lv=tn["bk_lv"],
        warps_lv=tn["warps_lv"], stages_lv=tn["stages_lv"], bm_lse=tn["bm_lse"], bn_lse=tn["bn_lse"],
        prec="ieee" if ieee else "tf32",
        inv_prec="ieee" if interpret else "tf32x3", T_pad=cdiv(T, 128) * 128,
        level_prec="ieee" if interpret else ("tf32x3" if dtype == torch.float32 else "tf32"),
        rows=min(L, cdiv(T, span) * span), warps=tn["warps"], warps_w=tn["warps_w"],
        stages=tn["stages"], stages_lse=tn["stages_lse"], stages_push=tn["stages_push"],
        stages_w=tn["stages_w"],
        even_d=D % max(tn["bk"], tn["bd"], tn["bd_dk"], tn["bd_w"]) == 0, head=head,
    )


# ----------------------------------------------------------------------------------------------- helpers
@triton.jit
def mma(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b with fp32 accumulation (tl.dot, upcast under the CPU interpreter)."""
    if _UPCAST_DOTS:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc, input_precision=PREC)
    return out


@triton.jit
def _load_d(ptrs, dmask, EVEN_D: tl.constexpr):
    """tl.load(ptrs) with zeros where dmask (the D columns < D, broadcast to ptrs' shape) is False; EVEN_D
    (D a multiple of the tile) loads without a predicate."""
    if EVEN_D:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=dmask, other=0.0)


@triton.jit
def _logits(q_ptr, k_ptr, rows, cols, T, D, stride_q, stride_k,
            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, EVEN_D: tl.constexpr):
    """(BM, BN) fp32 q[rows] . k[cols] over the full width D, in BK slices. Rows / columns at or past T read
    row T - 1 instead (finite values every caller masks out, ``_allowed``): unpredicated loads, which the
    pipelined K loop issues faster than masked ones; only a D that is not a multiple of BK (not EVEN_D)
    masks the last slice."""
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    q_rows = q_ptr + tl.minimum(rows, T - 1)[:, None] * stride_q
    k_rows = k_ptr + tl.minimum(cols, T - 1)[None, :] * stride_k
    for d0 in range(0, D, BK):
        dd = d0 + tl.arange(0, BK)
        qt = _load_d(q_rows + dd[None, :], (dd < D)[None, :], EVEN_D)
        kt = _load_d(k_rows + dd[:, None], (dd < D)[:, None], EVEN_D)
        acc = mma(qt, kt, acc, PREC)
    return acc


# Masks of the solve (the constexpr MASK of every kernel that forms probabilities): NO_MASK; KEY_MASK, a
# (B, T) uint8 key mask (0 = padding key no row reads); SEGMENTS, packed sequences as an int32 (B, 2, T)
# table: [b, 0, t] the first row of t's sequence, [b, 1, t] one past its last row (``segment_table``).
NO_MASK, KEY_MASK, SEGMENTS = 0, 1, 2


@triton.jit
def _allowed(rows, cols, T, km_ptr, MASK: tl.constexpr):
    """Row t may read key j iff j < t < T (and key_mask[j]; or j in t's sequence)."""
    ok = (cols[None, :] < rows[:, None]) & (rows[:, None] < T)
    if MASK == 1:
        km = tl.load(km_ptr + cols, mask=cols < T, other=0)
        ok = ok & (km[None, :] != 0)
    if MASK == 2:
        first = tl.load(km_ptr + rows, mask=rows < T, other=0)
        ok = ok & (cols[None, :] >= first[:, None])
    return ok


@triton.jit
def _first_key(km_ptr, row, T, STEP, MASK: tl.constexpr):
    """The first key any row >= row may read, rounded down to a multiple of STEP (SEGMENTS: the start of
    row's sequence; rows only grow, so do their sequences' starts); 0 otherwise. Tiles of keys below it
    are all zero: neither computed nor read."""
    if MASK == 2:
        first = tl.load(km_ptr + tl.minimum(row, T - 1))
        return (first // STEP) * STEP
    else:
        return 0


@triton.jit
def _end_row(km_ptr, key, T, MASK: tl.constexpr):
    """One past the last row that may read key (SEGMENTS: the end of key's sequence; else T)."""
    if MASK == 2:
        return tl.load(km_ptr + T + tl.minimum(key, T - 1))
    else:
        return T


@triton.jit
def _row_lse(lse_ptr, rows, T):
    """Saved log-sum-exp (log2 units) with rows that read nothing mapped to 0 so exp2(-inf - lse) = 0."""
    lse = tl.load(lse_ptr + rows, mask=rows < T, other=float("-inf"))
    return tl.where(lse == float("-inf"), 0.0, lse)


def _mask_arg(mask: torch.Tensor | None, ref: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(pointer tensor, its batch stride, MASK) of a solve's mask: None, a bool (B, T) key mask, or an int32
    (B, 2, T) segment table (``segment_table``); ref stands in for the never-read pointer of no mask."""
    if mask is None:
        return ref, 0, NO_MASK
    if mask.dtype == torch.int32:
        return mask, mask.stride(0), SEGMENTS
    km = mask.contiguous().view(torch.uint8)
    return km, km.stride(0), KEY_MASK


def segment_table(starts: torch.Tensor) -> torch.Tensor:
    """The int32 (B, 2, T) SEGMENTS table of packed rows from starts: (B, T) bool, True where a sequence
    begins (position 0 of each row counts as a start whatever it holds); ``packing.sequence_bounds``."""
    return torch.stack(sequence_bounds(starts), 1).to(torch.int32).contiguous()
