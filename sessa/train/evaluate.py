"""Task metrics of a causal LM on a split: loss, token accuracy, sequence accuracy, per-length breakdowns."""

from __future__ import annotations

import contextlib
import math

import torch

from sessa.models.modeling import token_loss
from sessa.progress import Progress
from sessa.tasks.base import IGNORE_INDEX, TaskSplit
from sessa.train.data import eval_batches


def logits_of(
    model: torch.nn.Module, inputs: torch.Tensor, seq_idx: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, T) ids -> (B, T, V) logits for a Hugging Face style model or one that returns a tensor; seq_idx:
    optional (B, T) packed rows (``sessa.ops.packing``)."""
    out = model(input_ids=inputs) if seq_idx is None else model(input_ids=inputs, seq_idx=seq_idx)
    return out if isinstance(out, torch.Tensor) else out.logits


def autocast_for(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split: TaskSplit,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    limit: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: str | None = None,
) -> dict[str, object]:
    """Evaluate on the first ``limit`` rows (all by default); sharded over ranks and summed when distributed.

    Returns loss (mean over scored positions, nats), bpb (loss / ln 2), accuracy (scored positions predicted
    exactly), sequence_accuracy (examples with every scored position right), n (examples) and, for each
    per-example label in ``split.meta``, ``by_<name>``: {value: accuracy of those examples}.
    ``progress``: a label to show a progress bar with ETA under (on a terminal).
    """
    device = torch.device(device)
    n = len(split) if limit is None else min(limit, len(split))
    # Per-example sums, filled by this rank and summed over ranks: [loss, scored, correct].
    stats = torch.zeros(n, 3, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    batches = list(eval_batches(split, batch_size, rank, world_size, limit=n))
    bar = Progress(len(batches), progress) if progress else None
    for rows in batches:
        width = int(split.lengths[rows].max())
        inputs, targets = split.inputs[rows, :width].to(device), split.targets[rows, :width].to(device)
        with autocast_for(device, amp_dtype):
            logits = logits_of(model, inputs)
        logits = logits.float()
        scored = targets != IGNORE_INDEX
        loss = token_loss(logits, targets, reduction="none")
        correct = (logits.argmax(-1) == targets) & scored
        stats[rows.to(device)] = torch.stack(
            [loss.sum(1).double(), scored.sum(1).double(), correct.sum(1).double()], dim=1
        )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.train(was_training)
    if world_size > 1:
        torch.distributed.all_reduce(stats)
    return summarize(stats.cpu(), {k: v[:n] for k, v in split.meta.items()})


def summarize(stats: torch.Tensor, meta: dict[str, torch.Tensor]) -> dict[str, object]:
    loss_sum, scored, correct = stats.unbind(1)
    has = scored > 0
    total = scored.sum().clamp_min(1)
    loss = (loss_sum.sum() / total).item()
    result: dict[str, object] = {
        "loss": loss,
        "bpb": loss / math.log(2),
        "accuracy": (correct.sum() / total).item(),
        "sequence_accuracy": ((correct == scored) & has).sum().item() / max(int(has.sum()), 1),
        "n": int(has.sum()),
    }
    for key, values in meta.items():
        groups = {}
        for value in torch.unique(values).tolist():
            sel = (values == value) & has
            if sel.any():
                groups[value] = (correct[sel].sum() / scored[sel].sum()).item()
        result[f"by_{key}"] = groups
    return result


def primary_metric(metric: str, result: dict[str, object]) -> tuple[str, float, bool]:
    """(name, value, higher_is_better) of a task's headline metric."""
    if metric == "bpb":
        return "bpb", float(result["bpb"]), False  # type: ignore[arg-type]
    if metric not in ("accuracy", "sequence_accuracy"):
        raise ValueError(f"unknown task metric {metric!r}")
    return metric, float(result[metric]), True  # type: ignore[arg-type]
