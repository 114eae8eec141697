"""Every mixer as an input-dependent linear operator (DESIGN §5): y_t = sum_{tau<=t} W[t, tau] u_tau.

For one input, each mixer is written as a per-head T x T matrix W acting on a per-head value stream u, plus
a readout that is linear in time-mixed values (out_proj, and for Mamba-2 the skip, gate and norm):

* attention: W_h = alpha_fwd,h (causal row-stochastic), u_h = v_h.
* Mamba-2:   W_h = M_h = L_h ∘ (C Bᵀ) diag(dt) with L_h[t, s] = exp(A_h (dt_{s+1} + ... + dt_t)), u_h = x_h.
* Sessa:     W_h = (I - B_fb)^{-1} alpha_fwd,h, u_h = v_h; out_proj acts on channels and (I - B_fb)^{-1}
  on time, so they commute: s = out_proj(concat_h W_h v_h).

``MixerOperator.reconstruct()`` rebuilds the mixer's output from W, which the tests compare with
``mixer(x)``. ``MixerOperator.routing`` is the fixed-routing influence J of DESIGN §3 ((I - B_fb)^{-1} for
Sessa, alpha_fwd for attention, M for Mamba-2). Shapes: B batch, T length, H heads, p head width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sessa import registry
from sessa.baselines.attention import AttentionMixer
from sessa.baselines.common import causal_conv
from sessa.baselines.mamba2 import Mamba2Mixer
from sessa.modules.contract import check_input
from sessa.modules.sessa_mixer import SessaMixer
from sessa.ops.feedback import feedback_solve, feedback_weights_ref
from sessa.ops.precision import work_dtype
from sessa.ops.ssd import segsum


@dataclass
class MixerOperator:
    """One mixer on one input, as per-head matrices.

    kind: "attention" | "mamba2" | "sessa"; matrix: (B, H, T, T), W[t, tau] per head (zero above the
    diagonal); values: (B, T, H, p) the stream W acts on; readout: maps the mixed values (B, T, H, p) to
    the mixer output (B, T, D); routing: (B, H', T, T) the fixed-routing influence (H' = 1 for Sessa).
    """

    kind: str
    matrix: torch.Tensor
    values: torch.Tensor
    readout: Callable[[torch.Tensor], torch.Tensor]
    routing: torch.Tensor

    def mixed(self) -> torch.Tensor:
        """sum_tau W[t, tau] u_tau per head: (B, T, H, p)."""
        return torch.einsum("bhts,bshp->bthp", self.matrix, self.values.to(self.matrix.dtype))

    def reconstruct(self) -> torch.Tensor:
        """The mixer output rebuilt from the operator: (B, T, D)."""
        return self.readout(self.mixed())


# -- attention -------------------------------------------------------------------------------------------
def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal softmax weights alpha[b, h, t, s] = softmax_{s<=t}(q_t·k_s / sqrt(hd)).

    q: (B, T, H, hd); k: (B, T, Hkv, hd), head h reads kv head h // (H / Hkv). Returns (B, H, T, T) in
    float64 for float64 inputs, float32 otherwise.
    """
    work = work_dtype(q.dtype)
    H, T = q.shape[2], q.shape[1]
    k = k.repeat_interleave(H // k.shape[2], dim=2)
    logits = torch.einsum("bthd,bshd->bhts", q.to(work), k.to(work)) / math.sqrt(q.shape[-1])
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)


def _heads_readout(out_proj: nn.Module, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda mixed: out_proj(mixed.flatten(2).to(dtype))


def attention_operator(mixer: AttentionMixer, x: torch.Tensor) -> MixerOperator:
    """AttentionMixer on x: (B, T, D): W_h = alpha_fwd,h, values = v per query head."""
    check_input(x, mixer.d_model)
    q, k, v = mixer.qkv(x, start=0)
    alpha = attention_weights(q, k)
    values = v.repeat_interleave(mixer.n_heads // mixer.n_kv_heads, dim=2)
    return MixerOperator("attention", alpha, values, _heads_readout(mixer.out_proj, x.dtype), alpha)


# -- Sessa -----------------------------------------------------------------------------------------------
def sessa_routing(
    q_b: torch.Tensor,
    k_b: torch.Tensor,
    gamma: torch.Tensor,
    *,
    columns: Sequence[int] | None = None,
    method: str = "solve",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Columns of (I - B_fb)^{-1}: (B, T, C) for the C requested columns (all T when None).

    q_b, k_b: (B, T, D); gamma: (B, T, 1). method "solve": the project's ``feedback_solve`` (chunked
    backend) with f = identity columns; B_fb is one scalar per (t, j), so D columns are solved at once
    and the groups of D columns ride in the batch dimension. method "dense": invert the dense reference
    I - gamma * alpha_fb (small T).
    """
    B, T, D = q_b.shape
    cols = torch.arange(T) if columns is None else torch.as_tensor(columns, dtype=torch.long)
    cols = cols.to(q_b.device)
    if cols.numel() == 0 or int(cols.min()) < 0 or int(cols.max()) >= T:
        raise ValueError(f"columns must be non-empty and in [0, T={T}), got {columns!r}")
    if method == "dense":
        b_fb = gamma * feedback_weights_ref(q_b, k_b)
        eye = torch.eye(T, dtype=b_fb.dtype, device=b_fb.device).expand(B, T, T)
        inv = torch.linalg.solve_triangular(eye - b_fb, eye, upper=False, unitriangular=True)
        return inv[:, :, cols]
    if method != "solve":
        raise ValueError(f"method must be 'solve' or 'dense', got {method!r}")
    n_groups = math.ceil(cols.numel() / D)
    padded = torch.cat([cols, cols.new_zeros(n_groups * D - cols.numel())])
    f = torch.zeros(n_groups, T, D, dtype=q_b.dtype, device=q_b.device)
    group = torch.arange(n_groups, device=q_b.device)[:, None].expand(n_groups, D)
    channel = torch.arange(D, device=q_b.device)[None].expand(n_groups, D)
    f[group, padded.view(n_groups, D), channel] = 1.0  # group g, channel c holds e_{cols[g*D + c]}
    f = f[:, None].expand(n_groups, B, T, D)
    rep = lambda z: z.expand(n_groups, *z.shape).reshape(n_groups * B, *z.shape[1:])  # noqa: E731
    s = feedback_solve(rep(q_b), rep(k_b), rep(gamma), f.reshape(n_groups * B, T, D), backend="chunked",
                       chunk_size=chunk_size)
    s = s.view(n_groups, B, T, D).permute(1, 2, 0, 3).reshape(B, T, n_groups * D)
    return s[:, :, : cols.numel()]


def sessa_operator(mixer: SessaMixer, x: torch.Tensor, method: str = "solve") -> MixerOperator:
    """SessaMixer on x: (B, T, D): W_h = (I - B_fb)^{-1} alpha_fwd,h, values = v per query head."""
    check_input(x, mixer.D)
    q, k, v = mixer.qkv(x, 0)
    alpha = attention_weights(q, k)
    B, T = x.shape[:2]
    if mixer.use_feedback:
        q_b, k_b, gamma = mixer.feedback_inputs(x)
        routing = sessa_routing(q_b, k_b, gamma, method=method).to(alpha.dtype)
    else:
        routing = torch.eye(T, dtype=alpha.dtype, device=x.device).expand(B, T, T)
    matrix = routing[:, None] @ alpha
    values = v.repeat_interleave(mixer.n_heads // mixer.n_kv_heads, dim=2)
    return MixerOperator("sessa", matrix, values, _heads_readout(mixer.out_proj, x.dtype), routing[:, None])


# -- Mamba-2 ---------------------------------------------------------------------------------------------
def ssd_matrix(dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """The SSD matrix M[b, h, t, s] = (C_t·B_s) exp(A_h (dt_{s+1} + ... + dt_t)) dt_s for s <= t, else 0.

    dt: (b, T, h) >= 0; A: (h,) < 0; B, C: (b, T, g, n) with h % g == 0. Returns (b, h, T, T); then
    y_t = sum_s M[t, s] x_s is the scan without its D skip.
    """
    h = dt.shape[-1]
    B, C = (m.repeat_interleave(h // m.shape[2], dim=2) for m in (B, C))
    decay = torch.exp(segsum((dt * A).transpose(1, 2)))  # (b, h, T, T), zero above the diagonal
    scores = torch.einsum("bthn,bshn->bhts", C, B)
    return decay * scores * dt.transpose(1, 2)[:, :, None, :]


def mamba2_ssd_inputs(mixer: Mamba2Mixer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The scan inputs of a Mamba2Mixer on x: (B, T, d_model) (no padding, no cached state).

    Returns z (B, T, d_inner), xs (B, T, h, p), dt (B, T, h), A (h,), B and C (B, T, g, n), all in the
    work dtype (float64 for float64 models), exactly as the mixer's forward computes them.
    """
    check_input(x, mixer.d_model)
    b, T, _ = x.shape
    z, xbc, dt = torch.split(mixer.in_proj(x), [mixer.d_inner, mixer.conv_dim, mixer.n_heads], dim=-1)
    xbc, _ = causal_conv(xbc, mixer.conv1d.weight, mixer.conv1d.bias, None)
    groups = mixer.ngroups * mixer.d_state
    xs, Bm, Cm = torch.split(F.silu(xbc), [mixer.d_inner, groups, groups], dim=-1)
    work = work_dtype(x.dtype)
    return {
        "z": z,
        "xs": xs.reshape(b, T, mixer.n_heads, mixer.headdim).to(work),
        "dt": F.softplus(dt.to(work) + mixer.dt_bias.to(work)),
        "A": -torch.exp(mixer.A_log.to(work)),
        "B": Bm.reshape(b, T, mixer.ngroups, mixer.d_state).to(work),
        "C": Cm.reshape(b, T, mixer.ngroups, mixer.d_state).to(work),
    }


def mamba2_operator(mixer: Mamba2Mixer, x: torch.Tensor) -> MixerOperator:
    """Mamba2Mixer on x: (B, T, d_model): W_h = M_h (:func:`ssd_matrix`), values = the scan input x_h;
    the readout adds the D skip, applies the gated RMSNorm with z and out_proj."""
    ins = mamba2_ssd_inputs(mixer, x)
    M = ssd_matrix(ins["dt"], ins["A"], ins["B"], ins["C"])
    xs, z = ins["xs"], ins["z"]

    def readout(mixed: torch.Tensor) -> torch.Tensor:
        y = mixed + mixer.D.to(xs.dtype)[:, None] * xs
        y = y.to(x.dtype).reshape(*x.shape[:2], mixer.d_inner)
        return mixer.out_proj(mixer.norm(y, z))

    return MixerOperator("mamba2", M, xs, readout, M)


# -- any mixer, any model ----------------------------------------------------------------------------------
class _Operators(Mapping):
    """mixer class -> its operator builder, for every mixer of :mod:`sessa.registry` that has one (a live
    view: it follows the registry)."""

    def _table(self) -> dict[type, Callable[[nn.Module, torch.Tensor], MixerOperator]]:
        return {
            registry.mixer_class(name): registry.resolve(registry.mixer_spec(name).operator)
            for name in registry.analysis_mixers()
        }

    def __getitem__(self, cls: type) -> Callable[[nn.Module, torch.Tensor], MixerOperator]:
        return self._table()[cls]

    def __iter__(self) -> Iterator[type]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


OPERATORS: Mapping[type, Callable[[nn.Module, torch.Tensor], MixerOperator]] = _Operators()


def is_supported_mixer(module: nn.Module) -> bool:
    name = registry.mixer_name_of(module)
    return name is not None and registry.mixer_spec(name).operator is not None


def mixer_operator(mixer: nn.Module, x: torch.Tensor) -> MixerOperator:
    """The operator of any supported mixer (see ``OPERATORS``) on its input x: (B, T, D)."""
    if not is_supported_mixer(mixer):
        names = ", ".join(cls.__name__ for cls in OPERATORS)
        raise TypeError(f"mixer must be one of {names}, got {type(mixer).__name__}")
    return registry.resolve(registry.mixer_spec(registry.mixer_name_of(mixer)).operator)(mixer, x)


def collect_mixer_inputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """Run model(x) once and return (name, mixer, mixer input) for every supported mixer, in call order."""
    found: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if is_supported_mixer(module):
            hook = lambda mod, args, name=name: found.append((name, mod, args[0].detach()))  # noqa: E731
            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        raise ValueError(f"model {type(model).__name__} contains no supported mixer ({list(OPERATORS)})")
    return found


# -- structure: off-diagonal rank ---------------------------------------------------------------------
def offdiag_rank(matrix: torch.Tensor, split: int | None = None, rtol: float = 1e-8) -> torch.Tensor:
    """Numerical rank of the strictly-lower block matrix[..., split:, :split] (default split = T // 2).

    Singular values above rtol * (largest one) count. For a Mamba-2 head this is <= d_state
    (semiseparability); attention and Sessa have no such bound. matrix: (..., T, T) -> (...) int64.
    """
    T = matrix.shape[-1]
    split = T // 2 if split is None else split
    if not 0 < split < T or matrix.shape[-2] != T:
        raise ValueError(
            f"need a square (..., T, T) matrix and 0 < split < T, got shape {tuple(matrix.shape)} and "
            f"split={split}"
        )
    return torch.linalg.matrix_rank(matrix[..., split:, :split].double(), rtol=rtol)
