"""The launch helpers of the Triton solve: the specialisation key of the fast path, the fallback, streams."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from sessa.ops.feedback.triton_launch import Streams, _arg_key, _fast_enabled, int_key  # noqa: E402


def test_arg_key_separates_every_specialisation_triton_makes():
    base = torch.zeros(64)
    # ints: == 1, divisible by 16, 32- vs 64-bit; floats: none
    keys = {_arg_key((v,)) for v in (1, 16, 17, 2**31, 2**31 + 1)}
    assert len(keys) == 5
    assert _arg_key((32,)) == _arg_key((48,)) and _arg_key((3,)) == _arg_key((5,))
    assert _arg_key((2**63,)) != _arg_key((2**62,))  # Triton: u64 vs i64
    assert _arg_key((0.5,)) == _arg_key((2.0,))
    # tensors: dtype and 16-byte alignment (a view 1 fp32 element in is not aligned; 4 elements in is)
    assert _arg_key((base,)) != _arg_key((base[1:],))
    assert _arg_key((base,)) == _arg_key((base[4:],))
    assert _arg_key((base,)) != _arg_key((base.double(),))
    # an int and a tensor in the same slot never share a key
    assert _arg_key((16,)) != _arg_key((base,))


def test_int_key_is_the_rule_arg_key_spells_inline():
    """The bound decode launches (sessa.ops.step_launches) key their int arguments with int_key, the fast
    solve launches with _arg_key's inline copy of it: one rule."""
    for v in (-(2**31) - 1, -(2**31), -16, -1, 0, 1, 2, 16, 17, 2**31 - 1, 2**31, 2**62, 2**63, 2**64 - 16):
        assert _arg_key((v,)) == (int_key(v),), v


def test_arg_key_declines_unknown_argument_types():
    assert _arg_key((torch.zeros(2), None)) is None
    assert _arg_key((True,)) is None  # bool: Triton gives it its own type, so the JIT entry decides
    assert _arg_key(("x",)) is None


def test_fast_path_off_without_cuda_or_when_disabled(monkeypatch):
    assert not _fast_enabled(torch.device("cpu"))
    monkeypatch.setenv("SESSA_TRITON_FAST_LAUNCH", "0")
    assert not _fast_enabled(torch.device("cuda"))


def test_dense_gives_row_major_strides_without_copying_values():
    from sessa.ops.feedback.triton_common import dense

    packed = torch.arange(2 * 10 * 4, dtype=torch.float32).reshape(1, 20, 4)
    view = packed[:, 5:15]  # contiguous, but its batch stride is the packed tensor's
    assert view.is_contiguous() and view.stride() == (80, 4, 1)
    out = dense(view)
    assert out.stride() == (40, 4, 1) and out.data_ptr() == view.data_ptr()
    assert torch.equal(out, view)
    strided = packed.transpose(1, 2)  # not contiguous: copied
    assert dense(strided).stride() == (80, 20, 1) and torch.equal(dense(strided), strided)


def test_cpu_streams_are_no_ops():
    st = Streams(torch.device("cpu"), side=True, lead=True)
    assert st.main is None and st.side is None and st.side_event() is None
    st.enter()
    st.fork()
    st.join()
    st.leave()


def test_entered_leaves_also_when_the_block_raises(monkeypatch):
    """``Streams.entered`` (the solve launches inside it) enters first and leaves last, on an error too."""
    st = Streams(torch.device("cpu"), side=True, lead=True)
    calls = []
    monkeypatch.setattr(st, "enter", lambda: calls.append("enter"))
    monkeypatch.setattr(st, "leave", lambda: calls.append("leave"))
    with st.entered():
        calls.append("launch")
    assert calls == ["enter", "launch", "leave"]
    calls.clear()
    with pytest.raises(RuntimeError, match="kernel"), st.entered():
        raise RuntimeError("kernel failed")
    assert calls == ["enter", "leave"]


def test_lead_stream_is_kept_apart_and_can_be_switched_off(monkeypatch):
    """Solves with a lead stream keep their own Streams; SESSA_TRITON_LEAD_STREAM=0 gives them the caller's
    stream's Streams (the same object as a solve without a lead stream)."""
    cpu = torch.device("cpu")
    lead = Streams.shared(cpu, side=True, lead=True)
    assert Streams.shared(cpu, side=True, lead=True) is lead and Streams.shared(cpu, side=True) is not lead
    monkeypatch.setenv("SESSA_TRITON_LEAD_STREAM", "0")
    assert Streams.shared(cpu, side=True, lead=True) is Streams.shared(cpu, side=True)


def test_launch_hooks_send_launches_through_the_jit_entry():
    from triton import knobs

    from sessa.ops.feedback.triton_launch import _no_launch_hooks

    hook = knobs.runtime.launch_enter_hook
    assert _no_launch_hooks()
    try:
        if hasattr(hook, "add"):
            hook.add(print)
        else:
            knobs.runtime.launch_enter_hook = print
        assert not _no_launch_hooks()
    finally:
        if hasattr(hook, "remove"):
            hook.remove(print)
        knobs.runtime.launch_enter_hook = hook
    assert _no_launch_hooks()


def test_solves_keep_their_streams_and_bound_kernels(monkeypatch):
    """A solve takes the Streams of its device's current stream and its BoundKernels from a cache instead of
    making them anew (host time); the fast-launch switch still takes effect at the next solve."""
    from sessa.ops.feedback.triton_fwd import _lse_kernel
    from sessa.ops.feedback.triton_launch import BoundKernel

    cpu = torch.device("cpu")
    st = Streams.shared(cpu, side=True)
    assert Streams.shared(cpu, side=True) is st and Streams.shared(cpu) is not st
    a = BoundKernel.get(_lse_kernel, st, MASK=0, BM=32)
    assert BoundKernel.get(_lse_kernel, st, MASK=0, BM=32) is a
    assert BoundKernel.get(_lse_kernel, st, MASK=0, BM=64) is not a
    assert BoundKernel.get(_lse_kernel, Streams.shared(cpu), MASK=0, BM=32) is not a
    monkeypatch.setenv("SESSA_TRITON_FAST_LAUNCH", "0")
    b = BoundKernel.get(_lse_kernel, st, MASK=0, BM=32)
    assert b is not a and b.consts == a.consts and not b.fast
