"""Benchmark tasks, generated offline and deterministically. ``get_task(name, **overrides).build(seed)``."""

from sessa.tasks.base import IGNORE_INDEX, TASKS, TaskConfig, TaskData, TaskSplit, get_task, register_task

__all__ = ["IGNORE_INDEX", "TASKS", "TaskConfig", "TaskData", "TaskSplit", "get_task", "register_task"]
from sessa.tasks import (  # noqa: F401  # noqa: F401
    corpus,
    diffuse_mqar,
    induction,
    listops,
    mqar,
    passkey,
    pathfinder,
    scan,
    selective_copy,
    symbolsoup,
)
