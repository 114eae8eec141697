"""Numerical ops: the feedback solve (``sessa.ops.feedback``) and forward-branch attention + RoPE."""
