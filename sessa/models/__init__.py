"""Sessa language models with Hugging Face integration, and parameter-matched baselines.

Importing this package registers ``model_type="sessa"`` with ``AutoConfig``, ``AutoModel``,
``AutoModelForCausalLM`` and ``AutoTokenizer`` (needs ``transformers``; ``import sessa`` alone does not).

    >>> from sessa.models import SessaConfig, SessaForCausalLM, SessaByteTokenizer
    >>> model = SessaForCausalLM(SessaConfig.from_preset("tiny-mamba2"))   # matched Mamba-2 baseline

The names of mixers and trainable models live in :mod:`sessa.registry`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from sessa.models.cache import SessaCache
from sessa.models.configuration import SessaConfig
from sessa.models.matching import count_params, match_params, param_table
from sessa.models.modeling import (
    SessaCausalLMOutput,
    SessaForCausalLM,
    SessaModel,
    SessaModelOutput,
    SessaPreTrainedModel,
    build_block,
    causal_lm_loss,
)
from sessa.models.presets import PRESETS, from_preset, model_config
from sessa.models.tokenizer import SessaByteTokenizer

AutoConfig.register(SessaConfig.model_type, SessaConfig, exist_ok=True)
AutoModel.register(SessaConfig, SessaModel, exist_ok=True)
AutoModelForCausalLM.register(SessaConfig, SessaForCausalLM, exist_ok=True)
AutoTokenizer.register(SessaConfig, tokenizer_class=SessaByteTokenizer, exist_ok=True)

__all__ = [
    "PRESETS",
    "SessaByteTokenizer",
    "SessaCache",
    "SessaCausalLMOutput",
    "SessaConfig",
    "SessaForCausalLM",
    "SessaModel",
    "SessaModelOutput",
    "SessaPreTrainedModel",
    "build_block",
    "causal_lm_loss",
    "count_params",
    "from_preset",
    "match_params",
    "model_config",
    "param_table",
]
