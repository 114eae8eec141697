"""The training-health monitor: its statistics on hand-built states, and when its alarm fires."""

import math

import pytest
import torch

pytest.importorskip("transformers")

from sessa.models import SessaConfig, SessaForCausalLM  # noqa: E402
from sessa.train.health import (  # noqa: E402
    HealthMonitor,
    HealthState,
    diagnose,
    feedback_stats,
    masked_rms,
    replay,
    update,
)


def test_masked_rms_ignores_padding():
    x = torch.zeros(1, 4, 2)
    x[0, :2] = 3.0
    x[0, 2:] = 100.0  # padding
    real = torch.tensor([[True, True, False, False]])
    assert masked_rms(x, real) == pytest.approx(3.0)


def test_feedback_stats_uniform_routing_has_entropy_one():
    B, T, D = 2, 9, 4
    zeros = torch.zeros(B, T, D)  # q_b = 0: every row's softmax is uniform over its past
    gamma = torch.full((B, T, 1), 0.5)
    real = torch.ones(B, T, dtype=torch.bool)
    stats = feedback_stats(zeros, zeros, gamma, real)
    assert stats["fb_entropy"] == pytest.approx(1.0, abs=1e-6)
    assert stats["gamma_mean"] == pytest.approx(0.5)
    assert stats["gamma_sat"] == 0.0


def test_feedback_stats_one_hot_routing_and_saturated_gain():
    T, D = 8, 4
    k = torch.zeros(1, T, D)
    k[0, 0, 0] = 1.0  # only key 0 matches
    q = torch.zeros(1, T, D)
    q[..., 0] = 1e4  # huge logits on key 0: one-hot rows
    gamma = torch.tensor([0.99, -0.97, 0.5, 0.99, 0.99, 0.99, 0.1, 0.99]).view(1, T, 1)
    stats = feedback_stats(q, k, gamma, torch.ones(1, T, dtype=torch.bool))
    assert stats["fb_entropy"] < 1e-3
    assert stats["gamma_sat"] == pytest.approx(6 / 8)


def test_feedback_stats_entropy_by_hand_and_padding_excluded():
    # Row t = 2 of one sequence with logits (0, log 3): p = (1/4, 3/4); entropy / log 2 by hand.
    D = 1
    q = torch.tensor([[[0.0], [0.0], [1.0], [5.0]]])
    k = torch.tensor([[[0.0], [math.log(3.0)], [0.0], [0.0]]])  # sqrt(D) = 1
    real = torch.tensor([[True, True, True, False]])  # row 3 is padding
    stats = feedback_stats(q, k, torch.zeros(1, 4, D), real)
    p = torch.tensor([0.25, 0.75])
    expected = -(p * p.log()).sum().item() / math.log(2)
    assert stats["fb_entropy"] == pytest.approx(expected, rel=1e-6)


def healthy_stats(n_layers=4, scale=1.0):
    stats = {}
    for i in range(n_layers):
        stats[f"L{i}.resid_rms"] = 0.1 * scale
        stats[f"L{i}.mixer_rms"] = 0.05
        stats[f"L{i}.gamma_mean"] = 0.7
        stats[f"L{i}.gamma_sat"] = 0.0
        stats[f"L{i}.fb_entropy"] = 0.8
    return stats


def test_diagnose_quiet_on_healthy_and_fires_on_saturation():
    state = HealthState(start=healthy_stats(), start_step=0)
    assert diagnose(healthy_stats(scale=5.0), state, 100, loss=3.0) == []
    sick = healthy_stats()
    for i in (1, 3):  # half of the Sessa layers saturated with one-hot routing
        sick[f"L{i}.gamma_sat"], sick[f"L{i}.fb_entropy"] = 0.9, 0.02
    warnings = diagnose(sick, state, 500)
    assert [w.kind for w in warnings] == ["feedback_saturated"]
    assert warnings[0].layer == 1 and "lower --lr" in warnings[0].message
    one = healthy_stats()
    one["L0.gamma_sat"], one["L0.fb_entropy"] = 0.9, 0.02  # one layer of four: not the signature
    assert diagnose(one, state, 500) == []


def test_growth_alone_is_not_an_alarm_but_explosion_and_stalled_growth_are():
    state = HealthState()
    assert update(state, healthy_stats(), 0, None) == [] and state.start_step == 0
    grown = healthy_stats()
    grown["L2.resid_rms"] = 0.1 * 160  # attention at lr 2e-3 grew 160x and learned best (docs/paper)
    assert update(state, grown, 100, loss=2.7) == [] and state.first_loss == 2.7
    assert update(state, grown, 200, loss=1.9) == [] and state.active == []  # learning: no alarm
    stalled = HealthState()
    update(stalled, healthy_stats(), 0, None)
    update(stalled, grown, 100, loss=3.0)
    warnings = update(stalled, grown, 200, loss=2.995)  # loss at chance, activations drifting
    assert [(w.kind, w.layer) for w in warnings] == [("stalled_growth", 2)]
    assert "has not fallen since step 100 (3.000 -> 2.995)" in warnings[0].message
    assert update(stalled, grown, 300, loss=2.99) == [] and stalled.active == ["stalled_growth"]  # once
    assert update(stalled, healthy_stats(), 400, loss=2.0) == [] and stalled.active == []  # recovered
    exploded = healthy_stats()
    exploded["L3.resid_rms"] = 0.1 * 5000
    warnings = diagnose(exploded, HealthState(start=healthy_stats(), start_step=10), 300, loss=1.0)
    assert [(w.kind, w.layer) for w in warnings] == [("resid_explosion", 3)]
    assert "5000x since step 10" in warnings[0].message
    nan = healthy_stats()
    nan["L3.mixer_rms"] = float("nan")
    assert [w.kind for w in diagnose(nan, HealthState(start=healthy_stats()), 500)] == ["non_finite"]


def test_replay_of_a_metrics_file_matches_the_live_rule():
    def health_rows(step, stats):
        return [
            {"step": str(step), "split": "health", "metric": k, "value": str(v)} for k, v in stats.items()
        ]

    rows = health_rows(0, healthy_stats())
    for step, loss, scale in ((100, 3.0, 300.0), (200, 2.999, 300.0)):
        rows.append({"step": str(step), "loss": str(loss), "split": "", "metric": "", "value": ""})
        rows += health_rows(step, healthy_stats(scale=scale))
    state = replay(rows)
    assert [w["kind"] for w in state.warnings] == ["stalled_growth"] and state.active == ["stalled_growth"]
    assert state.warnings[0]["step"] == 200


def tiny_model():
    torch.manual_seed(0)
    return SessaForCausalLM(SessaConfig.from_preset("tiny", vocab_size=300, n_layers=2)).eval()


def test_monitor_measures_a_real_model_and_alarms_on_a_saturated_state():
    model = tiny_model()
    probe = torch.randint(0, 32, (3, 40))
    monitor = HealthMonitor(model, probe, torch.tensor([40, 30, 12]), torch.device("cpu"))
    stats, warnings = monitor.check(0)
    assert warnings == []
    assert set(stats) == {
        f"L{i}.{k}"
        for i in range(2)
        for k in ("resid_rms", "mixer_rms", "gamma_mean", "gamma_sat", "fb_entropy")
    }
    assert 0.5 < stats["L0.fb_entropy"] <= 1.0  # near-uniform routing at initialisation
    assert stats["L0.gamma_mean"] == pytest.approx(0.999 * math.tanh(1.0), abs=0.1)  # gamma_bias init 1
    with torch.no_grad():  # the divergence signature: saturated gains and one-hot feedback softmax
        for block in model.model.layers:
            block.mixer.gamma_bias.fill_(20.0)
            block.mixer.proj_fb.weight.mul_(300.0)
    stats, warnings = monitor.check(50)
    assert [w.kind for w in warnings] == ["feedback_saturated"]
    assert stats["L0.gamma_sat"] == 1.0 and stats["L0.fb_entropy"] < 0.1
    assert monitor.state_dict()["warnings"][0]["step"] == 50


def test_monitor_skips_feedback_stats_for_other_mixers():
    torch.manual_seed(0)
    model = SessaForCausalLM(SessaConfig.from_preset("tiny-attention"))
    monitor = HealthMonitor(model, torch.randint(0, 32, (2, 16)), torch.tensor([16, 16]), torch.device("cpu"))
    stats = monitor.measure()
    assert set(stats) == {f"L{i}.{k}" for i in range(2) for k in ("resid_rms", "mixer_rms")}
