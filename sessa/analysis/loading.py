"""Models for the analysis tools: tiny random stacks of each mixer, trained models and their inputs.

Every analysis takes a *stack*: an ``nn.Module`` mapping hidden states (B, T, D) -> (B, T, D) (a block, a
:class:`~sessa.analysis.influence.BlockStack`, any module of blocks). A causal LM is reduced to a stack of
its decoder blocks by :func:`find_blocks`; its input embedding supplies realistic random inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sessa import registry
from sessa.analysis.influence import BlockStack
from sessa.modules.blocks import GatedBlock


class _TinyMixers(Mapping):
    """name -> (mixer class, options) of the tiny blocks compared in the diffuse regime: every mixer of
    :mod:`sessa.registry` with an operator view, with its entry's ``tiny`` options. Each sits in the paper's
    gated block, so only the mixer differs. A live view: it follows the registry."""

    def __getitem__(self, name: str) -> tuple[type[nn.Module], dict[str, Any]]:
        if name not in registry.analysis_mixers():
            raise KeyError(name)
        return registry.mixer_class(name), dict(registry.mixer_spec(name).tiny)

    def __iter__(self) -> Iterator[str]:
        return iter(registry.analysis_mixers())

    def __len__(self) -> int:
        return len(registry.analysis_mixers())


TINY_MIXERS: Mapping[str, tuple[type[nn.Module], dict[str, Any]]] = _TinyMixers()

# where decoder blocks live in common causal-LM layouts (first match wins)
_BLOCK_PATHS = (
    "model.layers", "layers", "backbone.layers", "transformer.h", "model.decoder.layers", "blocks",
)


def tiny_stack(
    kind: str, d_model: int = 32, n_layers: int = 1, *, seed: int = 0, dtype: torch.dtype = torch.float64
) -> BlockStack:
    """n_layers gated blocks of mixer ``kind`` (a key of TINY_MIXERS), randomly initialised from ``seed``."""
    if kind not in TINY_MIXERS:
        raise ValueError(f"kind must be one of {list(TINY_MIXERS)}, got {kind!r}")
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    cls, options = TINY_MIXERS[kind]
    torch.manual_seed(seed)
    blocks = [GatedBlock(d_model, cls, layer_idx=i, **options) for i in range(n_layers)]
    return BlockStack(blocks).to(dtype)


@dataclass
class LoadedModel:
    """A causal LM split for analysis: ``stack`` of its decoder blocks (B, T, D) -> (B, T, D) and its
    token ``embedding`` (None when it has none)."""

    stack: BlockStack
    embedding: nn.Module | None
    d_model: int


def _get_path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_blocks(model: nn.Module) -> LoadedModel:
    """Locate the decoder blocks of ``model`` (layouts: model.layers, layers, backbone.layers, transformer.h,
    model.decoder.layers, blocks). Blocks must map hidden states to hidden states (a tuple's first element
    is used)."""
    for dotted in _BLOCK_PATHS:
        blocks = _get_path(model, dotted)
        if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks) > 0:
            break
    else:
        raise ValueError(
            f"cannot find the decoder blocks of {type(model).__name__}: looked for {list(_BLOCK_PATHS)}"
        )
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    d_model = embedding.weight.shape[1] if embedding is not None else _width(blocks[0])
    return LoadedModel(BlockStack(list(blocks)), embedding, d_model)


def _width(block: nn.Module) -> int:
    for attr in ("d_model", "D", "hidden_size"):
        for module in (block, getattr(block, "mixer", None)):
            if isinstance(getattr(module, attr, None), int):
                return getattr(module, attr)
    raise ValueError(f"cannot tell the width of block {type(block).__name__}; give it a d_model attribute")


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.float64) -> LoadedModel:
    """Load a causal LM with ``transformers.AutoModelForCausalLM.from_pretrained`` (Sessa models register
    themselves on ``import sessa.models``) and split it with :func:`find_blocks`."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as err:
        raise ImportError("loading checkpoints needs transformers: pip install 'sessa[hf]'") from err
    try:
        import sessa.models  # noqa: F401  (registers the Sessa architectures with the Auto classes)
    except ImportError:
        pass
    from sessa.models.loading import resolve_model_dir

    model = AutoModelForCausalLM.from_pretrained(str(resolve_model_dir(path)))
    return find_blocks(model.to(dtype).eval())


def random_inputs(
    n: int, T: int, d_model: int, *, embedding: nn.Module | None = None, seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """(n, T, d_model) inputs to average over: embeddings of uniform random tokens when an embedding is
    given, else standard normal hidden states."""
    generator = torch.Generator().manual_seed(seed)
    if embedding is None:
        return torch.randn(n, T, d_model, generator=generator, dtype=dtype)
    tokens = torch.randint(0, embedding.weight.shape[0], (n, T), generator=generator)
    with torch.no_grad():
        return embedding(tokens.to(embedding.weight.device)).to(dtype)
