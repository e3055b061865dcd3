"""Tasks: one object per kind of data and model, registered under the recipe's ``task:`` name.

=============  ====================================================================================
``slice``      :class:`~chestdx.tasks.slice.Slices`: 2D images (CT slices; chest X-rays with
               ``data.modality: cxr``, the old ``task: cxr``)
``sequence``   :class:`~chestdx.tasks.sequence.Sequences`: fixed-length slice sequences of a scan
``volume``     :class:`~chestdx.tasks.volume.Volumes`: whole 3D scans
``lesion``     :class:`~chestdx.tasks.lesion.Lesions`: one-shot lesion segmentation +
               classification (the affinity paper's Algorithm 1)
=============  ====================================================================================

Callers ask the recipe's task object (``get_task(recipe)``) instead of comparing ``recipe.task``
with a name; :class:`~chestdx.tasks.base.Task` lists what a task provides, ``docs/adding-a-task.md``
how to add one. The recipe's ``data`` section class of each task is in
:data:`chestdx.config.DATA_SECTIONS` (so that recipes validate without importing the tasks).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chestdx.registry import Registry
from chestdx.tasks.base import Evaluation, Task
from chestdx.tasks.lesion import Lesions
from chestdx.tasks.sequence import Sequences
from chestdx.tasks.slice import Slices
from chestdx.tasks.volume import Volumes

if TYPE_CHECKING:
    from chestdx.config import Recipe
    from chestdx.data.layouts import Sample

__all__ = ["TASKS", "Task", "Evaluation", "get_task", "load_samples", "task_names"]

TASKS: Registry[Any] = Registry("task")
"""Task name -> task class (a task takes no recipe ``params``)."""

TASKS.register(Slices.name, Slices)
TASKS.register(Sequences.name, Sequences)
TASKS.register(Volumes.name, Volumes)
TASKS.register(Lesions.name, Lesions)

_INSTANCES: dict[str, Task] = {}


def get_task(recipe_or_name: Any) -> Task:
    """The task object of a recipe (or of a task name).

    Raises:
        ConfigError: an unknown task name, with the closest names.
    """
    name = recipe_or_name if isinstance(recipe_or_name, str) else recipe_or_name.task
    if name not in _INSTANCES:
        _INSTANCES[name] = TASKS.build(name, where="task")
    return _INSTANCES[name]


def task_names() -> list[str]:
    """Every registered task name, sorted."""
    return TASKS.names()


def load_samples(sources: Sequence[str | Path], recipe: Recipe, check: bool = True) -> list[Sample]:
    """The records of ``sources`` for the recipe's task, with splits (see :meth:`Task.load_samples`)."""
    return get_task(recipe).load_samples(sources, recipe, check=check)
