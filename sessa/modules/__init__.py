"""Layers and blocks: SessaMixer, SessaLayer, and the blocks that wrap any mixer of the contract."""

from sessa.modules.blocks import GatedBlock, PreNormBlock, RMSNorm
from sessa.modules.contract import Mixer, MixerState
from sessa.modules.sessa_layer import SessaLayer
from sessa.modules.sessa_mixer import SessaMixer

__all__ = ["GatedBlock", "Mixer", "MixerState", "PreNormBlock", "RMSNorm", "SessaLayer", "SessaMixer"]
