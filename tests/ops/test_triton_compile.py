"""Every Triton kernel of the feedback solve compiles for sm_90 (H100 / H200) in every dtype, without a GPU.

The interpreter tests (test_feedback_triton.py) run the kernels on the CPU and never compile them, so a
kernel that does not compile (fp16 once did not: a bf16 x fp16 ``tl.dot``) passes there and fails on the GPU.
Here the kernels are compiled ahead of time for a CUDA target instead.

What is compiled is read off the launchers, not a list: ``FeedbackSolveTriton`` runs forward and backward on
meta tensors (no memory, no device) with ``BoundKernel.__call__`` replaced by a recorder, at representative
(B, T, D, key mask) shapes and the tiles ``choose_blocks`` picks there. Each recorded launch gives the
kernel's constexprs and launch options, and its argument types and specialisation under the rules Triton's JIT
applies (tensor: pointer dtype and 16-byte alignment; int: 1 becomes a constant, else i32/i64 and divisibility
by 16; float: fp32). The fast test compiles one specialisation of every distinct (kernel, constexprs, options,
pointer dtypes) configuration; the slow one every distinct specialisation, over more shapes and the
``chunk_size`` / ``sub_block`` values a user may pass.

How far compilation goes without a device: all the way. Python AST -> TTIR -> TTGIR -> LLVM IR -> PTX (LLVM's
NVPTX backend) -> cubin (``ptxas`` bundled in the triton wheel) all run on the CPU. What needs a device is
loading the cubin (``cuModuleLoadData``), the driver's report of registers and spills, and Triton's check of
the kernel's shared memory against the device's limit at load time; that check is repeated here with sm_90's
opt-in limit. Works with triton 3.6 (the GPU machine's) and 3.9.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing
import os
import re
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import pytest
import torch

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                       reason="TRITON_INTERPRET=1: the kernels are interpreted functions, not compilable"),
    pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION"),  # triton 3.9's notice about a default
]

SM90_SHARED_LIMIT = 232448  # bytes of shared memory one block may opt into on sm_90 (227 KiB)
DTYPES = ("float32", "bfloat16", "float16")
# (B, T, D, mask, chunk_size, sub_block), mask: False, True (a key mask) or "segments" (packed sequences,
# the kernels' MASK=2): one row; one ragged super-chunk; three super-chunks (the push GEMM, a ragged tail);
# the longest default super-chunk (L = 1024) with a tail of one row; packed rows.
SHAPES = [(1, 1, 64, False, None, None), (2, 1000, 1024, True, None, None), (1, 3000, 128, False, None, None),
          (1, 4097, 2048, True, None, None), (2, 3000, 1024, "segments", None, None)]
# Slow test: also other int specialisations (T a multiple of 16) and the super-chunk / sub-block sizes a user
# may pass (chunk_size: multiples of 16; sub_block: 16, 32, 64).
SLOW_SHAPES = SHAPES + [(1, 16384, 1024, False, None, None), (2, 200, 64, True, 16, 16),
                        (1, 300, 128, True, 48, 16), (1, 1000, 1024, False, 256, 32),
                        (1, 5000, 1024, True, 2048, 64), (1, 9000, 768, "segments", None, None)]
_PTR = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.uint8: "u8",
        torch.int32: "i32", torch.int64: "i64"}


@dataclass(frozen=True)
class Launch:
    """One kernel specialisation as Triton's JIT would compile it (picklable, for the worker processes)."""

    module: str  # where the @triton.jit function lives
    name: str
    signature: tuple[tuple[str, str], ...]  # (parameter, type) in order; constants typed "constexpr"
    constexprs: tuple[tuple[str, object], ...]  # the kernel's tl.constexpr parameters
    ones: tuple[str, ...]  # int arguments equal to 1 (Triton makes them constants)
    aligned: tuple[int, ...]  # parameter indices specialised as divisible by 16 (tt.divisibility)
    options: tuple[tuple[str, object], ...]  # num_warps, num_stages

    @property
    def config(self) -> tuple:
        """Kernel, constexprs, options and pointer dtypes: what the fast test compiles once."""
        ptrs = tuple(t for _, t in self.signature if t.startswith("*"))
        return (self.name, self.constexprs, self.options, ptrs)

    @property
    def kernel(self):
        return getattr(importlib.import_module(self.module), self.name)

    def describe(self) -> str:
        consts = ", ".join(f"{k}={v}" for k, v in self.constexprs)
        ptrs = ",".join(t for _, t in self.signature if t.startswith("*"))
        return f"{self.name}[{consts}; {dict(self.options)}; {ptrs}]"


def _arg_type(arg) -> tuple[str, bool]:
    """(Triton type, specialised as divisible by 16) of one launch argument, as Triton's JIT derives them."""
    if isinstance(arg, torch.Tensor):
        return "*" + _PTR[arg.dtype], arg.data_ptr() % 16 == 0  # meta tensors: address 0, aligned
    if isinstance(arg, bool):
        return "u1", False
    if isinstance(arg, int):
        if arg == 1:
            return "constexpr", False
        kind = "i32" if -(2**31) <= arg < 2**31 else "u64" if arg >= 2**63 else "i64"
        return kind, arg % 16 == 0
    if isinstance(arg, float):
        return "fp32", False
    raise TypeError(f"launch argument of unmodelled type {type(arg).__name__}")


def _launch(kernel, consts: dict, args: tuple) -> Launch:
    names = kernel.arg_names
    positional = [n for n in names if n not in consts]
    assert len(positional) == len(args), f"{kernel.__name__}: {len(args)} arguments for {positional}"
    values = dict(zip(positional, args, strict=True))
    plain = {p.name for p in kernel.params if p.do_not_specialize}  # ints Triton passes unspecialised
    signature, ones, aligned = [], [], []
    for i, name in enumerate(names):
        kind, div16 = ("constexpr", False) if name in consts else _arg_type(values[name])
        if name in plain and kind == "constexpr":
            kind = "i32"
        signature.append((name, kind))
        if kind == "constexpr" and name not in consts:
            ones.append(name)
        elif div16 and name not in plain:
            aligned.append(i)
    constexprs = tuple((n, consts[n]) for n in names if n in consts)
    options = tuple(sorted((k, v) for k, v in consts.items() if k not in names))
    module = importlib.import_module(kernel.fn.__module__)  # one function may back several JIT objects
    attr = next((n for n, obj in vars(module).items() if obj is kernel), kernel.__name__)
    return Launch(kernel.fn.__module__, attr, tuple(signature), constexprs, tuple(ones), tuple(aligned),
                  options)


def record_launches(dtype: str, B: int, T: int, D: int, mask: bool | str, chunk_size: int | None,
                    sub_block: int | None) -> list[Launch]:
    """The kernel launches of one forward + backward of the Triton op, on meta tensors (nothing runs)."""
    from sessa.ops.feedback import triton_fwd, triton_launch
    from sessa.ops.feedback.triton import FeedbackSolveTriton

    launches: list[Launch] = []

    def record(self, grid, *args, side=False):
        launches.append(_launch(self.kernel, self.consts, args))

    dt = getattr(torch, dtype)
    q, k, f = (torch.empty(B, T, D, device="meta", dtype=dt, requires_grad=True) for _ in range(3))
    gamma = torch.empty(B, T, 1, device="meta", dtype=dt, requires_grad=True)
    key_mask = torch.empty(B, T, device="meta", dtype=torch.bool) if mask is True else None
    if mask == "segments":  # the int32 (B, 2, T) table of packed sequences (triton_common.segment_table)
        key_mask = torch.empty(B, 2, T, device="meta", dtype=torch.int32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(triton_launch.BoundKernel, "__call__", record)
        mp.setattr(triton_fwd, "sm_count", lambda device: 132)  # an H100 / H200: few rows split the lse pass
        s = FeedbackSolveTriton.apply(q, k, gamma, f, key_mask, chunk_size, sub_block)
        s.backward(torch.empty_like(s))
    return launches


def distinct(launches: Iterable[Launch], by_config: bool) -> list[Launch]:
    out: dict = {}
    for la in launches:
        out.setdefault(la.config if by_config else la, la)
    return list(out.values())


def compile_sm90(launch: Launch):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    attrs = {(i,): [["tt.divisibility", 16]] for i in launch.aligned}
    constexprs = {**dict(launch.constexprs), **{name: 1 for name in launch.ones}}
    src = ASTSource(launch.kernel, dict(launch.signature), constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(launch.options))


def _check_one(la: Launch) -> str | None:
    """Compile one launch to a cubin; the problem found, or None."""
    try:
        compiled = compile_sm90(la)
    except Exception as e:  # every compiler error is a finding
        return f"{la.describe()}: {type(e).__name__}: {_root_cause(e)}"
    if not compiled.asm.get("cubin"):
        return f"{la.describe()}: no cubin produced"
    if compiled.metadata.shared > SM90_SHARED_LIMIT:
        return f"{la.describe()}: {compiled.metadata.shared} B of shared memory > sm_90's {SM90_SHARED_LIMIT}"
    return None


def _compile_all(pool: ProcessPoolExecutor, launches: list[Launch]) -> list[str]:
    """Compile every launch in the worker pool; the problems found, one line each."""
    return [p for p in pool.map(_check_one, launches) if p is not None]


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return re.sub(r"\s+", " ", str(e))[-300:]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Worker processes that compile (Triton's compiler holds the GIL: threads would not help), with a fresh
    Triton cache: every kernel is really compiled, and ~/.triton is left alone."""
    workers = max(1, min(4, os.cpu_count() or 1))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_CACHE_DIR", str(tmp_path_factory.mktemp("triton_cache")))  # workers inherit it
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that has loaded torch
        with ProcessPoolExecutor(workers, mp_context=ctx) as executor:
            yield executor


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kernel_config_compiles_for_sm90(pool, dtype):
    launches = [la for shape in SHAPES for la in record_launches(dtype, *shape)]
    problems = _compile_all(pool, distinct(launches, by_config=True))
    assert not problems, f"{len(problems)} kernel configurations do not compile:\n" + "\n".join(problems)


@pytest.mark.slow
def test_every_specialisation_compiles_for_sm90(pool):
    launches = [la for dt in DTYPES for shape in SLOW_SHAPES for la in record_launches(dt, *shape)]
    problems = _compile_all(pool, distinct(launches, by_config=False))
    assert not problems, f"{len(problems)} kernel specialisations do not compile:\n" + "\n".join(problems)


def test_every_jit_function_is_reached_from_a_launch():
    """No kernel or helper of the package escapes the compile check (helpers compile inside their callers)."""
    import triton

    from sessa.ops.feedback import triton_bwd, triton_common, triton_fwd, triton_tril

    jit = {name: obj for mod in (triton_bwd, triton_common, triton_fwd, triton_tril)
           for name, obj in vars(mod).items() if isinstance(obj, triton.runtime.JITFunction)}
    reached = {la.name for shape in SHAPES[1:3] for la in record_launches("bfloat16", *shape)}
    frontier = list(reached)
    while frontier:
        src = jit[frontier.pop()].src
        for name in jit:
            if name not in reached and re.search(rf"\b{name}\(", src):
                reached.add(name)
                frontier.append(name)
    assert set(jit) <= reached, f"never compiled: {sorted(set(jit) - reached)}"


def test_argument_rules_match_tritons_own():
    """_arg_type agrees with the specialisation Triton's JIT computes (its private native helper, where this
    Triton version has it)."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
    except ImportError:
        pytest.skip("this triton has no native_specialize_impl")
    samples = [1, 0, 16, 17, 4096, 2**31, -5, 0.5, torch.zeros(4), torch.zeros(4, dtype=torch.bfloat16)[1:],
               torch.zeros(8, dtype=torch.uint8), torch.zeros(8, dtype=torch.float16)]
    for arg in samples:
        kind, spec = native_specialize_impl(BaseBackend, arg, False, True, True)
        ours, div16 = _arg_type(arg)
        assert ours == kind, (arg, ours, kind)
        if kind != "constexpr":
            assert div16 == (spec == "D"), (arg, div16, spec)
