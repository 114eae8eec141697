"""Import path of the original implementation: ``from sessa.mixer import SessaMixer``."""

from sessa.modules.sessa_mixer import SessaMixer

__all__ = ["SessaMixer"]
