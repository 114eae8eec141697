"""Baseline sequence mixers behind the mixer contract (:mod:`sessa.modules.contract`), one per file.

``BASELINE_MIXERS[name](d_model, layer_idx=i, **options)`` builds one; swapping a name swaps the mixer.
"""

from __future__ import annotations

from sessa.baselines.attention import AttentionMixer
from sessa.baselines.mamba import MambaMixer
from sessa.baselines.mamba2 import Mamba2Mixer

BASELINE_MIXERS: dict[str, type] = {
    "attention": AttentionMixer,
    "mamba2": Mamba2Mixer,
    "mamba": MambaMixer,
}

__all__ = ["BASELINE_MIXERS", "AttentionMixer", "Mamba2Mixer", "MambaMixer"]
