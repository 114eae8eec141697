"""Baseline sequence mixers behind the mixer contract (:mod:`sessa.modules.contract`), one per file.

Their names, constructor options and backends are entries of :mod:`sessa.registry`
(``registry.mixer_class("mamba2")(d_model, layer_idx=i, **options)`` builds one).
"""

from __future__ import annotations

from sessa.baselines.attention import AttentionMixer
from sessa.baselines.mamba import MambaMixer
from sessa.baselines.mamba2 import Mamba2Mixer

__all__ = ["AttentionMixer", "Mamba2Mixer", "MambaMixer"]
