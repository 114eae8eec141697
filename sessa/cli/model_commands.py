"""``sessa eval`` and ``sessa generate``: commands that load a trained model directory (EvalConfig /
GenerateConfig)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sessa.cli.options import add_config_options, given, parse_kv

EVAL_HELP = "evaluate a checkpoint or Hugging Face directory on a task"
GENERATE_HELP = "generate text from a model directory (streams tokens)"


@dataclass
class EvalConfig:
    path: str  # a checkpoint folder (runs/.../checkpoints/step_N) or a save_pretrained directory
    task: str | None = None  # task name (default: the one the checkpoint was trained on)
    task_options: dict[str, Any] = field(default_factory=dict)  # merged over the checkpoint's task options
    data_seed: int | None = None  # task generation seed (default: the checkpoint's)
    splits: list[str] | None = None  # splits to evaluate (default: all but train)
    batch_size: int = 64  # rows per forward pass
    limit: int | None = None  # evaluate only the first N rows of each split
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    out: str | None = None  # write the metrics as JSON to this file
    other_task: bool = False  # allow a task other than the training task (the metrics may be meaningless)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or left out), got {self.limit}")
        if self.out is not None and not Path(self.out).resolve().parent.is_dir():
            raise ValueError(f"--out {self.out}: the folder {Path(self.out).resolve().parent} does not exist")


@dataclass
class GenerateConfig:
    path: str  # a save_pretrained directory or checkpoint folder of a text (byte-level) model
    prompt: str = ""  # the text to continue (required, non-empty)
    max_new_tokens: int = 64  # tokens to generate
    do_sample: bool = False  # sample (else greedy)
    temperature: float = 1.0  # sampling temperature > 0
    top_k: int = 0  # keep the k most likely tokens (0: all)
    top_p: float = 1.0  # nucleus sampling mass in (0, 1]
    seed: int = 0  # sampling seed
    device: str = "auto"  # auto, cpu, cuda, ...
    static_cache: bool = False  # a fixed-size cache whose one-token step is a CUDA graph (fastest on CUDA)
    compile: bool = True  # with --static-cache on CUDA: torch.compile the step before capturing it

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("--prompt must be a non-empty text")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("need --temperature > 0, 0 < --top-p <= 1 and --top-k >= 0")


def add_eval(sub: Any) -> argparse.ArgumentParser:
    from sessa.tasks import TASKS

    p = sub.add_parser("eval", help=EVAL_HELP, description=EVAL_HELP)
    add_config_options(p, EvalConfig, positional={"path"}, choices={"task": sorted(TASKS)})
    p.add_argument(
        "--task-option",
        action="append",
        metavar="KEY=VALUE",
        help="override a field of the task's config (merged over the checkpoint's), repeatable",
    )
    return p


def add_generate(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("generate", help=GENERATE_HELP, description=GENERATE_HELP)
    add_config_options(p, GenerateConfig, positional={"path"})
    return p


def run_eval(args: argparse.Namespace) -> int:
    from sessa.models.loading import load_model
    from sessa.tasks import get_task
    from sessa.train.distributed import resolve_device
    from sessa.train.evaluate import evaluate

    cfg = EvalConfig(**given(args, EvalConfig), task_options=parse_kv(args.task_option, "--task-option"))
    device = resolve_device(cfg.device)
    model, meta = load_model(cfg.path, device)
    trained_on = meta.get("task")
    task = cfg.task or trained_on
    if task is None:
        raise ValueError("this directory has no train_config.json: pass --task")
    if trained_on is not None and task != trained_on and not cfg.other_task:
        raise ValueError(
            f"this model was trained on {trained_on!r}, not {task!r}: its metrics there mean "
            "little; pass --other-task to evaluate anyway"
        )
    base = meta.get("task_options", {}) if task == trained_on else {}
    options = {**base, **cfg.task_options}
    data = get_task(task, **options).build(
        cfg.data_seed if cfg.data_seed is not None else meta.get("data_seed", 0)
    )
    if model.config.vocab_size < data.vocab_size:
        raise ValueError(
            f"model vocabulary {model.config.vocab_size} < task vocabulary {data.vocab_size}: "
            "wrong task options?"
        )
    splits = cfg.splits or [s for s in data.splits if s != "train"]
    unknown = [s for s in splits if s not in data.splits]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; {task} has {sorted(data.splits)}")
    results = {}
    for split in splits:
        results[split] = evaluate(
            model,
            data.splits[split],
            batch_size=cfg.batch_size,
            device=device,
            limit=cfg.limit,
            progress=f"eval {split}",
        )
        _print_result(task, split, results[split])
    if cfg.out:
        Path(cfg.out).write_text(json.dumps({"task": task, "options": options, "results": results}, indent=2))
    return 0


def _print_result(task: str, split: str, res: dict[str, Any]) -> None:
    print(
        f"{task} / {split}: loss {res['loss']:.4f}  accuracy {res['accuracy']:.4f}  "
        f"sequence_accuracy {res['sequence_accuracy']:.4f}  bpb {res['bpb']:.4f}  (n={res['n']})",
        flush=True,
    )
    for key, groups in res.items():
        if key.startswith("by_") and groups and len(groups) <= 64:
            cells = ", ".join(f"{k}: {v:.3f}" for k, v in sorted(groups.items(), key=lambda kv: float(kv[0])))
            print(f"    accuracy {key}: {cells}")


def cache_bytes_per_token(model: torch.nn.Module, batch: int = 1) -> int:
    """Bytes one more cached token costs (every layer's growing state), measured from a tiny state."""
    total = 0
    for layer in model.model.layers:
        one, two = (layer.init_state(batch, n, device="meta") for n in (1, 2))
        total += sum(
            b.numel() * b.element_size() - a.numel() * a.element_size()
            for a, b in zip(_tensors(one), _tensors(two), strict=True)
        )
    return total


def _tensors(state: dict[str, Any]) -> list[torch.Tensor]:
    return [v for _, v in sorted(state.items()) if isinstance(v, torch.Tensor)]


def memory_budget(device: torch.device) -> int:
    """Bytes a cache may take: free GPU memory, or half the machine's RAM on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def run_generate(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from sessa.models import SessaByteTokenizer
    from sessa.models.loading import load_model
    from sessa.train.distributed import resolve_device

    cfg = GenerateConfig(**given(args, GenerateConfig))
    device = resolve_device(cfg.device)
    model, _ = load_model(cfg.path, device)
    folder = Path(cfg.path)
    tokenizer = (
        SessaByteTokenizer.from_pretrained(str(folder))
        if (folder / "tokenizer_config.json").exists()
        else SessaByteTokenizer()
    )
    if model.config.vocab_size < len(tokenizer):
        raise ValueError(
            f"this model's vocabulary ({model.config.vocab_size} tokens) is not the byte-level "
            f"vocabulary ({len(tokenizer)}): `sessa generate` needs a text model (for example one "
            "trained on --task bytelm)"
        )
    inputs = tokenizer(cfg.prompt, return_tensors="pt").to(device)
    total = inputs["input_ids"].shape[1] + cfg.max_new_tokens
    per_token, budget = cache_bytes_per_token(model), memory_budget(device)
    need = per_token * total
    if need > budget:
        limit = budget // max(per_token, 1) - inputs["input_ids"].shape[1]
        raise ValueError(
            f"--max-new-tokens {cfg.max_new_tokens} needs a {need / 2**30:.1f} GiB cache, more than "
            f"the {budget / 2**30:.1f} GiB available on {device}; at most about {max(limit, 0):,}"
        )
    if total > model.config.max_position_embeddings:
        warnings.warn(
            f"generating {total} tokens, more than the {model.config.max_position_embeddings} the "
            "model was configured for",
            stacklevel=1,
        )
    torch.manual_seed(cfg.seed)
    model.generate(
        **inputs,
        max_new_tokens=cfg.max_new_tokens,
        do_sample=cfg.do_sample,
        temperature=cfg.temperature,
        top_k=cfg.top_k or None,
        top_p=cfg.top_p,
        streamer=TextStreamer(tokenizer, skip_prompt=False),
        pad_token_id=tokenizer.pad_token_id,
        cache_implementation="static" if cfg.static_cache else None,
        disable_compile=not cfg.compile,
    )
    sys.stdout.flush()
    return 0


__all__ = ["EvalConfig", "GenerateConfig", "run_eval", "run_generate"]
