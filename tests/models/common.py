"""Tiny models for the sessa.models tests."""

from __future__ import annotations

from typing import Any

import torch

from sessa import registry
from sessa.models import SessaConfig, SessaForCausalLM

MIXERS = registry.mixer_names()


def tiny_model(mixer: str = "sessa", dtype: torch.dtype = torch.float32, seed: int = 0, **overrides: Any):
    """An eval-mode tiny model whose predictions depend clearly on the context.

    Random inits of a fresh LM give near-uniform logits that mostly follow the last token; a wide
    embedding/head init and louder block outputs make greedy decoding vary with the whole prompt.
    """
    fields = dict(mixer=mixer, match=False, tie_word_embeddings=False, initializer_range=1.0)
    config = SessaConfig.from_preset("tiny", **{**fields, **overrides})
    torch.manual_seed(seed)
    model = SessaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("W_out.weight", "out_proj.weight", "w_down.weight")):
                param.mul_(3.0)
    return model.to(dtype)


def prompts(lengths: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    """Random byte prompts (1-D long tensors) of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=g) for n in lengths]


def left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D rows with left padding: input_ids (B, T_max) and attention_mask (B, T_max)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


def step_logits(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None, start: int, end: int, cache: Any
) -> torch.Tensor:
    """Tokens start..end-1 of ids (B, T) fed one at a time through ``cache`` (continued in place), with the
    attention mask up to each token (or none): their logits, (B, end - start, vocab)."""
    logits = []
    for t in range(start, end):
        seen = None if mask is None else mask[:, : t + 1]
        logits.append(model(ids[:, t : t + 1], attention_mask=seen, cache=cache).logits[:, -1])
    return torch.stack(logits, 1)
