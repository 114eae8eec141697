"""The memory tail of DESIGN §3: the uniform-routing construction and power-law / exponential tail fits.

Uniform routing: zero feedback queries and keys give alpha_fb[t, j] = 1/t for j < t, and a constant gain
gamma in (0, 1) (w_gamma = 0, b_gamma = artanh gamma, gamma_max = 1 in the construction). The impulse
response of the solve from a source tau, h_tau(l) = [(I - B_fb)^{-1}]_{tau + l, tau}, is then

    h_tau(0) = 1,   h_tau(l) = gamma * G(tau+1)/G(tau+1+gamma) * G(tau+l+gamma)/G(tau+l+1)   (l >= 1)

(G the Gamma function), a power law l^{-beta} with beta = 1 - gamma. :func:`uniform_routing_impulse`
computes it through the project's own ``feedback_solve``; :func:`uniform_routing_closed_form` evaluates
the formula, so the two check each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from sessa.ops.feedback import feedback_solve

# The uniform construction's impulse response is one scalar solve: a width-1 signal and 256-row chunks
# keep T = 8192 well under a second on one CPU core.
UNIFORM_CHUNK = 256


def _check_construction(T: int, gamma: float, tau: int) -> None:
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise ValueError(f"T must be an int >= 2, got {T!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be a number in the open interval (0, 1), got {gamma!r}")
    if isinstance(tau, bool) or not isinstance(tau, int) or not 0 <= tau < T:
        raise ValueError(f"tau must be an int with 0 <= tau < T = {T}, got {tau!r}")


def uniform_routing_impulse(
    T: int, gamma: float, tau: int = 0, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """h_tau(l) for l = 0..T-1-tau, solved by ``feedback_solve`` (chunked backend) on the construction.

    The solve gets zero feedback queries/keys of width 1 (so alpha_fb[t, j] = 1/t), a constant gain
    gamma and the unit impulse f = e_tau. Returns a (T - tau,) tensor of ``dtype``; entry l is the
    output at position tau + l.
    """
    _check_construction(T, gamma, tau)
    zeros = torch.zeros(1, T, 1, dtype=dtype)
    gains = torch.full((1, T, 1), float(gamma), dtype=dtype)
    impulse = torch.zeros(1, T, 1, dtype=dtype)
    impulse[0, tau, 0] = 1.0
    s = feedback_solve(zeros, zeros, gains, impulse, backend="chunked", chunk_size=UNIFORM_CHUNK)
    return s[0, tau:, 0]


def uniform_routing_closed_form(T: int, gamma: float, tau: int = 0) -> torch.Tensor:
    """The closed form of DESIGN §3 for l = 0..T-1-tau (float64), evaluated with lgamma."""
    _check_construction(T, gamma, tau)
    lags = torch.arange(1, T - tau, dtype=torch.float64)
    log_h = (
        math.log(gamma)
        + math.lgamma(tau + 1) - math.lgamma(tau + 1 + gamma)
        + torch.lgamma(tau + lags + gamma) - torch.lgamma(tau + lags + 1)
    )
    return torch.cat([torch.ones(1, dtype=torch.float64), log_h.exp()])


@dataclass(frozen=True)
class TailFit:
    """Least-squares tail fits of |v(l)|.

    beta: power law |v| ~ l^{-beta} (fit of log|v| on log l); exp_rate: exponential |v| ~ e^{-rate l}
    (fit of log|v| on l); the *_r2 fields are the coefficients of determination of those fits, and
    ``better`` names the fit with the larger R^2. n_points: points used.
    """

    beta: float
    beta_r2: float
    exp_rate: float
    exp_r2: float
    better: Literal["power", "exponential"]
    n_points: int

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _line_fit(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Slope and R^2 of the least-squares line y ~ a + b x (float64 inputs)."""
    xc, yc = x - x.mean(), y - y.mean()
    slope = (xc * yc).sum() / (xc * xc).sum()
    ss_res = ((yc - slope * xc) ** 2).sum()
    ss_tot = (yc * yc).sum()
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else torch.tensor(1.0 if ss_res == 0 else 0.0)
    return float(slope), float(r2)


def fit_tail(
    lags: torch.Tensor | Sequence[float],
    values: torch.Tensor | Sequence[float],
    *,
    min_lag: float = 1.0,
    max_lag: float | None = None,
) -> TailFit:
    """Fit a power law and an exponential to the magnitudes |values| over lags.

    lags, values: (N,) each. Points with lag < max(min_lag, 1) (lag 0 is never used), lag > max_lag, or a
    value whose magnitude is zero or not finite are ignored (they have no logarithm). Raises ValueError
    when fewer than 3 points remain. Points are weighted equally, so uniformly spaced lags weight the long
    end of the range; pass log-spaced lags (:func:`log_spaced_lags`) to weight every decade alike.
    """
    lag_t = torch.as_tensor(lags, dtype=torch.float64).flatten()
    val_t = torch.as_tensor(values, dtype=torch.float64).flatten().abs()
    if lag_t.shape != val_t.shape:
        raise ValueError(f"lags and values must have equal lengths, got {lag_t.numel()} and {val_t.numel()}")
    keep = (lag_t >= max(float(min_lag), 1.0)) & (val_t > 0) & torch.isfinite(val_t) & torch.isfinite(lag_t)
    if max_lag is not None:
        keep &= lag_t <= float(max_lag)
    n = int(keep.sum())
    if n < 3:
        raise ValueError(
            f"fit_tail needs at least 3 points with lag in [max(min_lag, 1), max_lag] and a nonzero finite "
            f"value, got {n} (min_lag={min_lag}, max_lag={max_lag}, {lag_t.numel()} points given)"
        )
    lag_t, log_v = lag_t[keep], val_t[keep].log()
    power_slope, power_r2 = _line_fit(lag_t.log(), log_v)
    exp_slope, exp_r2 = _line_fit(lag_t, log_v)
    better: Literal["power", "exponential"] = "power" if power_r2 >= exp_r2 else "exponential"
    return TailFit(-power_slope, power_r2, -exp_slope, exp_r2, better, n)


def log_spaced_lags(lo: int, hi: int, n: int) -> torch.Tensor:
    """About n distinct integer lags, evenly spaced in log, in [lo, hi] with lo >= 1: (<= n,) int64."""
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= lo <= hi, got lo={lo}, hi={hi}")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    grid = torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64)
    return torch.unique(grid.round().long().clamp(lo, hi))
