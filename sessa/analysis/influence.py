"""Influence of a token on later outputs, as a function of the lag l = t - tau (DESIGN §3).

Two measurements, each averaged over random inputs (the batch of x):

* fixed-routing influence: |J[t, tau]| of the routing matrix of each mixer, averaged over heads and inputs
  (Sessa J = (I - B_fb)^{-1}, attention J = alpha_fwd, Mamba-2 J = M = C_t (prod A) B_tau dt_tau); see
  :mod:`sessa.analysis.operators`.
* end-to-end influence: ||dy_t/dx_tau||_F, the Frobenius norm of the D x D Jacobian block of a block or of
  a stack of blocks, averaged over inputs.

Views. "column" (default) fixes the source tau (``anchor``, default 0) and moves the output t = tau + l:
the impulse response, whose decay is the memory tail of DESIGN §3 (uniform attention gives 1/(tau+l+1)).
"row" fixes the output t (default T - 1) and moves the source tau = t - l: for uniform routing this profile
is flat (every past token gets ~1/t), so it shows how one output spreads over its past rather than a tail.

Estimators. The column view uses forward-mode AD: one Jacobian-vector product per tangent placed at
position tau gives dy_t/dx_tau · u for every t at once; with the D basis vectors as tangents (``probes``
None) the norm is exact, with k Gaussian probes it is the Hutchinson estimate
||J||_F^2 ~ mean_k ||J u_k||^2 (unbiased for the square). The row view uses D vector-Jacobian products
(one backward per output dim, or k Gaussian probes likewise). Forward-mode AD needs the plain PyTorch
paths, so attention and the feedback solve are switched to their "reference" backends meanwhile
(:func:`reference_backends`); results do not change, only speed.

Diffuse regime (:func:`diffuse_init_`): routing made input-independent and uniform, as in the theory.
Sessa: forward and feedback query/key projections scaled by ``routing_scale`` (0: alpha = uniform),
w_gamma = 0 and b_gamma = artanh(gamma / gamma_max) so gamma_t = gamma exactly. Attention: query/key
projections scaled likewise (uniform alpha_fwd). Mamba-2: the dt rows of in_proj zeroed and dt_bias set so
dt = ``ssm_dt`` at every step (no selective freezing: "failed freeze time"), A = -ssm_decay / ssm_dt so each
step decays the state by exp(-ssm_decay).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from sessa import registry
from sessa.analysis.operators import collect_mixer_inputs, mixer_operator, sessa_routing
from sessa.baselines.attention import AttentionMixer
from sessa.baselines.mamba2 import Mamba2Mixer
from sessa.modules.sessa_mixer import SessaMixer

VIEWS = ("column", "row")


class BlockStack(nn.Module):
    """Apply blocks in order, x: (B, T, D) -> (B, T, D); a tuple output contributes its first element."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(blocks) == 0:
            raise ValueError("blocks must hold at least one block")
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
            x = x[0] if isinstance(x, tuple) else x
        return x


def as_stack(model: nn.Module | Sequence[nn.Module]) -> nn.Module:
    """A module with forward(x) from a block, a stack module, or a list of blocks."""
    if isinstance(model, (list, tuple, nn.ModuleList)):
        return BlockStack(list(model))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or a sequence of blocks, got {type(model).__name__}")
    return model


# -- diffuse regime ---------------------------------------------------------------------------------------
def _scale_linear_(layer: nn.Module, scale: float) -> None:
    if isinstance(layer, nn.Linear):
        layer.weight.mul_(scale)
        if layer.bias is not None:
            layer.bias.mul_(scale)


@torch.no_grad()
def diffuse_init_(
    model: nn.Module,
    *,
    gamma: float = 0.5,
    routing_scale: float = 0.0,
    ssm_decay: float = 0.02,
    ssm_dt: float = 0.1,
) -> nn.Module:
    """Put every mixer of ``model`` that has a diffuse-regime rule (its registry entry's ``diffuse``) in the
    diffuse regime (see the module docstring); in place.

    gamma: Sessa feedback gain, 0 < gamma < gamma_max. routing_scale >= 0: factor on the query/key
    projections (0 = exactly uniform routing). ssm_decay > 0: per-step log-decay of Mamba-2's state;
    ssm_dt > 0: its constant step size. Returns ``model``.
    """
    if not routing_scale >= 0:
        raise ValueError(f"routing_scale must be >= 0, got {routing_scale!r}")
    if not (ssm_decay > 0 and ssm_dt > 0):
        raise ValueError(f"ssm_decay and ssm_dt must be > 0, got ssm_decay={ssm_decay!r}, ssm_dt={ssm_dt!r}")
    settings = dict(gamma=gamma, routing_scale=routing_scale, ssm_decay=ssm_decay, ssm_dt=ssm_dt)
    for module in model.modules():
        name = registry.mixer_name_of(module)
        rule = None if name is None else registry.mixer_spec(name).diffuse
        if rule is not None:
            registry.resolve(rule)(module, **settings)
    return model


@torch.no_grad()
def diffuse_sessa_(mixer: SessaMixer, *, gamma: float, routing_scale: float, **_: float) -> None:
    """Uniform routing (query/key projections scaled by routing_scale) and the constant gain gamma."""
    if not 0 < gamma < mixer.gamma_max:
        raise ValueError(f"gamma must be in (0, gamma_max={mixer.gamma_max}), got {gamma!r}")
    for layer in (mixer.q_proj, mixer.k_proj, getattr(mixer, "proj_fb", None)):
        _scale_linear_(layer, routing_scale)
    if mixer.use_feedback:
        mixer.gamma_ctx.weight.zero_()
        mixer.gamma_bias.fill_(math.atanh(gamma / mixer.gamma_max))


@torch.no_grad()
def diffuse_attention_(mixer: AttentionMixer, *, routing_scale: float, **_: float) -> None:
    """Uniform routing: query/key projections scaled by routing_scale."""
    _scale_linear_(mixer.q_proj, routing_scale)
    _scale_linear_(mixer.k_proj, routing_scale)


@torch.no_grad()
def diffuse_mamba2_(mixer: Mamba2Mixer, *, ssm_decay: float, ssm_dt: float, **_: float) -> None:
    """dt = ssm_dt at every step (the dt rows of in_proj zeroed) and A = -ssm_decay / ssm_dt."""
    dt_rows = slice(mixer.d_inner + mixer.conv_dim, None)
    mixer.in_proj.weight[dt_rows] = 0.0
    if mixer.in_proj.bias is not None:
        mixer.in_proj.bias[dt_rows] = 0.0
    mixer.dt_bias.fill_(ssm_dt + math.log(-math.expm1(-ssm_dt)))  # softplus^{-1}(ssm_dt)
    mixer.A_log.fill_(math.log(ssm_decay / ssm_dt))


@contextlib.contextmanager
def reference_backends(model: nn.Module) -> Iterator[nn.Module]:
    """Switch attention (SDPA) and the feedback solve to their plain PyTorch references inside the block
    (forward-mode AD has no rule for SDPA or the chunked solve's custom Function); restores them after."""
    saved = []
    for module in model.modules():
        is_attention = isinstance(module, AttentionMixer)
        attrs = ("backend",) if is_attention else ("attention_backend", "feedback_backend")
        for attr in attrs:
            value = getattr(module, attr, None)
            if isinstance(value, str) and value != "reference":
                saved.append((module, attr, value))
                setattr(module, attr, "reference")
    try:
        yield model
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)


# -- lag profiles ------------------------------------------------------------------------------------------
def _anchor(view: str, anchor: int | None, T: int) -> int:
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    anchor = (0 if view == "column" else T - 1) if anchor is None else anchor
    if not 0 <= anchor < T:
        raise ValueError(f"anchor must be in [0, T={T}), got {anchor}")
    return anchor


def lag_profile(matrix: torch.Tensor, view: str = "column", anchor: int | None = None) -> torch.Tensor:
    """matrix (..., T, T) indexed [t, tau] -> (..., L) with entry l = matrix[anchor + l, anchor] (column
    view, L = T - anchor) or matrix[anchor, anchor - l] (row view, L = anchor + 1)."""
    T = matrix.shape[-1]
    anchor = _anchor(view, anchor, T)
    if view == "column":
        return matrix[..., anchor:, anchor]
    return matrix[..., anchor, : anchor + 1].flip(-1)


def routing_influence(
    model: nn.Module | Sequence[nn.Module],
    x: torch.Tensor,
    *,
    view: str = "column",
    anchor: int | None = None,
) -> list[tuple[str, torch.Tensor]]:
    """Fixed-routing influence of every supported mixer in ``model`` on its input from ``model(x)``.

    x: (B, T, D). Returns [("<module name> (<mixer class>)", (L,) mean over inputs and heads of |J| at
    lags 0..L-1)], one entry per mixer in call order. Sessa's column is solved directly by the solve.
    """
    out = []
    T = x.shape[1]
    anchor = _anchor(view, anchor, T)
    for name, mixer, bar_a in collect_mixer_inputs(as_stack(model), x):
        with torch.no_grad():
            if isinstance(mixer, SessaMixer) and mixer.use_feedback and view == "column":
                q_b, k_b, gamma = mixer.feedback_inputs(bar_a)
                profile = sessa_routing(q_b, k_b, gamma, columns=[anchor])[:, anchor:, 0]
            else:
                profile = lag_profile(mixer_operator(mixer, bar_a).routing, view, anchor)
        label = f"{name} ({type(mixer).__name__})"
        out.append((label, profile.abs().reshape(-1, profile.shape[-1]).mean(0)))
    return out


# -- end-to-end influence ----------------------------------------------------------------------------------
def _tangents(D: int, probes: int | None, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """(k, D) tangent directions: the basis (exact) or k Gaussian probes scaled so sum_k ||J u_k||^2
    estimates ||J||_F^2."""
    if probes is None:
        return torch.eye(D, dtype=dtype)
    if probes < 1:
        raise ValueError(f"probes must be a positive int or None, got {probes!r}")
    return torch.randn(probes, D, dtype=dtype, generator=generator) / math.sqrt(probes)


def _column_sq_norms(
    model: nn.Module, x: torch.Tensor, anchor: int, u: torch.Tensor, max_batch: int
) -> torch.Tensor:
    """sum_k ||dy_t/dx_anchor · u_k||^2 for t >= anchor: (B, T - anchor), by batched JVPs."""
    B, T, D = x.shape
    per_call = max(1, max_batch // B)
    total = x.new_zeros(B, T - anchor)
    for start in range(0, u.shape[0], per_call):
        chunk = u[start : start + per_call].to(x)
        k = chunk.shape[0]
        tangent = x.new_zeros(k, B, T, D)
        tangent[:, :, anchor] = chunk[:, None, :]
        # no_grad: forward-mode AD needs no reverse graph, and recording one (the parameters require grad)
        # kept every layer's T x T intermediates alive: 3.8 GB instead of 0.7 GB for `sessa tail` defaults
        with warnings.catch_warnings(), torch.no_grad():  # the first forward-AD call uses torch.jit.script
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
            _, dy = torch.func.jvp(model, (x.repeat(k, 1, 1),), (tangent.reshape(k * B, T, D),))
        total += dy.reshape(k, B, T, D)[:, :, anchor:].pow(2).sum(dim=(0, 3))
    return total


def _row_sq_norms(model: nn.Module, x: torch.Tensor, anchor: int, u: torch.Tensor) -> torch.Tensor:
    """sum_k ||u_k · dy_anchor/dx_tau||^2 for tau <= anchor, ordered by lag: (B, anchor + 1), by VJPs."""
    x = x.detach().requires_grad_(True)
    y = model(x)[:, anchor]
    total = x.new_zeros(x.shape[0], anchor + 1)
    for i, direction in enumerate(u.to(x)):
        (grad,) = torch.autograd.grad(y, x, direction.expand_as(y), retain_graph=i + 1 < u.shape[0])
        total += grad[:, : anchor + 1].detach().pow(2).sum(-1).flip(-1)
    return total


def end_to_end_influence(
    model: nn.Module | Sequence[nn.Module],
    x: torch.Tensor,
    *,
    view: str = "column",
    anchor: int | None = None,
    probes: int | None = None,
    max_batch: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """Mean over inputs of ||dy_t/dx_tau||_F at lags l = t - tau (see the module docstring for the views
    and estimators). model: a block, a stack module or a list of blocks, (B, T, D) -> (B, T, D);
    x: (B, T, D) the inputs averaged over. probes: None = exact (D products), else k Gaussian probes.
    max_batch: rows per JVP call (the column view replicates x once per tangent). Returns (L,) float.
    """
    model = as_stack(model)
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, T, D), got {tuple(x.shape)}")
    B, T, D = x.shape
    anchor = _anchor(view, anchor, T)
    generator = torch.Generator().manual_seed(seed)
    u = _tangents(D, probes, x.dtype, generator)
    with reference_backends(model):
        if view == "column":
            sq = _column_sq_norms(model, x.detach(), anchor, u, max_batch)
        else:
            sq = _row_sq_norms(model, x, anchor, u)
    return sq.sqrt().mean(0).detach()
