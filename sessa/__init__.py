"""Sessa: Selective State Space Attention (arXiv 2604.18580).

``from sessa import SessaLayer, SessaMixer, feedback_solve``. Submodules load on first use so that
``import sessa`` stays light (no transformers); ``sessa.models`` (Hugging Face) needs ``transformers``.
The Auto classes learn ``model_type="sessa"`` when ``sessa.models`` is imported, or on ``import sessa``
itself when ``transformers`` has already been imported (then registering costs nothing extra).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "SessaLayer": "sessa.layer",
    "SessaMixer": "sessa.mixer",
    "feedback_solve": "sessa.ops.feedback",
    "feedback_solve_ref": "sessa.ops.feedback",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sessa' has no attribute {name!r}")


if "transformers" in sys.modules:
    try:
        importlib.import_module("sessa.models")
    except ImportError:  # an incompatible transformers: sessa.models reports it when imported directly
        pass
