"""`sessa eval` and `sessa generate`: commands that load a trained model directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from sessa.train.distributed import resolve_device


def load_model_dir(path: str, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A save_pretrained / checkpoint folder -> (model in eval mode, its train_config.json or {})."""
    folder = Path(path)
    if not (folder / "config.json").exists():
        raise ValueError(
            f"{folder} is not a model directory (no config.json); pass a checkpoint or save_pretrained folder"
        )
    from transformers.utils import logging as hf_logging

    from sessa.models import SessaForCausalLM

    hf_logging.disable_progress_bar()

    try:
        model = SessaForCausalLM.from_pretrained(str(folder))
    except (OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"cannot load the model in {folder}: {exc}") from exc
    train_cfg = folder / "train_config.json"
    meta = json.loads(train_cfg.read_text()) if train_cfg.exists() else {}
    return model.to(device).eval(), meta


def cmd_eval(args: argparse.Namespace) -> int:
    from sessa.cli import parse_kv
    from sessa.tasks import get_task
    from sessa.train.evaluate import evaluate

    device = resolve_device(args.device)
    model, meta = load_model_dir(args.path, device)
    task = args.task or meta.get("task")
    if task is None:
        raise ValueError("this directory has no train_config.json: pass --task")
    options = (
        parse_kv(args.task_option, "--task-option") if args.task_option else meta.get("task_options", {})
    )
    data = get_task(task, **options).build(
        args.data_seed if args.data_seed is not None else meta.get("data_seed", 0)
    )
    if model.config.vocab_size < data.vocab_size:
        raise ValueError(
            f"model vocabulary {model.config.vocab_size} < task vocabulary {data.vocab_size}: wrong task?"
        )
    splits = args.splits or [s for s in data.splits if s != "train"]
    unknown = [s for s in splits if s not in data.splits]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; {task} has {sorted(data.splits)}")
    results = {
        s: evaluate(model, data.splits[s], batch_size=args.batch_size, device=device, limit=args.limit)
        for s in splits
    }
    for split, res in results.items():
        print(
            f"{task} / {split}: loss {res['loss']:.4f}  accuracy {res['accuracy']:.4f}  "
            f"sequence_accuracy {res['sequence_accuracy']:.4f}  bpb {res['bpb']:.4f}  (n={res['n']})"
        )
        for key, groups in res.items():
            if key.startswith("by_") and groups and len(groups) <= 64:
                cells = ", ".join(
                    f"{k}: {v:.3f}" for k, v in sorted(groups.items(), key=lambda kv: float(kv[0]))
                )
                print(f"    accuracy {key}: {cells}")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"task": task, "options": options, "results": results}, indent=2)
        )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from sessa.models import SessaByteTokenizer

    device = resolve_device(args.device)
    model, _ = load_model_dir(args.path, device)
    folder = Path(args.path)
    tokenizer = (
        SessaByteTokenizer.from_pretrained(str(folder))
        if (folder / "tokenizer_config.json").exists()
        else SessaByteTokenizer()
    )
    if model.config.vocab_size < len(tokenizer):
        raise ValueError(
            f"this model's vocabulary ({model.config.vocab_size} tokens) is not the byte-level vocabulary "
            f"({len(tokenizer)}): `sessa generate` needs a text model (for example one trained on "
            "--task bytelm)"
        )
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature <= 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise ValueError("need --temperature > 0, 0 < --top-p <= 1 and --top-k >= 0")
    torch.manual_seed(args.seed)
    inputs = tokenizer(args.prompt, return_tensors="pt").to(device)
    streamer = TextStreamer(tokenizer, skip_prompt=False)
    model.generate(
        **inputs,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        streamer=streamer,
        pad_token_id=tokenizer.pad_token_id,
    )
    return 0
