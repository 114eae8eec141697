"""Memory tail (DESIGN §3): the uniform construction through the solve, tail fits and influence by lag."""

from __future__ import annotations

import math

import pytest
import torch

from sessa.analysis import (
    BlockStack,
    diffuse_init_,
    end_to_end_influence,
    fit_tail,
    log_spaced_lags,
    routing_influence,
    ssd_matrix,
    tiny_stack,
    uniform_routing_closed_form,
    uniform_routing_impulse,
)
from sessa.baselines.attention import AttentionMixer
from sessa.baselines.mamba2 import Mamba2Mixer
from sessa.modules.blocks import GatedBlock
from sessa.modules.sessa_mixer import SessaMixer


@pytest.mark.parametrize("tau", [0, 1, 7, 300, 599])
@pytest.mark.parametrize("gamma", [0.3, 0.9])
def test_impulse_through_solve_matches_closed_form(tau: int, gamma: float) -> None:
    # T = 600 is not a multiple of the 256-row chunk
    h = uniform_routing_impulse(600, gamma, tau)
    ref = uniform_routing_closed_form(600, gamma, tau)
    assert h.shape == ref.shape == (600 - tau,)
    assert h[0] == 1.0
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-10)


def test_closed_form_first_steps() -> None:
    # s_1 = gamma s_0, s_2 = gamma/2 (s_0 + s_1): the recursion by hand, tau = 0
    g = 0.4
    h = uniform_routing_closed_form(4, g)
    assert h[:3].tolist() == pytest.approx([1.0, g, g * (1 + g) / 2], abs=1e-15)


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.75])
def test_fitted_beta_is_one_minus_gamma(gamma: float) -> None:
    # fit on every lag in [64, T): the Gamma-ratio's 1/l correction is negligible there
    T = 8192
    h = uniform_routing_impulse(T, gamma)
    fit = fit_tail(torch.arange(T), h, min_lag=64)
    assert abs(fit.beta - (1 - gamma)) < 0.02
    assert fit.better == "power" and fit.beta_r2 > 0.999
    assert fit.n_points == T - 64


def test_fit_recovers_exact_laws_and_ignores_bad_points() -> None:
    lags = torch.arange(0, 200, dtype=torch.float64)
    power = fit_tail(lags, 3.0 * lags.clamp_min(1) ** -0.7)
    assert power.beta == pytest.approx(0.7, abs=1e-12) and power.better == "power"
    assert power.n_points == 199  # lag 0 dropped
    values = -2.0 * torch.exp(-0.05 * lags)  # magnitudes are fitted, so the sign does not matter
    values[10] = 0.0  # no logarithm: ignored
    expo = fit_tail(lags, values)
    assert expo.exp_rate == pytest.approx(0.05, abs=1e-12) and expo.exp_r2 == pytest.approx(1.0)
    assert expo.better == "exponential" and expo.n_points == 198
    sub = fit_tail(lags, values, min_lag=20, max_lag=50)
    assert sub.n_points == 31


def test_fit_needs_three_points() -> None:
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_tail([0, 1, 2], [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="equal lengths"):
        fit_tail([1, 2, 3], [1.0, 0.5])


def test_log_spaced_lags() -> None:
    lags = log_spaced_lags(1, 1000, 30)
    assert lags[0] == 1 and lags[-1] == 1000 and bool((lags[1:] > lags[:-1]).all())
    with pytest.raises(ValueError, match="lo"):
        log_spaced_lags(0, 10, 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"T": 10, "gamma": 0.0}, "gamma"),
        ({"T": 10, "gamma": 1.0}, "gamma"),
        ({"T": 10, "gamma": -0.5}, "gamma"),
        ({"T": 1, "gamma": 0.5}, "T must be"),
        ({"T": 10, "gamma": 0.5, "tau": 10}, "tau"),
        ({"T": 10, "gamma": 0.5, "tau": -1}, "tau"),
    ],
)
def test_bad_construction_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        uniform_routing_impulse(**kwargs)
    with pytest.raises(ValueError, match=match):
        uniform_routing_closed_form(**kwargs)


# -- influence in the diffuse regime ------------------------------------------------------------------------
def test_uniform_attention_influence_is_one_over_t_plus_one() -> None:
    torch.manual_seed(0)
    D, T, tau = 16, 40, 5
    mixer = diffuse_init_(AttentionMixer(D, n_heads=4).double())
    x = torch.randn(3, T, D, dtype=torch.float64)
    ((_, profile),) = routing_influence(mixer, x, anchor=tau)
    t = torch.arange(tau, T, dtype=torch.float64)
    torch.testing.assert_close(profile, 1.0 / (t + 1), rtol=1e-12, atol=0)
    # end to end through the bare mixer: dy_t/dx_tau = W_o W_v / (t + 1) exactly
    e2e = end_to_end_influence(mixer, x, anchor=tau)
    scale = torch.linalg.matrix_norm(mixer.out_proj.weight @ mixer.v_proj.weight).detach()
    torch.testing.assert_close(e2e, scale / (t + 1), rtol=1e-10, atol=0)
    row = end_to_end_influence(mixer, x, view="row")  # output T-1 reads every source equally
    flat = torch.full((T,), float(scale) / T, dtype=torch.float64)
    torch.testing.assert_close(row, flat, rtol=1e-10, atol=0)


def test_diffuse_sessa_routing_is_the_uniform_construction() -> None:
    torch.manual_seed(0)
    gamma, T = 0.6, 70
    stack = diffuse_init_(tiny_stack("sessa", 16, 2), gamma=gamma)
    x = torch.randn(2, T, 16, dtype=torch.float64)
    profiles = routing_influence(stack, x)
    assert [name for name, _ in profiles] == ["blocks.0.mixer (SessaMixer)", "blocks.1.mixer (SessaMixer)"]
    for tau in (0, 9):
        ((_, profile),) = routing_influence(BlockStack([stack.blocks[0]]), x, anchor=tau)
        closed = uniform_routing_closed_form(T, gamma, tau)
        torch.testing.assert_close(profile, closed, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="gamma"):
        diffuse_init_(tiny_stack("sessa", 16, 1), gamma=0.9995)


def test_constant_decay_ssm_kernel_prefers_exponential() -> None:
    T, rate = 300, 0.03
    dt = torch.full((1, T, 1), 0.1, dtype=torch.float64)
    A = torch.tensor([-rate / 0.1], dtype=torch.float64)
    B = torch.randn(1, T, 1, 4, dtype=torch.float64).abs() + 0.5
    M = ssd_matrix(dt, A, torch.ones_like(B), torch.ones_like(B))
    fit = fit_tail(torch.arange(T), M[0, 0, :, 0])
    assert fit.better == "exponential" and fit.exp_rate == pytest.approx(rate, rel=1e-10)
    # the same through a diffuse Mamba-2 block (input-dependent B, C): still exponential at the set rate
    torch.manual_seed(0)
    block = diffuse_init_(GatedBlock(16, Mamba2Mixer, d_state=8, headdim=8).double(), ssm_decay=rate)
    x = torch.randn(4, T, 16, dtype=torch.float64)
    ((_, profile),) = routing_influence(block, x)
    fit = fit_tail(torch.arange(T), profile, min_lag=8)
    assert fit.better == "exponential" and fit.exp_rate == pytest.approx(rate, rel=0.15)


def test_views_match_the_full_jacobian() -> None:
    torch.manual_seed(0)
    D, T = 4, 7
    stack = BlockStack([GatedBlock(D, SessaMixer, n_heads=2, layer_idx=i) for i in range(2)]).double()
    x = torch.randn(1, T, D, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda z: stack(z)[0], x)[:, :, 0]  # (T, D, T, D)
    norms = torch.linalg.matrix_norm(jac.permute(0, 2, 1, 3))  # (t, tau)
    column = end_to_end_influence([*stack.blocks], x, anchor=2)
    torch.testing.assert_close(column, norms[2:, 2], rtol=1e-10, atol=1e-14)
    row = end_to_end_influence(stack, x, view="row", anchor=5)
    torch.testing.assert_close(row, norms[5, :6].flip(0), rtol=1e-10, atol=1e-14)
    assert stack.blocks[0].mixer.feedback_backend == "auto"  # backends restored after the JVPs


def test_probe_estimate_is_close_to_exact() -> None:
    torch.manual_seed(0)
    block = GatedBlock(16, SessaMixer, n_heads=2).double()
    x = torch.randn(4, 20, 16, dtype=torch.float64)
    exact = end_to_end_influence(block, x)
    estimate = end_to_end_influence(block, x, probes=64, seed=1)
    assert ((estimate - exact).abs() / exact).mean() < 0.15
    with pytest.raises(ValueError, match="probes"):
        end_to_end_influence(block, x, probes=0)
    with pytest.raises(ValueError, match="view"):
        end_to_end_influence(block, x, view="diagonal")
    with pytest.raises(ValueError, match="anchor"):
        end_to_end_influence(block, x, anchor=20)


def test_diffuse_tails_order_sessa_attention_mamba() -> None:
    """Small version of `sessa tail`: Sessa's tail is heavier than attention's, Mamba-2's is exponential."""
    T, betas = 256, {}
    x = torch.randn(2, T, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for kind in ("sessa", "attention", "mamba2"):
        stack = diffuse_init_(tiny_stack(kind, 16, 1), gamma=0.5)
        profile = end_to_end_influence(stack, x, probes=4)
        betas[kind] = fit_tail(torch.arange(T), profile, min_lag=8)
    assert betas["sessa"].better == betas["attention"].better == "power"
    assert betas["mamba2"].better == "exponential"
    assert abs(betas["sessa"].beta - 0.5) < 0.1 and abs(betas["attention"].beta - 1.0) < 0.1
    assert not math.isnan(betas["mamba2"].exp_rate)


def test_column_jacobians_record_no_reverse_graph() -> None:
    """The forward-mode JVPs run without recording a backward graph (which kept every layer's T x T
    intermediates alive: `sessa tail` peaked at 4 GB), and give the same influence as with one."""
    stack = tiny_stack("sessa", 8, 2, seed=0)
    seen: list[bool] = []
    for block in stack.blocks:
        block.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    x = torch.randn(2, 24, 8, dtype=torch.float64)
    influence = end_to_end_influence(stack, x, probes=3)
    assert seen and not any(seen)
    assert torch.isfinite(influence).all() and influence.shape == (24,)
