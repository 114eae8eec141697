"""Analysis tools: the memory tail (DESIGN §3) and every mixer as an interaction operator (DESIGN §5).

* :mod:`~sessa.analysis.tail`: the uniform-routing construction (through the feedback solve and in closed
  form) and power-law / exponential tail fits.
* :mod:`~sessa.analysis.operators`: per-head T x T matrices W[t, τ] of attention, Mamba-2 and Sessa on a
  given input, checked by rebuilding the mixer output; off-diagonal (semiseparable) rank.
* :mod:`~sessa.analysis.influence`: fixed-routing and end-to-end (Jacobian) influence by lag, the diffuse
  regime initialisation.
* :mod:`~sessa.analysis.loading`: tiny random stacks of each mixer, trained checkpoints, random inputs.
* :mod:`~sessa.analysis.commands`: ``sessa tail`` and ``sessa operators``.
"""

from sessa.analysis.influence import (
    BlockStack,
    as_stack,
    diffuse_init_,
    end_to_end_influence,
    lag_profile,
    reference_backends,
    routing_influence,
)
from sessa.analysis.loading import (
    TINY_MIXERS,
    LoadedModel,
    find_blocks,
    load_pretrained,
    random_inputs,
    tiny_stack,
)
from sessa.analysis.operators import (
    OPERATORS,
    MixerOperator,
    attention_operator,
    attention_weights,
    collect_mixer_inputs,
    mamba2_operator,
    mamba2_ssd_inputs,
    mixer_operator,
    offdiag_rank,
    sessa_operator,
    sessa_routing,
    ssd_matrix,
)
from sessa.analysis.tail import (
    TailFit,
    fit_tail,
    log_spaced_lags,
    uniform_routing_closed_form,
    uniform_routing_impulse,
)

__all__ = [
    "BlockStack",
    "LoadedModel",
    "MixerOperator",
    "OPERATORS",
    "TINY_MIXERS",
    "TailFit",
    "as_stack",
    "attention_operator",
    "attention_weights",
    "collect_mixer_inputs",
    "diffuse_init_",
    "end_to_end_influence",
    "find_blocks",
    "fit_tail",
    "lag_profile",
    "load_pretrained",
    "log_spaced_lags",
    "mamba2_operator",
    "mamba2_ssd_inputs",
    "mixer_operator",
    "offdiag_rank",
    "random_inputs",
    "reference_backends",
    "routing_influence",
    "sessa_operator",
    "sessa_routing",
    "ssd_matrix",
    "tiny_stack",
    "uniform_routing_closed_form",
    "uniform_routing_impulse",
]
