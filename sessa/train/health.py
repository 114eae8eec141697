"""Training-health monitor: per-layer activation statistics on a small fixed probe batch, and an alarm that
names the layer when a run shows the divergence signature.

Measured every log step with one extra no-grad forward of the probe (a few rows of the validation split):

* ``L{i}.resid_rms``: RMS of block i's output (the residual stream after it), real positions only;
* ``L{i}.mixer_rms``: RMS of block i's mixer output;
* Sessa layers with feedback: ``L{i}.gamma_mean`` (mean gain γ), ``L{i}.gamma_sat`` (fraction of positions
  with |γ| > 0.95) and ``L{i}.fb_entropy`` (mean over rows t >= 2 of the feedback softmax's entropy divided
  by log t: 1 = uniform routing, 0 = one-hot).

The divergence signature seen on SymbolSoup at lr 1e-3 with a 20-step warm-up (benchmarks/RESULTS.md): the
residual RMS grows from ~0.1 to 13-2,200 within a few hundred steps while the loss stays at chance; in Sessa,
γ saturates at ±1 and the feedback softmax turns one-hot (tanh' ≈ 0 and a one-hot softmax pass almost no
gradient, so the run never recovers). Growth alone is not the signature: in the paper-suite lr sweep
(docs/paper/) attention at lr 2e-3 learned best while its residual RMS grew 160x. The alarm fires on

* ``resid_explosion``: a layer's residual RMS above ``explosion`` (1000) x its first measurement;
* ``stalled_growth``: the training loss no lower than 98% of its first logged value while a layer's
  residual RMS grew more than ``stall_growth`` (20) x (the run is not learning and its activations drift);
* ``feedback_saturated``: at least half of the Sessa layers with ``gamma_sat`` > 0.5 and ``fb_entropy`` < 0.1;
* ``non_finite``: NaN/inf statistics.

:func:`replay` runs the same rule over a finished run's metrics.csv.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sessa.train.evaluate import autocast_for

SAT_LEVEL = 0.95  # |γ| above this counts as saturated
FIX = "lower --lr (about 3x) or lengthen the warm-up (--warmup-fraction 0.1)"


def masked_rms(x: torch.Tensor, real: torch.Tensor) -> float:
    """RMS of x: (B, T, D) over the positions where real: (B, T) is True."""
    x = x.float()[real]
    return math.sqrt(x.pow(2).mean().item()) if x.numel() else 0.0


def feedback_stats(
    q_b: torch.Tensor, k_b: torch.Tensor, gamma: torch.Tensor, real: torch.Tensor
) -> dict[str, float]:
    """γ mean, saturated fraction and the feedback softmax's normalised entropy (DESIGN: alpha_fb rows).

    q_b, k_b: (B, T, D); gamma: (B, T, 1); real: (B, T) bool, True at real (non-padding) positions. Rows
    t >= 2 are scored (row 0 has no past, row 1 a single key); keys are the real positions j < t.
    """
    q_b, k_b, g = q_b.float(), k_b.float(), gamma.float()[..., 0]
    T = q_b.shape[1]
    logits = q_b @ k_b.transpose(1, 2) / math.sqrt(q_b.shape[-1])
    keys = torch.ones(T, T, dtype=torch.bool, device=q_b.device).tril(-1)[None] & real[:, None, :]
    logp = torch.log_softmax(logits.masked_fill(~keys, -torch.inf), dim=-1)
    p = logp.exp()
    entropy = -(p * logp.masked_fill(~keys, 0.0)).sum(-1)  # (B, T)
    n_keys = keys.sum(-1)
    rows = real & (n_keys >= 2)
    norm_entropy = entropy[rows] / n_keys[rows].float().log()
    gs = g[real]
    return {
        "gamma_mean": gs.mean().item() if gs.numel() else 0.0,
        "gamma_sat": (gs.abs() > SAT_LEVEL).float().mean().item() if gs.numel() else 0.0,
        "fb_entropy": norm_entropy.mean().item() if norm_entropy.numel() else 1.0,
    }


@dataclass
class HealthWarning:
    step: int
    kind: str  # "resid_explosion", "stalled_growth", "feedback_saturated" or "non_finite"
    layer: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "layer": self.layer, "message": self.message}


@dataclass
class HealthState:
    """What the monitor carries between measurements (saved in checkpoints so a resumed run continues it)."""

    start: dict[str, float] = field(default_factory=dict)  # the first measurement (the growth baseline)
    start_step: int = 0
    warnings: list[dict[str, Any]] = field(default_factory=list)
    first_loss: float | None = None  # the first training loss seen (the "has it learned" baseline)
    first_loss_step: int = 0
    active: list[str] = field(default_factory=list)  # alarm kinds whose condition held at the last check


def diagnose(
    stats: dict[str, float],
    state: HealthState,
    step: int,
    loss: float | None = None,
    explosion: float = 1000.0,
    stall_growth: float = 20.0,
) -> list[HealthWarning]:
    """The alarm conditions that hold for ``stats`` (one measurement, keys ``L{i}.<stat>``) and the training
    ``loss`` at ``step`` (the first loss seen is kept in ``state`` as the baseline)."""
    found: list[HealthWarning] = []
    if loss is not None and state.first_loss is None and math.isfinite(loss):
        state.first_loss, state.first_loss_step = loss, step
    bad = sorted(k for k, v in stats.items() if not math.isfinite(v))
    if bad:
        message = f"non-finite activations ({', '.join(bad[:4])}): the run has diverged; {FIX}"
        found.append(HealthWarning(step, "non_finite", _layer_of(bad[0]), message))
    growth = [
        (v / state.start[k], k)
        for k, v in stats.items()
        if k.endswith(".resid_rms") and state.start.get(k, 0.0) > 0 and math.isfinite(v)
    ]
    ratio, key = max(growth) if growth else (0.0, "")
    grew = f"the residual RMS after layer {_layer_of(key) if key else '?'} grew {ratio:.0f}x since step " + (
        f"{state.start_step} ({state.start[key]:.3g} -> {stats[key]:.3g})" if key else ""
    )
    if ratio > explosion:
        message = f"{grew}: the run is diverging; {FIX}"
        found.append(HealthWarning(step, "resid_explosion", _layer_of(key), message))
    first = state.first_loss
    stalled = loss is not None and first is not None and step > state.first_loss_step and loss >= 0.98 * first
    if stalled and stall_growth < ratio <= explosion:
        found.append(
            HealthWarning(
                step,
                "stalled_growth",
                _layer_of(key),
                f"the training loss has not fallen since step {state.first_loss_step} "
                f"({state.first_loss:.3f} -> "
                f"{loss:.3f}) while {grew}; {FIX}",
            )
        )
    layers = sorted({_layer_of(k) for k in stats if k.endswith(".gamma_sat")})
    stuck = [i for i in layers if stats[f"L{i}.gamma_sat"] > 0.5 and stats[f"L{i}.fb_entropy"] < 0.1]
    if layers and 2 * len(stuck) >= len(layers):
        found.append(
            HealthWarning(
                step,
                "feedback_saturated",
                stuck[0],
                f"feedback saturated in Sessa layers {stuck} of {layers} (|gamma| > {SAT_LEVEL} and a "
                "one-hot "
                f"feedback softmax): these layers pass almost no gradient and rarely recover; {FIX}",
            )
        )
    return found


def update(state: HealthState, stats: dict[str, float], step: int, loss: float | None) -> list[HealthWarning]:
    """Diagnose one measurement into ``state`` (baseline on the first call, the conditions active now);
    returns the warnings of kinds that had not fired before (each kind is announced once)."""
    if not state.start:
        state.start, state.start_step = dict(stats), step
    active = diagnose(stats, state, step, loss)
    state.active = [w.kind for w in active]
    fired = {w["kind"] for w in state.warnings}
    new = [w for w in active if w.kind not in fired]
    state.warnings += [w.to_dict() for w in new]
    return new


def replay(rows: list[dict[str, str]]) -> HealthState:
    """The monitor's final state from a finished run's metrics.csv rows (its health rows and train losses):
    ``warnings`` (each kind when it first fired) and ``active`` (the conditions at the last measurement)."""
    state = HealthState()
    losses = {int(r["step"]): float(r["loss"]) for r in rows if r.get("loss")}
    for step in sorted({int(r["step"]) for r in rows if r.get("split") == "health"}):
        stats = {
            r["metric"]: float(r["value"])
            for r in rows
            if r.get("split") == "health" and int(r["step"]) == step
        }
        update(state, stats, step, losses.get(step))
    return state


def _layer_of(key: str) -> int:
    return int(key.split(".", 1)[0][1:])


class HealthMonitor:
    """Measures a model's health on a fixed probe batch; ``check(step)`` measures and diagnoses.

    model: a causal LM whose blocks are ``model.model.layers`` (SessaForCausalLM) each with a ``.mixer``;
    probe: (B, T) token ids; lengths: (B,) real lengths (positions past them are padding).
    """

    def __init__(
        self,
        model: nn.Module,
        probe: torch.Tensor,
        lengths: torch.Tensor,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        self.model, self.device, self.amp = model, device, amp_dtype
        self.probe = probe.to(device)
        self.real = (torch.arange(probe.shape[1])[None] < lengths[:, None]).to(device)
        self.state = HealthState()

    def _blocks(self) -> list[nn.Module]:
        return list(getattr(self.model, "model", self.model).layers)

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        """One no-grad forward of the probe: ``{"L{i}.<stat>": value}`` for every block i.

        Everything is computed inside forward hooks, while FSDP still holds the block's gathered weights."""
        stats: dict[str, float] = {}
        hooks = []
        for i, block in enumerate(self._blocks()):
            hooks.append(block.register_forward_hook(self._block_hook(stats, i)))
            hooks.append(block.mixer.register_forward_hook(self._mixer_hook(stats, i)))
        was_training = self.model.training
        self.model.eval()
        try:
            with autocast_for(self.device, self.amp):
                self.model(input_ids=self.probe)
        finally:
            for h in hooks:
                h.remove()
            self.model.train(was_training)
        return stats

    def _block_hook(self, stats: dict[str, float], i: int):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:  # noqa: ARG001
            stats[f"L{i}.resid_rms"] = masked_rms(output, self.real)

        return hook

    def _mixer_hook(self, stats: dict[str, float], i: int):  # noqa: ANN202
        def hook(mixer: nn.Module, args: tuple, output: torch.Tensor) -> None:
            stats[f"L{i}.mixer_rms"] = masked_rms(output, self.real)
            if getattr(mixer, "use_feedback", False):
                q_b, k_b, gamma = mixer.feedback_inputs(args[0])
                for name, value in feedback_stats(q_b, k_b, gamma, self.real).items():
                    stats[f"L{i}.{name}"] = value

        return hook

    def check(self, step: int, loss: float | None = None) -> tuple[dict[str, float], list[HealthWarning]]:
        """Measure at ``step`` (``loss``: the training loss logged there, if any); the first call sets the
        growth baseline. Returns (stats, new warnings)."""
        stats = self.measure()
        return stats, update(self.state, stats, step, loss)

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.state)

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.state = HealthState(**data)
