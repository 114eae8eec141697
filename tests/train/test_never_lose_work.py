"""Runs never lose work: guarded folders, resume that checks its settings, extension, interrupts, resumable
compare (CPU, tiny models)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from sessa.train import checkpoint as ckpt  # noqa: E402
from sessa.train.compare import CompareConfig, compare  # noqa: E402
from sessa.train.config import TrainConfig  # noqa: E402
from sessa.train.trainer import Trainer, TrainingInterrupted, lr_lambda, train  # noqa: E402
from tests.train.common import TASK, losses, tiny_config  # noqa: E402


def tiny(out: Path, **kw) -> TrainConfig:
    return tiny_config(out, **{"ckpt_every": 4, "model_options": {"n_layers": 1}, **kw})


def test_a_finished_run_is_never_replaced_silently(tmp_path):
    out = tmp_path / "run"
    train(tiny(out), quiet=True)
    before = (out / "metrics.csv").read_text()
    with pytest.raises(ValueError, match="--resume .* --overwrite"):
        train(tiny(out, steps=4), quiet=True)
    assert (out / "metrics.csv").read_text() == before and ckpt.latest_checkpoint(out / "checkpoints")
    (out / "notes.txt").write_text("mine")
    train(tiny(out, steps=4), overwrite=True, quiet=True)
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite removes only the run's own files
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step_0000004"


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 1e-2},
        {"seed": 1},
        {"data_seed": 3},
        {"batch_size": 4},
        {"warmup_steps": 5},
        {"task_options": {**TASK, "n_train": 128}},
        {"amp": "bf16"},
        {"steps": 3},
        {"steps": 8},
    ],
)
def test_resume_refuses_changed_settings(tmp_path, change):
    out = tmp_path / "run"
    train(tiny(out), quiet=True)
    key = next(iter(change))
    with pytest.raises(ValueError, match=f"{key}: ") as err:
        Trainer(tiny(out, **{"steps": 12, **change}), resume=True, quiet=True)
    assert "differ from the checkpoint" in str(err.value)


def test_allowed_change_is_applied_and_recorded(tmp_path):
    out = tmp_path / "run"
    cfg = tiny(out, steps=12)
    trainer = Trainer(cfg, quiet=True)
    for _ in range(4):
        trainer.step += 1
        trainer._train_step()
    trainer._save()
    changed = tiny(out, steps=12, lr=1e-3)
    resumed = Trainer(changed, resume=True, allow_change=["lr"], quiet=True)
    factor = lr_lambda(changed)(4)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx([1e-3 * factor] * 2)
    summary = resumed.run()
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-3 and summary["config"]["lr"] == 1e-3


def test_extending_steps_continues_the_lr_without_a_jump(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, steps=8, min_lr_ratio=0.1), quiet=True)
    at_end = 3e-3 * lr_lambda(tiny(out, steps=8, min_lr_ratio=0.1))(8)
    longer = Trainer(tiny(out, steps=16, min_lr_ratio=0.1), resume=True, quiet=True)
    assert longer.step == 8 and longer.anchor == (8, pytest.approx(at_end / 3e-3))
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(at_end)  # no jump back up
    summary = longer.run()
    lrs = [h["lr"] for h in summary["history"] if h.get("lr") is not None]
    assert lrs[8:] == sorted(lrs[8:], reverse=True) and lrs[-1] == pytest.approx(3e-4, rel=1e-6)
    # a later resume (one more extension) keeps the rule
    state = ckpt.load_training_state(ckpt.latest_checkpoint(out / "checkpoints"))
    assert state["schedule_anchor"][0] == 8


def test_stop_signal_saves_and_the_resumed_run_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    full = train(tiny(tmp_path / "full", ckpt_every=0, ckpt_minutes=0), quiet=True)
    out = tmp_path / "cut"
    cfg = tiny(out, ckpt_every=0, ckpt_minutes=0)
    original = Trainer._train_step

    def step_then_signal(self):
        result = original(self)
        if self.step == 4:  # the 5th step is running: a SIGINT arrives
            self.stop_signal = signal.SIGINT
        return result

    monkeypatch.setattr(Trainer, "_train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted, match="interrupted by SIGINT at step 5/8") as err:
        train(cfg, quiet=True)
    assert err.value.exit_code == 130
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step_0000005"
    monkeypatch.setattr(Trainer, "_train_step", original)
    resumed = train(cfg, resume=True, quiet=True)
    assert losses(resumed) == losses(full)
    assert resumed["final"]["test"]["loss"] == full["final"]["test"]["loss"]


def test_ctrl_c_in_the_cli_saves_and_prints_one_line(tmp_path):
    out = tmp_path / "cli"
    args = [
        sys.executable,
        "-m",
        "sessa",
        "train",
        "--task",
        "mqar",
        "--steps",
        "100000",
        "--batch-size",
        "8",
        "--eval-every",
        "0",
        "--log-every",
        "1",
        "--device",
        "cpu",
        "--out-dir",
        str(out),
        *sum((["--task-option", f"{k}={v}"] for k, v in TASK.items()), []),
        "--model-option",
        "n_layers=1",
    ]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    for line in proc.stdout:
        if line.startswith("step      3/"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0 and "--resume" in err
    assert ckpt.latest_checkpoint(out / "checkpoints") is not None


def test_stale_temporary_checkpoint_folders_are_removed(tmp_path):
    out = tmp_path / "run"
    train(tiny(out), quiet=True)
    stale = out / "checkpoints" / ".tmp-step_0000012-999"
    stale.mkdir()
    Trainer(tiny(out, steps=12), resume=True, quiet=True)
    assert not stale.exists()


def test_compare_reuses_finished_runs_and_resumes_an_interrupted_one(tmp_path):
    out = tmp_path / "cmp"
    cfg = CompareConfig(
        tasks=["mqar"],
        models=["sessa", "attention"],
        steps=8,
        batch_size=8,
        device="cpu",
        out_dir=str(out),
        train_overrides={
            "task_options": TASK,
            "ckpt_every": 4,
            "model_options": {"n_layers": 1},
            "log_every": 1,
        },
    )
    first = compare(cfg, log=lambda *_: None)
    with pytest.raises(ValueError, match="--resume"):
        compare(cfg, log=lambda *_: None)
    # the attention run "was interrupted" after its step-4 checkpoint
    run = out / "mqar" / "attention-seed0"
    (run / "summary.json").unlink()
    shutil.rmtree(run / "checkpoints" / "step_0000008")
    (run / "checkpoints" / "latest").write_text("step_0000004")
    with (run / "metrics.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= 4]
    sessa_mtime = (out / "mqar" / "sessa-seed0" / "summary.json").stat().st_mtime
    again = compare(cfg, resume=True, log=lambda *_: None)
    assert (out / "mqar" / "sessa-seed0" / "summary.json").stat().st_mtime == sessa_mtime  # not retrained
    assert rows  # the interrupted run had logged steps 1..4 before
    assert [losses(r) for r in again["runs"]] == [losses(r) for r in first["runs"]]
    assert [r["final"] for r in again["runs"]] == [r["final"] for r in first["runs"]]
    assert json.loads((out / "results.json").read_text())["complete"]
