"""The training configuration: one typed dataclass, validated, printed and saved with every run."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from sessa import registry
from sessa.validation import did_you_mean

# what `--resume --allow-change FIELD` may change (applied from the checkpoint on); see sessa.train.resume
RESUME_CHANGEABLE = frozenset({"lr", "min_lr_ratio", "weight_decay", "grad_clip"})
AMP_CHOICES = ("auto", "bf16", "fp16", "none")
DISTRIBUTED = ("none", "ddp", "fsdp")


@dataclass
class TrainConfig:
    """Everything one training run needs; ``dataclasses.asdict`` of it is saved with the results."""

    task: str = "mqar"  # a name from sessa.tasks.TASKS
    task_options: dict[str, Any] = field(default_factory=dict)  # overrides of the task config's fields
    model: str = "sessa"  # a name of sessa.registry.model_names(); "sessa_nofb": Sessa with gamma = 0
    preset: str = "tiny"  # a SessaConfig preset; baselines are matched to the Sessa model of this preset
    model_options: dict[str, Any] = field(
        default_factory=dict
    )  # SessaConfig overrides (applied before matching)
    match_params: bool = True  # resize baselines to within 2% of the Sessa parameter count
    steps: int = 200  # optimizer steps
    batch_size: int = 16  # rows per rank per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-3  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20  # linear warm-up steps
    warmup_fraction: float | None = None  # if set, warm-up = this fraction of `steps` (replaces warmup_steps)
    weight_decay: float = 0.1  # AdamW decay on matrices (not on biases, norms, embeddings' bias)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    eval_every: int = 100  # steps between evaluations (0: only at the end)
    eval_examples: int = 256  # rows per evaluation split during training (the final evaluation uses all)
    eval_batch_size: int = 64
    ckpt_every: int = 0  # steps between checkpoints (0: none by step count)
    ckpt_minutes: float = 10.0  # also checkpoint when this many minutes passed since the last one (0: never)
    keep_ckpts: int = 2  # newest checkpoints kept
    log_every: int = 10
    health: bool = True  # per-layer activation statistics every log step, with a divergence alarm
    seed: int = 0  # model init and data order
    data_seed: int = 0  # task generation
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    amp: str = "auto"  # "auto": bf16 autocast on CUDA, none on CPU
    compile: bool = False  # torch.compile the model
    gradient_checkpointing: bool = False  # keep block inputs only, recompute blocks in the backward
    pack: bool = False  # lay each batch's examples end to end in fewer rows (seq_idx; every built-in model)
    distributed: str = "none"  # "ddp" or "fsdp" under torchrun; "none" runs one process
    tensorboard: bool = False  # also log to TensorBoard (needs the tensorboard package)
    out_dir: str = "runs/train"

    def __post_init__(self) -> None:
        _one_of("model", self.model, registry.model_names())
        _one_of("amp", self.amp, AMP_CHOICES)
        _one_of("distributed", self.distributed, DISTRIBUTED)
        for name in ("steps", "batch_size", "grad_accum", "eval_batch_size", "log_every", "eval_examples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("eval_every", "ckpt_every", "warmup_steps", "keep_ckpts"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.warmup_fraction is not None and not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1) or None, got {self.warmup_fraction!r}")
        for name in ("lr", "min_lr_ratio", "weight_decay", "grad_clip", "ckpt_minutes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.ckpt_minutes < 0:
            raise ValueError(f"ckpt_minutes must be >= 0, got {self.ckpt_minutes!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError(
                f"grad_clip and weight_decay must be >= 0, got {self.grad_clip}, {self.weight_decay}"
            )
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]

    @property
    def warmup(self) -> int:
        """Warm-up steps in effect: ``round(warmup_fraction * steps)`` when the fraction is set."""
        if self.warmup_fraction is not None:
            return round(self.warmup_fraction * self.steps)
        return self.warmup_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown training option {unknown[0]!r}{did_you_mean(unknown[0], valid)}; "
                             f"valid: {', '.join(sorted(valid))}")
        return cls(**data)


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
