"""Benchmark tasks, generated offline and deterministically. ``get_task(name, **overrides).build(seed)``."""

from sessa.tasks.base import IGNORE_INDEX, TASKS, TaskConfig, TaskData, TaskSplit, get_task, register_task

__all__ = ["IGNORE_INDEX", "TASKS", "TaskConfig", "TaskData", "TaskSplit", "get_task", "register_task"]
from sessa.tasks import diffuse_mqar, induction, mqar, passkey, selective_copy, symbolsoup  # noqa: F401
from sessa.tasks import corpus, listops, pathfinder, scan  # noqa: F401
