"""Sessa: Selective State Space Attention (arXiv 2604.18580)."""

from sessa.layer import SessaLayer
from sessa.mixer import SessaMixer
from sessa.ops.feedback import feedback_solve, feedback_solve_ref

__version__ = "0.1.0"
__all__ = ["SessaLayer", "SessaMixer", "feedback_solve", "feedback_solve_ref", "__version__"]
