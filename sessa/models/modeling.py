"""Sessa language models with the Hugging Face ``PreTrainedModel`` / ``GenerationMixin`` interface.

    h_0 = embed(input_ids)                                 (B, T, D); no learned positions (RoPE in mixers)
    h_l = block_l(h_{l-1}, attention_mask)                 block = GatedBlock | PreNormBlock around a mixer
    logits = lm_head(norm(h_L))                            (B, T, V); lm_head tied to embed by default

Shapes: B batch, T new tokens, t tokens already cached, D = d_model, V = vocab_size.
``attention_mask`` (B, t + T) has 1 for real tokens and 0 for left padding; padding never influences
real tokens. With a cache (:class:`~sessa.models.cache.SessaCache`) every block runs its incremental
``step``, so a new token costs O(t·D) per Sessa/attention layer and O(1) per Mamba layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from sessa import registry
from sessa.models.cache import SessaCache
from sessa.models.configuration import SessaConfig
from sessa.models.static_cache import StaticSessaCache
from sessa.ops.packing import sequence_starts
from sessa.tokens import IGNORE_INDEX


def build_block(config: SessaConfig, layer_idx: int, mixer: str | None = None) -> nn.Module:
    """Block ``layer_idx`` of the stack: the config's block type around that layer's mixer (or ``mixer``);
    classes and options come from :mod:`sessa.registry`."""
    name = config.mixer_names[layer_idx] if mixer is None else mixer
    return registry.resolve(registry.block_spec(config.block).cls)(
        config.d_model,
        registry.mixer_class(name),
        layer_idx=layer_idx,
        **config.block_options(),
        **config.mixer_options(name),
    )


def build_final_norm(config: SessaConfig) -> nn.Module:
    """The norm after the last block: the block type's own (LayerNorm after gated blocks, RMSNorm after
    prenorm blocks)."""
    return registry.resolve(registry.block_spec(config.block).final_norm)(config.d_model, eps=config.ln_eps)


def token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) against targets (B, T) at the same positions (already shifted),
    in float32; ``IGNORE_INDEX`` (-100) is ignored. reduction: "mean" (over counted tokens), "sum" or
    "none" ((B, T)). The package's one loss: ``causal_lm_loss``, the trainer and the evaluation use it."""
    if targets.shape != logits.shape[:2]:
        raise ValueError(
            f"targets must have shape (B, T) = {tuple(logits.shape[:2])}, got {tuple(targets.shape)}"
        )
    scores = logits.float().transpose(1, 2)  # (B, V, T), the layout cross_entropy takes
    return F.cross_entropy(scores, targets.to(logits.device), ignore_index=IGNORE_INDEX, reduction=reduction)


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token cross-entropy: logits (B, T, V) at position t are scored against labels[:, t + 1].

    ``labels`` follow the ``labels = input_ids`` convention (the shift happens here); ``IGNORE_INDEX``
    (-100) is ignored.
    Mean over counted tokens, or sum / ``num_items_in_batch`` when given (gradient accumulation).
    """
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must have shape (B, T) = {tuple(logits.shape[:2])}, got {tuple(labels.shape)}"
        )
    if num_items_in_batch is None:
        return token_loss(logits[:, :-1], labels[:, 1:])
    return token_loss(logits[:, :-1], labels[:, 1:], reduction="sum") / num_items_in_batch


@dataclass
class SessaModelOutput(ModelOutput):
    """last_hidden_state: (B, T, D) after the final norm; cache: the updated states (``use_cache``);
    hidden_states: the embeddings and every block's output (``output_hidden_states``)."""

    last_hidden_state: torch.FloatTensor | None = None
    cache: SessaCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SessaCausalLMOutput(ModelOutput):
    """loss: scalar (when labels are given); logits: (B, T_kept, V); cache and hidden_states as above."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: SessaCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class SessaPreTrainedModel(PreTrainedModel):
    """Weight initialisation and HF plumbing shared by the Sessa models.

    Initialisation: the token embedding (and an untied LM head) ~ N(0, initializer_range); every block
    keeps the initialisation its own constructor gives (PyTorch defaults, Sessa's gamma bias 1, Mamba's
    dt/A initialisations), as in the original implementations.
    """

    config_class = SessaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True  # SessaModel.gradient_checkpointing: one checkpoint per block
    _no_split_modules = ["GatedBlock", "PreNormBlock"]
    _is_stateful = True  # recurrent layers: no assisted decoding (states cannot be rolled back)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Embedding) or module is getattr(self, "lm_head", None):
            init.normal_(module.weight, mean=0.0, std=std)


class SessaModel(SessaPreTrainedModel):
    """Embeddings, the block stack of the config, and the final norm; returns hidden states."""

    def __init__(self, config: SessaConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(build_block(config, i) for i in range(config.n_layers))
        self.norm = build_final_norm(config)
        # set by transformers' gradient_checkpointing_enable / activation_checkpointing_enable: a training
        # forward keeps each block's input only and recomputes the block in the backward
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def new_cache(self, max_len: int | None = None) -> SessaCache:
        """An empty cache for this stack, first allocated for ``max_len`` tokens (default
        ``config.max_position_embeddings``; it grows when more come)."""
        return SessaCache(
            self.layers, max_len if max_len is not None else self.config.max_position_embeddings
        )

    def new_static_cache(
        self,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        graphs: bool = True,
        compile: bool = False,
    ) -> StaticSessaCache:
        """A fixed-size cache for ``batch_size`` rows and ``max_len`` tokens whose one-token step is captured
        as a CUDA graph on CUDA, after ``torch.compile`` with ``compile=True``
        (:class:`~sessa.models.static_cache.StaticSessaCache`). Device and dtype default to the
        embedding's."""
        weight = self.embed_tokens.weight
        return StaticSessaCache(
            self.layers,
            max_len,
            batch_size,
            weight.device if device is None else device,
            weight.dtype if dtype is None else dtype,
            graphs=graphs,
            compile=compile,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        cache: SessaCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        seq_idx: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SessaModelOutput | tuple:
        """input_ids: (B, T) or inputs_embeds: (B, T, D); attention_mask: (B, t + T) with t the tokens
        already in ``cache`` (0 without one). Passing a cache continues it (in place); ``use_cache=True``
        without one starts a new cache (it grows as needed). Without either, nothing is cached.
        seq_idx: optional (B, T) packed rows (``sessa.ops.packing``: the sequence of each token; each
        sequence computes what it would alone), for a pass without a cache (every built-in mixer)."""
        _check_extra_kwargs(kwargs, allowed=("output_attentions",))
        h = self._embed(input_ids, inputs_embeds)
        if seq_idx is not None and (cache is not None or use_cache):
            raise ValueError("seq_idx (packed rows) is for a pass without a cache; generation takes one "
                             "sequence per row (left padding with attention_mask)")
        if use_cache and cache is None:
            cache = self.new_cache(h.shape[1])
        _check_mask(attention_mask, h.shape[:2], cache)
        if isinstance(cache, StaticSessaCache) and h.shape[1] == 1 and not output_hidden_states:
            h = cache.decode(self, h, attention_mask)  # the fixed-shape step (a CUDA graph on CUDA)
            out = SessaModelOutput(last_hidden_state=h, cache=cache, hidden_states=None)
            return (
                out
                if (return_dict if return_dict is not None else self.config.return_dict)
                else out.to_tuple()
            )
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            attention_mask = attention_mask != 0  # once here, not once per layer (host time per step)
        hidden = [h] if output_hidden_states else None
        checkpointed = (
            cache is None and self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        )
        for i, layer in enumerate(self.layers):
            if cache is not None:
                h = cache.step(i, h, attention_mask)
            elif checkpointed:
                h = self._gradient_checkpointing_func(layer.__call__, h, attention_mask, seq_idx)
            else:
                h = layer(h, attention_mask=attention_mask, seq_idx=seq_idx)
            if hidden is not None:
                hidden.append(h)
        h = self.norm(h)
        out = SessaModelOutput(
            last_hidden_state=h, cache=cache, hidden_states=tuple(hidden) if hidden else None
        )
        return (
            out if (return_dict if return_dict is not None else self.config.return_dict) else out.to_tuple()
        )

    def _embed(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, T) and inputs_embeds (B, T, D)")
        if inputs_embeds is not None:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.d_model:
                raise ValueError(
                    f"inputs_embeds must have shape (B, T, d_model={self.config.d_model}), "
                    f"got {tuple(inputs_embeds.shape)}"
                )
            return inputs_embeds
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
        return self.embed_tokens(input_ids)


class SessaForCausalLM(SessaPreTrainedModel, GenerationMixin):
    """:class:`SessaModel` with a language-modelling head; ``generate()`` reuses a :class:`SessaCache`.

    Example:
        >>> model = SessaForCausalLM(SessaConfig.from_preset("tiny")).eval()
        >>> out = model.generate(torch.tensor([[72, 105]]), max_new_tokens=5, do_sample=False)
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SessaConfig) -> None:
        super().__init__(config)
        self.model = SessaModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        cache: SessaCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        seq_idx: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SessaCausalLMOutput | tuple:
        """Inputs as :meth:`SessaModel.forward`; labels: (B, T) = input_ids convention (shifted here,
        -100 ignored; with seq_idx the first label of each packed sequence is ignored too: the last token of
        the sequence before does not predict it); logits_to_keep: 0 = all positions, k > 0 = the last k (or a
        1-D index tensor). ``num_items_in_batch`` (from the HF Trainer) switches the loss to
        sum / num_items_in_batch."""
        _check_extra_kwargs(kwargs, allowed=("output_attentions", "num_items_in_batch"))
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            seq_idx=seq_idx,
        )
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            h = h[:, -logits_to_keep:] if logits_to_keep > 0 else h
        else:
            h = h[:, logits_to_keep]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            if seq_idx is not None:
                labels = labels.masked_fill(sequence_starts(seq_idx).to(labels.device), IGNORE_INDEX)
            loss = causal_lm_loss(logits, labels, kwargs.get("num_items_in_batch"))
        result = SessaCausalLMOutput(
            loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states
        )
        return (
            result
            if (return_dict if return_dict is not None else self.config.return_dict)
            else result.to_tuple()
        )

    # -- generate() integration (transformers 5.x): the model supplies its own cache ------------------
    def _reusable_static_cache(self, rows: int, max_len: int, compile_step: bool) -> StaticSessaCache:
        """The static cache of the previous ``generate(cache_implementation="static")`` call, reset, when it
        fits this one (same rows, device, dtype and step form, enough positions); else a new one, kept for
        the next call. Reuse keeps its captured CUDA graph: a generation then captures nothing (transformers
        keeps its static caches the same way). A parameter replaced by another tensor since (not updated in
        place) also makes a new one: the captured graph reads the parameters' memory.
        ``del model._sessa_static_cache`` frees it."""
        weight = self.model.embed_tokens.weight
        memory = tuple(p.data_ptr() for p in self.model.parameters())
        cache = getattr(self, "_sessa_static_cache", None)
        if (
            cache is not None
            and cache.fits(rows, max_len, weight.device, weight.dtype, compile_step)
            and cache.parameter_memory == memory
        ):
            cache.reset()
            return cache
        self._sessa_static_cache = None  # the old buffers go before the new ones are allocated
        cache = self._sessa_static_cache = self.model.new_static_cache(rows, max_len, compile=compile_step)
        cache.parameter_memory = memory
        return cache

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # a DynamicCache holds key/value pairs; Sessa/Mamba layers need their own states

    def _prepare_cache_for_generation(
        self,
        generation_config: Any,
        model_kwargs: dict[str, Any],
        generation_mode: Any,
        batch_size: int,
        max_cache_length: int,
    ) -> None:
        """Put a fresh :class:`SessaCache` into ``model_kwargs["cache"]`` (unless the caller passed one or
        turned caching off): sized for the whole generation up to ``max_position_embeddings`` tokens, and
        grown (doubling) as tokens come beyond that, so a huge ``max_new_tokens`` allocates as it goes.
        ``cache_implementation="static"``: a :class:`StaticSessaCache` for this batch and length, whose
        one-token step is replayed as a CUDA graph; on CUDA the step is compiled first (transformers'
        convention for static caches) unless ``disable_compile=True``. The model keeps it, and a later call
        that fits it reuses it after a reset (:meth:`_reusable_static_cache`)."""
        if generation_config.cache_implementation == "static":
            if generation_config.use_cache and model_kwargs.get("cache") is None:
                rows = batch_size * max(
                    generation_config.num_beams or 1, generation_config.num_return_sequences or 1
                )
                compile_step = self.device.type == "cuda" and not generation_config.disable_compile
                model_kwargs["cache"] = self._reusable_static_cache(rows, int(max_cache_length), compile_step)
            return
        super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length
        )
        if generation_config.use_cache and model_kwargs.get("cache") is None:
            first = min(int(max_cache_length), self.config.max_position_embeddings)
            model_kwargs["cache"] = self.model.new_cache(max(first, 1))


def _check_extra_kwargs(kwargs: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Reject unknown keyword arguments; ``output_attentions`` is accepted only when falsy."""
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}; accepted extras: {list(allowed)}")
    if kwargs.get("output_attentions"):
        raise ValueError("output_attentions=True is not supported: mixers do not return attention weights")


def _check_mask(attention_mask: torch.Tensor | None, shape: torch.Size, cache: SessaCache | None) -> None:
    if attention_mask is None:
        return
    past = cache.get_seq_length() if cache is not None else 0
    expected = (shape[0], past + shape[1])
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != expected:
        raise ValueError(
            f"attention_mask must have shape (B, cached + new tokens) = {expected}, "
            f"got {tuple(attention_mask.shape)}"
        )
