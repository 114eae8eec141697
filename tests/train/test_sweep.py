"""`sessa sweep`: lr chosen on validation (never test), diverged runs reported, results schema, reuse."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from sessa.train.sweep import SweepConfig, select  # noqa: E402
from tests.train.common import TASK  # noqa: E402

RUN_KEYS = {
    "task",
    "model",
    "seed",
    "lr",
    "warmup",
    "steps",
    "batch_size",
    "params",
    "valid",
    "test",
    "diverged",
    "status",
    "out_dir",
}


def row(model, lr, seed, valid, test, status="ok", higher=True):
    return {
        "model": model,
        "lr": lr,
        "seed": seed,
        "valid": valid,
        "test": test,
        "status": status,
        "metric": "accuracy" if higher else "bpb",
        "higher_is_better": higher,
        "params": 10,
        "tokens_per_s": 1.0,
    }


def test_select_uses_validation_not_test_and_skips_unhealthy_lrs():
    runs = [
        row("a", 1e-4, 0, valid=0.60, test=0.90),
        row("a", 1e-4, 1, valid=0.62, test=0.88),  # best on test
        row("a", 3e-4, 0, valid=0.70, test=0.50),
        row("a", 3e-4, 1, valid=0.72, test=0.52),  # best on valid
        row("a", 1e-3, 0, valid=0.99, test=0.99),
        row("a", 1e-3, 1, valid=None, test=None, status="diverged"),
    ]
    pick = select(runs)["a"]
    assert pick["lr"] == 3e-4 and pick["valid_mean"] == pytest.approx(0.71)
    assert pick["test_mean"] == pytest.approx(0.51) and pick["test_std"] == pytest.approx(0.01414, abs=1e-4)
    assert pick["seeds"] == 2


def test_select_lower_is_better_and_all_diverged():
    runs = [
        row("lm", 1e-4, 0, valid=2.0, test=2.1, higher=False),
        row("lm", 1e-3, 0, 1.5, 1.6, higher=False),
        row("x", 1e-3, 0, None, None, status="diverged"),
        row("x", 1e-2, 0, 0.9, 0.9, status="unhealthy"),
    ]
    picks = select(runs)
    assert picks["lm"]["lr"] == 1e-3
    assert picks["x"]["lr"] is None and "diverged" in picks["x"]["reason"]


def test_sweep_config_errors():
    with pytest.raises(ValueError, match="unknown model"):
        SweepConfig(models=["gpt"])
    with pytest.raises(ValueError, match="lr must be a finite number"):
        SweepConfig(lrs=[0.0])
    with pytest.raises(ValueError, match="swept"):
        SweepConfig(train_overrides={"lr": 1e-3})
    with pytest.raises(ValueError, match="parallel"):
        SweepConfig(parallel=0)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "sessa", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_cli_sweep_end_to_end_tiny(tmp_path):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--task",
        "mqar",
        "--models",
        "sessa",
        "--lrs",
        "3e-3",
        "50",
        "--seeds",
        "0",
        "1",
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--parallel",
        "2",
        "--device",
        "cpu",
        "--out-dir",
        str(out),
        "--set",
        f"task_options={TASK!r}",
        "--set",
        "model_options={'n_layers': 1}",
        "--set",
        "log_every=2",
    ]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "mqar" / "results.json").read_text())
    assert len(result["runs"]) == 4
    for r in result["runs"]:
        assert RUN_KEYS <= set(r), RUN_KEYS - set(r)
        assert r["steps"] == 6 and r["batch_size"] == 8 and r["task"] == "mqar"
    bad = [r for r in result["runs"] if r["lr"] == 50]
    assert all(r["diverged"] and r["status"] in ("diverged", "unhealthy") for r in bad)
    good = [r for r in result["runs"] if r["lr"] == 3e-3]
    assert all(r["status"] == "ok" and not r["diverged"] and 0 <= r["valid"] <= 1 for r in good)
    pick = result["selected"]["sessa"]
    assert pick["lr"] == 3e-3 and pick["seeds"] == 2
    assert pick["valid_mean"] == pytest.approx(sum(r["valid"] for r in good) / 2)
    md = (out / "mqar" / "results.md").read_text()
    assert "| sessa | 0.003 |" in md and ("diverged" in md or "unhealthy" in md)
    assert (out / "mqar" / "valid_vs_lr.png").exists()
    refused = run_cli(*args)  # the folder holds a sweep: never replaced silently
    assert refused.returncode == 2 and "--resume" in refused.stderr and "--overwrite" in refused.stderr
    again = run_cli(*args, "--resume")  # every run finished: nothing is retrained
    assert again.returncode == 0 and "reusing 4 finished run(s)" in again.stdout
    assert json.loads((out / "mqar" / "results.json").read_text())["runs"] == result["runs"]
    final = run_cli(*args, "--final-seeds", "2", "--resume")  # one more seed at the selected lr only
    assert final.returncode == 0, final.stderr[-3000:]
    assert "reusing 4 finished run(s)" in final.stdout
    confirmed = json.loads((out / "mqar" / "results.json").read_text())
    extra = [r for r in confirmed["runs"] if r.get("final")]
    assert [(r["lr"], r["seed"]) for r in extra] == [(3e-3, 2)]
    pick = confirmed["selected"]["sessa"]
    assert pick["lr"] == 3e-3 and pick["seeds"] == 3
    tests = [r["test"] for r in confirmed["runs"] if r["lr"] == 3e-3]
    assert pick["test_mean"] == pytest.approx(sum(tests) / 3)


def test_paper_suite_resolves_to_the_lrs_the_sweep_selected():
    """The `paper` suite's lrs are the picks recorded in docs/paper/<task>/results.json (no training)."""
    from pathlib import Path

    from sessa.train.compare import PAPER_LRS, CompareConfig

    root = Path(__file__).resolve().parents[2] / "docs" / "paper"
    for task in ("symbolsoup", "diffuse_mqar", "bytelm"):
        recorded = json.loads((root / task / "results.json").read_text())
        picks = {m: p["lr"] for m, p in recorded["selected"].items()}
        assert picks == PAPER_LRS[task]
        cfg = CompareConfig(suite="paper", tasks=[task], models=list(picks))
        for model, lr in picks.items():
            run = cfg.run_config(task, model, 0)
            assert run.lr == lr and run.warmup == round(0.1 * run.steps) and run.preset == "small"
            sweep_run = next(r for r in recorded["runs"] if r["model"] == model and r["lr"] == lr)
            assert (run.steps, run.batch_size, run.warmup) == (
                sweep_run["steps"],
                sweep_run["batch_size"],
                sweep_run["warmup"],
            )
    with pytest.raises(ValueError, match="no selected lr for model 'mamba'"):
        paper = CompareConfig(suite="paper", tasks=["symbolsoup"], models=["mamba"])
        paper.run_config("symbolsoup", "mamba", 0)
    table = json.loads((root / "results.json").read_text())["runs"]
    for setting in ("symbolsoup", "diffuse_mqar", "bytelm", "symbolsoup_d384"):
        per_setting = json.loads((root / setting / "results.json").read_text())["runs"]
        rows = [r for r in table if r["setting"] == setting]
        assert [(r["model"], r["lr"], r["seed"], r["test"]) for r in rows] == [
            (r["model"], r["lr"], r["seed"], r["test"]) for r in per_setting
        ]
        assert all(r["status"] != "ok" or r["valid"] is not None for r in rows)
