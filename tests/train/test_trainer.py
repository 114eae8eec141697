"""End-to-end harness tests on tiny settings (CPU)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from sessa import registry  # noqa: E402
from sessa.train import checkpoint as ckpt  # noqa: E402
from sessa.train.config import TrainConfig  # noqa: E402
from sessa.train.trainer import Trainer, TrainingDiverged, train  # noqa: E402
from tests.train.common import TASK, losses, tiny_config  # noqa: E402


def tiny(tmp_path: Path, **kw) -> TrainConfig:
    return tiny_config(kw.pop("out_dir", tmp_path / "run"), **kw)


@pytest.mark.parametrize("model", registry.model_names())
def test_train_runs_and_learns_something(tmp_path, model):
    summary = train(tiny(tmp_path, model=model, steps=12), quiet=True)
    ls = losses(summary)
    assert len(ls) == 12 and all(math.isfinite(v) for v in ls)
    assert ls[-1] < ls[0]
    out = tmp_path / "run"
    assert (out / "metrics.csv").exists() and (out / "summary.json").exists()
    assert set(summary["final"]) == {"valid", "test"}
    assert 0.0 <= summary["final"]["test"]["accuracy"] <= 1.0


def test_resume_is_exact(tmp_path):
    full = train(tiny(tmp_path / "a", ckpt_every=4, grad_accum=2), quiet=True)
    first = tiny(tmp_path / "b", ckpt_every=4, grad_accum=2, steps=8)
    trainer = Trainer(first, quiet=True)
    for _ in range(4):  # run 4 steps and checkpoint, as an interrupted run would
        trainer.step += 1
        loss, _ = trainer._train_step()
        trainer.history.append({"step": trainer.step, "loss": loss})
    trainer._save()
    resumed = train(first, resume=True, quiet=True)
    assert losses(resumed) == losses(full)
    assert resumed["final"]["test"]["loss"] == full["final"]["test"]["loss"]


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    cfg = tiny(tmp_path, steps=6, ckpt_every=2)
    trainer = Trainer(cfg, quiet=True)
    for _ in range(2):
        trainer.step += 1
        trainer._train_step()
    trainer._save()
    saved = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    with torch.no_grad():
        next(trainer.raw_model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        trainer.run()
    assert ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints") == saved


def test_resume_with_other_model_config_fails_clearly(tmp_path):
    train(tiny(tmp_path, steps=2), quiet=True)
    other = tiny(tmp_path, steps=4, model_options={"d_model": 96, "n_layers": 2})
    with pytest.raises(ValueError, match="model_options: .* in the checkpoint"):
        Trainer(other, resume=True, quiet=True)


def test_corrupt_checkpoint_fails_clearly(tmp_path):
    train(tiny(tmp_path, steps=2), quiet=True)
    path = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    (path / "training_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        Trainer(tiny(tmp_path, steps=4), resume=True, quiet=True)
    (path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="corrupt|do not match"):
        Trainer(tiny(tmp_path, steps=4), resume=True, quiet=True)


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        Trainer(tiny(tmp_path, out_dir=str(blocker / "sub")), quiet=True)


def run_cli(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "sessa", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_gloo_two_process_ddp_and_fsdp_match_single_process_and_resume_across(tmp_path):
    """DDP and FSDP, each also with activation checkpointing, give the single process's losses."""
    common = [
        "train",
        "--task",
        "mqar",
        *sum((["--task-option", f"{k}={v}"] for k, v in TASK.items()), []),
        "--model-option",
        "n_layers=2",
        "--steps",
        "4",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "1",
        "--eval-every",
        "0",
        "--log-every",
        "1",
        "--device",
        "cpu",
        "--ckpt-every",
        "2",
    ]
    single = run_cli(*common, "--batch-size", "8", "--out-dir", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    reference = losses(json.loads((tmp_path / "single" / "summary.json").read_text()))
    assert len(reference) == 4
    for run_name in ("ddp", "fsdp", "ddp-checkpointed", "fsdp-checkpointed"):
        strategy, extra = run_name.split("-")[0], ["--gradient-checkpointing"] if "-" in run_name else []
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                "-m",
                "sessa",
                *common,
                "--batch-size",
                "4",
                "--distributed",
                strategy,
                *extra,
                "--out-dir",
                str(tmp_path / run_name),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = losses(json.loads((tmp_path / run_name / "summary.json").read_text()))
        assert all(abs(x - y) < 1e-4 * max(1.0, abs(x)) for x, y in zip(reference, got, strict=True)), (
            run_name,
            reference,
            got,
        )
    # Resume the FSDP run's step-2 checkpoint in one process: steps 3-4 repeat the uninterrupted run.
    root = tmp_path / "fsdp" / "checkpoints"
    shutil.rmtree(root / "step_0000004")
    (root / "latest").write_text("step_0000002")
    resumed = run_cli(*common, "--batch-size", "8", "--out-dir", str(tmp_path / "fsdp"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = losses(json.loads((tmp_path / "fsdp" / "summary.json").read_text()))
    assert all(abs(x - y) < 1e-4 * max(1.0, abs(x)) for x, y in zip(reference, got, strict=True)), (
        reference,
        got,
    )


def test_cli_train_eval_generate_and_errors(tmp_path):
    out = tmp_path / "cli"
    args = [
        "train",
        "--task",
        "mqar",
        *sum((["--task-option", f"{k}={v}"] for k, v in TASK.items()), []),
        "--model-option",
        "n_layers=1",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--eval-every",
        "0",
        "--out-dir",
        str(out),
        "--device",
        "cpu",
    ]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert "resolved configuration" in res.stdout and (out / "config.json").exists()
    step_dir = ckpt.latest_checkpoint(out / "checkpoints")
    res = run_cli("eval", str(step_dir), "--limit", "16", "--out", str(tmp_path / "eval.json"))
    assert res.returncode == 0, res.stderr
    assert "mqar / test" in res.stdout
    assert json.loads((tmp_path / "eval.json").read_text())["results"]["test"]["n"] == 16
    res = run_cli("generate", str(step_dir), "--prompt", "ab", "--max-new-tokens", "4")
    assert res.returncode == 2 and "byte-level vocabulary" in res.stderr  # an MQAR model cannot read text
    bad = run_cli("train", "--task", "nope", "--steps", "1", "--out-dir", str(tmp_path / "x"))
    assert bad.returncode == 2 and "invalid choice: 'nope'" in bad.stderr and "mqar" in bad.stderr
    bad = run_cli("train", "--model", "gpt2")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "mamba2" in bad.stderr
    bad = run_cli("train", "--no-such-option", "1")
    assert bad.returncode == 2 and "unrecognized arguments" in bad.stderr
    bad = run_cli("eval", str(tmp_path))
    assert bad.returncode == 2 and "not a model directory" in bad.stderr


def test_cli_compare_tiny(tmp_path):
    out = tmp_path / "cmp"
    res = run_cli(
        "compare",
        "--tasks",
        "mqar",
        "--models",
        "sessa",
        "attention",
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--set",
        f"task_options={TASK!r}",
        "--set",
        "model_options={'n_layers': 1}",
        "--out-dir",
        str(out),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in result["table"]} == {"sessa", "attention"}
    assert (out / "results.md").read_text().count("| mqar |") == 2
    assert (out / "mqar_metric_vs_step.png").exists()


def test_cli_bytelm_train_then_generate_streams_text(tmp_path):
    out = tmp_path / "lm"
    res = run_cli(
        "train",
        "--task",
        "bytelm",
        "--task-option",
        "seq_len=32",
        "--task-option",
        "max_bytes=200000",
        "--model-option",
        "n_layers=1",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--eval-every",
        "0",
        "--eval-examples",
        "8",
        "--out-dir",
        str(out),
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    step_dir = ckpt.latest_checkpoint(out / "checkpoints")
    res = run_cli(
        "generate",
        str(step_dir),
        "--prompt",
        "def ",
        "--max-new-tokens",
        "8",
        "--do-sample",
        "--top-k",
        "5",
        "--seed",
        "1",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("def ") and len(res.stdout) > len("def ")
    greedy = ("generate", str(step_dir), "--prompt", "def ", "--max-new-tokens", "8")
    dynamic, static = run_cli(*greedy), run_cli(*greedy, "--static-cache")
    assert dynamic.returncode == static.returncode == 0, static.stderr[-2000:]
    assert static.stdout == dynamic.stdout  # the fixed-size cache decodes the same tokens


@pytest.mark.parametrize("model", ["sessa", "attention", "mamba2", "mamba"])
def test_packed_training_follows_the_padded_run(tmp_path, model):
    """--pack lays each batch's examples end to end (SCAN: lengths 4-33) on fewer positions; the examples,
    hence the losses, stay those of the padded run (float32 rounding apart)."""
    kw = dict(task="scan", task_options={}, model=model, steps=4, eval_every=0, eval_examples=16,
              health=False, batch_size=16)
    padded = train(tiny(tmp_path, out_dir=tmp_path / "padded", **kw), quiet=True)
    packed = train(tiny(tmp_path, out_dir=tmp_path / "packed", pack=True, **kw), quiet=True)
    assert losses(packed) == pytest.approx(losses(padded), rel=1e-4)
    assert packed["tokens_seen"] < padded["tokens_seen"]  # positions computed (1596 vs 1888 here)


def test_pack_refuses_a_model_without_packed_rows(tmp_path, monkeypatch):
    from sessa.baselines.mamba import MambaMixer

    monkeypatch.setattr(MambaMixer, "supports_packing", False)  # a mixer without packed rows
    with pytest.raises(ValueError, match="--pack needs mixers that take packed rows.*MambaMixer"):
        Trainer(tiny(tmp_path, model="mamba", pack=True), quiet=True)
