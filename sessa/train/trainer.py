"""The training loop: AdamW + warm-up/cosine, clipping, AMP, accumulation, evaluation, atomic checkpoints,
exact resume, NaN guard, DDP/FSDP under torchrun. Model code knows nothing of this file."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from sessa.models.modeling import token_loss
from sessa.progress import Progress
from sessa.tasks import IGNORE_INDEX, TaskData, get_task
from sessa.train import checkpoint as ckpt
from sessa.train import distributed as D
from sessa.train.build import build_model
from sessa.train.config import TrainConfig
from sessa.train.data import Batches
from sessa.train.evaluate import autocast_for, evaluate, logits_of, primary_metric
from sessa.train.health import HealthMonitor
from sessa.train.resume import check_resume, saved_config
from sessa.train.runs import check_writable, remove

PROBE_ROWS, PROBE_LEN = 4, 1024  # the health monitor's fixed batch: first rows of the first eval split


class TrainingDiverged(RuntimeError):
    """Raised when the loss becomes NaN or infinite; the last good checkpoint is left untouched."""


class TrainingInterrupted(RuntimeError):
    """Raised after SIGINT/SIGTERM once the current step finished and a checkpoint was saved."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def lr_lambda(cfg: TrainConfig, anchor: tuple[int, float] | None = None):
    """The lr factor of each step: linear warm-up, then a cosine to ``min_lr_ratio`` at ``cfg.steps``.

    ``anchor = (step, factor)`` (a run extended on resume, see sessa.train.resume): from that step on, a
    cosine from that factor down to ``min_lr_ratio`` at ``cfg.steps``."""
    warmup = cfg.warmup

    def cosine(start: int, value: float, step: int) -> float:
        progress = (step - start) / max(1, cfg.steps - start)
        return cfg.min_lr_ratio + (value - cfg.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * min(1.0, progress))
        )

    def factor(step: int) -> float:
        if anchor is not None and step >= anchor[0]:
            return cosine(anchor[0], anchor[1], step)
        if step < warmup:
            return (step + 1) / warmup
        return cosine(warmup, 1.0, step)

    return factor


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Checkpoint every block of ``model`` (non-reentrant, which works under DDP and FSDP) through
    transformers' own switch: ``activation_checkpointing_enable`` (transformers >= 5.2x), else its older
    name ``gradient_checkpointing_enable``."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def check_packable(model: torch.nn.Module, name: str) -> None:
    """A ValueError naming the model when a mixer of its blocks does not take packed rows (``--pack``)."""
    mixers = [m.mixer for m in model.modules() if isinstance(getattr(m, "mixer", None), torch.nn.Module)]
    refused = sorted({type(m).__name__ for m in mixers if not getattr(m, "supports_packing", False)})
    if refused or not mixers:
        raise ValueError(f"--pack needs mixers that take packed rows (supports_packing = True); model "
                         f"{name!r} uses {', '.join(refused) or 'no known mixer'}")


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
        self,
        cfg: TrainConfig,
        *,
        resume: bool = False,
        overwrite: bool = False,
        allow_change: list[str] | tuple[str, ...] = (),
        quiet: bool = False,
    ) -> None:
        self.cfg, self.quiet = cfg, quiet
        self.out = Path(cfg.out_dir)
        self.dist = D.setup(cfg.distributed, cfg.device)
        self.device = self.dist.device
        self.amp = amp_dtype(cfg, self.device)
        if self.dist.is_main:
            check_writable(self.out)
            _guard_out_dir(self.out, resume, overwrite)
            _remove_stale_temporaries(self.out / "checkpoints")
        resume_from = self._checkpoint_to_resume() if resume else None
        self.resume_state = ckpt.load_training_state(resume_from) if resume_from is not None else None
        if resume_from is not None:  # before any data is built: a changed setting fails at once
            saved = saved_config(resume_from)
            worlds = (self.dist.world_size, int(self.resume_state.get("world_size", self.dist.world_size)))
            for note in check_resume(cfg, saved, int(self.resume_state["step"]), set(allow_change), worlds):
                self._log(f"resume: {note}")
        self.data: TaskData = get_task(cfg.task, **cfg.task_options).build(cfg.data_seed)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.raw_model = build_model(cfg, self.data.vocab_size, self.data.max_len, self.data.pad_id).to(
            self.device
        )
        self.n_params = sum(p.numel() for p in self.raw_model.parameters())
        if cfg.pack:
            check_packable(self.raw_model, cfg.model)
        if cfg.gradient_checkpointing:
            enable_activation_checkpointing(self.raw_model)
        if resume_from is not None:  # weights go in before wrapping, which works for every strategy
            ckpt.check_model_config(resume_from, self.raw_model.config)
            ckpt.load_weights(self.raw_model, resume_from)
        self.model = D.wrap_model(self.raw_model, cfg.distributed, self.dist)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.optimizer = make_optimizer(self.raw_model, cfg, fused=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.batches = Batches(
            self.data.splits["train"], cfg.batch_size, cfg.seed, self.dist.rank, self.dist.world_size,
            pack=cfg.pack, pad_id=self.data.pad_id,
        )
        self.step, self.history, self.tokens_seen, self.train_time = 0, [], 0, 0.0
        self.eval_splits = [name for name in self.data.splits if name != "train"]
        self.health = self._health_monitor() if cfg.health else None
        self.last_health: dict[str, float] = {}
        self.anchor: tuple[int, float] | None = None
        self.stop_signal: int | None = None
        self.last_save = time.monotonic()
        if resume_from is not None:
            self._load_training_state(resume_from, saved)

    # -- checkpoints ----------------------------------------------------------------------------------
    def _checkpoint_to_resume(self) -> Path:
        path = ckpt.latest_checkpoint(self.out / "checkpoints")
        if path is None:
            raise ValueError(f"--resume: no checkpoint under {self.out / 'checkpoints'}")
        return path

    def _load_training_state(self, path: Path, saved: TrainConfig) -> None:
        state = self.resume_state
        D.load_optimizer_state(self.raw_model, self.optimizer, state["optimizer"])
        done = int(state["step"])
        anchor = state.get("schedule_anchor")
        self.anchor = None if anchor is None else (int(anchor[0]), float(anchor[1]))
        if self.cfg.steps != saved.steps:  # extended: continue from the current lr (sessa.train.resume)
            self.anchor = (done, lr_lambda(saved, self.anchor)(done))
            self._log(
                f"resume: extending the run from {saved.steps} to {self.cfg.steps} steps; the lr factor "
                f"continues from {self.anchor[1]:.4f} and decays by a cosine to {self.cfg.min_lr_ratio} "
                f"at step {self.cfg.steps}"
            )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.cfg, self.anchor))
        self.scheduler.load_state_dict(state["scheduler"])
        for group in self.optimizer.param_groups:  # --allow-change lr: the requested peak lr from here on
            group["initial_lr"] = self.cfg.lr
            group["lr"] = self.cfg.lr * self.scheduler.lr_lambdas[0](done)
        self.optimizer.param_groups[0]["weight_decay"] = self.cfg.weight_decay  # the decayed group
        self.scheduler.base_lrs = [self.cfg.lr] * len(self.optimizer.param_groups)
        self.batches.load_state_dict(state["data"])
        ckpt.set_rng_state(state["rng"])
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.train_time, self.history = float(state["train_time"]), json.loads(state["history"])
        if self.health is not None and state.get("health"):
            self.health.load_state_dict(json.loads(state["health"]))
        self.resume_state = None  # the optimizer state is in the optimizer now; do not hold a second copy
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
            "world_size": self.dist.world_size,
            "schedule_anchor": list(self.anchor) if self.anchor is not None else None,
        }
        if self.dist.is_main:
            path = ckpt.save_checkpoint(
                self.out / "checkpoints",
                self.step,
                self.raw_model,
                state,
                self.cfg.to_dict(),
                keep=self.cfg.keep_ckpts,
                weights=weights,
            )
            self._log(f"checkpoint: {path}")
        self.last_save = time.monotonic()
        D.barrier(self.dist)

    # -- one optimizer step ---------------------------------------------------------------------------
    def _train_step(self) -> tuple[float, int]:
        micro = [next(self.batches) for _ in range(self.cfg.grad_accum)]
        scored = torch.tensor(
            float(sum(int((b[1] != IGNORE_INDEX).sum()) for b in micro)), device=self.device
        )
        total = D.all_reduce_sum(scored, self.dist).clamp_min(1)
        loss_sum = torch.zeros((), device=self.device)
        for i, (x, y, *packed) in enumerate(micro):
            x, y = x.to(self.device), y.to(self.device)
            seq_idx = packed[0].to(self.device) if packed else None
            sync = i == len(micro) - 1 or not hasattr(self.model, "no_sync")
            ctx = self.model.no_sync() if not sync else contextlib.nullcontext()
            with ctx, autocast_for(self.device, self.amp):
                logits = logits_of(self.model, x, seq_idx)
            loss = token_loss(logits, y, reduction="sum")
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
        tokens = sum(b[0].numel() for b in micro) * self.dist.world_size
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
        """ "ok", or "unhealthy" when an alarm held at the last health check (a NaN loss: "diverged")."""
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

    def _log(self, msg: str, bar: Progress | None = None) -> None:
        if self.dist.is_main and not self.quiet:
            stream = sys.stderr if msg.startswith("[warn]") else sys.stdout
            if bar is not None:
                bar.write(msg, stream)
            else:
                print(msg, file=stream, flush=True)

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
        bar = (
            Progress(cfg.steps, f"train {cfg.model}", done=self.step)
            if self.dist.is_main and not self.quiet
            else None
        )
        window_tokens, window_time = 0, 0.0
        while self.step < cfg.steps:
            start = time.perf_counter()
            loss, tokens = self._train_step()
            elapsed = time.perf_counter() - start
            self.step += 1
            self.tokens_seen += tokens
            self.train_time += elapsed
            window_tokens, window_time = window_tokens + tokens, window_time + elapsed
            if bar is not None:
                bar.update(1, f"loss {loss:.4f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                tps = window_tokens / max(window_time, 1e-9)
                lr = self.scheduler.get_last_lr()[0]
                self._record({"step": self.step, "loss": loss, "lr": lr, "tokens_per_s": tps})
                eta = f" | {bar.eta_text()}" if bar is not None else ""
                self._log(
                    f"step {self.step:>6}/{cfg.steps} | loss {loss:.4f} | lr {lr:.2e} | "
                    f"{tps:,.0f} tok/s{eta}",
                    bar,
                )
                if writer:
                    writer.add_scalar("train/loss", loss, self.step)
                    writer.add_scalar("train/tokens_per_s", tps, self.step)
                if self.health is not None:
                    self._health_check(writer, loss)
                window_tokens, window_time = 0, 0.0
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self._periodic_eval(self.evaluate(cfg.eval_examples), writer)
            if self.step < cfg.steps and self._checkpoint_due():
                self._save()
            if self._stop_requested():
                self._save()
                if bar is not None:
                    bar.close()
                raise self._interrupted()
        if bar is not None:
            bar.close()

    def _checkpoint_due(self) -> bool:
        """Every ``ckpt_every`` steps, and when ``ckpt_minutes`` passed since the last save (rank 0's clock
        decides for every rank, so the collective save starts everywhere at the same step)."""
        cfg = self.cfg
        if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
            return True
        if not cfg.ckpt_minutes:
            return False
        due = self.dist.is_main and time.monotonic() - self.last_save >= 60 * cfg.ckpt_minutes
        if not self.dist.enabled:
            return due
        return bool(D.all_reduce_sum(torch.tensor(float(due), device=self.device), self.dist).item())

    def _stop_requested(self) -> bool:
        """True once SIGINT/SIGTERM arrived (on any rank, agreed by all ranks)."""
        if not self.dist.enabled:
            return self.stop_signal is not None
        flag = torch.tensor(float(self.stop_signal or 0), device=self.device)
        self.stop_signal = int(D.all_reduce_max(flag, self.dist).item()) or None
        return self.stop_signal is not None

    def _interrupted(self) -> TrainingInterrupted:
        name = signal.Signals(self.stop_signal).name
        return TrainingInterrupted(
            f"interrupted by {name} at step {self.step}/{self.cfg.steps}; checkpoint saved in "
            f"{self.out / 'checkpoints'}; continue with the same command and --resume",
            128 + int(self.stop_signal),
        )

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
            "peak_memory_gib": (torch.cuda.max_memory_allocated(self.device) / 2**30
                                if self.device.type == "cuda" else None),  # this rank's GPU
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
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_change: list[str] | tuple[str, ...] = (),
    quiet: bool = False,
) -> dict[str, Any]:
    """Train one run. A non-empty ``cfg.out_dir`` needs ``resume`` (continue its latest checkpoint, with the
    settings check of :mod:`sessa.train.resume`) or ``overwrite`` (replace the run files it holds; other
    files are left alone). SIGINT/SIGTERM finish the current step, save a checkpoint and raise
    :class:`TrainingInterrupted`."""
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite, allow_change=allow_change, quiet=quiet)
    try:
        with _stop_on_signals(trainer):
            return trainer.run()
    finally:
        trainer.close()


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer):  # noqa: ANN202
    """SIGINT/SIGTERM set ``trainer.stop_signal`` (a second SIGINT raises KeyboardInterrupt at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
        if trainer.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop_signal = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _remove_stale_temporaries(root: Path) -> None:
    """Checkpoint folders a killed save left half-written (never the complete ones)."""
    for path in root.glob(".tmp-*") if root.is_dir() else ():
        shutil.rmtree(path, ignore_errors=True)


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
    remove([out / name for name in RUN_FILES])


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
