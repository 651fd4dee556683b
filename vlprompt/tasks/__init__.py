"""Tasks (classification, compositional zero-shot) as data; `vlprompt.runner` runs any of them."""

from vlprompt.tasks import classification, czsl  # noqa: F401  (fill the task registry)
from vlprompt.tasks.base import TASKS, Task, TaskPlan

__all__ = ["TASKS", "Task", "TaskPlan"]
