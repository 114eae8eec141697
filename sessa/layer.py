"""Import path of the original implementation: ``from sessa.layer import SessaLayer``."""

from sessa.modules.sessa_layer import SessaLayer

__all__ = ["SessaLayer"]
