"""The training loop: AdamW + warm-up/cosine, clipping, AMP, accumulation, evaluation, atomic checkpoints,
exact resume, NaN guard, DDP/FSDP under torchrun. Model code knows nothing of this file."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sessa.tasks import IGNORE_INDEX, TaskData, get_task
from sessa.train import checkpoint as ckpt
from sessa.train import distributed as D
from sessa.train.build import build_model
from sessa.train.config import TrainConfig
from sessa.train.data import Batches
from sessa.train.evaluate import autocast_for, evaluate, logits_of, primary_metric
from sessa.train.health import HealthMonitor

PROBE_ROWS, PROBE_LEN = 4, 1024  # the health monitor's fixed batch: first rows of the first eval split


class TrainingDiverged(RuntimeError):
    """Raised when the loss becomes NaN or infinite; the last good checkpoint is left untouched."""


def lr_lambda(cfg: TrainConfig):
    warmup = cfg.warmup

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.steps - warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine

    return factor


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.dim() < 2 or getattr(p, "_no_weight_decay", False) or "embed" in name
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "none" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if cfg.amp == "fp16" else torch.bfloat16


class Trainer:
    """Builds everything from a TrainConfig; ``run()`` trains and returns the summary dict."""

    def __init__(
        self, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False
    ) -> None:
        self.cfg, self.quiet = cfg, quiet
        self.out = Path(cfg.out_dir)
        self.dist = D.setup(cfg.distributed, cfg.device)
        self.device = self.dist.device
        self.amp = amp_dtype(cfg, self.device)
        if self.dist.is_main:
            _check_writable(self.out)
            _guard_out_dir(self.out, resume, overwrite)
        self.data: TaskData = get_task(cfg.task, **cfg.task_options).build(cfg.data_seed)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.raw_model = build_model(cfg, self.data.vocab_size, self.data.max_len, self.data.pad_id).to(
            self.device
        )
        self.n_params = sum(p.numel() for p in self.raw_model.parameters())
        resume_from = self._checkpoint_to_resume() if resume else None
        if resume_from is not None:  # weights go in before wrapping, which works for every strategy
            ckpt.load_weights(self.raw_model, resume_from)
        self.model = D.wrap_model(self.raw_model, cfg.distributed, self.dist)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.optimizer = make_optimizer(self.raw_model, cfg, fused=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.batches = Batches(
            self.data.splits["train"], cfg.batch_size, cfg.seed, self.dist.rank, self.dist.world_size
        )
        self.step, self.history, self.tokens_seen, self.train_time = 0, [], 0, 0.0
        self.eval_splits = [name for name in self.data.splits if name != "train"]
        self.health = self._health_monitor() if cfg.health else None
        self.last_health: dict[str, float] = {}
        if resume_from is not None:
            self._load_training_state(resume_from)

    # -- checkpoints ----------------------------------------------------------------------------------
    def _checkpoint_to_resume(self) -> Path:
        path = ckpt.latest_checkpoint(self.out / "checkpoints")
        if path is None:
            raise ValueError(f"--resume: no checkpoint under {self.out / 'checkpoints'}")
        ckpt.check_model_config(path, self.raw_model.config)
        return path

    def _load_training_state(self, path: Path) -> None:
        state = ckpt.load_training_state(path)
        D.load_optimizer_state(self.raw_model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batches.load_state_dict(state["data"])
        ckpt.set_rng_state(state["rng"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.train_time, self.history = float(state["train_time"]), json.loads(state["history"])
        if self.health is not None and state.get("health"):
            self.health.load_state_dict(json.loads(state["health"]))
        self._log(f"resumed from {path} at step {self.step}")

    def _save(self) -> None:
        # Collective under DDP/FSDP: every rank takes part, rank 0 writes.
        weights, optimizer = D.full_state(self.raw_model, self.optimizer)
        state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "train_time": self.train_time,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "data": self.batches.state_dict(),
            "rng": ckpt.rng_state(),
            "history": json.dumps(self.history),
            "health": json.dumps(self.health.state_dict() if self.health is not None else {}),
        }
        if self.dist.is_main:
            ckpt.save_checkpoint(
                self.out / "checkpoints",
                self.step,
                self.raw_model,
                state,
                self.cfg.to_dict(),
                keep=self.cfg.keep_ckpts,
                weights=weights,
            )
        D.barrier(self.dist)

    # -- one optimizer step ---------------------------------------------------------------------------
    def _train_step(self) -> tuple[float, int]:
        micro = [next(self.batches) for _ in range(self.cfg.grad_accum)]
        scored = torch.tensor(
            float(sum(int((y != IGNORE_INDEX).sum()) for _, y in micro)), device=self.device
        )
        total = D.all_reduce_sum(scored, self.dist).clamp_min(1)
        loss_sum = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(micro):
            x, y = x.to(self.device), y.to(self.device)
            sync = i == len(micro) - 1 or not hasattr(self.model, "no_sync")
            ctx = self.model.no_sync() if not sync else contextlib.nullcontext()
            with ctx, autocast_for(self.device, self.amp):
                logits = logits_of(self.model, x)
            loss = F.cross_entropy(
                logits.float().transpose(1, 2), y, ignore_index=IGNORE_INDEX, reduction="sum"
            )
            # Sum over this rank / all scored tokens * world: DDP's gradient mean then equals the global mean.
            (loss * self.dist.world_size / total).backward()
            loss_sum += loss.detach()
        mean_loss = (D.all_reduce_sum(loss_sum, self.dist) / total).item()
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(
                f"loss became {mean_loss} at step {self.step + 1}; stopping. The last good checkpoint "
                "(if any) "
                f"is in {self.out / 'checkpoints'}; try a lower --lr or --amp none"
            )
        D.sync_replicated_grads(self.raw_model, self.dist)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = sum(x.numel() for x, _ in micro) * self.dist.world_size
        return mean_loss, tokens

    # -- training health ------------------------------------------------------------------------------
    def _health_monitor(self) -> HealthMonitor:
        split = self.data.splits[self.eval_splits[0] if self.eval_splits else "train"]
        rows = torch.arange(min(PROBE_ROWS, len(split)))
        width = min(int(split.lengths[rows].max()), PROBE_LEN)
        probe, lengths = split.inputs[rows, :width], split.lengths[rows].clamp(max=width)
        return HealthMonitor(self.raw_model, probe, lengths, self.device, self.amp)

    def _health_check(self, writer, loss: float | None = None) -> None:  # noqa: ANN001
        """Measure the health statistics (every rank: FSDP forwards are collective), log them, warn once."""
        stats, warnings = self.health.check(self.step, loss)
        self.last_health = stats
        rows = [{"step": self.step, "split": "health", "metric": k, "value": v} for k, v in stats.items()]
        self._write_csv(rows)
        for key, value in stats.items() if writer else ():
            writer.add_scalar(f"health/{key}", value, self.step)
        for w in warnings:
            self._log(f"[warn] training health at step {w.step}: {w.message}")

    @property
    def status(self) -> str:
        """"ok", or "unhealthy" when an alarm held at the last health check (a NaN loss: "diverged")."""
        return "unhealthy" if self.health is not None and self.health.state.active else "ok"

    # -- evaluation and logging -----------------------------------------------------------------------
    def evaluate(self, limit: int | None) -> dict[str, dict[str, Any]]:
        return {
            name: evaluate(
                self.model,
                self.data.splits[name],
                batch_size=self.cfg.eval_batch_size,
                device=self.device,
                amp_dtype=self.amp,
                limit=limit,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
            for name in self.eval_splits
        }

    def _log(self, msg: str) -> None:
        if self.dist.is_main and not self.quiet:
            print(msg, file=sys.stderr if msg.startswith("[warn]") else sys.stdout, flush=True)

    def _record(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        self._write_csv([row])

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        """Append rows to metrics.csv (long format: training rows have a loss, eval/health rows a metric)."""
        if not self.dist.is_main:
            return
        path = self.out / "metrics.csv"
        keys = ["step", "loss", "lr", "tokens_per_s", "split", "metric", "value"]
        new = not path.exists()
        with path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._log(
            f"model {cfg.model} ({self.n_params:,} parameters) on {self.device}, task {cfg.task}, "
            f"{self.dist.world_size} process(es)"
        )
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
            _truncate_metrics(self.out / "metrics.csv", self.step)
        writer = _tensorboard(self.out, cfg.tensorboard and self.dist.is_main, self._log)
        try:
            self._loop(writer)
        except TrainingDiverged:
            self._summary({}, status="diverged")
            raise
        final = self.evaluate(None)
        self._periodic_eval(final, writer)
        self._save()
        if writer:
            writer.close()
        return self._summary(final, self.status)

    def _loop(self, writer) -> None:  # noqa: ANN001
        cfg = self.cfg
        if self.health is not None and self.step == 0:
            self._health_check(writer)  # the baseline the divergence alarm compares with
        window_tokens, window_time = 0, 0.0
        while self.step < cfg.steps:
            start = time.perf_counter()
            loss, tokens = self._train_step()
            elapsed = time.perf_counter() - start
            self.step += 1
            self.tokens_seen += tokens
            self.train_time += elapsed
            window_tokens, window_time = window_tokens + tokens, window_time + elapsed
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                tps = window_tokens / max(window_time, 1e-9)
                lr = self.scheduler.get_last_lr()[0]
                self._record({"step": self.step, "loss": loss, "lr": lr, "tokens_per_s": tps})
                self._log(
                    f"step {self.step:>6}/{cfg.steps} | loss {loss:.4f} | lr {lr:.2e} | {tps:,.0f} tok/s"
                )
                if writer:
                    writer.add_scalar("train/loss", loss, self.step)
                    writer.add_scalar("train/tokens_per_s", tps, self.step)
                if self.health is not None:
                    self._health_check(writer, loss)
                window_tokens, window_time = 0, 0.0
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self._periodic_eval(self.evaluate(cfg.eval_examples), writer)
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.steps:
                self._save()

    def _periodic_eval(self, results: dict[str, dict[str, Any]], writer) -> None:  # noqa: ANN001
        for split, res in results.items():
            name, value, _ = primary_metric(self.data.metric, res)
            self._record({"step": self.step, "split": split, "metric": name, "value": value})
            self._log(f"  eval {split}: {name} {value:.4f} (loss {res['loss']:.4f}, n={res['n']})")
            if writer:
                writer.add_scalar(f"eval/{split}/{name}", value, self.step)

    def _summary(self, final: dict[str, dict[str, Any]], status: str) -> dict[str, Any]:
        """The run's record (summary.json). status: "ok", "unhealthy" (health alarm) or "diverged" (NaN)."""
        summary = {
            "model": self.cfg.model,
            "status": status,
            "task": self.cfg.task,
            "seed": self.cfg.seed,
            "params": self.n_params,
            "steps": self.step,
            "tokens_seen": self.tokens_seen,
            "train_time_s": self.train_time,
            "tokens_per_s": self.tokens_seen / max(self.train_time, 1e-9),
            "metric": self.data.metric,
            "final": final,
            "history": self.history,
            "task_info": {k: str(v) for k, v in self.data.info.items()},
            "health": {
                "warnings": self.health.state.warnings if self.health is not None else [],
                "active": self.health.state.active if self.health is not None else [],
                "last": self.last_health,
            },
            "config": self.cfg.to_dict(),
        }
        if self.dist.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return summary

    def close(self) -> None:
        D.teardown(self.dist)


def train(
    cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Train one run. A non-empty ``cfg.out_dir`` needs ``resume`` (continue its latest checkpoint) or
    ``overwrite`` (replace the run files it holds; other files are left alone)."""
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite, quiet=quiet)
    try:
        return trainer.run()
    finally:
        trainer.close()


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{id(out)}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"output directory {out} is not writable: {exc}") from exc


RUN_FILES = ("config.json", "metrics.csv", "summary.json", "checkpoints", "tensorboard")  # what a run owns


def _guard_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Never replace an earlier run silently: a non-empty folder needs --resume or --overwrite."""
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(".write-test-"))
    if not entries or resume:
        return
    if not overwrite:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ValueError(
            f"output directory {out} is not empty ({shown}): pass --resume to continue the run in it, "
            "--overwrite to replace it, or choose another --out-dir"
        )
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric rows logged after the checkpoint so the CSV matches an uninterrupted run."""
    if not path.exists():
        return
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if int(r["step"]) <= step]
    if len(keep) == len(rows):
        return
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(keep)


def _tensorboard(out: Path, enabled: bool, log):  # noqa: ANN001
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log(
            "[warn] --tensorboard needs the tensorboard package (pip install tensorboard); "
            "logging to CSV only"
        )
        return None
    return SummaryWriter(str(out / "tensorboard"))
