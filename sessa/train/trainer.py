"""The training loop: AdamW + warm-up/cosine, clipping, AMP, accumulation, evaluation, atomic checkpoints,
exact resume, NaN guard, DDP/FSDP under torchrun. Model code knows nothing of this file."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
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


class TrainingDiverged(RuntimeError):
    """Raised when the loss becomes NaN or infinite; the last good checkpoint is left untouched."""


def lr_lambda(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
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

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, quiet: bool = False) -> None:
        self.cfg, self.quiet = cfg, quiet
        self.out = Path(cfg.out_dir)
        self.dist = D.setup(cfg.distributed, cfg.device)
        self.device = self.dist.device
        self.amp = amp_dtype(cfg, self.device)
        if self.dist.is_main:
            _check_writable(self.out)
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
        if not self.dist.is_main:
            return
        path = self.out / "metrics.csv"
        keys = ["step", "loss", "lr", "tokens_per_s", "split", "metric", "value"]
        new = not path.exists()
        with path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

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
                window_tokens, window_time = 0, 0.0
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self._periodic_eval(self.evaluate(cfg.eval_examples), writer)
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.steps:
                self._save()
        final = self.evaluate(None)
        self._periodic_eval(final, writer)
        self._save()
        if writer:
            writer.close()
        return self._summary(final)

    def _periodic_eval(self, results: dict[str, dict[str, Any]], writer) -> None:  # noqa: ANN001
        for split, res in results.items():
            name, value, _ = primary_metric(self.data.metric, res)
            self._record({"step": self.step, "split": split, "metric": name, "value": value})
            self._log(f"  eval {split}: {name} {value:.4f} (loss {res['loss']:.4f}, n={res['n']})")
            if writer:
                writer.add_scalar(f"eval/{split}/{name}", value, self.step)

    def _summary(self, final: dict[str, dict[str, Any]]) -> dict[str, Any]:
        summary = {
            "model": self.cfg.model,
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
            "config": self.cfg.to_dict(),
        }
        if self.dist.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return summary

    def close(self) -> None:
        D.teardown(self.dist)


def train(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    trainer = Trainer(cfg, resume=resume, quiet=quiet)
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
